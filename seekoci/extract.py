"""``seekoci get`` / :meth:`Image.extract`: copy a file or a tree out of an image, never
outside DEST, fast.

A tree is copied in three steps. First the merged view is walked once: directories and
symlinks are made in walk order (so that every later check of a path sees the links that
could redirect it), and the regular files the merged view shows are listed with the layer
entry that holds their bytes -- files that upper layers hide or delete are never read.
Then each layer's files are read in tar order as *segments*: files whose data lie close
together in the tar stream are one stream of the read pipeline (large coalesced range
requests, spans inflated in parallel), and each file is written as its bytes pass; a few
segments are under way at once. Last, directory modes and times, deepest first.

Safety rules (the same as ``get`` has always had): entries whose names leave the image
root, files whose parent resolves outside DEST, device files and fifos are skipped with
one warning each; a symlink already at a file's place is replaced, never written through
(``O_NOFOLLOW``); setuid/setgid bits are dropped unless asked for.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import operator
import os
import posixpath
import queue
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import _gc
from ._allocator import release_free_memory
from .errors import FormatError
from .fileinfo import FileInfo
from .formats.tar import TarEntry
from .image import Image
from .layer import Layer
from .tree import Node, Tree

Warn = Callable[[str], None]
#: progress(bytes_done, bytes_total)
Progress = Callable[[int, int], None]
_SPECIAL_BITS = 0o6000  # setuid, setgid
#: Files closer together than this in a layer's tar stream are read as one stream: the
#: spans between them would be fetched anyway, or nearly (one span is 1 MiB by default).
SEGMENT_GAP = 1 << 20
#: A segment ends at the first file past this many tar bytes from its start, so one big
#: layer (most of an image) is written by several threads, not by one while the others idle.
SEGMENT_SPLIT = 64 << 20
#: Segments read at once (each is a pipeline stream; they share its connections and
#: inflate threads): two keep both cores inflating while files are created.
PARALLEL_SEGMENTS = 2
#: Readahead of one segment's stream (uncompressed bytes in flight; runs of up to half of
#: it are fetched at once). With two segments this bounds what extraction holds in flight
#: to ~40 MiB. Peak RSS of a whole 1.3 GB image (66k files, their tree included): 373 MiB
#: with three segments of 32 MiB; with two, 233-258 MiB at 16 MiB and 224-232 MiB at 12 MiB
#: (within the noise on time).
SEGMENT_WINDOW = 12 << 20
#: Layers streamed and indexed at once when none has an index (each pass keeps about a
#: core busy inflating).
STAGING_PASSES = 2
#: Files of one layer the walk may find behind the segments already under way before the
#: layer stops starting segments during the walk (see _SegmentFeed).
LATE_FILES = 64
#: Decoded pieces (up to 256 KiB each) a staging pass hands its file writer ahead of it.
STAGE_QUEUE = 32


class _Inside:
    """Where the walk writes the entries of each directory of the image: the real path,
    inside ``root``, of the directory it made for it, or None when that leads outside.

    Found once per directory, when the walk lists it: a directory the walk made (or found)
    as a real directory inside one already known is its own real path (one ``lstat``);
    one reached through a symlink of DEST is resolved then (``realpath``). Entries go to
    ``real directory + name``: every part of that path is a real directory, which the
    extraction never removes or replaces (it unlinks files and links only). So a symlink of
    DEST that the walk replaces later (``--force``, a link of the image over a link of DEST
    reached through another one) cannot redirect a write decided before it -- the files
    segments write, and staged files moved into place, come after the walk."""

    def __init__(self, root: str, top: str) -> None:
        self._root = root
        #: image directory -> the path the walk made or found it at, when that is not a
        #: real directory (a link of DEST): resolved when the walk lists it
        self._made: dict[str, str] = {}
        #: image directory -> the real directory its entries go in (None: outside)
        self._real: dict[str, str | None] = {top: root}

    def directory(self, src: str) -> str | None:
        """The real directory for the entries of image directory ``src``; None when it is
        outside ``root``, or was not made (skipped: nothing below it is written)."""
        if src in self._real:
            return self._real[src]
        made = self._made.get(src)
        found = None
        if made is not None:
            real = os.path.realpath(made)
            if real == self._root or real.startswith(self._root + os.sep):
                found = real
        self._real[src] = found
        return found

    def made(self, src: str, dst: str) -> None:
        """Image directory ``src`` now is ``dst`` (made or found there; the directory
        ``dst`` is in is a real one): if ``dst`` is a real directory too (not a link), it
        is the real path of ``src``'s entries, with no ``realpath`` (an ``lstat`` per part
        of the path, each a wait for the GIL while the extraction's threads run)."""
        try:
            real_dir = stat.S_ISDIR(os.lstat(dst).st_mode)
        except OSError:
            real_dir = False
        if real_dir:
            self._real[src] = dst
        else:
            self._made[src] = dst


def _mode(info: FileInfo, keep_special_bits: bool) -> int:
    return _mode_bits(info.mode, keep_special_bits)


def _mode_bits(mode: int, keep_special_bits: bool) -> int:
    return mode & (0o7777 if keep_special_bits else ~_SPECIAL_BITS & 0o7777)


class _Copied:
    """Bytes copied so far, reported to ``progress(done, total)`` if there is one.

    A tree's total grows while the walk finds files (:meth:`expect`) and the first ones are
    written already: until :meth:`settle` the total reported is one byte more than what is
    done at least, so that a progress bar never sees the copy complete before it is."""

    def __init__(self, total: int, progress: Progress | None, *, growing: bool = False) -> None:
        self.total = total
        self.done = 0
        self._growing = growing
        self._progress = progress
        self._lock = threading.Lock()

    def _shown(self) -> tuple[int, int]:
        total = max(self.total, self.done + 1) if self._growing else self.total
        return self.done, total

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            done, total = self._shown()
        if self._progress is not None:
            self._progress(done, total)

    def expect(self, n: int) -> None:
        """``n`` more bytes to copy (the walk finds files while the first are written)."""
        with self._lock:
            self.total += n

    def settle(self) -> None:
        """Every file is known: from now on the total is the real one."""
        with self._lock:
            self._growing = False
            done, total = self._shown()
        if self._progress is not None:
            self._progress(done, total)


_CREATE = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)


def _create(dst: str) -> int:
    """A new file at ``dst`` for writing; a symlink already there is removed, not followed
    (one syscall when nothing is there: the usual case)."""
    try:
        return os.open(dst, _CREATE | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    if os.path.islink(dst):
        os.unlink(dst)  # never write through a link that is already there
    return os.open(dst, _CREATE | os.O_TRUNC, 0o600)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _finish_file(fd: int, mode: int, mtime: float) -> None:
    """Mode and time of a file written through ``fd`` (set on the descriptor: no path
    lookups, and no link can be in the way)."""
    os.fchmod(fd, mode)
    try:
        os.utime(fd, (mtime, mtime))
    except (OverflowError, ValueError, OSError):
        pass  # a time the platform cannot hold (past time_t) leaves the file's own


def _write_file(
    img: Image, src: str, dst: str, info: FileInfo, keep_special: bool, copied: _Copied
) -> None:
    source = img.open(src)  # first: a hard link to nowhere fails before DEST is touched
    fd = _create(dst)
    try:
        with source as f:
            while chunk := f.read(1 << 20):
                _write_all(fd, chunk)
                copied.add(len(chunk))
        _finish_file(fd, _mode(info, keep_special), info.mtime)
    finally:
        os.close(fd)


def _set_mtime(path: str, mtime: float, *, follow_symlinks: bool = True) -> None:
    """Set a time the platform can hold; one it cannot (past time_t) leaves the file's own."""
    try:
        os.utime(path, (mtime, mtime), follow_symlinks=follow_symlinks)
    except (OverflowError, ValueError, NotImplementedError, OSError):
        pass


@dataclass(slots=True)
class _File:
    """A regular file to write: where its bytes are, where they go, its mode and time.
    (A whole image holds one per file until it is written: no more than that.)"""

    layer: Layer
    entry: TarEntry  # the entry holding the bytes (a hard link's target)
    dst: str
    mode: int  # the bits to set (special bits already kept or dropped)
    mtime: float
    #: the file's bytes, written already while its layer was indexed (see _Stager)
    staged: str | None = None
    #: the staged file has this mode and time already (its own entry, not a hard link's)
    finished: bool = False

    @property
    def start(self) -> int:
        return self.entry.data_offset

    @property
    def end(self) -> int:
        return self.entry.data_offset + self.entry.size


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
    into them). ``progress(bytes_done, bytes_total)`` is called as file data is written.

    Layers with no index anywhere are streamed once each, several at once, and indexed on
    the way (the index is saved as usual); the regular files under ``path`` are written to
    a staging directory inside ``dest`` as they pass and moved into place once the merged
    view says which ones it shows."""
    top = posixpath.normpath("/" + "/".join(p for p in path.split("/") if p not in ("", ".")))
    # the whole image with layers not indexed anywhere: stream each layer once, writing its
    # files while it is indexed (any other path may be a file: a lookup stops early there)
    staging = (
        _Staging(img, dest or "rootfs", keep_special_bits)
        if top == "/" and _unindexed(img)
        else None
    )
    try:
        _extract(img, path, top, dest, staging, keep_special_bits, overwrite, warn, progress)
    finally:
        if staging is not None:
            staging.remove()


def _extract(
    img: Image,
    path: str,
    top: str,
    dest: str | None,
    staging: _Staging | None,
    keep_special_bits: bool,
    overwrite: bool,
    warn: Warn,
    progress: Progress | None,
) -> None:
    if staging is not None:
        staging.run()
    info = img.stat(path)
    base = posixpath.basename(posixpath.normpath("/" + path.strip("/"))) or "rootfs"
    if info.type != "dir":
        if info.type != "file":  # a device or fifo: skipped as in a tree (nothing else to copy)
            warn(f"skipped {top}: {info.type} device or fifo")
            return
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
    prefix = top.rstrip("/") + "/"
    tree = img.tree()
    for layer, entry in tree.skipped:
        if ("/" + entry.name).startswith(prefix) or top == "/":
            warn(f"skipped {entry.raw_name!r} from layer {layer}: name leaves the image root")
    if not overwrite and os.path.isdir(root):
        _refuse_overwrites(img, top, root)
    inside = _Inside(root, top)
    dirs: list[tuple[str, FileInfo]] = []
    copied = _Copied(0, progress, growing=True)
    feed = _SegmentFeed(copied)
    try:
        with _gc.paused():  # a _File per file, no network wait: nothing to collect
            _walk(img, tree, top, root_dest, inside, staging, keep_special_bits, warn, dirs, feed)
        copied.settle()
        feed.finish()
    finally:
        feed.close()
    _place_staged(feed.staged, copied)
    if staging is not None:  # what is left there the merged view does not show
        staging.remove()
    # directory modes and times last (children would change their mtime); deepest first
    for dst, item in [*reversed(dirs), (root, info)]:
        try:
            os.chmod(dst, _mode(item, keep_special_bits))
        except OSError as exc:
            warn(f"could not set the mode of {dst}: {exc.strerror}")
        _set_mtime(dst, item.mtime)


def _walk(
    img: Image,
    tree: Tree,
    top: str,
    root_dest: str,
    inside: _Inside,
    staging: _Staging | None,
    keep_special_bits: bool,
    warn: Warn,
    dirs: list[tuple[str, FileInfo]],
    feed: _SegmentFeed,
) -> None:
    """Walk the merged view under ``top``: make directories and symlinks in walk order, and
    hand each regular file to ``feed``."""
    for dirpath, dirnames, filenames in tree.walk(top):
        # the walk descends real directories only: a child is its parent's, no lookup
        # from the root for each of them (a whole image: 66k)
        children = tree.resolve(dirpath).children
        assert children is not None
        base_dst = inside.directory(dirpath)
        for name in dirnames + filenames:
            src = posixpath.join(dirpath, name)
            if "/" in name or name in ("..", ".") or base_dst is None:
                warn(f"skipped {src}: it would be written outside {root_dest}")
                continue
            dst = os.path.join(base_dst, name)
            node = children[name]
            if node.entry is not None and node.entry.type in ("file", "hardlink"):
                # the common case first, with no FileInfo made (a whole image: 66k files)
                holder = _holder(img, node)
                if holder is None:
                    linkname = img._info(node, src).linkname
                    warn(f"skipped {src}: hard link to {linkname}, which is not in the image")
                    continue
                staged = None if staging is None else staging.take(holder[1])
                mode = _mode_bits(node.entry.mode, keep_special_bits)
                found = _File(holder[0], holder[1], dst, mode, node.entry.mtime, staged)
                found.finished = staged is not None and node.entry is holder[1]
                feed.add(found)
                continue
            item = img._info(node, src)
            if item.type == "dir":
                os.makedirs(dst, exist_ok=True)
                inside.made(src, dst)
                dirs.append((dst, item))
            elif item.type == "symlink":
                if os.path.lexists(dst):
                    if os.path.isdir(dst) and not os.path.islink(dst):
                        warn(f"skipped symlink {src}: a directory is in the way")
                        continue
                    os.unlink(dst)
                os.symlink(item.linkname, dst)
                _set_mtime(dst, item.mtime, follow_symlinks=False)
            else:
                warn(f"skipped {src}: {item.type} device or fifo")


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
        if not os.path.isdir(here):  # nothing below it can be in the way: not walked
            dirnames.clear()  # (into a new directory: one stat in all, not one a file)
            continue
        for name in dirnames + filenames:
            dst = os.path.join(here, name)
            if "/" in name or name in ("..", ".") or not os.path.lexists(dst):
                continue
            is_dir = name in dirnames and img.stat(posixpath.join(dirpath, name), False).is_dir()
            if not (is_dir and os.path.isdir(dst) and not os.path.islink(dst)):
                clashes.append(dst)
    if clashes:
        raise _exists(clashes[0], len(clashes))


def _unindexed(img: Image) -> bool:
    """Whether some layer has no index anywhere yet (cache directory, registry)."""
    return any(not layer.complete() and not layer.pass_started() for layer in img.layers)


@dataclass(slots=True)
class _Staged:
    """A file the staging tee writes: where, its data's place in the tar, its mode and time."""

    path: str
    start: int
    end: int
    mode: int
    mtime: float


class _Stager:
    """The tee of one layer's index build: writes its regular files to ``directory/N``
    (N: the entry's position in the layer) as their bytes pass.

    The pass's thread (which also parses the tar headers) only names the files and hands
    the bytes on; a thread of the stager's own creates and writes them (system calls that
    release the GIL), so 50k file creations are not a step of the pass. At most
    :data:`STAGE_QUEUE` pieces wait for it. A write that fails (a full disk) is raised by
    :meth:`close` (and by the next piece handed over)."""

    def __init__(self, directory: str, keep_special_bits: bool = False) -> None:
        self.directory = directory
        self._keep_special_bits = keep_special_bits
        self.staged: dict[int, str] = {}  # id(entry) -> staged path (the pass's thread only)
        self._seen = 0  # entries looked at so far
        self._queue: queue.Queue[tuple[int, bytes, list[_Staged]] | None] = queue.Queue(STAGE_QUEUE)
        self._lock = threading.Lock()  # _error: set by the writer thread
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write, name="seekoci-stage-write", daemon=True)
        self._thread.start()

    def __call__(self, at: int, data: bytes, entries: Sequence[TarEntry]) -> None:
        new: list[_Staged] = []
        while self._seen < len(entries):
            entry = entries[self._seen]
            if entry.type == "file" and not entry.unsafe:
                path = os.path.join(self.directory, str(self._seen))
                self.staged[id(entry)] = path
                mode = _mode_bits(entry.mode, self._keep_special_bits)
                end = entry.data_offset + entry.size
                new.append(_Staged(path, entry.data_offset, end, mode, entry.mtime))
            self._seen += 1
        with self._lock:
            error = self._error
        if error is not None:
            raise error
        if not isinstance(data, bytes):  # a view of a buffer its owner may reuse
            data = bytes(data)
        self._queue.put((at, data, new))  # the writer drains the queue even after an error

    def _write(self) -> None:
        open_files: list[tuple[_Staged, int]] = []  # (file, fd)
        failed = False  # this thread alone sets _error
        try:
            while (item := self._queue.get()) is not None:
                if failed:
                    continue  # keep draining: the pass's thread must never wait on a dead writer
                try:
                    self._write_piece(item, open_files)
                except BaseException as exc:
                    failed = True
                    with self._lock:
                        self._error = exc
        finally:
            for _, fd in open_files:
                os.close(fd)

    def _write_piece(
        self, item: tuple[int, bytes, list[_Staged]], open_files: list[tuple[_Staged, int]]
    ) -> None:
        """Create the files that start in this piece, write what it holds of each open file,
        and finish the files it ends: their mode and time set on the descriptor, so moving
        them into place later is one rename."""
        at, data, new = item
        for staged in new:
            fd = os.open(staged.path, _CREATE | os.O_EXCL, 0o600)
            open_files.append((staged, fd))
        end = at + len(data)
        view = memoryview(data)
        for entry in list(open_files):
            staged, fd = entry
            a, b = max(at, staged.start), min(end, staged.end)
            if a < b:
                _write_all(fd, view[a - at : b - at])
            if staged.end <= end:
                open_files.remove(entry)
                try:
                    _finish_file(fd, staged.mode, staged.mtime)
                finally:
                    os.close(fd)

    def close(self) -> BaseException | None:
        """Wait until every piece handed over is written; the first error, if any."""
        self._queue.put(None)
        self._thread.join()
        with self._lock:
            return self._error


class _Staging:
    """Layers with no index, streamed once each (a few at once) and indexed on the way,
    their files staged inside the destination (the same filesystem) for
    :func:`_place_staged`; what the merged view does not show is removed with it."""

    def __init__(self, img: Image, root_dest: str, keep_special_bits: bool) -> None:
        self._img = img
        self._keep_special_bits = keep_special_bits
        os.makedirs(root_dest, exist_ok=True)
        self.directory = tempfile.mkdtemp(prefix=".seekoci-staging-", dir=root_dest)
        self._staged: dict[int, str] = {}
        self._lock = threading.Lock()

    def run(self) -> None:
        """Index every layer that needs it, staging what those passes carry."""
        todo = [layer for layer in self._img.layers if not layer.complete()]
        with concurrent.futures.ThreadPoolExecutor(
            STAGING_PASSES, thread_name_prefix="seekoci-stage"
        ) as pool:
            for future in [pool.submit(self._index, n, layer) for n, layer in enumerate(todo)]:
                future.result()

    def _index(self, n: int, layer: Layer) -> None:
        if layer.pass_started():  # a lookup began it: its start has gone by, index only
            layer.index()
            return
        directory = os.path.join(self.directory, str(n))
        os.mkdir(directory)
        stager = _Stager(directory, self._keep_special_bits)
        try:
            layer.index(tee=stager)
        finally:
            error = stager.close()
        if error is not None:
            raise error
        with self._lock:
            self._staged.update(stager.staged)

    def take(self, entry: TarEntry) -> str | None:
        """The staged bytes of ``entry`` if a pass wrote them (a hard link's target may be
        asked for again: the first asker gets the file, the next ones copy it)."""
        with self._lock:
            return self._staged.get(id(entry))

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _place_staged(files: list[_File], copied: _Copied) -> None:
    """Move staged files into place (a rename: same filesystem); a second file of the same
    staged bytes (hard links to one entry) is copied from the first."""
    placed: dict[str, str] = {}
    for f in files:
        assert f.staged is not None
        first = placed.get(f.staged)
        if first is None:
            # replaces a link there, never follows it; a directory in the way: EISDIR
            os.replace(f.staged, f.dst)
            placed[f.staged] = f.dst
            source = f.dst
        else:
            source = first
        if first is not None:
            with open(source, "rb") as src:
                fd = _create(f.dst)
                try:
                    while chunk := src.read(1 << 20):
                        _write_all(fd, chunk)
                finally:
                    os.close(fd)
        elif f.finished:  # its mode and time were set when it was staged
            copied.add(f.entry.size)
            continue
        fd = os.open(f.dst, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            _finish_file(fd, f.mode, f.mtime)
        finally:
            os.close(fd)
        copied.add(f.entry.size)


def _holder(img: Image, node: Node) -> tuple[Layer, TarEntry] | None:
    """The layer and entry whose data a regular file of the merged view shows."""
    entry = node.entry
    if entry is None:
        return None
    if entry.type == "hardlink":
        target = node.target
        if target is None or target.entry is None or target.entry.type != "file":
            return None
        return img._layer_of(target), target.entry
    return img._layer_of(node), entry


def _cuts_before(f: _File, current: list[_File], end: int) -> bool:
    """Whether the next file of a layer in tar order starts a new segment after ``current``
    (whose data ends at ``end``): a gap too wide to read through, or a segment long enough
    (files at one offset, hard links to one entry, stay together)."""
    return bool(current) and (
        f.start - end > SEGMENT_GAP
        or (f.start - current[0].start >= SEGMENT_SPLIT and f.start != current[-1].start)
    )


#: a file's place in its layer's tar stream, then its destination
_TAR_ORDER = operator.attrgetter("start", "dst")


def _segments(files: list[_File]) -> list[list[_File]]:
    """Files grouped per layer into runs close together in the tar stream, largest first."""
    by_layer: dict[int, list[_File]] = {}
    for f in files:
        by_layer.setdefault(id(f.layer), []).append(f)
    segments: list[list[_File]] = []
    for group in by_layer.values():
        group.sort(key=_TAR_ORDER)
        current: list[_File] = []
        end = 0
        for f in group:
            if _cuts_before(f, current, end):
                segments.append(current)
                current = []
            current.append(f)
            end = max(end, f.end)
        if current:
            segments.append(current)
    segments.sort(key=lambda seg: -(seg[-1].end - seg[0].start))
    return segments


class _Run:
    """A layer's files in tar order the walk has found and no segment has taken yet."""

    __slots__ = ("early", "end", "files", "frontier", "late")

    def __init__(self) -> None:
        self.files: list[_File] = []
        self.end = 0  # where the data of ``files`` ends in the tar stream
        self.frontier = -1  # the last data offset handed to a segment (or to ``files``)
        self.late: list[_File] = []  # found behind the frontier: written at the end
        self.early = True  # segments start during the walk (the layer is in walk order)


class _SegmentFeed:
    """Segments written while the walk goes on. The walk finds files in path order, which
    is the tar order of a layer written in walk order (what image builders write): each
    layer's files are cut into segments as they come (the rule of :func:`_segments`), and
    the segments run on a pool while the walk makes the directories after them, so the
    walk (1.2-1.6 s of a 66k-file image) is no longer a step before the first byte.

    A file found behind what its layer already handed on (a hard link to an earlier entry,
    a layer in another order) waits for the end, where the late files are cut as usual; past
    :data:`LATE_FILES` of them the layer stops cutting early (a layer in no useful order is
    written as it was before: every segment once its files are all known). Every file is
    counted into the copy's total as it is found; files a staging pass wrote already are
    only kept (:attr:`staged`), for :func:`_place_staged`."""

    def __init__(self, copied: _Copied) -> None:
        self._copied = copied
        #: files a staging pass wrote already: moved into place after the walk
        self.staged: list[_File] = []
        self._runs: dict[int, _Run] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._futures: list[concurrent.futures.Future[None]] = []
        self._lock = threading.Lock()  # _failed: set by the pool's threads
        self._failed: concurrent.futures.Future[None] | None = None

    def add(self, f: _File) -> None:
        """A regular file the walk found: counted into the copy's total, and written by a
        segment (or, when a pass staged it, kept for :func:`_place_staged`)."""
        self._copied.expect(f.entry.size)
        if f.staged is not None:
            self.staged.append(f)
            return
        run = self._runs.get(id(f.layer))
        if run is None:
            run = self._runs[id(f.layer)] = _Run()
        if not run.early:
            run.files.append(f)
            return
        if f.start < run.frontier:
            run.late.append(f)
            if len(run.late) > LATE_FILES:
                run.early = False
            return
        if _cuts_before(f, run.files, run.end):
            self._submit(run.files)
            run.files, run.end = [], 0
        run.files.append(f)
        run.frontier = f.start
        run.end = max(run.end, f.end)

    def _submit(self, segment: list[_File]) -> None:
        self._raise_failed()
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                PARALLEL_SEGMENTS, thread_name_prefix="seekoci-extract"
            )
        future = self._pool.submit(_write_segment, segment, self._copied)
        future.add_done_callback(self._done)
        self._futures.append(future)

    def _done(self, future: concurrent.futures.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            with self._lock:
                if self._failed is None:
                    self._failed = future
        # the segment's buffers are freed: what the allocator keeps of them goes back (a
        # whole tree's buffers otherwise pile up in its arenas, see seekoci._allocator)
        release_free_memory()

    def _raise_failed(self) -> None:
        """A segment that failed stops the walk at its next segment."""
        with self._lock:
            failed = self._failed
        if failed is not None:
            failed.result()

    def finish(self) -> None:
        """Cut and write what is left; wait for every segment (the first error is raised)."""
        rest: list[_File] = []
        for run in self._runs.values():
            if run.early and run.files:
                self._submit(run.files)
            else:
                rest += run.files
            rest += run.late
        self._runs.clear()
        for segment in _segments(rest):
            self._submit(segment)
        for future in self._futures:
            future.result()

    def close(self) -> None:
        """Stop: segments not started are cancelled, running ones finish (never left
        writing behind the caller's back)."""
        for future in self._futures:
            future.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _write_segment(files: list[_File], copied: _Copied) -> None:
    """Stream the tar bytes under ``files`` (one layer, in tar order) and write each file
    as its bytes pass. Several files may share their bytes (hard links to one entry).
    Their parents were made and checked by the walk, and only files are made after it, so
    no parent can have changed."""
    layer = files[0].layer
    start = files[0].start
    end = max(f.end for f in files)
    open_files: list[tuple[_File, int]] = []  # (file, fd) whose bytes are being written
    waiting = list(reversed(files))  # next to open last
    pos = start

    def open_due(upto: int) -> None:
        while waiting and waiting[-1].start < upto:
            f = waiting.pop()
            open_files.append((f, _create(f.dst)))

    def close_done(upto: int) -> None:
        for item in [item for item in open_files if item[0].end <= upto]:
            open_files.remove(item)
            f, fd = item
            try:
                _finish_file(fd, f.mode, f.mtime)
            finally:
                os.close(fd)

    try:
        open_due(start + 1)
        close_done(start)  # empty files
        stream = layer.stream_entry_range(start, end - start, window=SEGMENT_WINDOW)
        with contextlib.closing(stream):
            for piece in stream:
                piece_end = pos + len(piece)
                open_due(piece_end)
                view = memoryview(piece)
                for f, fd in open_files:
                    a, b = max(pos, f.start), min(piece_end, f.end)
                    if a < b:
                        _write_all(fd, view[a - pos : b - pos])
                        copied.add(b - a)
                pos = piece_end
                close_done(pos)
        open_due(end + 1)  # empty files at the very end
        close_done(end)
    finally:
        for _f, fd in open_files:
            os.close(fd)
    if waiting or open_files:  # the stream ended early: the layer is shorter than its index
        raise FormatError(f"layer {layer.name}: tar stream ended at {pos}, before {end}")


__all__ = ["extract"]
