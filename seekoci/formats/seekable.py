"""The zstd seekable format: independent frames and a seek table at the end.

The last frame is a skippable one (magic ``0x184D2A5E``) whose payload is the seek table::

    N entries, each:  u32 compressed size   u32 decompressed size   [u32 checksum]
    footer (9 bytes): u32 N   u8 descriptor   u32 magic 0x8F92EAB1

Descriptor bit 7: each entry carries the low 32 bits of the XXH64 (seed 0) of its frame's
decompressed bytes. Bits 6-0 are reserved or unused; a table that sets any of them is
refused rather than guessed at. The table must account for every byte before it, so that a
frame it does not list cannot hide there.

A seekable blob is a valid multi-frame zstd stream: as a layer it is indexed like any zstd
layer (spans at frame boundaries); :class:`SeekTable` serves any uncompressed range straight
from the frames that hold it, before or without that index.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import FormatError, IntegrityError
from .zstd import decompressor_for, read_up_to

try:  # the table's checksums are XXH64; without the package, frames' own checksums only
    import xxhash

    _xxh64: Callable[[bytes], int] | None = xxhash.xxh64_intdigest
except ImportError:  # pragma: no cover - the test extra installs it
    _xxh64 = None

SEEK_TABLE_MAGIC = 0x8F92EAB1
SKIPPABLE_MAGIC = 0x184D2A5E
FOOTER_SIZE = 9
_FOOTER = struct.Struct("<IBI")
_CHECKSUM_FLAG = 0x80
#: Frames a table may list (a hostile footer must not make us allocate without bound).
MAX_FRAMES = 1 << 24


def is_seekable(tail: bytes) -> bool:
    """Whether the blob's last bytes are a seek table footer."""
    return len(tail) >= FOOTER_SIZE and _FOOTER.unpack(tail[-FOOTER_SIZE:])[2] == SEEK_TABLE_MAGIC


@dataclass(frozen=True, slots=True)
class Frame:
    compressed_start: int
    compressed_end: int
    uncompressed_start: int
    uncompressed_end: int
    #: low 32 bits of XXH64 of the decompressed frame (None: the table has none)
    checksum: int | None


class SeekTable:
    """The frames of a seekable blob, read through ``read_range``."""

    def __init__(self, frames: list[Frame], *, name: str) -> None:
        self.frames = frames
        self.name = name
        self._starts = [f.uncompressed_start for f in frames]

    @property
    def uncompressed_size(self) -> int:
        return self.frames[-1].uncompressed_end if self.frames else 0

    @classmethod
    def read(cls, read_range: Callable[[int, int], bytes], size: int, *, name: str) -> SeekTable:
        """Parse the seek table at the end of a ``size``-byte blob (two range reads: the
        footer, then the table)."""
        if size < FOOTER_SIZE + 8:
            raise FormatError(f"{name}: too short for a seek table")
        count, descriptor, magic = _FOOTER.unpack(read_range(size - FOOTER_SIZE, FOOTER_SIZE))
        if magic != SEEK_TABLE_MAGIC:
            raise FormatError(f"{name}: no seek table footer")
        if descriptor & ~_CHECKSUM_FLAG:
            raise FormatError(f"{name}: seek table descriptor {descriptor:#04x} sets reserved bits")
        entry = 12 if descriptor & _CHECKSUM_FLAG else 8
        payload = count * entry + FOOTER_SIZE
        table_start = size - payload - 8
        if count > MAX_FRAMES or table_start < 0:
            raise FormatError(f"{name}: seek table of {count} frames does not fit the blob")
        table = read_range(table_start, payload + 8 - FOOTER_SIZE)
        header_magic, frame_size = struct.unpack_from("<II", table)
        if header_magic != SKIPPABLE_MAGIC or frame_size != payload:
            raise FormatError(f"{name}: the seek table's skippable frame header is wrong")
        frames: list[Frame] = []
        cpos = upos = 0
        for i in range(count):
            fields = struct.unpack_from("<III" if entry == 12 else "<II", table, 8 + i * entry)
            csize, usize = fields[0], fields[1]
            frames.append(
                Frame(cpos, cpos + csize, upos, upos + usize, fields[2] if entry == 12 else None)
            )
            cpos += csize
            upos += usize
        if cpos != table_start:
            raise FormatError(
                f"{name}: the seek table lists {cpos} compressed bytes, {table_start} precede it"
            )
        return cls(frames, name=name)

    def decode_frame(self, frame: Frame, data: bytes) -> bytes:
        """A frame's bytes from its compressed bytes, checked against the table."""
        where = f"{self.name}: frame at compressed {frame.compressed_start}"
        want = frame.uncompressed_end - frame.uncompressed_start
        import zstandard

        try:
            dctx = decompressor_for(want)
            with dctx.stream_reader(data, read_across_frames=False) as reader:
                out = read_up_to(reader, want + 1)  # (a table says up to 4 GiB)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"{where} is corrupt ({exc})") from None
        if len(out) != want:
            raise IntegrityError(f"{where} decodes to {len(out)} bytes, the table says {want}")
        checked = frame.checksum is not None and _xxh64 is not None
        if checked and _xxh64(out) & 0xFFFFFFFF != frame.checksum:  # type: ignore[misc]
            raise IntegrityError(f"{where} does not match its XXH64 checksum")
        return out

    def read_range(
        self, read_range: Callable[[int, int], bytes], offset: int, length: int
    ) -> bytes:
        """Bytes ``[offset, offset + length)`` of the decompressed stream, from the frames
        that hold them (one range read for all of them)."""
        end = min(offset + length, self.uncompressed_size)
        if offset >= end:
            return b""
        first = bisect.bisect_right(self._starts, offset) - 1
        last = bisect.bisect_left(self._starts, end) - 1
        frames = self.frames[first : last + 1]
        cstart = frames[0].compressed_start
        data = read_range(cstart, frames[-1].compressed_end - cstart)
        parts = []
        for f in frames:
            raw = data[f.compressed_start - cstart : f.compressed_end - cstart]
            parts.append(self.decode_frame(f, raw))
        joined = b"".join(parts)
        base = frames[0].uncompressed_start
        return joined[offset - base : end - base]
