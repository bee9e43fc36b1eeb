"""A layer: a range source + an index + caches -> entries and bytes.

The index comes, in this order, from memory, the cache directory, or a build. A build is one
forward pass over the blob (:class:`_IndexBuild`) that can stop early: looking up a path
advances it only until the path's entry and data have been seen, and the rest of the pass
resumes from there when more is needed. Only a build that went to the end *and* whose bytes
matched the layer digest becomes a saved index.

Reads are served span by span: a span's compressed bytes come from the cache directory or
one range request, are checked against the span's sha256 (one refetch on mismatch, then
:class:`IntegrityError`), decoded, and kept in a small in-memory LRU of decoded spans.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import contextlib
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING

from . import formats
from ._threads import shared_pool
from .cache import Cache
from .errors import FormatError, IntegrityError
from .fileinfo import FileInfo, entry_info
from .fileobj import RangeFile
from .formats.base import ChunkTable, Span, SpanVerifier, span_matches
from .formats.entries import EntryTable
from .formats.index import (
    LayerIndex,
    parse_cached,
    record_of,
    write_index,
)
from .formats.pages import PagedEntries, PagedSpans
from .formats.tar import TarEntry, TarScanner, normalize_name
from .source import RangeSource
from .tree import Tree

if TYPE_CHECKING:
    from .formats.base import SpanIndexer
    from .remote import RemoteIndexes

log = logging.getLogger("seekoci")

#: Uncompressed bytes between checkpoints. 1 MiB keeps a small-file read near 0.5 MB of
#: compressed transfer while the index stays ~1-2% of the layer (windows are compressed).
DEFAULT_SPAN_SIZE = 1 << 20
#: Decoded spans kept in memory per layer.
SPAN_LRU_BYTES = 64 << 20
#: Spans larger than this (uncompressed) are streamed, never held whole.
LARGE_SPAN = 64 << 20
#: gzip and tar spans are verified in chunks of this many compressed bytes, so a small read
#: fetches the start of its span up to the chunk that covers it, not the whole span
#: (~500 KB saved on an average small-file read at 1 MiB spans; 36 bytes a chunk in the
#: index).
CHUNK_SIZE = 64 << 10
#: Chunks fetched beyond the estimate when a span's start is guessed (see
#: Layer._chunk_table_and_guess): more costs bytes, fewer costs round trips. Measured over
#: 150 small files of the 1 GiB benchmark layer: 1.09 requests a read with 0, 1 or 2 spare
#: chunks alike, and 227 / 272 / 303 KB a read.
_GUESS_SPARE = 0
#: Verified starts of spans (compressed) kept for reads that need more of the same span.
_PREFIXES_KEPT = 16

#: progress(layer_digest_or_name, bytes_done, bytes_total)
Progress = Callable[[str, int, int], None]

TOOL = "seekoci 0.1.0"


def _background() -> concurrent.futures.ThreadPoolExecutor:
    """A small shared pool for fetches that overlap (a window next to its span, index pages
    together)."""
    return shared_pool("seekoci", 4)


class _SpanLRU:
    def __init__(self, max_bytes: int) -> None:
        self._data: OrderedDict[tuple[int, str], bytes] = OrderedDict()
        self._bytes = 0
        self._max = max_bytes
        self._lock = threading.Lock()

    def get(self, key: tuple[int, str]) -> bytes | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: tuple[int, str], value: bytes) -> None:
        """Keep ``value``; a longer value replaces the start of a span kept before."""
        with self._lock:
            if len(value) > self._max:
                return
            old = self._data.get(key)
            if old is not None:
                if len(old) >= len(value):
                    return
                self._bytes -= len(old)
            self._data[key] = value
            self._data.move_to_end(key)
            self._bytes += len(value)
            while self._bytes > self._max:
                _, old = self._data.popitem(last=False)
                self._bytes -= len(old)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0


class _IndexBuild:
    """The (resumable) single pass over a layer blob."""

    def __init__(self, layer: Layer, compression: str) -> None:
        self.layer = layer
        codec = formats.codec_for(compression, where=f"layer {layer.name}")
        # CRCs are checked even when the digest matches: a member whose trailer contradicts
        # its data is a corrupt layer that gzip -t and containerd refuse too.
        self.indexer: SpanIndexer = codec.new_indexer(
            layer.span_size, name=f"layer {layer.name}", elide_windows=True, chunk_size=CHUNK_SIZE
        )
        self.scanner = TarScanner(name=f"layer {layer.name}")
        self.compression = compression
        alg = (layer.digest or "sha256:").partition(":")[0]
        if alg not in ("sha256", "sha384", "sha512"):
            raise FormatError(f"layer {layer.name}: digest algorithm {alg!r} is not supported")
        self.blob_hash = hashlib.new(alg)
        self.stream: Iterator[bytes] | None = None
        self.fed = 0
        self.done = False
        self.keep_spans = True
        self._pending = bytearray()  # uncompressed bytes of the open span
        self._pending_start = 0
        self._spans_kept = 0

    def step(self) -> None:
        """Advance by one chunk of the blob (opens the stream on first use)."""
        if self.stream is None:
            self.stream = self.layer.source.iter_from(0)
        chunk = next(self.stream, None)
        if chunk is None:
            self._finish()
            return
        self.blob_hash.update(chunk)
        self.fed += len(chunk)
        for out in self.indexer.feed(chunk):
            self.scanner.feed(out)
            if self.keep_spans:
                self._pending += out
                if len(self._pending) > SPAN_LRU_BYTES:  # a span too big to keep (zstd)
                    self.keep_spans = False
        if self.keep_spans:
            self._keep_spans()
        elif self._pending:
            self._pending.clear()
            self._pending_start = self.indexer.uncompressed_size
        if self.fed > self.layer.size:
            raise IntegrityError(f"layer {self.layer.name}: blob is longer than {self.layer.size}")

    def _keep_spans(self) -> None:
        """Hand decoded spans of the pass to the layer's LRU (the reads right after need them)."""
        spans = self.indexer.spans
        while self._spans_kept < len(spans):
            span = spans[self._spans_kept]
            if span.uncompressed_start >= self._pending_start:
                a = span.uncompressed_start - self._pending_start
                b = span.uncompressed_end - self._pending_start
                self.layer._lru.put(
                    (span.uncompressed_start, span.digest), bytes(self._pending[a:b])
                )
                del self._pending[:b]
                self._pending_start = span.uncompressed_end
            self._spans_kept += 1

    def _finish(self) -> None:
        self.indexer.finish()
        self.scanner.finish()
        if self.keep_spans:
            self._keep_spans()
        self._pending.clear()
        self.done = True
        self.stream = None
        layer = self.layer
        if self.fed != layer.size and layer.size_known:
            raise IntegrityError(
                f"layer {layer.name}: blob has {self.fed} bytes, the manifest says {layer.size}"
            )
        if layer.digest is not None:
            actual = f"{self.blob_hash.name}:{self.blob_hash.hexdigest()}"
            if actual != layer.digest:
                layer._lru.clear()
                raise IntegrityError(f"layer {layer.name}: blob digest is {actual}")

    def close(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None and hasattr(stream, "close"):
            stream.close()


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
        self._build: _IndexBuild | None = None
        self._lock = threading.RLock()
        self._lru = _SpanLRU(SPAN_LRU_BYTES)
        self._prefixes: OrderedDict[tuple[int, str], bytes] = OrderedDict()
        self._by_name: dict[str, int] = {}  # name -> position in the entries
        self._named_upto = 0
        self._tree: Tree | None = None
        #: called as progress(name, bytes_done, bytes_total) while this layer's index builds
        self.progress: Progress | None = None
        #: indexes published in the registry (set by open_image for registry images)
        self.remote: RemoteIndexes | None = None
        self._remote_tried = False
        self._cache_refused = False  # the cached index was malformed: build instead

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
        at = self.size - 64 if self.size >= 64 else 0
        key = self.digest or ""  # a blob by digest never changes: its footer is kept
        tail = self._cache.load_range(key, at, 64) if key else None
        if tail is None:
            tail = self.source.read_range(at, 64)
            if key:
                self._cache.save_range(key, at, tail)
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

    def index(self, progress: Progress | None = None) -> LayerIndex:
        """The complete index: loaded from the cache or built (and then saved)."""
        with self._lock:
            if self._index is not None or self._try_cache():
                assert self._index is not None
                return self._index
            progress = progress or self.progress
            # one full build per layer among the processes sharing the cache directory:
            # the others wait, then find the index there
            lock = self._cache.build_lock(self.digest) if self.digest else contextlib.nullcontext()
            with lock:
                if self.digest is not None and self._try_cache_dir():
                    assert self._index is not None
                    return self._index
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

    def _builder(self) -> _IndexBuild:
        if self._build is None:
            self._build = _IndexBuild(self, self.compression)
        return self._build

    def _abandon_build(self) -> None:
        if self._build is not None:
            self._build.close()
            self._build = None
        self._by_name.clear()
        self._named_upto = 0

    def _complete(self, build: _IndexBuild) -> LayerIndex:
        indexer = build.indexer
        index = LayerIndex(
            layer_digest=self.digest or "",
            media_type=self.media_type,
            compression=build.compression,
            blob_size=build.fed,
            uncompressed_size=indexer.uncompressed_size,
            span_size=self.span_size,
            spans=list(indexer.spans),
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
            while not build.done and not until():
                build.step()
        except BaseException:
            self._abandon_build()
            raise
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

    def find(self, name: str) -> TarEntry | None:
        """The entry stored under ``name`` (normalised), indexing only as far as needed.

        Without a complete index the pass runs until the entry and its data have gone by,
        so a file near the start of a layer costs only the bytes up to it.
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
                    self._index_names()
                    entry = self._named(name)
                    if entry is None or self._build is None:
                        return False
                    end = entry.data_offset + entry.size
                    spans = self._build.indexer.spans
                    return bool(spans) and spans[-1].uncompressed_end >= end

                self._advance(seen)
            self._index_names()
            return self._named(name)

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
            return self._build.indexer.spans
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
            if span.uncompressed_size > LARGE_SPAN:
                parts.append(self._stream_span(span, a, b))
            else:
                parts.append(self._span_data(span, b)[a:b])
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

    def _window(self, span: Span) -> bytes | None:
        index, build = self._index, self._build
        if index is not None:
            return index.window(span.index)
        if build is None:  # another thread's pass failed and was dropped meanwhile
            raise FormatError(f"layer {self.name}: its index pass was abandoned; retry")
        return build.indexer.window(span.index)

    def _chunk_table(self, span: Span) -> ChunkTable | None:
        index, build = self._index, self._build
        if not span.chunk_size:
            return None
        if index is not None:
            return index.chunk_table(span.index)
        if build is None:
            raise FormatError(f"layer {self.name}: its index pass was abandoned; retry")
        return build.indexer.chunk_table(span.index)

    def _span_data(self, span: Span, need: int | None = None) -> bytes:
        """The span's uncompressed bytes, at least its first ``need`` (all by default).

        A chunked span that is not cached is fetched only up to the chunk whose mark covers
        ``need``: its record (chunk table and window) first, then those chunks, each checked
        against its digest, then decoded as far as they go."""
        key = (span.uncompressed_start, span.digest)
        want = span.uncompressed_size if need is None else min(need, span.uncompressed_size)
        data = self._lru.get(key)
        if data is not None and len(data) >= want:
            return data
        codec = formats.codec_for(self.compression, where=f"layer {self.name}")
        name = f"layer {self.name}"
        if span.chunk_size and want < span.uncompressed_size:
            table = None
            if not self._cache.has_span(span.digest):
                table = self._chunk_table_and_guess(span, want)
            if table is not None and table.chunks_for(want) < span.chunk_count:
                compressed = self._fetch_chunks(span, table, table.chunks_for(want))
                data = codec.decode_span(
                    span, compressed, self._window(span), name=name, partial=True
                )
                if len(data) >= want:
                    self._lru.put(key, data)
                    return data
        index = self._index
        if (
            index is not None
            and index.window_locations[span.index][1]
            and (index.read_windows is not None)
        ):
            # the window may be a range request of its own (a published index): fetch it
            # while the span's bytes come, not after
            pending = _background().submit(self._window, span)
            compressed = self._fetch_span(span)
            window = pending.result()
        else:
            compressed = self._fetch_span(span)
            window = self._window(span)
        data = codec.decode_span(span, compressed, window, name=name)
        self._lru.put(key, data)
        return data

    def _chunk_table_and_guess(self, span: Span, want: int) -> ChunkTable | None:
        """The span's chunk table. When its record must be fetched first (a published index
        read by range), the chunks a read of ``want`` bytes probably needs -- estimated from
        the span's compression ratio -- are fetched at the same time, not
        one round trip later; they are checked once the table is in and kept as the span's
        start for :meth:`_fetch_chunks`."""
        index = self._index
        key = (span.uncompressed_start, span.digest)
        if (
            index is None
            or index.has_record(span.index)
            or key in self._prefixes
            or self._cache.has_prefix(span.digest)
        ):
            return self._chunk_table(span)
        size = span.chunk_size
        ratio = span.compressed_size / max(1, span.uncompressed_size)
        guess = min(span.chunk_count - 1, int(want * ratio) // size + 1 + _GUESS_SPARE)
        if guess < 1:
            return self._chunk_table(span)
        pending = _background().submit(self._chunk_table, span)
        try:
            early = self.source.read_range(span.compressed_start, guess * size)
        finally:
            table = pending.result()
        if table is not None:
            good = self._good_chunks(early, table, size)
            if good:
                self._keep_prefix(span, early[: good * size])
        return table

    @staticmethod
    def _good_chunks(data: bytes, table: ChunkTable, size: int, first: int = 0) -> int:
        """How many chunks at the start of ``data`` (chunk ``first`` on) match their digests,
        in order; a piece shorter than a chunk counts only as the span's last chunk."""
        good = 0
        for k in range(first, len(table.digests)):
            piece = data[(k - first) * size : (k - first + 1) * size]
            if not piece or (len(piece) < size and k != len(table.digests) - 1):
                break
            if hashlib.sha256(piece).digest() != table.digests[k]:
                break
            good += 1
        return good

    def _keep_prefix(self, span: Span, prefix: bytes) -> None:
        """Keep the checked start of a span, in memory and in the cache directory."""
        key = (span.uncompressed_start, span.digest)
        self._cache.save_prefix(span.digest, prefix)
        with self._lock:
            self._prefixes[key] = prefix
            self._prefixes.move_to_end(key)
            while len(self._prefixes) > _PREFIXES_KEPT:
                self._prefixes.popitem(last=False)

    def _fetch_chunks(self, span: Span, table: ChunkTable, count: int) -> bytes:
        """The span's first ``count`` chunks, checked; what an earlier read of the same span
        fetched is kept and not fetched again."""
        key = (span.uncompressed_start, span.digest)
        size = span.chunk_size
        have = self._prefixes.get(key)
        if have is None:  # a read in another process may have saved it
            saved = self._cache.load_prefix(span.digest) or b""
            have = saved[: self._good_chunks(saved, table, size) * size]
        start = len(have) // size
        if start >= count:
            return have[: min(count * size, span.compressed_size)]
        end = min(count * size, span.compressed_size)
        for _attempt in range(2):
            data = self.source.read_range(span.compressed_start + start * size, end - start * size)
            if len(data) == end - start * size and (
                self._good_chunks(data, table, size, start) >= count - start
            ):
                break
        else:
            raise IntegrityError(
                f"layer {self.name}: span {span.index} chunks {start}-{count - 1} (bytes "
                f"{span.compressed_start + start * size}-{span.compressed_start + end - 1}) do "
                "not match their digests after a refetch"
            )
        prefix = have[: start * size] + data
        self._keep_prefix(span, prefix)
        return prefix

    def _stream_span(self, span: Span, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a span too large to hold (a single-frame zstd layer is
        one span): decode forward from the span's start, keep only what was asked for, and
        return it only after the span's bytes matched their digest."""
        codec = formats.codec_for(self.compression, where=f"layer {self.name}")
        if codec.decode_stream is None:
            raise FormatError(f"layer {self.name}: span {span.index} is too large to decode")
        digest = SpanVerifier(span)
        fetched = 0

        def compressed() -> Generator[bytes, None, None]:
            nonlocal fetched
            stream = self.source.iter_from(span.compressed_start)
            try:
                for chunk in stream:
                    chunk = chunk[: span.compressed_size - fetched]
                    fetched += len(chunk)
                    digest.update(chunk)
                    yield chunk
                    if fetched >= span.compressed_size:
                        break
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()

        chunks = compressed()
        problem: FormatError | None = None
        try:
            try:
                data = codec.decode_stream(chunks, start, end, name=f"layer {self.name}")
            except FormatError as exc:  # damaged bytes or a bad index: the digest decides
                problem, data = exc, b""
            for _ in chunks:  # the rest of the span, so that the digest covers all of it
                pass
        finally:
            chunks.close()
        if problem is not None and fetched == span.compressed_size and digest.matches():
            raise problem
        if fetched != span.compressed_size or not digest.matches():
            raise IntegrityError(
                f"layer {self.name}: span {span.index} does not match its digest "
                f"sha256:{span.digest}"
            )
        return data

    def _fetch_span(self, span: Span) -> bytes:
        cached = self._cache.load_span(span.digest, lambda data: span_matches(span, data))
        if cached is not None and len(cached) == span.compressed_size:
            return cached
        key = (span.uncompressed_start, span.digest)
        have = self._prefixes.get(key, b"") if span.chunk_size else b""
        for _attempt in range(2):
            # the start of the span an earlier read fetched (checked) is not fetched again
            rest = self.source.read_range(
                span.compressed_start + len(have), span.compressed_size - len(have)
            )
            data = have + rest
            if span_matches(span, data):
                self._cache.save_span(span.digest, data)
                self._prefixes.pop(key, None)
                return data
            have = b""
        raise IntegrityError(
            f"layer {self.name}: span {span.index} (bytes {span.compressed_start}-"
            f"{span.compressed_end - 1}) does not match its digest sha256:{span.digest} "
            "after a refetch"
        )

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
