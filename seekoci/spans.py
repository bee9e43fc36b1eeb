"""Span bytes: fetched, verified, kept and decoded.

A layer's index cuts its blob into spans (``formats.base.Span``). This module turns a span
into its uncompressed bytes: from the in-memory LRU of decoded spans, else its compressed
bytes from the cache directory or one range request of the blob, checked against the span's
sha256 (one refetch on mismatch, then :class:`IntegrityError`), then decoded with the
layer's codec. Chunked spans (gzip, plain tar) can be fetched only up to the chunk that
covers a read, each chunk checked against its own digest.

It knows the index only through :class:`SpanTables` (windows and chunk tables, which may be
fetched lazily from a published index) and the blob only as a :class:`RangeSource`. Several
spans in a row are fetched with one request by :meth:`SpanReader.fetch_run`: the read
pipeline (:mod:`seekoci.pipeline`) plans those runs.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Protocol

from ._threads import shared_pool
from .cache import Cache
from .errors import FormatError, IntegrityError
from .formats.base import (
    CHECK_COMPRESSED,
    CHECK_NONE,
    CHECK_UNCOMPRESSED,
    ChunkTable,
    Span,
    SpanVerifier,
    decoded_matches,
    span_matches,
)
from .source import RangeSource

if TYPE_CHECKING:
    from .formats import LayerFormat
    from .formats.index import LayerIndex

#: Decoded spans kept in memory per layer.
SPAN_LRU_BYTES = 64 << 20
#: Spans larger than this (uncompressed) are streamed, never held whole.
LARGE_SPAN = 64 << 20
#: Chunks fetched beyond the estimate when a span's start is guessed (see
#: SpanReader._chunk_table_and_guess): more costs bytes, fewer costs round trips. Measured
#: over 150 small files of the 1 GiB benchmark layer: 1.09 requests a read with 0, 1 or 2
#: spare chunks alike, and 227 / 272 / 303 KB a read.
_GUESS_SPARE = 0
#: Verified starts of spans (compressed) kept for reads that need more of the same span.
_PREFIXES_KEPT = 16

SpanKey = tuple[int, str]


def _background() -> concurrent.futures.ThreadPoolExecutor:
    """A small shared pool for fetches that overlap (a window next to its span, index pages
    together)."""
    return shared_pool("seekoci", 4)


def span_key(span: Span) -> SpanKey:
    return (span.uncompressed_start, span.digest)


class SpanTables(Protocol):
    """What the span reader needs from a layer's index (complete, or a pass under way)."""

    def loaded_index(self) -> LayerIndex | None:
        """The complete index, if there is one yet (None during a build pass)."""
        ...

    def window(self, span: Span) -> bytes | None:
        """The decoder state the span starts from (may be a range request of its own)."""
        ...

    def chunk_table(self, span: Span) -> ChunkTable | None:
        """A chunked span's chunk digests and marks (may be a range request of its own)."""
        ...


class SpanLRU:
    """Decoded spans, least recently used dropped first, at most ``max_bytes`` in all."""

    def __init__(self, max_bytes: int) -> None:
        self._data: OrderedDict[SpanKey, bytes] = OrderedDict()
        self._bytes = 0
        self._max = max_bytes
        self._lock = threading.Lock()

    def get(self, key: SpanKey) -> bytes | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: SpanKey, value: bytes) -> None:
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


class _Prefixes:
    """Checked starts of chunked spans (compressed bytes), the last few kept."""

    def __init__(self, keep: int) -> None:
        self._data: OrderedDict[SpanKey, bytes] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def get(self, key: SpanKey) -> bytes | None:
        with self._lock:
            return self._data.get(key)

    def __contains__(self, key: SpanKey) -> bool:
        with self._lock:
            return key in self._data

    def put(self, key: SpanKey, value: bytes) -> None:
        with self._lock:
            old = self._data.get(key)
            if old is not None and len(old) > len(value):
                return
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._keep:
                self._data.popitem(last=False)

    def pop(self, key: SpanKey) -> None:
        with self._lock:
            self._data.pop(key, None)


def good_chunks(data: bytes, table: ChunkTable, size: int, first: int = 0) -> int:
    """How many chunks at the start of ``data`` (chunk ``first`` on) match their digests,
    in order; a piece shorter than a chunk counts only as the span's last chunk."""
    view = memoryview(data)
    good = 0
    for k in range(first, len(table.digests)):
        piece = view[(k - first) * size : (k - first + 1) * size]
        if not piece or (len(piece) < size and k != len(table.digests) - 1):
            break
        if hashlib.sha256(piece).digest() != table.digests[k]:
            break
        good += 1
    return good


class SpanReader:
    """Uncompressed bytes of one layer's spans. Thread-safe: any number of readers."""

    def __init__(
        self,
        source: RangeSource,
        cache: Cache,
        tables: SpanTables,
        *,
        name: str,
        codec: Callable[[], LayerFormat],
    ) -> None:
        self.source = source
        self.lru = SpanLRU(SPAN_LRU_BYTES)
        self._cache = cache
        self._tables = tables
        self._name = name
        self._codec = codec
        self._prefixes = _Prefixes(_PREFIXES_KEPT)

    @property
    def where(self) -> str:
        return f"layer {self._name}"

    def codec(self) -> LayerFormat:
        """The format plug-in that decodes this layer's spans (the index's own, for an
        embedded TOC; else the compression's)."""
        return self._codec()

    # -- spans checked after decoding (an embedded TOC's chunk digests) -------------------
    def decoded(self, span: Span, *, tries: int = 2) -> bytes:
        """A span whose digest is of its decoded bytes: fetched (from the cache directory or
        one range request), decoded, checked; one refetch on mismatch (``tries`` requests in
        all), then :class:`IntegrityError`. Zero chunks are produced, not fetched."""
        key = span_key(span)
        data = self.lru.get(key)
        if data is not None:
            return data
        if span.zeros:
            data = bytes(span.uncompressed_size)
            self.lru.put(key, data)
            return data
        cacheable = span.check == CHECK_UNCOMPRESSED and span.fetched
        cached = (
            self._cache.load_span(span.digest, lambda d: len(d) == span.compressed_size)
            if cacheable
            else None
        )
        problem: FormatError | None = None
        for attempt in range(tries if cached is None else tries + 1):
            if attempt == 0 and cached is not None:
                compressed = cached
            else:
                compressed = self.source.read_range(span.compressed_start, span.compressed_size)
            decoded, found = self._decode_checked(span, compressed)
            problem = found or problem
            if decoded is not None:
                self._keep_decoded(span, compressed, decoded, save=compressed is not cached)
                return decoded
        if span.check == CHECK_NONE and problem is not None:
            raise problem
        raise IntegrityError(
            f"{self.where}: bytes {span.compressed_start}-{span.compressed_end - 1} do not "
            f"decode to their chunk digest sha256:{span.digest} after a refetch"
        )

    def decoded_from(self, span: Span, compressed: bytes | memoryview, *, keep: bool) -> bytes:
        """:meth:`decoded` from bytes fetched with other spans' (one range request for a
        run of them): decoded and checked; bytes that do not decode to the span's digest
        are fetched again by themselves, once (then :class:`IntegrityError`). ``keep`` (not
        a streaming read): the compressed bytes go to the cache directory and the decoded
        ones to the memory of decoded spans, as :meth:`decoded` keeps them. ``compressed``
        may be a view of the run's buffer: it is copied only to be saved."""
        if len(compressed) == span.compressed_size:
            decoded, _ = self._decode_checked(span, compressed)
            if decoded is not None:
                if keep:
                    self._keep_decoded(span, compressed, decoded, save=True)
                return decoded
        return self.decoded(span, tries=1)

    def decoded_run(
        self, spans: Sequence[Span], blob: bytes | bytearray, base: int, *, keep: bool
    ) -> list[memoryview | None]:
        """:meth:`decoded_from` for several spans whose compressed bytes are in ``blob``
        (from blob offset ``base``), decoded together where the codec can
        (:meth:`LayerFormat.decode_run`): each span's bytes, as a view, when they match its
        digest, else None (the caller takes that span by :meth:`decoded_from`). Only spans
        with a digest of their decoded bytes come this way. ``keep``: kept as
        :meth:`decoded_from` keeps them."""
        found: list[memoryview | None] = [None] * len(spans)
        if any(span.check != CHECK_UNCOMPRESSED for span in spans):
            return found
        try:
            views = self.codec().decode_run(spans, blob, base, name=self.where)
        except FormatError:
            views = None
        if views is None or len(views) != len(spans):
            return found
        whole = memoryview(blob)
        for k, (span, view) in enumerate(zip(spans, views, strict=True)):
            if not decoded_matches(span, view):
                continue
            found[k] = view
            if keep:
                piece = whole[span.compressed_start - base : span.compressed_end - base]
                self._keep_decoded(span, piece, view.tobytes(), save=True)
        return found

    def _decode_checked(
        self, span: Span, compressed: bytes | memoryview
    ) -> tuple[bytes | None, FormatError | None]:
        """A span checked after decoding, decoded from ``compressed``: its bytes when they
        are the span's (:func:`decoded_matches`), else None, with the format's complaint
        when it had one."""
        try:
            decoded = self.codec().decode_span(span, compressed, None, name=self.where)
        except FormatError as exc:
            return None, exc
        return (decoded if decoded_matches(span, decoded) else None), None

    def _keep_decoded(
        self, span: Span, compressed: bytes | memoryview, decoded: bytes, *, save: bool
    ) -> None:
        """Keep a span checked after decoding: its decoded bytes in memory and, ``save``, its
        compressed bytes in the cache directory (keyed by its digest, where it has one; a
        view of a run's buffer is copied then)."""
        if save and span.check == CHECK_UNCOMPRESSED and span.fetched:
            self._cache.save_span(span.digest, bytes(compressed))
        self.lru.put(span_key(span), decoded)

    # -- whole spans --------------------------------------------------------------------
    def cached(self, span: Span) -> bytes | None:
        """The span's decoded bytes if they are in memory."""
        return self.lru.get(span_key(span))

    def decode(self, span: Span, compressed: bytes | memoryview, window: bytes | None) -> bytes:
        """Decode checked compressed bytes of a whole span and keep the result."""
        data = self.codec().decode_span(span, compressed, window, name=self.where)
        self.lru.put(span_key(span), data)
        return data

    def decode_span(
        self, span: Span, compressed: bytes | memoryview, *, keep: bool = True
    ) -> bytes:
        """Decode checked compressed bytes of a whole span, from its window; ``keep``: in
        the LRU of decoded spans (a streaming read passes its spans on instead)."""
        window = self._tables.window(span)
        if keep:
            return self.decode(span, compressed, window)
        return self.codec().decode_span(span, compressed, window, name=self.where)

    def has_local(self, span: Span) -> bool:
        """Whether the span's compressed bytes are in the cache directory."""
        return self._cache.has_span(span.digest)

    def save(self, span: Span, compressed: bytes) -> None:
        """Keep a span's checked compressed bytes in the cache directory."""
        self._cache.save_span(span.digest, compressed)

    def prefetch_windows(self, spans: Sequence[Span]) -> None:
        """Read the records (windows, chunk tables) of these spans together, where they
        come from a published index read by range."""
        index = self._tables.loaded_index()
        if index is not None:
            index.prefetch_records([span.index for span in spans])

    def data(self, span: Span, need: int | None = None) -> bytes:
        """The span's uncompressed bytes, at least its first ``need`` (all by default).

        A chunked span that is not cached is fetched only up to the chunk whose mark covers
        ``need``: its record (chunk table and window) first, then those chunks, each checked
        against its digest, then decoded as far as they go."""
        key = span_key(span)
        want = span.uncompressed_size if need is None else min(need, span.uncompressed_size)
        data = self.lru.get(key)
        if data is not None and len(data) >= want:
            return data
        if span.chunk_size and want < span.uncompressed_size:
            table = None
            if not self._cache.has_span(span.digest):
                table = self._chunk_table_and_guess(span, want)
            if table is not None and table.chunks_for(want) < span.chunk_count:
                compressed = self._fetch_chunks(span, table, table.chunks_for(want))
                data = self.codec().decode_span(
                    span, compressed, self._tables.window(span), name=self.where, partial=True
                )
                if len(data) >= want:
                    self.lru.put(key, data)
                    return data
        if self.remote_window(span):
            # the window is a range request of its own (a published index): fetch it while
            # the span's bytes come, not after
            pending = _background().submit(self._tables.window, span)
            compressed = self.fetch(span)
            window = pending.result()
        else:
            window = self._tables.window(span)
            decoded = self._fetch_decoding(span, window)
            if decoded is not None:
                return decoded
            compressed = self.fetch(span)
        return self.decode(span, compressed, window)

    def _fetch_decoding(self, span: Span, window: bytes | None) -> bytes | None:
        """A whole span fetched with its bytes inflated as they arrive (the inflate of a
        SOCI span overlaps its transfer instead of following it), checked against its
        digest before anything decoded is used, kept like :meth:`fetch` keeps it. None
        where that is not the way: the span is kept locally, chunked, checked only once
        decoded, or its source or format cannot stream. Bytes that are not the span's are
        fetched once more, as :meth:`fetch` does, and decoded whole."""
        read_fed = getattr(self.source, "read_range_fed", None)
        if read_fed is None or span.chunk_size or span.check != CHECK_COMPRESSED:
            return None
        if self._cache.has_span(span.digest):
            return None
        decoder = self.codec().span_decoder(span, window, name=self.where)
        if decoder is None:
            return None
        data, fed = self._fetched(
            span, keep=True, first=lambda offset, length: read_fed(offset, length, decoder.feed)
        )
        if not fed:  # the refetch's bytes: the decoder saw the damaged ones
            return self.decode(span, data, window)
        decoded = decoder.result()  # the bytes are the span's: an error now is the format's
        self.lru.put(span_key(span), decoded)
        return decoded

    def remote_window(self, span: Span) -> bool:
        """Whether the span's window must still be fetched (a published index read by
        range whose record for this span is not in yet)."""
        index = self._tables.loaded_index()
        return (
            index is not None
            and not index.records_local
            and bool(index.window_locations[span.index][1])
            and index.read_windows is not None
            and not index.has_record(span.index)
        )

    def load(self, span: Span) -> bytes | None:
        """The span's compressed bytes from the cache directory, checked, if kept there."""
        cached = self._cache.load_span(span.digest, lambda data: span_matches(span, data))
        if cached is not None and len(cached) == span.compressed_size:
            return cached
        return None

    def fetch(self, span: Span, *, keep: bool = True) -> bytes:
        """The span's compressed bytes, checked: from the cache directory or one request
        (``keep``: then saved in the cache directory)."""
        cached = self.load(span)
        if cached is not None:
            return cached
        return self._fetched(span, keep=keep)[0]

    def _fetched(
        self, span: Span, *, keep: bool, first: Callable[[int, int], bytes] | None = None
    ) -> tuple[bytes, bool]:
        """The span's compressed bytes by request, checked, in two requests at most (the
        second when the first's bytes are not the span's); and whether they are the first
        request's. ``first(offset, length)`` makes the first request instead of
        ``read_range`` (one that hands the bytes on as they arrive)."""
        key = span_key(span)
        have = (self._prefixes.get(key) or b"") if span.chunk_size else b""
        for attempt in range(2):
            # the start of the span an earlier read fetched (checked) is not fetched again
            offset, length = span.compressed_start + len(have), span.compressed_size - len(have)
            read = first if first is not None and attempt == 0 else self.source.read_range
            data = have + read(offset, length)
            if span_matches(span, data):
                if keep:
                    self._cache.save_span(span.digest, data)
                self._prefixes.pop(key)
                return data, attempt == 0
            have = b""
        raise self._mismatch(span)

    def _mismatch(self, span: Span) -> IntegrityError:
        return IntegrityError(
            f"{self.where}: span {span.index} (bytes {span.compressed_start}-"
            f"{span.compressed_end - 1}) does not match its digest sha256:{span.digest} "
            "after a refetch"
        )

    # -- the start of a chunked span ----------------------------------------------------
    def local_cut(self, span: Span, need: int) -> tuple[ChunkTable, int] | None:
        """For a read that needs only the first ``need`` uncompressed bytes of a chunked
        span: its chunk table and how many chunks cover them, when the table is at hand
        without a round trip (a built or cached index, or a record already read) and fewer
        than all chunks will do; else None (fetch the span whole)."""
        if not span.chunk_size or span.check != CHECK_COMPRESSED:
            return None
        index = self._tables.loaded_index()
        if index is not None and not (index.records_local or index.has_record(span.index)):
            return None
        table = self._tables.chunk_table(span)
        if table is None:
            return None
        count = table.chunks_for(need)
        return (table, count) if count < span.chunk_count else None

    def decode_start(
        self, span: Span, compressed: bytes, cut: tuple[ChunkTable, int], need: int
    ) -> bytes | None:
        """The first chunks of a span (``cut``), checked chunk by chunk and decoded; None
        when they do not check out or decode to fewer than ``need`` bytes."""
        table, count = cut
        if good_chunks(compressed, table, span.chunk_size) < count:
            return None
        data = self.codec().decode_span(
            span, compressed, self._tables.window(span), name=self.where, partial=True
        )
        if len(data) < need:
            return None
        self._prefixes.put(span_key(span), compressed)  # a read further in continues from it
        self.lru.put(span_key(span), data)
        return data

    def _chunk_table_and_guess(self, span: Span, want: int) -> ChunkTable | None:
        """The span's chunk table. When its record must be fetched first (a published index
        read by range), the chunks a read of ``want`` bytes probably needs -- estimated from
        the span's compression ratio -- are fetched at the same time, not one round trip
        later; they are checked once the table is in and kept as the span's start for
        :meth:`_fetch_chunks`."""
        index = self._tables.loaded_index()
        key = span_key(span)
        if (
            index is None
            or index.records_local  # the record is a local read: no round trip to hide
            or index.has_record(span.index)
            or key in self._prefixes
            or self._cache.has_prefix(span.digest)
        ):
            return self._tables.chunk_table(span)
        size = span.chunk_size
        ratio = span.compressed_size / max(1, span.uncompressed_size)
        guess = min(span.chunk_count - 1, int(want * ratio) // size + 1 + _GUESS_SPARE)
        if guess < 1:
            return self._tables.chunk_table(span)
        pending = _background().submit(self._tables.chunk_table, span)
        try:
            early = self.source.read_range(span.compressed_start, guess * size)
        finally:
            table = pending.result()
        if table is not None:
            good = good_chunks(early, table, size)
            if good:
                self._keep_prefix(span, early[: good * size])
        return table

    def _keep_prefix(self, span: Span, prefix: bytes) -> None:
        """Keep the checked start of a span, in memory and in the cache directory."""
        self._cache.save_prefix(span.digest, prefix)
        self._prefixes.put(span_key(span), prefix)

    def _fetch_chunks(self, span: Span, table: ChunkTable, count: int) -> bytes:
        """The span's first ``count`` chunks, checked; what an earlier read of the same span
        fetched is kept and not fetched again."""
        size = span.chunk_size
        have = self._prefixes.get(span_key(span))
        if have is None:  # a read in another process may have saved it
            saved = self._cache.load_prefix(span.digest) or b""
            have = saved[: good_chunks(saved, table, size) * size]
        start = len(have) // size
        if start >= count:
            return have[: min(count * size, span.compressed_size)]
        end = min(count * size, span.compressed_size)
        for _attempt in range(2):
            data = self.source.read_range(span.compressed_start + start * size, end - start * size)
            if len(data) == end - start * size and (
                good_chunks(data, table, size, start) >= count - start
            ):
                break
        else:
            raise IntegrityError(
                f"{self.where}: span {span.index} chunks {start}-{count - 1} (bytes "
                f"{span.compressed_start + start * size}-{span.compressed_start + end - 1}) do "
                "not match their digests after a refetch"
            )
        prefix = have[: start * size] + data
        self._keep_prefix(span, prefix)
        return prefix

    # -- spans too large to hold --------------------------------------------------------
    def stream(self, span: Span, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a span too large to hold (a single-frame zstd layer is
        one span): decode forward from the span's start, keep only what was asked for, and
        return it only after the span's bytes matched their digest."""
        codec = self.codec()
        if codec.decode_stream is None:
            raise FormatError(f"{self.where}: span {span.index} is too large to decode")
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
                data = codec.decode_stream(chunks, start, end, name=self.where)
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
                f"{self.where}: span {span.index} does not match its digest sha256:{span.digest}"
            )
        return data
