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

The TOC JSON holds the layer's identity (digest, media type, compression, sizes, span size,
the tool that wrote it) and the tar entries as arrays in the order of ``ENTRY_FIELDS``.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import zstandard

from ..errors import FormatError
from .base import ChunkTable, Span, unpack_window
from .entries import EntryTable
from .entries import encode as encode_entries
from .tar import TarEntry

MAGIC = b"SEEKOCIX"
INDEX_VERSION = 5
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
    spans: list[Span]
    entries: Sequence[TarEntry]
    #: each span's record (chunk table + packed window; a SOCI zTOC's raw window), fetched
    #: lazily: (offset, length) per span for ``read_windows``
    window_locations: list[tuple[int, int]] = field(default_factory=list)
    read_windows: WindowReader | None = None
    tool: str = ""
    #: sha256 of each record, checked on every load (empty: not checked, for records that
    #: never left this process)
    window_digests: list[bytes] = field(default_factory=list)
    #: False when ``read_windows`` returns raw 32 KiB windows (a SOCI zTOC's checkpoints)
    windows_packed: bool = True
    #: compressed bytes per chunk of a chunked span (0: spans are verified whole)
    chunk_size: int = 0
    _records: dict[int, bytes] = field(default_factory=dict, repr=False, compare=False)

    def _where(self, span_index: int) -> str:
        return f"index of {self.layer_digest}: span {span_index}"

    def record(self, span_index: int) -> bytes:
        """Span ``span_index``'s record, checked against its digest (b"" for none)."""
        kept = self._records.get(span_index)
        if kept is not None:
            return kept
        offset, length = self.window_locations[span_index]
        if not length:
            return b""
        where = self._where(span_index)
        if self.read_windows is None:
            raise FormatError(f"{where}: windows are not available")
        data = self.read_windows(offset, length)
        if len(data) != length:
            raise FormatError(f"{where}: record is cut")
        if (
            self.window_digests
            and hashlib.sha256(data).digest() != (self.window_digests[span_index])
        ):
            raise FormatError(f"{where}: record does not match its digest")
        if len(self._records) >= _RECORDS_KEPT:
            try:  # other threads may be doing the same: any one old record will do
                self._records.pop(next(iter(self._records)), None)
            except (StopIteration, RuntimeError):
                pass
        self._records[span_index] = data
        return data

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
    toc = {
        "layer_digest": index.layer_digest,
        "media_type": index.media_type,
        "compression": index.compression,
        "blob_size": index.blob_size,
        "uncompressed_size": index.uncompressed_size,
        "span_size": index.span_size,
        "chunk_size": index.chunk_size,
        "tool": index.tool,
        "entries": encode_entries(index.entries),
    }
    # ASCII JSON: names that are not UTF-8 travel as \\udcXX escapes, so the TOC is valid
    # JSON text for any reader and round-trips to the same str. zstd level 9: a quarter of
    # zlib's size on real tables (it is what a reader of a published index downloads).
    compressor = zstandard.ZstdCompressor(level=9, write_checksum=True).compressobj()
    toc_bytes = b"".join(
        [*(compressor.compress(piece.encode("ascii")) for piece in _json_pieces(toc)),
         compressor.flush()]
    )  # fmt: skip
    del toc
    toc_offset = HEADER_SIZE
    span_offset = toc_offset + len(toc_bytes)
    windows_offset = span_offset + SPAN_RECORD_SIZE * len(index.spans)
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
    out.write(
        _HEADER.pack(
            MAGIC,
            INDEX_VERSION,
            0,
            len(index.spans),
            toc_offset,
            len(toc_bytes),
            span_offset,
            windows_offset,
            woff,
            0,
        )
    )
    out.write(toc_bytes)
    out.write(b"".join(records))
    for span in index.spans:
        out.write(record(span.index))


def _json_pieces(value: object) -> Iterator[str]:
    """Compact JSON of ``value`` in pieces (objects opened up, everything else whole): the
    TOC of a 160k-entry layer is tens of MB of text, never held at once this way."""
    if isinstance(value, dict):
        yield "{"
        for i, (key, item) in enumerate(value.items()):
            yield ("," if i else "") + json.dumps(str(key)) + ":"
            yield from _json_pieces(item)
        yield "}"
    else:
        yield json.dumps(value, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class IndexHeader:
    span_count: int
    toc_offset: int
    toc_length: int
    span_offset: int
    windows_offset: int
    windows_length: int

    @property
    def metadata_end(self) -> int:
        """End of header + TOC + span table: what a reader needs before any window."""
        return self.span_offset + self.span_count * SPAN_RECORD_SIZE


def parse_header(data: bytes, *, where: str = "index") -> IndexHeader:
    if len(data) < HEADER_SIZE:
        raise FormatError(f"{where}: shorter than its header")
    magic, version, _flags, count, toc_off, toc_len, span_off, win_off, win_len, _r = (
        _HEADER.unpack_from(data)
    )
    if magic != MAGIC:
        raise FormatError(f"{where}: not a seekoci index (bad magic)")
    if version != INDEX_VERSION:
        raise FormatError(f"{where}: index format version {version}, expected {INDEX_VERSION}")
    header = IndexHeader(count, toc_off, toc_len, span_off, win_off, win_len)
    if not (
        toc_off == HEADER_SIZE and span_off == toc_off + toc_len and win_off == header.metadata_end
    ):
        raise FormatError(f"{where}: inconsistent section offsets")
    return header


def _decompress_toc(data: bytes) -> bytes:
    # zstandard allocates what a frame header claims: refuse a claim past the limit first
    claimed = zstandard.frame_content_size(data)
    if claimed > MAX_TOC_SIZE:
        raise ValueError(f"claims {claimed} bytes")
    if claimed >= 0:
        return bytes(zstandard.ZstdDecompressor().decompress(data))
    reader = zstandard.ZstdDecompressor().stream_reader(data)
    out = reader.read(MAX_TOC_SIZE + 1)
    if len(out) > MAX_TOC_SIZE:
        raise ValueError("larger than the limit")
    return bytes(out)


def parse(
    metadata: bytes,
    *,
    read_windows: WindowReader | None,
    expected_digest: str | None = None,
    where: str = "index",
) -> LayerIndex:
    """Parse an index from its first ``metadata_end`` bytes (header, TOC, span table).

    ``read_windows(offset, length)`` reads from the window area later, on demand. Every
    structural property a reader relies on is checked here, so a corrupt or hostile index is
    a FormatError, never a wrong read.
    """
    header = parse_header(metadata, where=where)
    if len(metadata) < header.metadata_end:
        raise FormatError(f"{where}: truncated")
    try:
        toc_raw = _decompress_toc(metadata[header.toc_offset : header.span_offset])
        toc = json.loads(toc_raw.decode("utf-8"))
    except (zstandard.ZstdError, ValueError) as exc:
        raise FormatError(f"{where}: table of contents is corrupt ({exc})") from exc
    try:
        index = _from_toc(toc, where)
    except FormatError:
        raise
    except Exception as exc:  # any shape of garbage JSON: never a bare exception
        raise FormatError(f"{where}: table of contents is malformed ({exc!r})") from exc
    if expected_digest is not None and index.layer_digest != expected_digest:
        raise FormatError(
            f"{where}: index is for layer {index.layer_digest}, not {expected_digest}"
        )
    spans: list[Span] = []
    locations: list[tuple[int, int]] = []
    window_digests: list[bytes] = []
    chunk = index.chunk_size
    for i in range(header.span_count):
        cs, ce, us, ue, bits, woff, rlen, wlen, digest, wdigest = _SPAN.unpack_from(
            metadata, header.span_offset + i * SPAN_RECORD_SIZE
        )
        span = Span(i, cs, ce, us, ue, digest.hex(), bits, chunk)
        spans.append(span)
        if woff + rlen > header.windows_length:
            raise FormatError(f"{where}: record of span {i} lies outside the index")
        if cs <= ce and rlen - wlen != 36 * span.chunk_count:
            raise FormatError(f"{where}: record of span {i} does not hold its chunk table")
        locations.append((header.windows_offset + woff, rlen))
        window_digests.append(wdigest)
    _check_spans(spans, index, where)
    index.spans = spans
    index.window_locations = locations
    index.window_digests = window_digests
    index.read_windows = read_windows
    return index


def _from_toc(toc: dict[str, object], where: str) -> LayerIndex:
    entries = toc["entries"]
    if not isinstance(entries, dict):
        raise FormatError(f"{where}: entries are not an object")
    return LayerIndex(
        layer_digest=str(toc["layer_digest"]),
        media_type=str(toc["media_type"]),
        compression=str(toc["compression"]),
        blob_size=_nonneg(toc["blob_size"]),
        uncompressed_size=_nonneg(toc["uncompressed_size"]),
        span_size=_nonneg(toc["span_size"]),
        spans=[],
        entries=EntryTable(entries, where=where),
        tool=str(toc.get("tool", "")),
        chunk_size=_chunk_size(toc.get("chunk_size", 0)),
    )


def _chunk_size(value: object) -> int:
    size = _nonneg(value)
    if size and not 512 <= size < 1 << 31:
        raise ValueError(f"chunk size {size} out of range")
    return size


def _nonneg(value: object) -> int:
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


def _check_spans(spans: list[Span], index: LayerIndex, where: str) -> None:
    if not spans:
        raise FormatError(f"{where}: no spans")
    if spans[0].uncompressed_start != 0 or spans[-1].uncompressed_end != index.uncompressed_size:
        raise FormatError(f"{where}: spans do not cover the layer")
    for prev, cur in itertools.pairwise(spans):
        if cur.uncompressed_start != prev.uncompressed_end:
            raise FormatError(f"{where}: span {cur.index} does not follow span {prev.index}")
    for s in spans:
        if (
            s.bits > 7
            or s.compressed_start > s.compressed_end
            or s.compressed_end > index.blob_size
            or s.uncompressed_start > s.uncompressed_end
        ):
            raise FormatError(f"{where}: span {s.index} is out of range")
    entries = index.entries
    end = entries.data_end() if isinstance(entries, EntryTable) else 0
    if end > index.uncompressed_size:
        raise FormatError(f"{where}: an entry lies past the end of the layer")


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
