"""GZIDX: the gzip checkpoint index of indexed_gzip (zran), also read by rapidgzip and
ratarmount. Export seekoci's gzip checkpoints as one, import one as seekoci spans.

Layout, little-endian (checked against indexed_gzip 1.10's ``export_index``)::

     0  5  b"GZIDX"           5  1  u8 version (1)     6  1  u8 flags (0)
     7  8  u64 compressed size                          15  8  u64 uncompressed size
    23  4  u32 point spacing  27  4  u32 window size (32768)   31  4  u32 point count
    35     point count x 18 bytes: u64 compressed offset, u64 uncompressed offset,
                                   u8 bits, u8 has_window
           then one raw window (window size bytes) per point that has one, in point order

A point's compressed offset is the first whole byte after its deflate block boundary, and
``bits`` (0-7) how many bits of the byte before it belong to the block -- exactly SOCI's
checkpoints and seekoci's spans (a span starts at ``offset - 1`` when ``bits``). The first
point sits after the gzip header with no window; indexed_gzip also writes a last point at
the end of the stream (both sizes), which starts no span.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import FormatError
from .base import WINDOW_SIZE

MAGIC = b"GZIDX"
VERSIONS = (0, 1)
_HEADER = struct.Struct("<5sBBQQIII")
_POINT = struct.Struct("<QQBB")
#: Points a file may declare (a hostile count must not make us allocate without bound).
MAX_POINTS = 1 << 24


@dataclass(frozen=True, slots=True)
class Point:
    compressed_offset: int
    uncompressed_offset: int
    bits: int
    #: the 32 KiB before ``uncompressed_offset`` (b"" when the point has none)
    window: bytes = field(repr=False, default=b"")

    @property
    def span_start(self) -> int:
        """Where a span starting at this point begins in the blob."""
        return self.compressed_offset - (1 if self.bits else 0)


@dataclass(frozen=True)
class Gzidx:
    compressed_size: int
    uncompressed_size: int
    spacing: int
    points: list[Point]


def read(data: bytes, *, where: str = "GZIDX") -> Gzidx:
    """Parse a GZIDX file (FormatError for anything malformed or unknown)."""
    if len(data) < _HEADER.size:
        raise FormatError(f"{where}: too short for a GZIDX header")
    magic, version, _flags, csize, usize, spacing, wsize, count = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FormatError(f"{where}: not a GZIDX file")
    if version not in VERSIONS:
        raise FormatError(f"{where}: GZIDX version {version} is not supported")
    if wsize != WINDOW_SIZE:
        raise FormatError(f"{where}: window size {wsize} is not {WINDOW_SIZE}")
    if count > MAX_POINTS or _HEADER.size + count * _POINT.size > len(data):
        raise FormatError(f"{where}: {count} points do not fit the file")
    raw = [_POINT.unpack_from(data, _HEADER.size + i * _POINT.size) for i in range(count)]
    pos = _HEADER.size + count * _POINT.size
    points: list[Point] = []
    prev_in = prev_out = -1
    for i, (cin, out, bits, has_window) in enumerate(raw):
        if bits > 7 or has_window > 1:
            raise FormatError(f"{where}: point {i} is malformed")
        if cin > csize or out > usize or cin < prev_in or out < prev_out:
            raise FormatError(f"{where}: point {i} ({cin}, {out}) is out of order or range")
        if bits and cin == 0:
            raise FormatError(f"{where}: point {i} starts inside a byte before the blob")
        window = b""
        if has_window:
            window = data[pos : pos + wsize]
            if len(window) != wsize:
                raise FormatError(f"{where}: point {i}'s window is cut short")
            pos += wsize
        points.append(Point(cin, out, bits, window))
        prev_in, prev_out = cin, out
    if not points:
        raise FormatError(f"{where}: no points")
    # newer writers may append more (line numbers): what follows is not ours to read
    return Gzidx(csize, usize, spacing, points)


def write(index: Gzidx) -> bytes:
    """The GZIDX bytes of ``index`` (version 1)."""
    parts = [
        _HEADER.pack(
            MAGIC,
            1,
            0,
            index.compressed_size,
            index.uncompressed_size,
            index.spacing,
            WINDOW_SIZE,
            len(index.points),
        )
    ]
    for p in index.points:
        parts.append(
            _POINT.pack(p.compressed_offset, p.uncompressed_offset, p.bits, bool(p.window))
        )
    for p in index.points:
        if p.window:
            if len(p.window) != WINDOW_SIZE:
                raise ValueError("a GZIDX window is 32 KiB")
            parts.append(p.window)
    return b"".join(parts)
