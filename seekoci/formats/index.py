"""seekoci's own layer index: table of contents + spans + checkpoint windows.

The file is laid out so that a reader can range into it (a later step fetches indexes from
the registry): a fixed header, the compressed table of contents, a fixed-size span table,
then one independently compressed window per span. All integers little-endian.

Header (64 bytes)::

     0  8  magic  b"SEEKOCIX"
     8  2  u16    format version (INDEX_VERSION)
    10  2  u16    flags (0)
    12  4  u32    number of spans
    16  8  u64    TOC offset          24  8  u64  TOC length (zstd-compressed JSON)
    32  8  u64    span table offset   40  8  u64  windows offset
    48  8  u64    windows length      56  8  u64  reserved (0)

Span record (120 bytes)::

     0  8  u64 compressed start     8  8  u64 compressed end (exclusive)
    16  8  u64 uncompressed start  24  8  u64 uncompressed end (exclusive)
    32  1  u8  bits                33  7  padding
    40  8  u64 record offset (from the records offset)   48  4 u32 record length (0 = none)
    52  4  u32 window length (the packed window at the end of the record)
    56 32  the span's digest: sha256 of its compressed bytes, or of its chunk digests
    88 32  sha256 of the record (zeros when there is none)

A span's *record* is what a read of it needs besides its bytes: for a chunked span (the TOC's
``chunk_size`` is not 0) its chunk table -- the sha256 of every ``chunk_size`` piece of its
compressed bytes, then a u32 mark per chunk: uncompressed bytes from the span's start that
the chunks up to it decode to -- followed by its packed window (b"" when it needs none).
A read of a few KB fetches the record, then only the chunks up to the marked one.

A reader that ranges into a published index checks header + TOC + span table against a
digest it got from a verified manifest, and each record against its span record, so a byte
damaged on the way is an error, never a wrong decode.

The TOC is the directory, the entry pages, then (format 6) each page's file digests: the raw
32-byte sha256 of its regular files, in entry order (:mod:`seekoci.formats.pages`).

The TOC JSON holds the layer's identity (digest, media type, compression, sizes, span size,
the tool that wrote it) and the tar entries as arrays in the order of ``ENTRY_FIELDS``.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from .. import _json
from ..errors import FormatError
from .base import ChunkTable, Span, decompress_bounded, unpack_window
from .entries import encode as encode_entries
from .entries import encode_digests
from .tar import TarEntry

if TYPE_CHECKING:
    from .pages import PagedSpans, PageInfo, ReadMany, SpanPage

MAGIC = b"SEEKOCIX"
#: The version written. 6 added the sha256 of every regular file to the entry pages.
INDEX_VERSION = 6
#: Versions read: a version-5 index is the same file without file digests.
READABLE_VERSIONS = (5, 6)
_HEADER = struct.Struct("<8sHHIQQQQQQ")
_SPAN = struct.Struct("<QQQQB7xQII32s32s")
HEADER_SIZE = _HEADER.size
SPAN_RECORD_SIZE = _SPAN.size
#: A TOC that inflates past this is refused (hostile index).
MAX_TOC_SIZE = 1 << 30

#: Reads ``length`` bytes at ``offset`` of the record area.
WindowReader = Callable[[int, int], bytes]
#: Records kept per index once read (a record is at most ~40 KB).
_RECORDS_KEPT = 64


@dataclass
class LayerIndex:
    """Everything needed to serve random reads of one layer blob."""

    layer_digest: str
    media_type: str
    compression: str
    blob_size: int
    uncompressed_size: int
    span_size: int
    spans: Sequence[Span]
    entries: Sequence[TarEntry]
    #: each span's record (chunk table + packed window; a SOCI zTOC's raw window), fetched
    #: lazily: (offset, length) per span for ``read_windows``
    window_locations: Sequence[tuple[int, int]] = field(default_factory=list)
    read_windows: WindowReader | None = None
    tool: str = ""
    #: sha256 of each record, checked on every load (empty: not checked, for records that
    #: never left this process)
    window_digests: Sequence[bytes] = field(default_factory=list)
    #: False when ``read_windows`` returns raw 32 KiB windows (a SOCI zTOC's checkpoints)
    windows_packed: bool = True
    #: compressed bytes per chunk of a chunked span (0: spans are verified whole)
    chunk_size: int = 0
    #: ``window_locations`` are byte ranges of one blob (an index file), so that the records
    #: of neighbouring spans can be read with one request (:meth:`prefetch_records`)
    records_by_offset: bool = False
    #: records come from a local file (a cached index): reading one costs no round trip
    records_local: bool = False
    #: the format plug-in whose ``decode_span`` decodes the spans ("" : the compression's,
    #: :func:`seekoci.formats.get`); an embedded index names its own (``estargz``, ...)
    format: str = ""
    #: False when span and entry offsets are not those of the tar stream but of the file
    #: payloads laid end to end (an eStargz TOC does not say where tar headers are)
    tar_offsets: bool = True
    #: what verifies this index and its spans, for ``inspect`` (an embedded index says)
    verification: str = ""
    #: an index with payload offsets whose blob also says where every tar header is
    #: (zstd:chunked's tar-split): the same layer's index in tar-stream offsets, made by the
    #: first call (a tar-stream read; a one-file read never needs it)
    tar_index: Callable[[], LayerIndex] | None = field(default=None, repr=False, compare=False)
    _records: dict[int, bytes] = field(default_factory=dict, repr=False, compare=False)
    _records_lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def _where(self, span_index: int) -> str:
        return f"index of {self.layer_digest}: span {span_index}"

    def has_record(self, span_index: int) -> bool:
        """Whether span ``span_index``'s record was read already (no fetch needed)."""
        with self._records_lock:
            return span_index in self._records

    def record(self, span_index: int) -> bytes:
        """Span ``span_index``'s record, checked against its digest (b"" for none).

        Fetched and checked outside the lock (two threads may both fetch one record; the
        second keeps the first's); only the dict of kept records is guarded."""
        with self._records_lock:
            kept = self._records.get(span_index)
        if kept is not None:
            return kept
        offset, length = self.window_locations[span_index]
        if not length:
            return b""
        where = self._where(span_index)
        if self.read_windows is None:
            raise FormatError(f"{where}: windows are not available")
        return self._keep_record(span_index, self.read_windows(offset, length))

    def prefetch_records(self, span_indexes: Sequence[int]) -> None:
        """Read the records of these spans that are not in yet, neighbours together (one
        request for a run of spans of a published index instead of one each)."""
        if not self.records_by_offset or self.read_windows is None:
            return
        wanted = sorted(
            i for i in set(span_indexes) if self.window_locations[i][1] and not self.has_record(i)
        )
        groups: list[list[int]] = []
        for i in wanted:
            if groups:
                offset, length = self.window_locations[groups[-1][-1]]
                if offset + length == self.window_locations[i][0]:
                    groups[-1].append(i)
                    continue
            groups.append([i])
        for group in groups:
            if len(group) == 1 or len(group) > _RECORDS_KEPT:
                continue  # one alone is read when needed; more than are kept would be lost
            start = self.window_locations[group[0]][0]
            last_offset, last_length = self.window_locations[group[-1]]
            data = self.read_windows(start, last_offset + last_length - start)
            for i in group:
                offset, length = self.window_locations[i]
                self._keep_record(i, data[offset - start : offset - start + length])

    def _keep_record(self, span_index: int, data: bytes) -> bytes:
        """Check a record read from the index and keep it (the last few are kept)."""
        where = self._where(span_index)
        if len(data) != self.window_locations[span_index][1]:
            raise FormatError(f"{where}: record is cut")
        if (
            self.window_digests
            and hashlib.sha256(data).digest() != (self.window_digests[span_index])
        ):
            raise FormatError(f"{where}: record does not match its digest")
        with self._records_lock:
            while len(self._records) >= _RECORDS_KEPT:
                del self._records[next(iter(self._records))]  # the oldest kept
            return self._records.setdefault(span_index, data)

    def chunk_table(self, span_index: int) -> ChunkTable | None:
        """The chunk digests and marks of a chunked span (None for whole spans)."""
        span = self.spans[span_index]
        if not span.chunk_size:
            return None
        n = span.chunk_count
        where = self._where(span_index)
        table = ChunkTable.decode(self.record(span_index)[: 36 * n], n, where=where)
        from .base import chunked_digest

        if chunked_digest(table.digests) != span.digest:
            raise FormatError(f"{where}: chunk table does not match the span's digest")
        return table

    def window(self, span_index: int) -> bytes | None:
        span = self.spans[span_index] if self.spans else None
        skip = 36 * span.chunk_count if span is not None else 0
        packed = self.record(span_index)[skip:]
        if not packed:
            return None
        if not self.windows_packed:
            return packed
        return unpack_window(packed, where=self._where(span_index))


def record_of(chunks: ChunkTable | None, packed_window: bytes) -> bytes:
    """A span's record from its chunk table and packed window."""
    return (chunks.encode() if chunks is not None else b"") + packed_window


def serialize(index: LayerIndex, records: Sequence[bytes]) -> bytes:
    """The index file bytes. ``records[i]``: span i's record (:func:`record_of`) or b""."""
    if len(records) != len(index.spans):
        raise ValueError("one record (or b'') per span")
    out = io.BytesIO()
    write_index(out, index, records.__getitem__)
    return out.getvalue()


def write_index(out: BinaryIO, index: LayerIndex, record: Callable[[int], bytes]) -> None:
    """Write the index file to ``out``; ``record(i)`` gives span i's record (chunk table +
    packed window, :func:`record_of`; b"" for none). Records are read twice (sizes and
    digests first, as the span records come before them) and never all held at once."""
    from .pages import PAGE_ENTRIES, SPANS_PER_PAGE, PagedEntries, walk_key

    if index.format:  # spans checked after decoding, skips, zero chunks: not in this file
        raise FormatError(f"index of {index.layer_digest}: a {index.format} TOC is not written")
    # ASCII JSON: names that are not UTF-8 travel as \\udcXX escapes, so every page is valid
    # JSON text for any reader and round-trips to the same str. zstd level 9 (what a reader
    # of a published index downloads).
    import zstandard  # what writes an index, not what reads one

    compressor = zstandard.ZstdCompressor(level=9, write_checksum=True)
    entries = index.entries
    paged = entries if isinstance(entries, PagedEntries) else None
    reuse = paged is not None and all(
        p.count == PAGE_ENTRIES or i == len(paged.page_infos) - 1
        for i, p in enumerate(paged.page_infos)
    )
    pages: list[bytes] = []
    page_meta: dict[str, list[Any]] = {
        k: []
        for k in (
            "count",
            "low",
            "high",
            "length",
            "sha256",
            "start",
            "digests_length",
            "digests_sha256",
        )
    }
    digest_blocks: list[bytes] = []
    if reuse and paged is not None:
        paged.load_all(digests=True)  # one coalesced fetch, not one per page
    for p, start in enumerate(range(0, len(entries), PAGE_ENTRIES)):
        if reuse and paged is not None:
            doc = paged.page_doc(p)
            digests = paged.page_digests(p)
        else:
            page_entries = list(entries[start : start + PAGE_ENTRIES])
            doc = encode_entries(page_entries)
            digests = encode_digests(page_entries)
        names = doc["dense"]["name"]
        data = compressor.compress(json.dumps(doc, separators=(",", ":")).encode("ascii"))
        pages.append(data)
        digest_blocks.append(digests)  # raw: random bytes do not compress
        page_meta["count"].append(len(names))
        page_meta["low"].append(min(names, key=walk_key))
        page_meta["high"].append(max(names, key=walk_key))
        page_meta["length"].append(len(data))
        page_meta["sha256"].append(hashlib.sha256(data).hexdigest())
        page_meta["start"].append(entries[start].header_offset)
        page_meta["digests_length"].append(len(digests))
        page_meta["digests_sha256"].append(hashlib.sha256(digests).hexdigest() if digests else "")
    records = []
    woff = 0
    for span in index.spans:
        if span.chunk_size != index.chunk_size:
            raise ValueError(f"span {span.index} is chunked unlike its index")
        packed = record(span.index)
        window_length = len(packed) - 36 * span.chunk_count
        if window_length < 0:
            raise ValueError(f"record of span {span.index} has no room for its chunk table")
        records.append(
            _SPAN.pack(
                span.compressed_start,
                span.compressed_end,
                span.uncompressed_start,
                span.uncompressed_end,
                span.bits,
                woff,
                len(packed),
                window_length,
                bytes.fromhex(span.digest),
                hashlib.sha256(packed).digest() if packed else bytes(32),
            )
        )
        woff += len(packed)
    span_pages: dict[str, list[Any]] = {"start": [], "sha256": []}
    for first in range(0, len(records), SPANS_PER_PAGE):
        span_pages["start"].append(index.spans[first].uncompressed_start)
        span_pages["sha256"].append(
            hashlib.sha256(b"".join(records[first : first + SPANS_PER_PAGE])).hexdigest()
        )
    directory = {
        "layer_digest": index.layer_digest,
        "media_type": index.media_type,
        "compression": index.compression,
        "blob_size": index.blob_size,
        "uncompressed_size": index.uncompressed_size,
        "span_size": index.span_size,
        "chunk_size": index.chunk_size,
        "tool": index.tool,
        "page_entries": PAGE_ENTRIES,
        "pages": page_meta,
        "span_pages": span_pages,
    }
    directory_bytes = compressor.compress(
        json.dumps(directory, separators=(",", ":")).encode("ascii")
    )
    toc_offset = HEADER_SIZE
    toc_length = len(directory_bytes) + sum(map(len, pages)) + sum(map(len, digest_blocks))
    span_offset = toc_offset + toc_length
    windows_offset = span_offset + SPAN_RECORD_SIZE * len(index.spans)
    out.write(
        _HEADER.pack(
            MAGIC,
            INDEX_VERSION,
            0,
            len(index.spans),
            toc_offset,
            toc_length,
            span_offset,
            windows_offset,
            woff,
            len(directory_bytes),
        )
    )
    out.write(directory_bytes)
    for page in pages:
        out.write(page)
    for block in digest_blocks:
        out.write(block)
    out.write(b"".join(records))
    for span in index.spans:
        out.write(record(span.index))


@dataclass(frozen=True)
class IndexHeader:
    span_count: int
    toc_offset: int
    toc_length: int
    span_offset: int
    windows_offset: int
    windows_length: int
    directory_length: int

    @property
    def head_end(self) -> int:
        """End of header + directory: all a reader needs up front."""
        return self.toc_offset + self.directory_length

    @property
    def metadata_end(self) -> int:
        """End of header + TOC + span table: everything but the records."""
        return self.span_offset + self.span_count * SPAN_RECORD_SIZE


def parse_header(data: bytes, *, where: str = "index") -> IndexHeader:
    if len(data) < HEADER_SIZE:
        raise FormatError(f"{where}: shorter than its header")
    magic, version, _flags, count, toc_off, toc_len, span_off, win_off, win_len, dir_len = (
        _HEADER.unpack_from(data)
    )
    if magic != MAGIC:
        raise FormatError(f"{where}: not a seekoci index (bad magic)")
    if version not in READABLE_VERSIONS:
        raise FormatError(
            f"{where}: index format version {version}, expected one of "
            + ", ".join(map(str, READABLE_VERSIONS))
        )
    header = IndexHeader(count, toc_off, toc_len, span_off, win_off, win_len, dir_len)
    if not (
        toc_off == HEADER_SIZE
        and span_off == toc_off + toc_len
        and win_off == header.metadata_end
        and 0 < dir_len <= toc_len
    ):
        raise FormatError(f"{where}: inconsistent section offsets")
    return header


def _directory(head: bytes, header: IndexHeader, where: str) -> tuple[LayerIndex, dict[str, Any]]:
    """The layer's identity (a LayerIndex without entries or spans yet) and the directory."""
    packed = head[header.toc_offset : header.head_end]
    raw = decompress_bounded(packed, MAX_TOC_SIZE, what=f"{where}: directory")
    try:
        doc = _json.loads(raw, packed=len(packed))
    except ValueError as exc:
        raise FormatError(f"{where}: directory is corrupt ({exc})") from exc
    try:
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        index = LayerIndex(
            layer_digest=str(doc["layer_digest"]),
            media_type=str(doc["media_type"]),
            compression=str(doc["compression"]),
            blob_size=_nonneg(doc["blob_size"]),
            uncompressed_size=_nonneg(doc["uncompressed_size"]),
            span_size=_nonneg(doc["span_size"]),
            spans=[],
            entries=[],
            tool=str(doc.get("tool", "")),
            chunk_size=_chunk_size(doc.get("chunk_size", 0)),
        )
    except FormatError:
        raise
    except Exception as exc:  # any shape of garbage JSON: never a bare exception
        raise FormatError(f"{where}: directory is malformed ({exc!r})") from exc
    return index, doc


def _page_infos(doc: dict[str, Any], header: IndexHeader, where: str) -> list[PageInfo]:
    from .pages import PageInfo, walk_key

    try:
        meta = doc["pages"]
        columns = [meta[k] for k in ("count", "low", "high", "length", "sha256")]
        n = len(columns[0])
        columns.append(meta.get("start", [-1] * n))
        # format 6: each page's file digests follow it (absent in format 5: none)
        columns.append(meta.get("digests_length", [0] * n))
        columns.append(meta.get("digests_sha256", [""] * n))
        if not all(isinstance(c, list) and len(c) == n for c in columns):
            raise ValueError("page columns of different lengths")
        infos = []
        first = 0
        offset = header.head_end
        digests_at = offset + sum(_nonneg(length) for length in columns[3])
        for count, low, high, length, digest, start, dlen, ddigest in zip(*columns, strict=True):
            if not isinstance(low, str) or not isinstance(high, str):
                raise ValueError("page names are not text")
            if type(start) is not int or start < -1:
                raise ValueError("bad page start")
            if _nonneg(dlen) % 32 or (dlen and len(bytes.fromhex(ddigest)) != 32):
                raise ValueError("bad file digest area")
            infos.append(
                PageInfo(
                    first,
                    _nonneg(count),
                    walk_key(low),
                    walk_key(high),
                    offset,
                    _nonneg(length),
                    bytes.fromhex(digest),
                    start,
                    digests_at,
                    dlen,
                    bytes.fromhex(ddigest) if dlen else b"",
                )
            )
            first += count
            offset += length
            digests_at += dlen
        offset = digests_at
    except Exception as exc:
        raise FormatError(f"{where}: page directory is malformed ({exc!r})") from None
    if offset != header.toc_offset + header.toc_length:
        raise FormatError(f"{where}: pages do not fill the table of contents")
    return infos


def _span_pages(doc: dict[str, Any], header: IndexHeader, where: str) -> list[SpanPage]:
    from .pages import SPANS_PER_PAGE, SpanPage

    try:
        meta = doc["span_pages"]
        starts, digests = meta["start"], meta["sha256"]
        pages = [
            SpanPage(_nonneg(a), bytes.fromhex(d)) for a, d in zip(starts, digests, strict=True)
        ]
    except Exception as exc:
        raise FormatError(f"{where}: span page directory is malformed ({exc!r})") from None
    if len(pages) != -(-header.span_count // SPANS_PER_PAGE) or any(
        len(p.digest) != 32 for p in pages
    ):
        raise FormatError(f"{where}: span page directory does not match the span count")
    if pages and pages[0].start != 0:
        raise FormatError(f"{where}: spans do not cover the layer")
    return pages


def _span_page_parser(
    index: LayerIndex, header: IndexHeader, pages: list[SpanPage], where: str
) -> Callable[[int, bytes], list[tuple[Span, tuple[int, int], bytes]]]:
    from .pages import SPANS_PER_PAGE

    chunk = index.chunk_size

    def parse_page(p: int, data: bytes) -> list[tuple[Span, tuple[int, int], bytes]]:
        out: list[tuple[Span, tuple[int, int], bytes]] = []
        first = p * SPANS_PER_PAGE
        for j in range(len(data) // SPAN_RECORD_SIZE):
            i = first + j
            cs, ce, us, ue, bits, woff, rlen, wlen, digest, wdigest = _SPAN.unpack_from(
                data, j * SPAN_RECORD_SIZE
            )
            span = Span(i, cs, ce, us, ue, digest.hex(), bits, chunk)
            if bits > 7 or cs > ce or ce > index.blob_size or us > ue:
                raise FormatError(f"{where}: span {i} is out of range")
            if out and us != out[-1][0].uncompressed_end:
                raise FormatError(f"{where}: span {i} does not follow span {i - 1}")
            if woff + rlen > header.windows_length:
                raise FormatError(f"{where}: record of span {i} lies outside the index")
            if rlen < wlen or rlen - wlen != 36 * span.chunk_count:
                raise FormatError(f"{where}: record of span {i} does not hold its chunk table")
            out.append((span, (header.windows_offset + woff, rlen), wdigest))
        if out:
            last = out[-1][0].uncompressed_end
            end = pages[p + 1].start if p + 1 < len(pages) else index.uncompressed_size
            if last != end:
                raise FormatError(f"{where}: spans do not cover the layer")
        return out

    return parse_page


#: Span pages fetched along with one entry page at most (a page of big files spans many).
_COMPANION_PAGES = 2


def _span_pages_for(
    pages: list[PageInfo], spans: PagedSpans, size: int
) -> Callable[[list[int]], tuple[list[tuple[int, int]], Callable[[list[bytes]], None]]]:
    """The span pages the data of some entry pages lie in, to fetch with them: the read that
    follows a lookup then needs no round trip for its span record."""

    def companion(wanted: list[int]) -> tuple[list[tuple[int, int]], Callable[[list[bytes]], None]]:
        chosen: list[int] = []
        for i in wanted:
            start = pages[i].start
            end = pages[i + 1].start if i + 1 < len(pages) else size
            if start < 0 or end < start:
                continue
            between = spans.pages_between(start, max(end, start + 1))
            if len(between) <= _COMPANION_PAGES:
                chosen += [p for p in between if p not in chosen]

        def take(blobs: list[bytes]) -> None:
            for p, data in zip(chosen, blobs, strict=True):
                spans.offer(p, data)

        return [spans.page_range(p) for p in chosen], take

    return companion


def parse_lazy(
    head: bytes,
    read_at: Callable[[int, int], bytes],
    *,
    read_many: ReadMany | None = None,
    expected_digest: str | None = None,
    where: str = "index",
) -> LayerIndex:
    """An index from its header and directory (``head``, :attr:`IndexHeader.head_end`
    bytes) whose entry pages, span pages and records are read on demand through
    ``read_at(offset, length)`` (offsets in the index file) and checked against the
    directory as they arrive."""
    from .pages import LazyColumn, PagedEntries, PagedSpans, sequential

    header = parse_header(head, where=where)
    if len(head) < header.head_end:
        raise FormatError(f"{where}: truncated")
    index, doc = _directory(head, header, where)
    if expected_digest is not None and index.layer_digest != expected_digest:
        raise FormatError(
            f"{where}: index is for layer {index.layer_digest}, not {expected_digest}"
        )
    many = read_many or sequential(read_at)
    pages = _page_infos(doc, header, where)
    span_pages = _span_pages(doc, header, where)
    if header.span_count == 0:
        raise FormatError(f"{where}: no spans")
    entries = PagedEntries(pages, many, uncompressed_size=index.uncompressed_size, where=where)
    index.entries = entries
    spans = PagedSpans(
        header.span_count,
        span_pages,
        header.span_offset,
        SPAN_RECORD_SIZE,
        many,
        _span_page_parser(index, header, span_pages, where),
        where=where,
    )
    entries.companion = _span_pages_for(pages, spans, index.uncompressed_size)
    index.spans = spans
    index.window_locations = LazyColumn(spans, spans.location)
    index.window_digests = LazyColumn(spans, spans.record_digest)
    index.read_windows = read_at
    index.records_by_offset = True
    return index


def parse_cached(
    read_at: Callable[[int, int], bytes], size: int, *, expected_digest: str, where: str
) -> LayerIndex:
    """An index from a local file: header, directory and span table parsed now, every entry
    page and span page checked against its digest now (~1 ms per MB, so a damaged file is
    found at load), entry pages parsed when a lookup needs them -- from the bytes read for
    that check, kept (the compressed pages: a few MB for 160k entries)."""
    from .pages import PagedEntries, PagedSpans

    header = parse_header(read_at(0, HEADER_SIZE), where=where)
    if header.windows_offset + header.windows_length > size:
        raise FormatError(f"{where}: truncated")
    first = header.head_end
    area = read_at(first, header.span_offset - first)

    def read_pages(offset: int, length: int) -> bytes:
        if first <= offset and offset + length <= header.span_offset:
            return area[offset - first : offset - first + length]
        return read_at(offset, length)

    index = parse_lazy(
        read_at(0, header.head_end), read_pages, expected_digest=expected_digest, where=where
    )
    entries, spans = index.entries, index.spans
    assert isinstance(entries, PagedEntries) and isinstance(spans, PagedSpans)
    entries.eager_digests = True  # read from memory with their pages
    for i, info in enumerate(entries.page_infos):
        if hashlib.sha256(read_pages(info.offset, info.length)).digest() != info.digest:
            raise FormatError(f"{where}: page {i} is damaged")
        if info.digests_length and (
            hashlib.sha256(read_pages(info.digests_offset, info.digests_length)).digest()
            != info.digests_digest
        ):
            raise FormatError(f"{where}: file digests of page {i} are damaged")
    spans.preload(read_at(header.span_offset, header.metadata_end - header.span_offset))
    _finish_spans(index, spans)
    index.records_local = True
    return index


def _finish_spans(index: LayerIndex, spans: PagedSpans) -> None:
    """Every span record loaded into plain lists (each page is checked as it loads: spans
    in range, contiguous, covering the layer)."""
    every = list(spans)
    index.spans = every
    index.window_locations = [spans.location(i) for i in range(len(every))]
    index.window_digests = [spans.record_digest(i) for i in range(len(every))]


def parse(
    metadata: bytes,
    *,
    read_windows: WindowReader | None,
    expected_digest: str | None = None,
    where: str = "index",
) -> LayerIndex:
    """Parse an index from its first ``metadata_end`` bytes (header, directory, every entry
    page and the span table), all checked now: a corrupt or hostile index is a
    FormatError here, never a wrong read later. ``read_windows(offset, length)`` reads
    records (offsets in the index file) on demand."""
    from .pages import PagedEntries, PagedSpans

    header = parse_header(metadata, where=where)
    if len(metadata) < header.metadata_end:
        raise FormatError(f"{where}: truncated")

    def read_at(offset: int, length: int) -> bytes:
        if offset + length <= header.metadata_end:
            return metadata[offset : offset + length]
        if read_windows is None:
            raise FormatError(f"{where}: windows are not available")
        return read_windows(offset, length)

    index = parse_lazy(
        metadata[: header.head_end], read_at, expected_digest=expected_digest, where=where
    )
    entries, spans = index.entries, index.spans
    assert isinstance(entries, PagedEntries) and isinstance(spans, PagedSpans)
    entries.check_ranges = False
    entries.companion = None  # every span page is read next anyway
    entries.load_all(digests=True)
    _finish_spans(index, spans)
    if read_windows is None:
        index.read_windows = None
    return index


def _chunk_size(value: object) -> int:
    size = _nonneg(value)
    if size and not 512 <= size < 1 << 31:
        raise ValueError(f"chunk size {size} out of range")
    return size


def _nonneg(value: object) -> int:
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


def index_file(index: LayerIndex) -> bytes:
    """The index file of any loaded or built index (records gathered, windows packed)."""
    from .base import WindowPacker

    packer = WindowPacker()

    done: dict[int, bytes] = {}  # write_index asks for each record twice

    def record(i: int) -> bytes:
        if i not in done:
            done[i] = gather(i)
        return done[i]

    def gather(i: int) -> bytes:
        if not index.windows_packed:  # a zTOC's raw window: pack it (never chunked)
            window = index.window(i) if index.window_locations else None
            return packer.pack(window) if window else b""
        return index.record(i) if index.window_locations else b""

    out = io.BytesIO()
    write_index(out, index, record)
    return out.getvalue()
