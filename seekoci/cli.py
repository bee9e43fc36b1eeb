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

from . import __version__, open_image, open_layer
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
        index_repo=args.index_repo or getattr(args, "to", None),
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
            overwrite=args.force,
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
                "uncompressed_size": layer.uncompressed_size_known()
                if status in ("cached", "built", "embedded", "direct")
                else None,
                "compression": layer.compression,
                "format": layer.format,
                "index": status,
                "published_indexes": layer.published_indexes(),
                # False: a single zstd frame, read forward only; None: known once indexed
                "random_access": layer.random_access_known(),
                "notes": layer.format_notes(),
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
        access = {True: "", False: ", forward reads only", None: ""}[row["random_access"]]
        out.write(
            f"  {i:>2} {row['digest']}  {row['media_type']}\n"
            f"     {human_size(row['size'])} compressed, {usize} uncompressed, "
            f"format {row['format']}, index {row['index']}{extra}{access}\n"
        )
        for note in row["notes"]:
            out.write(f"     note: {note}\n")
    return 0


def cmd_models(args: argparse.Namespace, out: TextIO) -> int:
    """Every model file of the image (found by name in the merged tree), headers only."""
    from .html import human_size
    from .models import describe_model, find_models

    img = _open(args)
    models = [describe_model(img, path) for path in find_models(img, args.path)]
    if args.json:
        json.dump([m.to_json() for m in models], out, indent=2)
        out.write("\n")
        return 0
    if not models:
        out.write(f"no model files (.safetensors, .gguf) under {args.path}\n")
        return 0
    for m in models:
        dtypes = ", ".join(f"{name} x{count}" for name, count in m.dtypes.items())
        shards = f" in {len(m.files)} shards" if m.sharded else ""
        out.write(
            f"{m.path}\n  {m.format}{shards}: {m.tensors} tensors, "
            f"{m.parameters:,} parameters ({_short_count(m.parameters)}), "
            f"{human_size(m.bytes)}; dtypes {dtypes or '-'}\n"
        )
    return 0


def _short_count(n: int) -> str:
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def cmd_index(args: argparse.Namespace, out: TextIO) -> int:
    if args.export_gzidx:
        return _export_gzidx(args, out)
    if args.to and args.format == "soci":
        print(
            "seekoci: error: --to publishes seekoci's own index; SOCI indexes go next to "
            "the image (--push --format soci without --to)",
            file=sys.stderr,
        )
        return 2
    img = _open(args)
    if args.format == "soci":
        return _index_soci(args, img, out)
    if args.to:
        return _index_to_repo(args, img, out)
    from .image import PARALLEL_LAYERS, index_layers

    bar = ProgressBar(sys.stderr)
    try:
        started = time.monotonic()
        index_layers(img.layers, bar)  # several passes at once
        took = time.monotonic() - started
        for layer in img.layers:
            index = layer.index(bar)
            out.write(
                f"{layer.digest}  {layer.index_status}  "
                f"{len(index.spans)} spans, {len(index.entries)} entries, "
                f"{index.uncompressed_size} bytes uncompressed\n"
            )
        out.write(f"{len(img.layers)} layers in {took:.2f}s ({PARALLEL_LAYERS} at once)\n")
    finally:
        bar.close()
    if args.push:
        from .publish import publish_native

        digest = publish_native(img, progress=bar, report=lambda line: print(line, file=out))
        out.write(f"pushed native index artifact {digest} (subject {img.digest})\n")
    return 0


def _index_to_repo(args: argparse.Namespace, img: Image, out: TextIO) -> int:
    from .indexrepo import layer_tag
    from .publish import publish_to_index_repo

    bar = ProgressBar(sys.stderr)
    try:
        publish_to_index_repo(
            img, args.to, progress=bar, report=lambda line: print(line, file=out), force=args.force
        )
    finally:
        bar.close()
    tags = sorted({layer_tag(str(layer.digest)) for layer in img.layers})
    out.write(f"published {len(tags)} layer index(es) to {args.to} (tags sha256-<hex>.seekoci)\n")
    return 0


def _export_gzidx(args: argparse.Namespace, out: TextIO) -> int:
    """``index --export-gzidx FILE TARGET``: TARGET is a local layer blob (a path that
    exists) or an image reference whose gzip layer ``--layer DIGEST`` names (a unique digest
    prefix will do; without it the image must have exactly one gzip layer)."""
    from .gzidx import export_gzidx

    if os.path.isfile(args.ref):
        layer = open_layer(args.ref, cache_dir=False if args.no_cache else args.cache_dir)
    else:
        img = _open(args)
        wanted = args.layer or ""
        candidates = [
            lay
            for lay in img.layers
            if (lay.digest or "").removeprefix("sha256:").startswith(wanted.removeprefix("sha256:"))
            and (wanted or lay.compression == "gzip")
        ]
        if len(candidates) != 1:
            what = f"layer {wanted!r}" if wanted else "exactly one gzip layer"
            print(
                f"seekoci: error: {args.ref} has no {what}"
                + ("" if wanted else ": name one with --layer DIGEST"),
                file=sys.stderr,
            )
            return 1 if wanted else 2
        layer = candidates[0]
    data = export_gzidx(layer)
    with open(args.export_gzidx, "wb") as f:
        f.write(data)
    out.write(f"{layer.name}: wrote {args.export_gzidx} ({len(data)} bytes)\n")
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


# -- image insight (seekoci du / layers / diff / bloat) -----------------------------------------


def _open_ref(args: argparse.Namespace, ref: str) -> Image:
    return _open(argparse.Namespace(**{**vars(args), "ref": ref}))


def _dump_json(doc: Any, out: TextIO) -> None:
    json.dump(doc, out, indent=2)
    out.write("\n")


def _bar_text(fraction: float, width: int = 24) -> str:
    """A bar of ``width`` cells, eighths of a cell drawn with the block elements."""
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    full, part = divmod(eighths, 8)
    return (
        "\u2588" * full + (" \u258f\u258e\u258d\u258c\u258b\u258a\u2589"[part] if part else "")
    ).ljust(width)


def _isatty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def cmd_du(args: argparse.Namespace, out: TextIO) -> int:
    from . import insight
    from .html import human_size
    from .insight.render import page, usage_page

    img = _open(args)
    rows = insight.du(img, args.path, depth=args.depth)
    largest = sorted(rows, key=lambda u: (-u.size, u.path))
    if args.html:
        title = f"seekoci du {args.ref} {rows.top}"  # the reference as the user wrote it
        with open(args.html, "w", encoding="utf-8") as f:
            f.write(page(usage_page(rows, top=rows.top, title=title), title))
    if args.json:
        _dump_json([{"path": u.path, "size": u.size, "files": u.files} for u in largest], out)
        return 0
    bars = _isatty(out)
    biggest = max((u.size for u in rows), default=0) or 1
    for u in largest:
        bar = f"{_bar_text(u.size / biggest)} " if bars else ""
        out.write(f"{human_size(u.size):>10} {u.files:>8}  {bar}{u.path}\n")
    return 0


def cmd_layers(args: argparse.Namespace, out: TextIO) -> int:
    from dataclasses import asdict

    from . import insight
    from .html import human_size

    img = _open(args)
    rows = insight.layer_usage(img)
    if args.json:
        _dump_json([asdict(r) for r in rows], out)
        return 0
    out.write(
        f"{'#':>2} {'LAYER':<19} {'COMPRESSED':>10} {'UNPACKED':>10} {'FILES':>7} "
        f"{'ADDED':>6} {'MODIFIED':>8} {'DELETED':>7} {'HIDDEN':>10}  CREATED BY\n"
    )
    for i, r in enumerate(rows):
        created = " ".join(r.created_by.split())
        if len(created) > 60 and _isatty(out):
            created = created[:59] + "\u2026"
        out.write(
            f"{i:>2} {r.digest[:19]:<19} {human_size(r.size):>10} "
            f"{human_size(r.uncompressed_size):>10} {r.files:>7} {r.added:>6} "
            f"{r.modified:>8} {r.deleted:>7} {human_size(r.hidden_bytes):>10}  {created}\n"
        )
    return 0


def cmd_diff(args: argparse.Namespace, out: TextIO) -> int:
    from dataclasses import asdict

    from . import insight
    from .html import human_size

    changes = insight.diff(_open_ref(args, args.ref), _open_ref(args, args.ref_b))
    if args.json:
        _dump_json([asdict(c) for c in changes], out)
        return 0
    marks = {"added": "+", "removed": "-", "modified": "M"}
    for c in changes:
        a = "" if c.size_a is None else human_size(c.size_a)
        b = "" if c.size_b is None else human_size(c.size_b)
        sizes = f"{a} -> {b}" if c.kind == "modified" else (b or a)
        out.write(f"{marks.get(c.kind, '?')} {c.path}  ({sizes})\n")
    return 0


def cmd_bloat(args: argparse.Namespace, out: TextIO) -> int:
    from dataclasses import asdict

    from . import insight
    from .html import human_size

    findings = insight.bloat(_open(args))
    if args.json:
        _dump_json([asdict(f) for f in findings], out)
        return 0
    for f in findings:
        out.write(f"{human_size(f.bytes):>10}  {f.category} ({len(f.paths)} paths)\n")
        for path in f.paths[:5]:
            out.write(f"{'':>12}{path}\n")
        if len(f.paths) > 5:
            out.write(f"{'':>12}... {len(f.paths) - 5} more (--json lists all)\n")
    return 0


def _depth(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def _add_insight_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    s = command("du", "sizes by directory of the merged view, largest first")
    s.add_argument(
        "path", nargs="?", default="/", metavar="PATH", help="directory to measure (default: /)"
    )
    s.add_argument("-d", "--depth", type=_depth, default=1, help="levels below PATH (default 1)")
    s.add_argument("--json", action="store_true", help="print a JSON list")
    s.add_argument("--html", metavar="FILE", help="also write an HTML page (table + treemap)")
    s.set_defaults(func=cmd_du)

    s = command("layers", "per layer: sizes, files added/modified/deleted, hidden bytes")
    s.add_argument("--json", action="store_true", help="print a JSON list")
    s.set_defaults(func=cmd_layers)

    s = command("diff", "what changed between two images (REF is the first)")
    s.add_argument("ref_b", metavar="REF_B", help="the second image, in the same forms as REF")
    s.add_argument("--json", action="store_true", help="print a JSON list")
    s.set_defaults(func=cmd_diff)

    s = command("bloat", "what could be cut, by category")
    s.add_argument("--json", action="store_true", help="print a JSON list")
    s.set_defaults(func=cmd_bloat)


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


REF_HELP = (
    "image reference: [REGISTRY/]REPOSITORY[:TAG][@DIGEST] (no registry: docker.io, "
    "library/ added to one-word names; no tag: latest; a leading docker:// is accepted) "
    "or oci:PATH[:TAG|@DIGEST] for an OCI image layout directory"
)

_EPILOG = """\
references (REF):
  python:3.12-slim                      docker.io/library/python:3.12-slim
  ghcr.io/org/app:1.0                   a tag in another registry
  registry.example.com:5000/team/app@sha256:<64 hex>   pinned by digest
  docker://quay.io/org/app:2            Docker's transport prefix is accepted
  oci:./layout:latest, oci:/srv/layout@sha256:<64 hex>  an OCI image layout on disk

environment:
  SEEKOCI_CACHE_DIR                     where indexes and fetched spans are kept
  SEEKOCI_INSECURE_REGISTRIES           host[:port],... spoken to without TLS checks
  DOCKER_CONFIG                         Docker's client config (credentials)

exit status: 0 success, 1 error (one line on stderr), 2 usage error.
Run 'seekoci demo' for a sample image and the commands to try on it.
"""


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--platform",
        metavar="OS/ARCH[/VARIANT]",
        help="platform to pick from a multi-platform image (default: linux/<host arch>)",
    )
    common.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="where indexes and spans are kept (default: $SEEKOCI_CACHE_DIR, else "
        "$XDG_CACHE_HOME/seekoci, else ~/.cache/seekoci)",
    )
    common.add_argument(
        "--no-cache", action="store_true", help="keep nothing on disk (indexes in memory only)"
    )
    common.add_argument(
        "--insecure",
        action="store_true",
        help="HTTPS without certificate verification, falling back to plain HTTP",
    )
    common.add_argument(
        "--username",
        metavar="NAME",
        help="registry user name; the password is read from stdin with --password-stdin "
        "(default: Docker's credentials, else anonymous)",
    )
    common.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password (or token) for --username from the first line of stdin",
    )
    common.add_argument(
        "--span-size",
        type=_positive_int,
        default=None,
        metavar="BYTES",
        help=f"uncompressed bytes between checkpoints of a new index (default "
        f"{DEFAULT_SPAN_SIZE}; SOCI: 4194304)",
    )
    common.add_argument(
        "--index-repo",
        metavar="REGISTRY/REPO",
        help="also look for layer indexes in this repository (default: $SEEKOCI_INDEX_REPO)",
    )

    def command(name: str, summary: str, *, image: bool = True) -> argparse.ArgumentParser:
        s = sub.add_parser(
            name,
            parents=[common] if image else [],
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            epilog=_EPILOG if image else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if image:
            s.add_argument("ref", metavar="REF", help=REF_HELP)
        return s

    p = argparse.ArgumentParser(
        prog="seekoci",
        description="Read files out of container images in a registry without pulling them: "
        "only the compressed bytes around a file travel.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"seekoci {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = command("ls", "list a directory of the image")
    s.add_argument("path", nargs="?", default="/", metavar="PATH", help="directory (default: /)")
    s.add_argument(
        "-l", dest="long", action="store_true", help="long format: mode, owner, size, mtime"
    )
    s.add_argument("-R", dest="recursive", action="store_true", help="list subdirectories too")
    s.set_defaults(func=cmd_ls)

    s = command("cat", "write files of the image to stdout")
    s.add_argument("paths", nargs="+", metavar="PATH", help="absolute path inside the image")
    s.set_defaults(func=cmd_cat)

    s = command("get", "copy a file or directory tree out of the image")
    s.add_argument("path", metavar="PATH", help="file or directory inside the image")
    s.add_argument(
        "-o",
        "--output",
        metavar="DEST",
        help="where to write (default: the base name in the current directory; rootfs for /)",
    )
    s.add_argument(
        "--force",
        action="store_true",
        help="overwrite files that already exist at the destination (default: refuse, "
        "before writing anything)",
    )
    s.add_argument(
        "--keep-special-bits",
        action="store_true",
        help="keep setuid/setgid bits (default: dropped)",
    )
    s.set_defaults(func=cmd_get)

    s = command("stat", "metadata of a path in the image")
    s.add_argument("path", metavar="PATH", help="absolute path inside the image")
    s.add_argument("--json", action="store_true", help="print a JSON object")
    s.add_argument("--no-follow", action="store_true", help="do not follow a final symlink")
    s.set_defaults(func=cmd_stat)

    s = command("inspect", "platform and layers: digests, media types, sizes, index status")
    s.add_argument("--json", action="store_true", help="print a JSON object")
    s.set_defaults(func=cmd_inspect)

    s = command("index", "build (or load) every layer's index; --push publishes it")
    s.add_argument(
        "--push", action="store_true", help="publish the index to the image's repository"
    )
    s.add_argument(
        "--format",
        choices=("native", "soci"),
        default="native",
        help="index to publish: seekoci's own (default) or a SOCI v1 index",
    )
    s.add_argument(
        "--to",
        metavar="REGISTRY/REPO",
        help="publish each layer's index into this repository you own, by layer digest "
        "(for images you cannot push to; implies --push)",
    )
    s.add_argument(
        "--force",
        action="store_true",
        help="with --to: publish again layers the repository already has an index for",
    )
    s.add_argument(
        "--export-gzidx",
        metavar="FILE",
        help="write a gzip layer's checkpoints as a GZIDX file (indexed_gzip, rapidgzip, "
        "ratarmount); REF may also be a local layer blob",
    )
    s.add_argument("--layer", metavar="DIGEST", help="the layer of REF for --export-gzidx")
    s.add_argument(
        "--min-layer-size",
        type=int,
        default=None,
        metavar="BYTES",
        help="SOCI: skip layers smaller than this (default 10 MiB, as the soci CLI)",
    )
    s.set_defaults(func=cmd_index)

    s = command("models", "model files of the image: format, tensors, parameters, dtypes")
    s.add_argument(
        "path", nargs="?", default="/", metavar="PATH", help="where to look (default: /)"
    )
    s.add_argument("--json", action="store_true", help="print a JSON list")
    s.set_defaults(func=cmd_models)

    _add_insight_commands(command)

    s = sub.add_parser(
        "cache",
        help="the cache directory: size, pruning",
        description="The cache directory: what it holds, and pruning it.",
    )
    csub = s.add_subparsers(
        dest="cache_command", required=True, metavar="COMMAND", help="info or prune"
    )
    c = csub.add_parser("info", help="location, size, cap, files by kind")
    c.add_argument(
        "--cache-dir",
        help="the cache directory (default: $SEEKOCI_CACHE_DIR, else "
        "$XDG_CACHE_HOME/seekoci, else ~/.cache/seekoci)",
    )
    c.add_argument("--json", action="store_true", help="print a JSON object")
    c.set_defaults(func=cmd_cache_info)
    c = csub.add_parser("prune", help="remove least recently used files (spans first)")
    c.add_argument("--cache-dir", help="the cache directory (default as for `cache info`)")
    c.add_argument("--max", help="keep at most this much (e.g. 500M, 5G; default: the cap)")
    c.add_argument("--all", action="store_true", help="remove everything cached")
    c.set_defaults(func=cmd_cache_prune)

    s = command("demo", "build a sample image on disk and read files out of it", image=False)
    s.add_argument(
        "--dir",
        metavar="DIR",
        help="where to write the sample (default: demo/ under the cache directory; every "
        "run replaces what the previous one left there)",
    )
    s.set_defaults(func=cmd_demo)
    return p


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, with options also taken between a command's positionals
    (``ls REF -l /etc``): argparse alone takes the words before an option as all the
    positionals there are, and refuses ``/etc`` as unrecognised."""
    words = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(words)
    if not extra:
        return args
    command = _command_parser(parser, args.command)
    at = words.index(args.command)
    # words before the command are seekoci's own (--version, --help): any other is wrong
    if at or command is None or _command_parser(command, None) is not None:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    own = words[at + 1 :]
    return argparse.Namespace(**{**vars(args), **vars(command.parse_intermixed_args(own))})


def _command_parser(
    parser: argparse.ArgumentParser, name: str | None
) -> argparse.ArgumentParser | None:
    """The parser of ``parser``'s command ``name`` (any command's, for None), if it has one."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            if name is None:
                return next(iter(action.choices.values()), None)
            found: argparse.ArgumentParser | None = action.choices.get(name)
            return found
    return None


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    parser = _parser()
    args = _parse(parser, argv)
    stream = out or sys.stdout
    func: Callable[[argparse.Namespace, TextIO], int] = args.func
    try:
        code = func(args, stream)
        _finish_indexes()
        return code
    except (SeekociError, OSError) as exc:
        if isinstance(exc, BrokenPipeError):
            _silence_stdout()
            return 1
        print(f"seekoci: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("seekoci: interrupted", file=sys.stderr)
        return 130


def _finish_indexes() -> None:
    """Before exiting: the indexes a lookup's scan left to be made behind it (a big gzip
    layer read for the first time) are finished and saved, with a bar on a terminal;
    Ctrl-C skips them (KeyboardInterrupt: "interrupted")."""
    from .build import finish_background, running_background

    if not running_background():
        return
    bar = ProgressBar(sys.stderr, desc="indexing for next time")
    if bar.enabled:
        print("seekoci: saving the index made behind the read (Ctrl-C skips it)", file=sys.stderr)
    finish_background(bar)
    bar.close()


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
