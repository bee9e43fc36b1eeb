"""The merged filesystem of an image, over its layers."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import logging
import os
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from . import _gc
from ._threads import room_beside_a_pass
from .fileobj import RangeFile
from .formats.tar import TarEntry, normalize_name
from .layer import Layer, Progress
from .tree import OPAQUE_MARKER, WHITEOUT_PREFIX, Node, Tree

log = logging.getLogger("seekoci")

if TYPE_CHECKING:
    from ._reopen import ImageOrigin
    from .fileinfo import FileInfo


def _shown(layer: Layer, entries: Sequence[TarEntry]) -> Sequence[TarEntry]:
    """A layer's entries as the image's filesystem has them (format files left out)."""
    hidden = layer.hidden_names
    if not hidden:
        return entries
    return [e for e in entries if e.name not in hidden]


def _abs(path: str) -> str:
    return "/" + normalize_name(path)


#: Layers whose index passes run at once: each pass keeps about one core busy inflating
#: (its tar parsing and hashing take part of another), so two fill a 2-core machine and a
#: third would only split the cores further.
PARALLEL_LAYERS = 2


def index_layers(layers: list[Layer], progress: Progress | None = None) -> None:
    """Make sure every layer has its index, up to :data:`PARALLEL_LAYERS` passes at once
    (the first failure is raised once all have stopped)."""
    todo = [layer for layer in layers if not layer.complete()]
    # a layer a lookup has scanned is complete (every entry known) while its index is
    # still being made behind the scan: wait for those too
    scanned = [layer for layer in layers if layer not in todo and layer.pass_started()]
    if len(todo) < 2:
        for layer in todo + scanned:
            layer.index(progress)
        return
    if progress is not None:  # one callable drawn from several threads
        progress = _serialized(progress)
    with concurrent.futures.ThreadPoolExecutor(
        min(PARALLEL_LAYERS, len(todo)), thread_name_prefix="seekoci-layer"
    ) as pool:
        futures = [pool.submit(layer.index, progress) for layer in todo]
    for future in futures:
        future.result()
    for layer in scanned:
        layer.index(progress)


def _serialized(progress: Progress) -> Progress:
    lock = threading.Lock()

    def call(name: str, done: int, total: int) -> None:
        with lock:
            progress(name, done, total)

    return call


_Lookups = Generator[tuple[Layer, TarEntry | None], None, None]


def _lookups(layers: list[Layer], name: str) -> _Lookups:
    """``(layer, layer.find(name))`` for ``layers`` in order, looking in up to
    :data:`PARALLEL_LAYERS` of them at once.

    A path found only in a lower layer needs every layer above indexed whole (to show it is
    not there) and that layer up to the path: while a layer's lookup runs an index pass, the
    next layer's lookup starts next to it. When the caller stops consuming (found, or
    hidden), lookups still running are called off; their passes stay resumable, so that
    work serves the next lookup. A layer indexed already answers on the calling thread, and
    a lookup that loads a published index starts nothing next to it (no extra requests).
    """
    stops: dict[int, threading.Event] = {}
    futures: dict[int, concurrent.futures.Future[TarEntry | None]] = {}
    pool: concurrent.futures.ThreadPoolExecutor | None = None

    def start(j: int) -> None:
        nonlocal pool
        if pool is None:
            pool = concurrent.futures.ThreadPoolExecutor(
                PARALLEL_LAYERS, thread_name_prefix="seekoci-lookup"
            )
        stops[j] = threading.Event()
        futures[j] = pool.submit(layers[j].find, name, stop=stops[j])

    try:
        for i, layer in enumerate(layers):
            if i not in futures:
                if i + 1 == len(layers) or layer.indexed_locally():
                    yield layer, layer.find(name)
                    continue
                start(i)
            future = futures[i]
            while not future.done():
                concurrent.futures.wait([future], timeout=_LOOK_AHEAD_AFTER_S)
                running = sum(1 for f in futures.values() if not f.done())
                ahead = len(futures)  # layers are started in order
                if (
                    layer.building
                    and running < PARALLEL_LAYERS
                    and ahead < len(layers)
                    and _room_beside(layer)
                ):
                    start(ahead)
            yield layer, future.result()
    finally:
        for stop in stops.values():
            stop.set()
        if pool is not None:
            pool.shutdown(wait=True)
    # lookups called off are not the caller's answer: their errors (if any) come back when
    # a later lookup needs that layer


#: How long a lookup runs alone before the next layer's starts next to it (if it builds).
_LOOK_AHEAD_AFTER_S = 0.05


def _room_beside(layer: Layer) -> bool:
    """Whether the next layer's lookup may start beside ``layer``'s pass: it is a guess
    (the path may be in ``layer``), so only with cores to spare, or while that pass waits on
    the network and leaves the CPU idle. On two cores a pass that inflates as fast as the
    blob arrives loses a tenth of its speed to the guess (a file near the end of a big
    lower layer: 6.8-7.2 s alone, 7.3-8.1 s beside the guess)."""
    if room_beside_a_pass():
        return True
    return layer.pass_meter.waits_on_network() is True


class Image:
    """A container image: manifest, config and the merged view of its layers.

    Paths are absolute POSIX paths inside the image. Layers are indexed only as far as a
    request needs: a regular file found in the topmost layer that has it is read after
    indexing the layers above it and that layer up to the file; listings, walks and
    anything involving a symlink use the fully merged tree.
    """

    def __init__(
        self,
        *,
        reference: str,
        digest: str,
        platform: str,
        config: dict[str, Any],
        manifest: dict[str, Any],
        layers: list[Layer],
    ) -> None:
        self.reference = reference
        self.digest = digest
        self.platform = platform
        self.config = config
        self.manifest = manifest
        self.layers = layers
        self._tree: Tree | None = None
        self._lock = threading.RLock()
        self._by_digest = {layer.digest or layer.name: layer for layer in layers}
        #: the resolved registry/layout image behind this view (set by open_image)
        self.resolved: Any = None
        #: how another process opens this image again when it is unpickled (open_image)
        self.origin: ImageOrigin | None = None

    def __repr__(self) -> str:
        return f"<seekoci.Image {self.reference} {self.platform} {len(self.layers)} layers>"

    def _repr_html_(self) -> str:
        from .html import layers_table

        return layers_table(self.layers, title=f"{self.reference} ({self.platform})")

    # -- the merged tree --------------------------------------------------------------------
    def tree(self) -> Tree:
        """The merged tree (indexes every layer)."""
        with self._lock:
            if self._tree is None:
                index_layers(self.layers)
                # each layer's entries at hand (pages of an index read by range: loaded)
                entries = [layer.entries() for layer in self.layers]
                # then every entry made (an embedded TOC's, as they are iterated) and every
                # node: CPU only, ~300k objects with no cycles, nothing to collect
                with _gc.paused():
                    self._tree = Tree.merged(
                        (layer.digest or layer.name, _shown(layer, found))
                        for layer, found in zip(self.layers, entries, strict=True)
                    )
            return self._tree

    def _fast_entry(self, path: str) -> tuple[Layer, TarEntry] | None:
        """Find a regular file without merging every layer, when that is unambiguous.

        Walk layers from the top; a layer that does not have the path must not hide or
        redirect it either (no whiteout of it or an ancestor, no opaque ancestor, no
        non-directory ancestor), else we leave it to the merged tree. A whiteout's own name
        (``.wh.*``, the opaque marker too) is the merged tree's to refuse: it shows none.
        """
        name = normalize_name(path)
        parts = name.split("/") if name else []
        if not parts or any(p == ".." or p.startswith(WHITEOUT_PREFIX) for p in parts):
            return None
        if path.endswith(("/", "/.")):  # names a directory: the tree says a file is not one
            return None
        ancestors = ["/".join(parts[:i]) for i in range(1, len(parts))]
        lookups = _lookups(list(reversed(self.layers)), name)
        with contextlib.closing(lookups):
            return self._first_visible(lookups, name, parts, ancestors)

    def _first_visible(
        self,
        lookups: Iterator[tuple[Layer, TarEntry | None]],
        name: str,
        parts: list[str],
        ancestors: list[str],
    ) -> tuple[Layer, TarEntry] | None:
        for layer, entry in lookups:
            if name in layer.hidden_names:  # the merged tree leaves it out
                return None
            if entry is not None:
                if entry.type != "file":  # hard links may point into lower layers
                    return None
                for a in ancestors:
                    e = layer.find(a) if layer.complete() else None
                    if e is not None and e.type != "dir":
                        return None
                return layer, entry
            # the layer is complete now: does it hide or redirect the path?
            for i, a in enumerate([*ancestors, name]):
                parent = "/".join(parts[:i])
                prefix = parent + "/" if parent else ""
                if layer.find(prefix + WHITEOUT_PREFIX + parts[i]) is not None:
                    return None
                if a != name:
                    e = layer.find(a)
                    if e is not None and e.type != "dir":
                        return None
                    if layer.find(a + "/" + OPAQUE_MARKER) is not None:
                        return None
            if layer.find(OPAQUE_MARKER) is not None:
                return None
        return None

    def _node(self, path: str, *, follow_symlinks: bool = True) -> Node:
        return self.tree().resolve(path, follow_symlinks=follow_symlinks)

    def _layer_of(self, node: Node) -> Layer:
        return self._by_digest[node.layer]

    def _info(self, node: Node, path: str) -> FileInfo:
        from .fileinfo import FileInfo, entry_info

        if node.entry is None:  # a directory only implied by deeper names
            return FileInfo(
                path=path, type="dir", size=0, mode=0o755, mtime=0.0, uid=0, gid=0, layer=node.layer
            )
        entry = node.entry
        if entry.type == "hardlink":  # in the merged view a hard link is its target file
            target = node.target
            size = target.entry.size if target is not None and target.entry is not None else 0
            info = entry_info(entry, path, node.layer, type_="file", size=size)
            return dataclasses.replace(info, linkname=_abs(entry.linkname))
        return entry_info(entry, path, node.layer)

    # -- public API -------------------------------------------------------------------------
    def open(self, path: str) -> RangeFile:
        """A binary file object for a regular file (symlinks followed)."""
        fast = None if self._tree is not None else self._fast_entry(path)
        if fast is not None:
            layer, entry = fast
            return layer.open_entry(entry, _abs(path))
        node = self._node(path)
        if node.is_dir:
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        assert node.entry is not None
        entry = node.entry
        if entry.type == "hardlink":
            if node.target is None or node.target.entry is None:
                raise FileNotFoundError(errno.ENOENT, "Hard link to a missing file", path)
            return self._layer_of(node.target).open_entry(node.target.entry, _abs(path))
        if entry.type != "file":
            raise OSError(errno.EINVAL, f"Not a regular file ({entry.type})", path)
        return self._layer_of(node).open_entry(entry, _abs(path))

    def read_bytes(self, path: str) -> bytes:
        """The whole content of a regular file (symlinks followed)."""
        with self.open(path) as f:
            return f.read()

    def listdir(self, path: str = "/") -> list[str]:
        """Sorted entry names of a directory of the merged view (indexes every layer)."""
        return self.tree().listdir(path)

    def stat(self, path: str, follow_symlinks: bool = True) -> FileInfo:
        """What the merged view holds at ``path``: a :class:`FileInfo` (a hard link is its
        target file, with ``linkname`` naming the path it links to)."""
        from .fileinfo import entry_info

        if follow_symlinks and self._tree is None:
            fast = self._fast_entry(path)
            if fast is not None and fast[1].type == "file":
                layer, entry = fast
                return entry_info(entry, _abs(path), layer.digest or layer.name)
        node = self._node(path, follow_symlinks=follow_symlinks)
        return self._info(node, _abs(path))

    def exists(self, path: str) -> bool:
        """True if ``path`` resolves (symlinks followed) in the merged view."""
        try:
            self._node(path)
        except OSError:
            return False
        return True

    def walk(self, top: str = "/") -> Iterator[tuple[str, list[str], list[str]]]:
        """Like :func:`os.walk`, top-down with sorted names: ``(dirpath, dirnames,
        filenames)``; symlinks to directories are listed in ``dirnames``, not descended."""
        return self.tree().walk(top)

    def build_index(self, progress: Progress | bool | None = None) -> None:
        """Make sure every layer has a complete index (load it, or build it).

        ``progress``: a callable ``(layer_digest, bytes_done, bytes_total)``, or True for a
        progress bar on stderr."""
        if progress is True:
            import sys

            from .progress import ProgressBar

            progress = ProgressBar(sys.stderr, force=True)
        index_layers(self.layers, progress or None)

    def extract(
        self,
        path: str,
        dest: str | os.PathLike[str] | None = None,
        *,
        keep_special_bits: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[str]:
        """Copy a file or directory tree of the merged view to ``dest`` with the rules of
        ``seekoci get`` (a file to ``dest`` or its base name; a directory's contents into
        ``dest``, default its base name or ``rootfs``; modes, mtimes and symlinks kept;
        nothing written outside ``dest``; devices skipped; setuid/setgid dropped unless
        ``keep_special_bits``). Returns the warnings, one per thing skipped (each also
        logged). ``progress(bytes_done, bytes_total)`` is called as data is written."""
        from .extract import extract

        skipped: list[str] = []

        def warn(message: str) -> None:
            skipped.append(message)
            log.warning("seekoci: %s", message)

        target = None if dest is None else os.fspath(dest)
        extract(
            self, path, target, keep_special_bits=keep_special_bits, warn=warn, progress=progress
        )
        return skipped

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles as how to open it again, pinned to its manifest digest (docs/pickling.md)."""
        from ._reopen import reduce_image

        return reduce_image(self)

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the spans, indexes and blobs this image queued for the cache directory
        are on disk (they are written by a background thread), and the indexes being made
        behind a lookup's scan of a big layer (see :mod:`seekoci.build`); ``False`` if
        ``timeout`` seconds passed first. Leaving a ``with open_image(...)`` block flushes."""
        return all([layer.flush(timeout) for layer in self.layers])
