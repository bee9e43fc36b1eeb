"""The ``seekoci`` command line (``python -m seekoci`` is the same program).

Exit status: 0 on success, 1 on an error (one line on stderr, no traceback), 2 on a usage
error. Progress bars appear on a terminal only.
"""

from __future__ import annotations

import argparse
import json
import os
import stat as statmod
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from . import __version__, open_image
from .errors import SeekociError
from .extract import extract
from .fileinfo import FileInfo
from .image import Image
from .layer import DEFAULT_SPAN_SIZE
from .progress import ProgressBar


def _mode_string(info: FileInfo) -> str:
    return statmod.filemode(info.st_mode)


def _when(mtime: float, fmt: str) -> str:
    try:
        return time.strftime(fmt, time.gmtime(mtime))
    except (OverflowError, ValueError, OSError):  # past what the platform's time_t holds
        return f"@{mtime:.0f}"


def _long_line(info: FileInfo, name: str) -> str:
    when = _when(info.mtime, "%Y-%m-%d %H:%M")
    dev = info.type in ("char", "block")
    size_text = f"{info.devmajor},{info.devminor}" if dev else str(info.size)
    line = f"{_mode_string(info)} {info.uid:>5} {info.gid:>5} {size_text:>12} {when} {name}"
    if info.type == "symlink":
        line += f" -> {info.linkname}"
    return line


def _open(args: argparse.Namespace) -> Image:
    cache_dir: str | bool | None = False if args.no_cache else args.cache_dir
    auth = None
    if args.username:
        password = sys.stdin.readline().rstrip("\n") if args.password_stdin else ""
        auth = (args.username, password)
    img = open_image(
        args.ref,
        platform=args.platform,
        auth=auth,
        cache_dir=cache_dir,
        insecure=True if args.insecure else None,
        span_size=args.span_size or DEFAULT_SPAN_SIZE,
    )
    bar = ProgressBar(sys.stderr)  # draws only on a terminal
    for layer in img.layers:
        layer.progress = bar
    return img


def cmd_ls(args: argparse.Namespace, out: TextIO) -> int:
    img = _open(args)
    path = args.path
    info = img.stat(path)
    if not info.is_dir():
        out.write((_long_line(info, path) if args.long else path) + "\n")
        return 0
    if args.recursive:
        first = True
        for dirpath, dirnames, filenames in img.walk(path):
            if not first:
                out.write("\n")
            first = False
            out.write(f"{dirpath}:\n")
            _list_names(img, dirpath, sorted(dirnames + filenames), args.long, out)
        return 0
    _list_names(img, path, img.listdir(path), args.long, out)
    return 0


def _list_names(img: Image, dirpath: str, names: Sequence[str], long: bool, out: TextIO) -> None:
    for name in names:
        if long:
            full = dirpath.rstrip("/") + "/" + name
            out.write(_long_line(img.stat(full, follow_symlinks=False), name) + "\n")
        else:
            out.write(name + "\n")


def cmd_cat(args: argparse.Namespace, out: TextIO) -> int:
    img = _open(args)
    sink = out.buffer if hasattr(out, "buffer") else sys.stdout.buffer
    for path in args.paths:
        with img.open(path) as f:
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                sink.write(chunk)
    sink.flush()
    return 0


def cmd_get(args: argparse.Namespace, out: TextIO) -> int:
    img = _open(args)
    bar = ProgressBar(sys.stderr, desc="copying")  # draws only on a terminal
    try:
        extract(
            img,
            args.path,
            args.output,
            keep_special_bits=args.keep_special_bits,
            warn=lambda msg: print(f"seekoci: warning: {msg}", file=sys.stderr),
            progress=(lambda done, total: bar(args.path, done, total)) if bar.enabled else None,
        )
    finally:
        bar.close()
    return 0


def _info_dict(info: FileInfo) -> dict[str, Any]:
    return {
        "path": info.path,
        "type": info.type,
        "size": info.size,
        "mode": info.mode,
        "mode_octal": f"{info.mode:04o}",
        "mtime": info.mtime,
        "uid": info.uid,
        "gid": info.gid,
        "linkname": info.linkname,
        "xattrs": {k: v.decode("utf-8", "backslashreplace") for k, v in info.xattrs.items()},
        "layer": info.layer,
    }


def cmd_stat(args: argparse.Namespace, out: TextIO) -> int:
    img = _open(args)
    info = img.stat(args.path, follow_symlinks=not args.no_follow)
    if args.json:
        json.dump(_info_dict(info), out, indent=2)
        out.write("\n")
        return 0
    d = _info_dict(info)
    for key in ("path", "type", "size", "mode_octal", "mtime", "uid", "gid", "linkname", "layer"):
        value = d[key]
        if key == "mtime":
            value = f"{info.mtime} ({_when(info.mtime, '%Y-%m-%d %H:%M:%S')} UTC)"
        out.write(f"{key.replace('_octal', ''):>9}: {value}\n")
    for k, v in d["xattrs"].items():
        out.write(f"    xattr: {k}={v}\n")
    return 0


def cmd_inspect(args: argparse.Namespace, out: TextIO) -> int:
    img = _open(args)
    layers: list[dict[str, Any]] = []
    for layer in img.layers:
        status = layer.index_status
        layers.append(
            {
                "digest": layer.digest,
                "media_type": layer.media_type,
                "size": layer.size,
                "uncompressed_size": layer.uncompressed_size
                if status in ("cached", "built")
                else None,
                "compression": layer.compression,
                "format": layer.format,
                "index": status,
                "published_indexes": layer.published_indexes(),
            }
        )
    doc = {
        "reference": img.reference,
        "digest": img.digest,
        "platform": img.platform,
        "layers": layers,
    }
    if args.json:
        json.dump(doc, out, indent=2)
        out.write("\n")
        return 0
    out.write(f"reference: {img.reference}\ndigest:    {img.digest}\nplatform:  {img.platform}\n")
    out.write(f"layers:    {len(layers)}\n")
    from .html import human_size

    for i, row in enumerate(layers):
        usize = human_size(row["uncompressed_size"]) if row["uncompressed_size"] else "?"
        published = row["published_indexes"]
        extra = f" (published: {', '.join(published)})" if published else ""
        out.write(
            f"  {i:>2} {row['digest']}  {row['media_type']}\n"
            f"     {human_size(row['size'])} compressed, {usize} uncompressed, "
            f"format {row['format']}, index {row['index']}{extra}\n"
        )
    return 0


def cmd_index(args: argparse.Namespace, out: TextIO) -> int:
    img = _open(args)
    if args.format == "soci":
        return _index_soci(args, img, out)
    bar = ProgressBar(sys.stderr)
    try:
        for layer in img.layers:
            started = time.monotonic()
            index = layer.index(bar)
            took = time.monotonic() - started
            out.write(
                f"{layer.digest}  {layer.index_status}  "
                f"{len(index.spans)} spans, {len(index.entries)} entries, "
                f"{index.uncompressed_size} bytes uncompressed ({took:.2f}s)\n"
            )
    finally:
        bar.close()
    if args.push:
        from .publish import publish_native

        digest = publish_native(img, progress=bar, report=lambda line: print(line, file=out))
        out.write(f"pushed native index artifact {digest} (subject {img.digest})\n")
    return 0


def _index_soci(args: argparse.Namespace, img: Image, out: TextIO) -> int:
    from .publish import SOCI_DEFAULT_SPAN, SOCI_MIN_LAYER_SIZE, publish_soci

    if not args.push:
        print("seekoci: error: --format soci publishes an index: add --push", file=sys.stderr)
        return 2
    digest = publish_soci(
        img,
        span_size=args.span_size or SOCI_DEFAULT_SPAN,
        min_layer_size=SOCI_MIN_LAYER_SIZE if args.min_layer_size is None else args.min_layer_size,
        report=lambda line: print(line, file=out),
    )
    out.write(f"pushed SOCI index {digest} (subject {img.digest})\n")
    return 0


def _cache_of(args: argparse.Namespace) -> Any:
    from .cache import DiskCache, default_cache_dir

    return DiskCache(args.cache_dir or default_cache_dir())


def _size_text(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def cmd_cache_info(args: argparse.Namespace, out: TextIO) -> int:
    cache = _cache_of(args)
    usage = cache.usage()
    total = sum(u.bytes for u in usage.values())
    if args.json:
        doc = {
            "location": str(cache.root),
            "bytes": total,
            "max_bytes": cache.max_bytes,
            "kinds": {k: {"files": u.files, "bytes": u.bytes} for k, u in usage.items()},
        }
        out.write(json.dumps(doc, indent=2) + "\n")
        return 0
    cap = _size_text(cache.max_bytes) if cache.max_bytes else "none"
    out.write(f"location: {cache.root}\n")
    out.write(f"size:     {_size_text(total)} of {cap} ($SEEKOCI_CACHE_MAX)\n")
    for kind, u in usage.items():
        out.write(f"  {kind:<10} {u.files:>8} files {_size_text(u.bytes):>12}\n")
    return 0


def cmd_cache_prune(args: argparse.Namespace, out: TextIO) -> int:
    from .cache import parse_size

    cache = _cache_of(args)
    limit = None
    if args.max is not None:
        try:
            limit = parse_size(args.max)
        except ValueError as exc:
            print(f"seekoci: error: {exc}", file=sys.stderr)
            return 2
    result = cache.prune(limit, everything=args.all)
    out.write(
        f"removed {result.removed_files} files ({_size_text(result.removed_bytes)}); "
        f"{_size_text(max(result.remaining_bytes, 0))} left in {cache.root}\n"
    )
    return 0


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from ._sample import run_demo

    return run_demo(out, workdir=args.dir)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--platform", help="os/arch[/variant] (default: linux/<host arch>)")
    common.add_argument("--cache-dir", help="index and span cache (default: $SEEKOCI_CACHE_DIR)")
    common.add_argument("--no-cache", action="store_true", help="keep nothing on disk")
    common.add_argument("--insecure", action="store_true", help="HTTPS without verification")
    common.add_argument("--username", help="registry user name (password: --password-stdin)")
    common.add_argument("--password-stdin", action="store_true", help="read password from stdin")
    common.add_argument(
        "--span-size",
        type=_positive_int,
        default=None,
        help=f"bytes between checkpoints (default {DEFAULT_SPAN_SIZE}; SOCI: 4 MiB)",
    )

    p = argparse.ArgumentParser(
        prog="seekoci", description="Read files out of container images without pulling them."
    )
    p.add_argument("--version", action="version", version=f"seekoci {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("ls", parents=[common], help="list a directory")
    s.add_argument("ref")
    s.add_argument("path", nargs="?", default="/")
    s.add_argument("-l", dest="long", action="store_true", help="long format")
    s.add_argument("-R", dest="recursive", action="store_true", help="recursive")
    s.set_defaults(func=cmd_ls)

    s = sub.add_parser("cat", parents=[common], help="write files to stdout")
    s.add_argument("ref")
    s.add_argument("paths", nargs="+")
    s.set_defaults(func=cmd_cat)

    s = sub.add_parser("get", parents=[common], help="copy a file or directory out")
    s.add_argument("ref")
    s.add_argument("path")
    s.add_argument("-o", "--output", help="destination (default: the base name)")
    s.add_argument("--keep-special-bits", action="store_true", help="keep setuid/setgid")
    s.set_defaults(func=cmd_get)

    s = sub.add_parser("stat", parents=[common], help="metadata of a path")
    s.add_argument("ref")
    s.add_argument("path")
    s.add_argument("--json", action="store_true")
    s.add_argument("--no-follow", action="store_true", help="do not follow a final symlink")
    s.set_defaults(func=cmd_stat)

    s = sub.add_parser("inspect", parents=[common], help="platform and layers")
    s.add_argument("ref")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("index", parents=[common], help="build (or load) every layer's index")
    s.add_argument("ref")
    s.add_argument("--push", action="store_true", help="publish the index to the registry")
    s.add_argument("--format", choices=("native", "soci"), default="native")
    s.add_argument(
        "--min-layer-size",
        type=int,
        default=None,
        help="SOCI: skip layers smaller than this (default 10 MiB, as the soci CLI)",
    )
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("cache", help="the cache directory: size, pruning")
    csub = s.add_subparsers(dest="cache_command", required=True)
    c = csub.add_parser("info", help="location, size, cap, files by kind")
    c.add_argument("--cache-dir", help="default: $SEEKOCI_CACHE_DIR")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_cache_info)
    c = csub.add_parser("prune", help="remove least recently used files (spans first)")
    c.add_argument("--cache-dir", help="default: $SEEKOCI_CACHE_DIR")
    c.add_argument("--max", help="keep at most this much (e.g. 500M, 5G; default: the cap)")
    c.add_argument("--all", action="store_true", help="remove everything cached")
    c.set_defaults(func=cmd_cache_prune)

    s = sub.add_parser("demo", help="build a sample image and read files out of it")
    s.add_argument("--dir", help="where to write the sample image (default: a temp dir)")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    stream = out or sys.stdout
    func: Callable[[argparse.Namespace, TextIO], int] = args.func
    try:
        return func(args, stream)
    except (SeekociError, OSError) as exc:
        if isinstance(exc, BrokenPipeError):
            _silence_stdout()
            return 1
        print(f"seekoci: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("seekoci: interrupted", file=sys.stderr)
        return 130


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _silence_stdout() -> None:
    # stdout's reader went away (seekoci cat ... | head): don't let flushing at exit fail
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
