"""A layer: a range source + an index + caches -> entries and bytes.

``Layer`` keeps the layer's identity, the lifecycle of its index and lookups by name. The
index comes, in this order, from memory, the cache directory, a published index or a build
(:class:`seekoci.build.IndexBuild`, one forward pass that can stop early and resume).

Bytes come from :class:`seekoci.spans.SpanReader` (fetched, verified, kept, decoded span by
span) through the read pipeline (:mod:`seekoci.pipeline`), which fetches runs of spans with
large range requests and decodes them in parallel, in order.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from . import formats
from . import spans as _spans
from .build import CHUNK_SIZE, IndexBuild
from .cache import Cache
from .errors import FormatError
from .fileinfo import FileInfo, entry_info
from .fileobj import RangeFile
from .formats.base import ChunkTable, Span
from .formats.entries import EntryTable
from .formats.index import (
    LayerIndex,
    parse_cached,
    record_of,
    write_index,
)
from .formats.pages import PagedEntries, PagedSpans
from .formats.tar import TarEntry, normalize_name
from .source import RangeSource
from .spans import SpanReader
from .tree import Tree

if TYPE_CHECKING:
    from .remote import RemoteIndexes

__all__ = ["CHUNK_SIZE", "DEFAULT_SPAN_SIZE", "Layer", "Progress"]

log = logging.getLogger("seekoci")

#: Uncompressed bytes between checkpoints. 1 MiB keeps a small-file read near 0.5 MB of
#: compressed transfer while the index stays ~1-2% of the layer (windows are compressed).
DEFAULT_SPAN_SIZE = 1 << 20

#: progress(layer_digest_or_name, bytes_done, bytes_total)
Progress = Callable[[str, int, int], None]

TOOL = "seekoci 0.1.0"


class Layer:
    """One layer blob, readable by path or by offset in its uncompressed tar stream."""

    def __init__(
        self,
        source: RangeSource,
        *,
        cache: Cache,
        digest: str | None = None,
        media_type: str | None = None,
        size: int | None = None,
        annotations: dict[str, str] | None = None,
        span_size: int = DEFAULT_SPAN_SIZE,
    ) -> None:
        self.source = source
        self.digest = digest
        self.size_known = size is not None
        self.size = source.size if size is None else size
        self.annotations = dict(annotations or {})
        self.span_size = span_size
        self._cache = cache
        self._declared_media_type = media_type
        self._compression = formats.compression_of(media_type) if media_type else None
        self._index: LayerIndex | None = None
        self._index_source = "none"  # none | cache | built | partial
        self._format: str | None = None
        self._build: IndexBuild | None = None
        self._lock = threading.RLock()
        self.spans = SpanReader(
            source, cache, _Tables(self), name=self.name, compression=lambda: self.compression
        )
        self._by_name: dict[str, int] = {}  # name -> position in the entries
        self._named_upto = 0
        self._tree: Tree | None = None
        #: called as progress(name, bytes_done, bytes_total) while this layer's index builds
        self.progress: Progress | None = None
        #: indexes published in the registry (set by open_image for registry images)
        self.remote: RemoteIndexes | None = None
        self._remote_tried = False
        self._cache_refused = False  # the cached index was malformed: build instead
        self._building = threading.Event()  # a pass is open (readable without the lock)

    # -- identity ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.digest or self.source.name

    @property
    def compression(self) -> str:
        if self._compression is None:
            head = self.source.read_range(0, min(self.size, 512))
            try:
                self._compression = formats.detect_compression(head)
            except FormatError as exc:
                raise FormatError(f"layer {self.name}: {exc}") from None
        return self._compression

    @property
    def media_type(self) -> str:
        if self._declared_media_type:
            return self._declared_media_type
        return {
            "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
            "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
            "none": "application/vnd.oci.image.layer.v1.tar",
        }[self.compression]

    @property
    def format(self) -> str:
        """``tar``, ``estargz`` or ``zstd:chunked``: from the manifest's annotations, else
        from the blob's footer (one small range read, once)."""
        keys = self.annotations
        if "containerd.io/snapshot/stargz/toc.digest" in keys:
            return "estargz"
        if any(k.endswith("zstd-chunked.manifest-checksum") for k in keys):
            return "zstd:chunked"
        if self._format is None:
            self._format = self._format_from_footer()
        return self._format

    def _format_from_footer(self) -> str:
        # eStargz ends with a 51-byte empty gzip member whose extra field is "SG", 22 bytes:
        # 16 hex digits of the TOC offset + "STARGZ" (47 bytes and no subfield header in
        # legacy stargz); zstd:chunked with a skippable frame whose footer ends in
        # "GNUlInUx" (current) or "GnUlInUx" (older producers).
        if self.compression not in ("gzip", "zstd") or self.size < 51:
            return "tar"
        tail = self.source.read_range(self.size - 64 if self.size >= 64 else 0, 64)
        if self.compression == "gzip" and tail[-51:][:2] == b"\x1f\x8b" and b"STARGZ" in tail:
            return "estargz"
        if self.compression == "zstd" and tail[-8:] in (b"GNUlInUx", b"GnUlInUx"):
            return "zstd:chunked"
        return "tar"

    @property
    def index_status(self) -> str:
        """``none``, ``partial`` (a pass stopped early), ``cached`` (loaded from the cache
        directory), ``native`` or ``soci`` (published in the registry, read from there) or
        ``built`` (by this process)."""
        if self._index is None and self._build is None and self.digest is not None:
            self._try_cache_dir()  # local only: a status never downloads an index
        if self._index is None and self._build is not None:
            return "partial"
        if self._index is None:
            published = self.published_indexes()
            if published:
                return "native" if "native" in published else "soci"
        return self._index_source

    def published_indexes(self) -> list[str]:
        """Kinds of index published for this layer in the registry (``native``, ``soci``)."""
        if self.remote is None or self.digest is None:
            return []
        return self.remote.describe(self.digest)

    @property
    def uncompressed_size(self) -> int:
        return self.index().uncompressed_size

    # -- the index --------------------------------------------------------------------------
    def _try_cache(self) -> bool:
        """Load an index without building one: the cache directory, then a published one."""
        if self._index is not None:
            return True
        if self.digest is None:
            return False
        if self._try_cache_dir():
            return True
        if self.remote is not None and self._build is None and not self._remote_tried:
            self._remote_tried = True
            loaded = self.remote.load(self.digest, media_type=self.media_type, blob_size=self.size)
            if loaded is not None:
                self._set_index(*loaded)
                return True
        return False

    def _try_cache_dir(self) -> bool:
        assert self.digest is not None
        if self._cache_refused:
            return False
        found = self._cache.index_reader(self.digest)
        if found is None:
            return False
        size, read = found
        where = f"cached index of layer {self.digest}"
        try:
            # pages checked now, parsed when a lookup needs them: a damaged file is
            # rebuilt here, a malformed page later (see _loaded_index_failed)
            index = parse_cached(read, size, expected_digest=self.digest, where=where)
        except (FormatError, OSError):
            return False  # damaged or from another version: rebuild and overwrite
        if index.blob_size != self.size:
            return False
        self._set_index(index, "cached")
        return True

    def _set_index(self, index: LayerIndex, source: str) -> None:
        self._index = index
        self._index_source = source
        self._compression = self._compression or index.compression
        self._tree = None
        if self._build is not None:
            self._build.close()
            self._build = None
            self._building.clear()

    def index(self, progress: Progress | None = None) -> LayerIndex:
        """The complete index: loaded from the cache or built (and then saved)."""
        with self._lock:
            if self._index is not None or self._try_cache():
                assert self._index is not None
                return self._index
            progress = progress or self.progress
            build = self._builder()
            build.keep_spans = False
            try:
                while not build.done:
                    build.step()
                    if progress is not None:
                        progress(self.name, build.fed, self.size)
            except BaseException:
                self._abandon_build()
                raise
            return self._complete(build)

    def _builder(self) -> IndexBuild:
        if self._build is None:
            self._build = IndexBuild(self, self.compression)
            self._building.set()
        return self._build

    def _abandon_build(self) -> None:
        if self._build is not None:
            self._build.close()
            self._build = None
            self._building.clear()
        self._by_name.clear()
        self._named_upto = 0

    def _complete(self, build: IndexBuild) -> LayerIndex:
        indexer = build.indexer
        index = LayerIndex(
            layer_digest=self.digest or "",
            media_type=self.media_type,
            compression=build.compression,
            blob_size=build.fed,
            uncompressed_size=indexer.uncompressed_size,
            span_size=self.span_size,
            spans=list(build.spans),
            entries=build.scanner.entries,
            tool=TOOL,
            chunk_size=getattr(indexer, "chunk_size", 0),
        )

        def record(i: int) -> bytes:
            return record_of(indexer.chunk_table(i), indexer.packed_window(i))

        # windows stay where the indexer put them (a temporary file): location (i, length)
        index.window_locations = [
            (i, 36 * span.chunk_count + indexer.packed_length(i))
            for i, span in enumerate(index.spans)
        ]
        index.read_windows = lambda i, n: record(i)
        self._set_index(index, "built")
        if self.digest is not None and self._cache.persistent:  # verified in _finish
            try:
                self._cache.write_index(self.digest, lambda out: write_index(out, index, record))
            except OSError:
                pass  # an unwritable cache costs a rebuild next time, not this read
        return index

    def _advance(self, until: Callable[[], bool]) -> None:
        """Run the build until ``until()`` holds or the blob ends."""
        build = self._builder()
        try:
            # once the whole blob is in, finish: no more bytes, and the digest is checked
            while not build.done and (build.read_all or not until()):
                build.step()
        except BaseException:
            self._abandon_build()
            raise
        build.pause()  # the spans just decoded, for the reads that follow
        if build.done:
            self._complete(build)

    # -- lookups ----------------------------------------------------------------------------
    def _entries(self) -> Sequence[TarEntry]:
        if self._index is not None:
            return self._index.entries
        if self._build is not None:
            return self._build.scanner.entries
        return []

    def _index_names(self) -> None:
        entries = self._entries()
        if self._named_upto > len(entries):
            self._by_name.clear()
            self._named_upto = 0
        start = self._named_upto
        if isinstance(entries, EntryTable | PagedEntries):  # from the names: no entry objects
            self._by_name.update(entries.name_map(start))
        else:
            for i in range(start, len(entries)):
                if not entries[i].unsafe:
                    self._by_name[entries[i].name] = i
        self._named_upto = len(entries)

    def _named(self, name: str) -> TarEntry | None:
        i = self._by_name.get(name)
        return None if i is None else self._entries()[i]

    def find(self, name: str, *, stop: threading.Event | None = None) -> TarEntry | None:
        """The entry stored under ``name`` (normalised), indexing only as far as needed.

        Without a complete index the pass runs until the entry and its data have gone by,
        so a file near the start of a layer costs only the bytes up to it. ``stop``: a
        lookup another thread may call off (then None means "not seen yet", not "absent";
        the pass stays resumable).
        """
        name = normalize_name(name)
        with self._lock:
            if self._index is not None or self._try_cache():
                entries = self._entries()
                if isinstance(entries, PagedEntries):  # only the pages that may hold it
                    try:
                        return entries.lookup(name)
                    except FormatError as exc:
                        if not self._loaded_index_failed(exc):
                            raise
            if self._index is None and not self._try_cache():

                def seen() -> bool:
                    if stop is not None and stop.is_set():
                        return True
                    self._index_names()
                    entry = self._named(name)
                    if entry is None or self._build is None:
                        return False
                    end = entry.data_offset + entry.size
                    spans = self._build.spans
                    return bool(spans) and spans[-1].uncompressed_end >= end

                self._advance(seen)
            self._index_names()
            return self._named(name)

    @property
    def building(self) -> bool:
        """True while an index pass over the blob is open (any thread may ask, at any time)."""
        return self._building.is_set()

    def indexed_locally(self) -> bool:
        """True when the complete index is at hand without the network (built here, or in
        the cache directory)."""
        with self._lock:
            if self._index is not None:
                return True
            return self.digest is not None and self._build is None and self._try_cache_dir()

    def complete(self) -> bool:
        """True when the whole layer is indexed."""
        with self._lock:
            return self._index is not None or self._try_cache()

    def entries(self) -> Sequence[TarEntry]:
        """Every entry of the layer (builds the whole index)."""
        entries = self.index().entries
        if isinstance(entries, PagedEntries):
            try:
                entries.load_all()
            except FormatError as exc:
                with self._lock:
                    if not self._loaded_index_failed(exc):
                        raise
                return self.index().entries
        return entries

    def _loaded_index_failed(self, problem: FormatError) -> bool:
        """A page of an index loaded lazily (from the cache directory or the registry)
        turned out malformed: forget that index and build instead (a build replaces a cached
        file). False when there is nothing to fall back from (a build of this process)."""
        source = self._index_source
        if source not in ("cached", "native", "soci"):
            return False
        if source == "cached":
            self._cache_refused = True
        else:  # a published index the registry holds: say so, once
            log.warning("seekoci: published index of layer %s unusable: %s", self.name, problem)
            self._remote_tried = True
        self._index = None
        self._index_source = "none"
        self._tree = None
        self._by_name.clear()
        self._named_upto = 0
        return True

    def tree(self) -> Tree:
        with self._lock:
            if self._tree is None:
                self._tree = Tree.from_entries(self.entries(), layer=self.digest or self.name)
            return self._tree

    # -- bytes ------------------------------------------------------------------------------
    def _spans(self) -> Sequence[Span]:
        if self._index is not None:
            return self._index.spans
        if self._build is not None:
            return self._build.spans
        return []

    def read_range(self, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of the uncompressed tar stream."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be non-negative")
        end = offset + length
        with self._lock:
            if self._index is None and not self._try_cache():
                self._advance(
                    lambda: bool(self._spans()) and self._spans()[-1].uncompressed_end >= end
                )
            spans = self._spans()
            if isinstance(spans, PagedSpans):  # its last page may not be loaded
                total = self._index.uncompressed_size if self._index is not None else 0
            else:
                total = spans[-1].uncompressed_end if spans else 0
            end = min(end, total)
            if offset >= end:
                return b""
            starts = [s.uncompressed_start for s in spans] if self._index is None else None
        if starts is None and isinstance(spans, PagedSpans):
            first = spans.locate(offset)
        else:
            if starts is None:
                starts = self._span_starts()
            first = bisect.bisect_right(starts, offset) - 1
        parts: list[bytes] = []
        i = first
        while i < len(spans) and spans[i].uncompressed_start < end:
            span = spans[i]
            a = max(offset, span.uncompressed_start) - span.uncompressed_start
            b = min(end, span.uncompressed_end) - span.uncompressed_start
            if span.uncompressed_size > _spans.LARGE_SPAN:
                parts.append(self.spans.stream(span, a, b))
            else:
                parts.append(self.spans.data(span, b)[a:b])
            i += 1
        return b"".join(parts)

    def _span_starts(self) -> list[int]:
        index = self._index
        assert index is not None
        starts = getattr(index, "_starts", None)
        if starts is None:
            starts = [s.uncompressed_start for s in index.spans]
            index._starts = starts  # type: ignore[attr-defined]
        return starts

    # -- files ------------------------------------------------------------------------------
    def open_entry(self, entry: TarEntry, name: str | None = None) -> RangeFile:
        if entry.type == "hardlink":
            target = self._link_target(entry)
            if target is None or target.type != "file":
                raise FileNotFoundError(
                    f"hard link {entry.name!r} in layer {self.name} points at missing "
                    f"{entry.linkname!r}"
                )
            entry = target
        return RangeFile(self.read_range, entry.data_offset, entry.size, name or "/" + entry.name)

    def _link_target(self, link: TarEntry) -> TarEntry | None:
        """The entry a hard link names, as it stood when the link was extracted: the last
        entry of that name *before* the link (a later one replaces the name, not the link)."""
        name = normalize_name(link.linkname)
        self.find(name)  # index at least that far
        with self._lock:
            entries = self._entries()
            names = entries.names if isinstance(entries, EntryTable | PagedEntries) else None
            for i in range(self._position(entries, link) - 1, -1, -1):
                if (names[i] if names is not None else entries[i].name) == name:
                    candidate = entries[i]
                    if not candidate.unsafe:
                        return candidate
        return None

    @staticmethod
    def _position(entries: Sequence[TarEntry], entry: TarEntry) -> int:
        i = bisect.bisect_left(entries, entry.header_offset, key=lambda e: e.header_offset)
        while i < len(entries) and entries[i] is not entry:
            i += 1
        return i

    def open(self, path: str) -> RangeFile:
        entry = self._lookup(path)
        if entry.type == "dir":
            raise IsADirectoryError(f"{path}: is a directory (layer {self.name})")
        if entry.type not in ("file", "hardlink"):
            raise FileNotFoundError(f"{path}: not a regular file (layer {self.name})")
        return self.open_entry(entry, path)

    def _lookup(self, path: str) -> TarEntry:
        entry = self.find(path)
        if entry is None:
            node = self.tree().lookup(path)
            if node is None:
                raise FileNotFoundError(f"{path}: no such file in layer {self.name}")
            if node.entry is None:  # a directory implied by deeper names
                return TarEntry(normalize_name(path), "dir", 0, 0o755, 0, 0, 0.0)
            return node.entry
        return entry

    def stat(self, path: str) -> FileInfo:
        return entry_info(self._lookup(path), "/" + normalize_name(path), self.digest or self.name)

    def listdir(self, path: str = "/") -> list[str]:
        return self.tree().listdir(path)

    def walk(self, top: str = "/") -> Iterator[tuple[str, list[str], list[str]]]:
        return self.tree().walk(top)

    def build_index(self, progress: Progress | None = None) -> None:
        self.index(progress)

    def __repr__(self) -> str:
        return (
            f"<seekoci.Layer {self.name} {self.media_type} size={self.size} "
            f"index={self._index_source}>"
        )

    def _repr_html_(self) -> str:
        from .html import layers_table

        return layers_table([self])


class _Tables:
    """A layer's windows and chunk tables, for its span reader: from the complete index,
    else from the build pass under way."""

    def __init__(self, layer: Layer) -> None:
        self._layer = layer

    def loaded_index(self) -> LayerIndex | None:
        return self._layer._index

    def window(self, span: Span) -> bytes | None:
        index, build = self._layer._index, self._layer._build
        if index is not None:
            return index.window(span.index)
        if build is None:  # another thread's pass failed and was dropped meanwhile
            raise FormatError(f"layer {self._layer.name}: its index pass was abandoned; retry")
        return build.window(span.index)

    def chunk_table(self, span: Span) -> ChunkTable | None:
        if not span.chunk_size:
            return None
        index, build = self._layer._index, self._layer._build
        if index is not None:
            return index.chunk_table(span.index)
        if build is None:
            raise FormatError(f"layer {self._layer.name}: its index pass was abandoned; retry")
        return build.chunk_table(span.index)
