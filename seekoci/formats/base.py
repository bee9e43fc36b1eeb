"""What every layer format plugs in: spans, a push-style indexer and a span decoder.

A layer blob is cut into *spans*: independent pieces whose compressed bytes can be fetched
with one range request, verified against their own sha256 and decoded without any other
span. A format supplies

* an :class:`SpanIndexer`, fed the blob front to back once; it yields the uncompressed tar
  stream (for the table of contents) and records where spans start and end, and
* ``decode_span(span, data, window)``, which turns one span's compressed bytes back into its
  uncompressed bytes.

gzip (:mod:`.gzip`) and plain tar (:mod:`.plain`) are the first two; zstd, eStargz and
zstd:chunked plug in the same way.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, overload

from ..errors import FormatError

#: A deflate window is at most this long.
WINDOW_SIZE = 32768

#: How a span's ``digest`` is checked (:attr:`Span.check`).
#: ``compressed``: sha256 of the fetched compressed bytes (or of their chunk digests), checked
#: before decoding -- what seekoci's own index and SOCI's zTOC record.
CHECK_COMPRESSED = "compressed"
#: ``uncompressed``: sha256 of the span's decoded bytes (after :attr:`Span.skip`), checked
#: after decoding -- what an embedded TOC records (eStargz and zstd:chunked ``chunkDigest``).
CHECK_UNCOMPRESSED = "uncompressed"
#: ``none``: the format carries no digest for the span (legacy stargz).
CHECK_NONE = "none"


@dataclass(frozen=True, slots=True)
class Span:
    """One independently decodable piece of a layer.

    ``compressed_start``/``compressed_end`` delimit the bytes to fetch (end exclusive), which
    may overlap the previous span by one byte when the span starts inside a byte (gzip
    checkpoints with ``bits != 0``). ``digest`` is the sha256 hex of exactly those bytes.
    """

    index: int
    compressed_start: int
    compressed_end: int
    uncompressed_start: int
    uncompressed_end: int
    digest: str
    #: gzip: bits of the byte at ``compressed_start`` that belong to this span (0-7).
    bits: int = 0
    #: When non-zero the span is verified in *chunks* of this many compressed bytes (the
    #: last one shorter), so that a read can fetch and check only the chunks it needs, and
    #: ``digest`` is the sha256 of the chunks' sha256 digests in order
    #: (:func:`chunked_digest`). Zero: ``digest`` is the sha256 of the bytes themselves.
    chunk_size: int = 0
    #: What ``digest`` is the sha256 of (``CHECK_*``).
    check: str = CHECK_COMPRESSED
    #: Uncompressed bytes the compressed range decodes to *before* the span's own bytes
    #: (eStargz ``innerOffset``: small files share one gzip member).
    skip: int = 0
    #: The span's bytes are all zeros and are not fetched (zstd:chunked ``chunkType: zeros``).
    zeros: bool = False

    @property
    def fetched(self) -> bool:
        """Whether reading the span fetches anything."""
        return not self.zeros and self.compressed_end > self.compressed_start

    @property
    def chunk_count(self) -> int:
        if not self.chunk_size:
            return 0
        return max(1, -(-self.compressed_size // self.chunk_size))

    @property
    def compressed_size(self) -> int:
        return self.compressed_end - self.compressed_start

    @property
    def uncompressed_size(self) -> int:
        return self.uncompressed_end - self.uncompressed_start


def chunk_digests(data: bytes | memoryview, chunk_size: int) -> list[bytes]:
    """sha256 of each ``chunk_size`` slice of ``data`` (at least one, for empty data)."""
    view = memoryview(data)
    return [
        hashlib.sha256(view[i : i + chunk_size]).digest()
        for i in range(0, max(len(data), 1), chunk_size)
    ]


def chunked_digest(digests: list[bytes]) -> str:
    """A chunked span's ``digest``: sha256 of its chunk digests, concatenated."""
    return hashlib.sha256(b"".join(digests)).hexdigest()


def span_matches(span: Span, data: bytes | memoryview) -> bool:
    """Whether ``data`` are exactly the span's compressed bytes (for a span checked after
    decoding, :func:`decoded_matches` decides; here only the length)."""
    if len(data) != span.compressed_size:
        return False
    if span.check != CHECK_COMPRESSED:
        return True
    if span.chunk_size:
        return chunked_digest(chunk_digests(data, span.chunk_size)) == span.digest
    return hashlib.sha256(data).hexdigest() == span.digest


def decoded_matches(span: Span, decoded: bytes | memoryview) -> bool:
    """Whether a span checked after decoding (``check`` not ``compressed``) decoded to its
    bytes: the right length and, when the format records one, the right sha256."""
    if len(decoded) != span.uncompressed_size:
        return False
    if span.check == CHECK_UNCOMPRESSED:
        return hashlib.sha256(decoded).hexdigest() == span.digest
    return True


class SpanVerifier:
    """Checks a span's compressed bytes fed in pieces, whole or chunked."""

    def __init__(self, span: Span) -> None:
        self._span = span
        self._hash = hashlib.sha256()
        self._in_chunk = 0
        self._chunks: list[bytes] = []

    def update(self, data: bytes) -> None:
        size = self._span.chunk_size
        if not size:
            self._hash.update(data)
            return
        view = memoryview(data)
        while view:
            take = min(len(view), size - self._in_chunk)
            self._hash.update(view[:take])
            self._in_chunk += take
            view = view[take:]
            if self._in_chunk == size:
                self._chunks.append(self._hash.digest())
                self._hash = hashlib.sha256()
                self._in_chunk = 0

    def matches(self) -> bool:
        if not self._span.chunk_size:
            return self._hash.hexdigest() == self._span.digest
        chunks = list(self._chunks)
        if self._in_chunk or not chunks:
            chunks.append(self._hash.digest())
        return chunked_digest(chunks) == self._span.digest


@dataclass(frozen=True)
class ChunkTable:
    """What a read needs to fetch and check only the start of a chunked span.

    ``digests[k]``: sha256 of chunk k. ``marks[k]``: uncompressed bytes (from the span's
    start) that chunks 0..k are known to decode to -- a lower bound measured at build time,
    so fetching through chunk k always yields at least that much.
    """

    digests: list[bytes]
    marks: list[int]

    def encode(self) -> bytes:
        return b"".join(self.digests) + struct.pack(f"<{len(self.marks)}I", *self.marks)

    @classmethod
    def decode(cls, data: bytes, count: int, *, where: str) -> ChunkTable:
        if len(data) != 36 * count:
            raise FormatError(f"{where}: chunk table has the wrong size")
        digests = [data[32 * i : 32 * i + 32] for i in range(count)]
        base = 32 * count
        marks = list(struct.unpack_from(f"<{count}I", data, base))
        if any(b < a for a, b in itertools.pairwise(marks)):
            raise FormatError(f"{where}: chunk marks go backwards")
        return cls(digests, marks)

    def chunks_for(self, upto: int) -> int:
        """How many chunks to fetch for the span's first ``upto`` uncompressed bytes."""
        for k, mark in enumerate(self.marks):
            if mark >= upto:
                return k + 1
        return len(self.marks)


T = TypeVar("T")


class IndexedSequence(Sequence[T]):
    """A Sequence whose items come from ``_at(i)`` (``0 <= i < len``): indexing from the
    end, bounds and slices handled once, here."""

    def _at(self, i: int) -> T:
        raise NotImplementedError

    def _index(self, i: int) -> int:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"{type(self).__name__} index out of range")
        return i

    @overload
    def __getitem__(self, i: int) -> T: ...

    @overload
    def __getitem__(self, i: slice) -> list[T]: ...

    def __getitem__(self, i: int | slice) -> T | list[T]:
        if isinstance(i, slice):
            return [self._at(j) for j in range(*i.indices(len(self)))]
        return self._at(self._index(i))


class SpanIndexer(Protocol):
    """Push-style single pass over a blob that records spans."""

    #: Spans completed so far (their end and digest are known).
    spans: list[Span]

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Consume the next compressed bytes; yield the uncompressed bytes they produce."""
        ...

    def finish(self) -> None:
        """Signal the end of the blob: close the last span, raise FormatError if truncated."""
        ...

    def window(self, span_index: int) -> bytes | None:
        """The decoder state saved for a span (gzip: its 32 KiB window), if any."""
        ...

    def packed_window(self, span_index: int) -> bytes:
        """That state as stored in an index (b"" for none)."""
        ...

    def packed_length(self, span_index: int) -> int:
        """Length of :meth:`packed_window` without reading it."""
        ...

    def chunk_table(self, span_index: int) -> ChunkTable | None:
        """The chunk digests and marks of a chunked span (None when spans are not chunked)."""
        ...

    @property
    def uncompressed_size(self) -> int:
        """Uncompressed bytes produced so far."""
        ...


class IndexerBase:
    """What every :class:`SpanIndexer` shares: the span list, the byte counters, and no
    decoder state per span (gzip overrides ``window``/``packed_window``)."""

    compression = ""

    def __init__(
        self,
        span_size: int,
        *,
        name: str,
        check_crc: bool = True,
        elide_windows: bool = False,
        chunk_size: int = 0,
    ) -> None:
        if span_size <= 0:
            raise ValueError("span_size must be positive")
        if chunk_size < 0 or chunk_size >= 1 << 31:
            raise ValueError("chunk_size out of range")
        self.span_size = span_size
        self.chunk_size = chunk_size
        self.spans: list[Span] = []
        self._chunk_tables: list[ChunkTable] = []
        self._name = name
        self._fed = 0  # compressed bytes received
        self._out = 0  # uncompressed bytes produced
        self._finished = False

    @property
    def uncompressed_size(self) -> int:
        return self._out

    def window(self, span_index: int) -> bytes | None:
        return None

    def packed_window(self, span_index: int) -> bytes:
        return b""

    def packed_length(self, span_index: int) -> int:
        return 0

    def chunk_table(self, span_index: int) -> ChunkTable | None:
        return self._chunk_tables[span_index] if self.chunk_size else None


class WindowStore:
    """Packed windows kept in an anonymous temporary file, not in memory: a 3 GB layer has
    ~3000 windows (~57 MB), a 15 GB one five times that, and the build's memory should not
    grow with the layer. ``pread``/``pwrite`` under a lock for the locations, so windows can
    be replaced from another thread while others are read."""

    def __init__(self) -> None:
        # lives as long as the index that reads from it; closed (and gone) when collected
        import tempfile  # not at import: a read from a published index never needs it

        self._file = tempfile.TemporaryFile(prefix="seekoci-windows-")  # noqa: SIM115
        self._end = 0
        self._locations: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._locations)

    def _put(self, packed: bytes) -> tuple[int, int]:
        with self._lock:
            at = self._end
            self._end += len(packed)
        if packed:
            os.pwrite(self._file.fileno(), packed, at)
        return at, len(packed)

    def append(self, packed: bytes) -> None:
        location = self._put(packed)
        with self._lock:
            self._locations.append(location)

    def replace(self, index: int, packed: bytes) -> None:
        """Store a (smaller) window in place of span ``index``'s (written before it is
        pointed at: a reader sees the old window or the new one)."""
        location = self._put(packed)
        with self._lock:
            self._locations[index] = location

    def drop(self, index: int) -> None:
        """Forget a window that turned out to be unneeded (its bytes stay, unreferenced)."""
        with self._lock:
            self._locations[index] = (0, 0)

    def length(self, index: int) -> int:
        return self._locations[index][1]

    def read(self, index: int) -> bytes:
        offset, length = self._locations[index]
        if not length:
            return b""
        data = os.pread(self._file.fileno(), length, offset)
        if len(data) != length:
            raise FormatError("checkpoint window store is cut short")
        return data


class SpanHasher:
    """sha256 of consecutive (possibly one-byte-overlapping) compressed ranges of a stream.

    Bytes arrive in order through :meth:`add`; :meth:`cut` closes the current range at
    ``end`` and opens the next one at ``next_start`` (``end`` or ``end - 1``). Ranges end no
    further than the bytes added so far, so only the current chunk and one byte before it are
    ever kept.
    """

    def __init__(self, start: int, chunk_size: int = 0) -> None:
        self._hash = hashlib.sha256()
        self._chunk_size = chunk_size
        self._chunk_digests: list[bytes] = []
        #: chunk digests of the range :meth:`cut` closed last (chunked hashers)
        self.last_chunks: list[bytes] = []
        self._span_start = start
        self._hashed_to = start  # next stream offset to hash
        self._chunk = b""
        self._chunk_start = 0
        self._prev_byte = b""  # the byte just before _chunk_start

    def add(self, data: bytes, offset: int) -> None:
        """Register the chunk ``data`` found at stream ``offset`` (right after the last one)."""
        self._hash_to(self._chunk_start + len(self._chunk))
        if self._chunk:
            self._prev_byte = self._chunk[-1:]
        self._chunk = data
        self._chunk_start = offset

    def _slice(self, a: int, b: int) -> bytes:
        if a >= b:
            return b""
        if a == self._chunk_start - 1:
            return self._prev_byte + self._chunk[: b - self._chunk_start]
        return self._chunk[a - self._chunk_start : b - self._chunk_start]

    def _hash_to(self, end: int) -> None:
        start = max(self._hashed_to, self._span_start)
        if end <= start:
            return
        if not self._chunk_size:
            self._hash.update(self._slice(start, end))
        else:  # close a chunk at every chunk_size bytes from the range's start
            size = self._chunk_size
            while start < end:
                boundary = start + size - (start - self._span_start) % size
                stop = min(end, boundary)
                self._hash.update(self._slice(start, stop))
                if stop == boundary:
                    self._chunk_digests.append(self._hash.digest())
                    self._hash = hashlib.sha256()
                start = stop
        self._hashed_to = end

    def cut(self, end: int, next_start: int) -> str:
        """Close the range at ``end`` (exclusive); return its hex digest; start the next.

        A chunked hasher's digest is :func:`chunked_digest` of the range's chunks (also
        left in :attr:`last_chunks`)."""
        self._hash_to(end)
        if self._chunk_size:
            if (end - self._span_start) % self._chunk_size or end == self._span_start:
                self._chunk_digests.append(self._hash.digest())  # the short last chunk
            self.last_chunks, self._chunk_digests = self._chunk_digests, []
            digest = chunked_digest(self.last_chunks)
        else:
            digest = self._hash.hexdigest()
        self._hash = hashlib.sha256()
        self._span_start = next_start
        self._hashed_to = next_start
        if next_start < end:
            self._hash_to(end)
        self._hashed_to = max(end, next_start)
        return digest

    @property
    def span_start(self) -> int:
        return self._span_start


class WindowPacker:
    """Compresses checkpoint windows (zstd level 3: five times faster than zlib level 1
    for the same size, which is ~10% of an index build)."""

    def __init__(self) -> None:
        import zstandard  # imported by what packs or unpacks windows, not by every read

        self._zstd = zstandard.ZstdCompressor(level=3)

    def pack(self, window: bytes) -> bytes:
        return self._zstd.compress(window) if window else b""


def decompress_bounded(data: bytes, limit: int, *, what: str) -> bytes:
    """A zstd frame's bytes, refusing more than ``limit`` (FormatError naming ``what``).

    zstandard allocates whatever size a frame header claims: the claim is checked first,
    and a frame that does not say is read at most one byte past the limit."""
    import zstandard

    try:
        claimed = zstandard.frame_content_size(data)
        if claimed > limit:
            raise FormatError(f"{what} claims {claimed} bytes")
        if claimed >= 0:
            out = zstandard.ZstdDecompressor().decompress(data)
        else:
            out = zstandard.ZstdDecompressor().stream_reader(data).read(limit + 1)
    except zstandard.ZstdError as exc:
        raise FormatError(f"{what} is corrupt ({exc})") from None
    if len(out) > limit:
        raise FormatError(f"{what} is too big")
    return bytes(out)


def unpack_window(packed: bytes, *, where: str) -> bytes:
    return decompress_bounded(packed, WINDOW_SIZE, what=f"{where}: checkpoint window")
