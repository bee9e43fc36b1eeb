"""zstd layers: spans at frame boundaries.

A zstd frame cannot be entered in the middle (restarting at a block boundary with the
previous window as a dictionary gives silently wrong output), but every frame starts afresh.
So a span is a run of whole frames: a new span starts at the first frame boundary after
``span_size`` uncompressed bytes. A single-frame blob (what most tools write for
``tar+zstd``) is one span, read by decoding forward; multi-frame blobs (zstd:chunked, the
seekable format, ``zstd --block-size`` style producers) get real random access. Skippable
frames belong to the span they follow.
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import FormatError
from .base import IndexerBase, Span, SpanHasher, SpanIndexer
from .plugin import NO_ANNOTATIONS, LayerFormat

if TYPE_CHECKING:  # imported where used: a gzip layer's read never loads zstandard
    import zstandard

#: Largest decoder window accepted (zstd's long mode goes to 2 GiB; 1 GiB is plenty for
#: layers and bounds memory on hostile input).
MAX_WINDOW = 1 << 30
#: Compressed bytes handed to the decoder per call, bounding the output of one call.
_FEED = 1 << 17

_local = threading.local()
#: Spans (and seekable frames) of at most this many uncompressed bytes are decoded by
#: their thread's decompressor, larger ones by a decompressor of their own, dropped after:
#: a decompressor keeps the buffers of the largest frame it decoded (up to its window,
#: MAX_WINDOW) as long as it lives, and threads of the pools live as long as the process.
REUSE_UP_TO = 4 << 20


def decompressor_for(size: int) -> zstandard.ZstdDecompressor:
    """A decompressor for ``size`` uncompressed bytes, to be read to their end inside one
    ``with`` of its ``stream_reader`` before this thread decodes anything else: up to
    REUSE_UP_TO bytes, this thread's own, made once (one is not for two threads at once;
    each ``stream_reader`` starts a fresh session); else a new one. Making one per span
    cost more than decoding most spans of a zstd:chunked layer: its 65k chunks (3.7 KB
    median) took 1.71 CPU-s with a new decompressor each, 0.93 with one."""
    import zstandard

    if size > REUSE_UP_TO:
        return zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    return dctx


class ZstdIndexer(IndexerBase):
    compression = "zstd"

    def __init__(
        self,
        span_size: int,
        *,
        name: str = "zstd blob",
        check_crc: bool = True,
        elide_windows: bool = False,
        chunk_size: int = 0,
    ) -> None:
        # frames are read whole (a span is decoded from its first frame): no chunks
        import zstandard

        super().__init__(span_size, name=name)
        self._dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
        self._frame: zstandard.ZstdDecompressionObj | None = None
        self._hasher = SpanHasher(0)
        self._span_cstart = 0
        self._span_ustart = 0

    def _close_span(self, end: int) -> None:
        digest = self._hasher.cut(end, end)
        self.spans.append(
            Span(len(self.spans), self._span_cstart, end, self._span_ustart, self._out, digest)
        )
        self._span_cstart = end
        self._span_ustart = self._out

    def feed(self, data: bytes) -> Iterator[bytes]:
        import zstandard

        if self._finished:
            raise RuntimeError("feed() after finish()")
        offset = self._fed
        self._hasher.add(data, offset)
        self._fed += len(data)
        pos = 0
        while pos < len(data):
            if self._frame is None:
                if self._out - self._span_ustart > self.span_size:
                    self._close_span(offset + pos)  # a frame starts here: a span may too
                self._frame = self._dctx.decompressobj()
            piece = data[pos : pos + _FEED]
            try:
                out = self._frame.decompress(piece)
            except zstandard.ZstdError as exc:
                raise FormatError(
                    f"{self._name}: corrupt zstd data near compressed offset {offset + pos} ({exc})"
                ) from None
            if out:
                self._out += len(out)
                yield out
            if self._frame.eof:
                pos += len(piece) - len(self._frame.unused_data)
                self._frame = None
            else:
                pos += len(piece)

    def finish(self) -> None:
        if self._finished:
            return
        if self._frame is not None:
            raise FormatError(f"{self._name}: truncated zstd stream (inside a frame)")
        if self._fed == 0:
            raise FormatError(f"{self._name}: empty zstd blob")
        self._close_span(self._fed)
        self._finished = True


def decode_span(
    span: Span,
    data: bytes | memoryview,
    window: bytes | None,
    *,
    name: str = "zstd blob",
    partial: bool = False,  # zstd spans are never chunked: always whole
) -> bytes:
    """The uncompressed bytes of a run of whole frames."""
    import zstandard

    want = span.uncompressed_size
    try:
        with decompressor_for(want).stream_reader(data, read_across_frames=True) as reader:
            out = read_up_to(reader, want + 1)
    except zstandard.ZstdError as exc:
        raise FormatError(f"{name}: span {span.index}: corrupt zstd data ({exc})") from None
    if len(out) != want:
        raise FormatError(f"{name}: span {span.index} produced {len(out)} bytes, index says {want}")
    return out


def decode_run(
    spans: Sequence[Span], data: bytes | bytearray, base: int, *, name: str = "zstd blob"
) -> list[memoryview] | None:
    """Spans of one frame each (a zstd:chunked layer's chunks), their compressed bytes in
    ``data`` from blob offset ``base``, decoded by one call of zstd's batch decoder: it
    leaves the GIL once for the run, where :func:`decode_span` leaves it once a span (65k
    times over a 1 GB layer, each a hand-over between threads). Each span's bytes are its
    range's first frame, of the size the span says: a range of several frames decodes
    short and fails its caller's check (by length and digest), which then decodes it by
    itself. None for spans this call is not for (empty, or larger than
    :data:`REUSE_UP_TO`)."""
    import zstandard

    if not spans or any(
        not 0 < span.uncompressed_size <= REUSE_UP_TO or span.compressed_size <= 0 for span in spans
    ):
        return None
    where = array("Q")
    for span in spans:
        where.append(span.compressed_start - base)
        where.append(span.compressed_size)
    sizes = array("Q", [span.uncompressed_size for span in spans])
    try:
        found = decompressor_for(REUSE_UP_TO).multi_decompress_to_buffer(
            zstandard.BufferWithSegments(data, memoryview(where)),
            decompressed_sizes=memoryview(sizes),
        )
    except (zstandard.ZstdError, ValueError) as exc:
        raise FormatError(f"{name}: spans {spans[0].index}-{spans[-1].index}: {exc}") from None
    # (a BufferSegment has the buffer protocol; zstandard's stubs do not say so)
    return [memoryview(found[k]) for k in range(len(spans))]  # type: ignore[arg-type]


def decode_stream(
    chunks: Iterator[bytes], start: int, end: int, *, name: str = "zstd blob"
) -> bytes:
    """Bytes ``[start, end)`` of the output of a run of frames fed as ``chunks``, decoding
    forward and keeping only the requested range in memory."""
    import zstandard

    dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    parts: list[bytes] = []
    pos = 0
    frame = dctx.decompressobj()
    try:
        for chunk in chunks:
            data = chunk
            while data:
                out = frame.decompress(data)
                if out:
                    a, b = max(start - pos, 0), min(end - pos, len(out))
                    if a < b:
                        parts.append(out[a:b])
                    pos += len(out)
                if frame.eof:
                    data = frame.unused_data
                    frame = dctx.decompressobj()
                else:
                    data = b""
            if pos >= end:
                break
    except zstandard.ZstdError as exc:
        raise FormatError(f"{name}: corrupt zstd data ({exc})") from None
    return b"".join(parts)


#: The most a span's decode asks of zstd in its first read (a read allocates what it asks
#: for before it decodes a byte)
_READ_PIECE = 64 << 20


def read_up_to(reader: Any, limit: int) -> bytes:
    """At most ``limit`` bytes of ``reader``: in one read up to :data:`_READ_PIECE`, then in
    reads that double, so that what is allocated stays within twice what the data has
    decoded to, whatever size a TOC claims (2**63: an OverflowError; 10**12: a MemoryError
    before a byte was decoded). A span past 64 MiB costs one more copy (the pieces
    joined)."""
    ask = min(limit, _READ_PIECE)
    pieces: list[bytes] = []
    got = 0
    while got < limit:
        asked = min(ask, limit - got)
        piece = reader.read(asked)
        pieces.append(piece)
        got += len(piece)
        if len(piece) < asked:  # (a read over bytes comes short only at their end)
            break
        ask = max(ask, got)  # the next read at most what came so far
    if len(pieces) == 1:
        return pieces[0]
    return b"".join(pieces)


#: zstd frame magic and the skippable-frame magics (0x184D2A50-0x184D2A5F), little-endian.
FRAME_MAGIC = 0xFD2FB528
SKIPPABLE_MASK, SKIPPABLE_MAGIC = 0xFFFFFFF0, 0x184D2A50


class ZstdFormat(LayerFormat):
    """``tar+zstd`` layers: one frame or many (zstd:chunked refines it; the seekable format
    is plain zstd with a seek table at the end, :mod:`.seekable`)."""

    name = compression = "zstd"
    layer_format = "tar"
    media_types = frozenset(
        {
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
            "application/vnd.docker.image.rootfs.diff.tar.zstd",
        }
    )
    decode_stream = staticmethod(decode_stream)
    decode_run = staticmethod(decode_run)

    def sniff(
        self,
        *,
        head: bytes | None = None,
        tail: bytes | None = None,
        annotations: Mapping[str, str] = NO_ANNOTATIONS,
    ) -> bool:
        if head is None or len(head) < 4:
            return False
        magic = int.from_bytes(head[:4], "little")
        return magic == FRAME_MAGIC or magic & SKIPPABLE_MASK == SKIPPABLE_MAGIC

    def new_indexer(
        self,
        span_size: int,
        *,
        name: str,
        check_crc: bool = True,
        elide_windows: bool = False,
        chunk_size: int = 0,
    ) -> SpanIndexer:
        return ZstdIndexer(span_size, name=name)

    def decode_span(
        self,
        span: Span,
        data: bytes | memoryview,
        window: bytes | None,
        *,
        name: str = "layer",
        partial: bool = False,
    ) -> bytes:
        return decode_span(span, data, window, name=name, partial=partial)
