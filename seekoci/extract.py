"""``seekoci get``: copy a file or a directory tree out of an image, never outside DEST."""

from __future__ import annotations

import errno
import os
import posixpath
from collections.abc import Callable

from .fileinfo import FileInfo
from .image import Image

Warn = Callable[[str], None]
#: progress(bytes_done, bytes_total)
Progress = Callable[[int, int], None]
_SPECIAL_BITS = 0o6000  # setuid, setgid


def _inside(root: str, path: str) -> bool:
    """True if ``path`` (with its parent's symlinks resolved) stays inside ``root``."""
    parent = os.path.realpath(os.path.dirname(path))
    return parent == root or parent.startswith(root + os.sep)


def _mode(info: FileInfo, keep_special_bits: bool) -> int:
    return info.mode & (0o7777 if keep_special_bits else ~_SPECIAL_BITS & 0o7777)


class _Copied:
    """Bytes copied so far, reported to ``progress(done, total)`` if there is one."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total = total
        self.done = 0
        self._progress = progress

    def add(self, n: int) -> None:
        self.done += n
        if self._progress is not None:
            self._progress(self.done, self.total)


def _write_file(
    img: Image, src: str, dst: str, info: FileInfo, keep_special: bool, copied: _Copied
) -> None:
    source = img.open(src)  # first: a hard link to nowhere fails before DEST is touched
    if os.path.islink(dst):
        os.unlink(dst)  # never write through a link that is already there
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(dst, flags | getattr(os, "O_BINARY", 0), 0o600)
    with os.fdopen(fd, "wb") as out, source as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            out.write(chunk)
            copied.add(len(chunk))
    os.chmod(dst, _mode(info, keep_special))
    _set_mtime(dst, info.mtime)


def _set_mtime(path: str, mtime: float, *, follow_symlinks: bool = True) -> None:
    """Set a time the platform can hold; one it cannot (past time_t) leaves the file's own."""
    try:
        os.utime(path, (mtime, mtime), follow_symlinks=follow_symlinks)
    except (OverflowError, ValueError, NotImplementedError, OSError):
        pass


def extract(
    img: Image,
    path: str,
    dest: str | None,
    *,
    keep_special_bits: bool = False,
    overwrite: bool = False,
    warn: Warn,
    progress: Progress | None = None,
) -> None:
    """Copy ``path`` (file or directory, symlinks followed) to ``dest``.

    Unless ``overwrite``, a file or symlink already at a destination path raises
    ``FileExistsError`` before anything is written (directories may exist: a tree is copied
    into them). ``progress(bytes_done, bytes_total)`` is called as file data is written."""
    info = img.stat(path)
    base = posixpath.basename(posixpath.normpath("/" + path.strip("/"))) or "rootfs"
    if info.type != "dir":
        if info.type != "file":
            raise IsADirectoryError(f"{path}: not a regular file or directory ({info.type})")
        target = dest or base
        if os.path.isdir(target):
            target = os.path.join(target, base)
        if not overwrite and os.path.lexists(target):
            raise _exists(target, 1)
        _write_file(img, path, target, info, keep_special_bits, _Copied(info.size, progress))
        return

    root_dest = dest or base
    os.makedirs(root_dest, exist_ok=True)
    root = os.path.realpath(root_dest)
    top = "/" + "/".join(p for p in path.split("/") if p not in ("", "."))
    top = posixpath.normpath(top)
    prefix = top.rstrip("/") + "/"
    for layer, entry in img.tree().skipped:
        if ("/" + entry.name).startswith(prefix) or top == "/":
            warn(f"skipped {entry.raw_name!r} from layer {layer}: name leaves the image root")
    if not overwrite and os.path.isdir(root):
        _refuse_overwrites(img, top, root)
    dirs: list[tuple[str, FileInfo]] = []
    total = 0
    if progress is not None:  # the total first: one pass over the tree, no data read
        for dirpath, _, filenames in img.walk(top):
            for name in filenames:
                item = img.stat(posixpath.join(dirpath, name), follow_symlinks=False)
                total += item.size if item.type == "file" else 0
    copied = _Copied(total, progress)
    for dirpath, dirnames, filenames in img.walk(top):
        rel = dirpath[len(top) :].lstrip("/") if dirpath != top else ""
        for name in dirnames + filenames:
            src = posixpath.join(dirpath, name)
            dst = os.path.join(root, *rel.split("/"), name) if rel else os.path.join(root, name)
            if "/" in name or name in ("..", ".") or not _inside(root, dst):
                warn(f"skipped {src}: it would be written outside {root_dest}")
                continue
            item = img.stat(src, follow_symlinks=False)
            if item.type == "dir":
                os.makedirs(dst, exist_ok=True)
                dirs.append((dst, item))
            elif item.type == "symlink":
                if os.path.lexists(dst):
                    if os.path.isdir(dst) and not os.path.islink(dst):
                        warn(f"skipped symlink {src}: a directory is in the way")
                        continue
                    os.unlink(dst)
                os.symlink(item.linkname, dst)
                _set_mtime(dst, item.mtime, follow_symlinks=False)
            elif item.type == "file":
                try:
                    _write_file(img, src, dst, item, keep_special_bits, copied)
                except FileNotFoundError:
                    warn(f"skipped {src}: hard link to {item.linkname}, which is not in the image")
            else:
                warn(f"skipped {src}: {item.type} device or fifo")
    # directory modes and times last (children would change their mtime); deepest first
    for dst, item in [*reversed(dirs), (root, info)]:
        try:
            os.chmod(dst, _mode(item, keep_special_bits))
        except OSError as exc:
            warn(f"could not set the mode of {dst}: {exc.strerror}")
        _set_mtime(dst, item.mtime)


def _exists(path: str, count: int) -> FileExistsError:
    more = f" (and {count - 1} more)" if count > 1 else ""
    return FileExistsError(
        errno.EEXIST, f"already exists{more}; seekoci get --force overwrites", path
    )


def _refuse_overwrites(img: Image, top: str, root: str) -> None:
    """Raise FileExistsError if copying ``top`` into ``root`` would replace a file or
    symlink there, or put a directory where a file is (one walk of the tree, no data)."""
    clashes: list[str] = []
    for dirpath, dirnames, filenames in img.walk(top):
        rel = dirpath[len(top) :].lstrip("/") if dirpath != top else ""
        here = os.path.join(root, *rel.split("/")) if rel else root
        for name in dirnames + filenames:
            dst = os.path.join(here, name)
            if "/" in name or name in ("..", ".") or not os.path.lexists(dst):
                continue
            is_dir = name in dirnames and img.stat(posixpath.join(dirpath, name), False).is_dir()
            if not (is_dir and os.path.isdir(dst) and not os.path.islink(dst)):
                clashes.append(dst)
    if clashes:
        raise _exists(clashes[0], len(clashes))
