"""AWS SOCI zTOC: the flatbuffer table of contents + checkpoints of one layer.

A zTOC (schema ``ztoc.fbs`` of soci-snapshotter, namespace ``ztoc``, root ``Ztoc``, no file
identifier) lists every tar entry of a layer with the offset of its data in the
uncompressed tar stream, and carries the checkpoints that let a reader decode one span of
the layer without the spans before it. Tables, fields in slot order::

    Ztoc             0 version: string ("0.9")      1 build_tool_identifier: string
                     2 compressed_archive_size: long 3 uncompressed_archive_size: long
                     4 toc: TOC                      5 compression_info: CompressionInfo
    TOC              0 metadata: [FileMetadata]
    FileMetadata     0 name  1 type  2 uncompressed_offset: long  3 uncompressed_size: long
                     4 linkname  5 mode: long  6 uid: uint  7 gid: uint  8 uname  9 gname
                     10 mod_time (RFC 3339, ns)  11 devmajor: long  12 devminor: long
                     13 xattrs: [Xattr]  (every PAX record of the entry, sorted by key)
    Xattr            0 key: string  1 value: string
    CompressionInfo  0 compression_algorithm: byte (Gzip = 1, the default; Uncompressed = 2)
                     1 max_span_id: int  2 span_digests: [string]  3 checkpoints: [ubyte]

``checkpoints`` holds, for gzip layers, the checkpoint blob (little-endian, no padding)::

    i32 N, i64 span_size, then N records of 32 785 bytes:
    i64 in, i64 out, u8 bits, 32 768 window bytes (zero-padded at the front near the start)

(a blob of 12 + 32 785 * (N - 1) bytes is the legacy form without checkpoint 0: in = 10,
out = 0, bits = 0); for uncompressed layers a flatbuffer ``zinfo.TarZinfo {version: int = 2,
span_size: long, size: long}`` (older builders wrote those 20 bytes raw), spans being fixed
slices of the blob.

The table of contents is what Go's ``archive/tar`` reports (SOCI builds it with it), so
readers can re-read each tar header and compare: ``uncompressed_archive_size`` is where Go's
reader stops (after the two zero blocks), not the length of the decompressed stream.

Decoding verifies the flatbuffer as it goes (every offset, length and vtable is bounds
checked), so a truncated or hostile zTOC is a :class:`FormatError`, never an IndexError,
a wrong read or a loop over a length that the bytes cannot hold.
"""

from __future__ import annotations

import functools
import itertools
import operator
import re
import struct
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

from .. import _json
from ..errors import FormatError
from .base import WINDOW_SIZE, Span
from .entries import EntryTable, NameLookup
from .gzip import GZIP_MAGIC, GzipIndexer
from .index import LayerIndex
from .plain import PlainIndexer
from .tar import _TYPES, BLOCK, TarEntry, TarScanner, _number, normalize_name, unsafe_name

if TYPE_CHECKING:
    import flatbuffers  # type: ignore[import-untyped, unused-ignore]

ZTOC_VERSION = "0.9"
GZIP = "gzip"
UNCOMPRESSED = "uncompressed"
_ALGORITHMS = {1: GZIP, 2: UNCOMPRESSED}
_ALGORITHM_IDS = {name: value for value, name in _ALGORITHMS.items()}
#: ``TarZinfo.version`` (the same as the C gzip zinfo's).
TAR_ZINFO_VERSION = 2
#: Newer SOCI builders may append this and a JSON list of prefetch files to a zTOC.
PREFETCH_SEPARATOR = b"---SOCI-PREFETCH---"
#: Separators looked at from a zTOC's end before it is taken as having no prefetch list
_PREFETCH_TRIES = 8
#: The longest prefetch list parsed to tell it is one (a list of paths; a 30 MB list of
#: empty objects took 750 MB to parse): a longer tail is taken for one by its brackets
_PREFETCH_PARSED = 1 << 20
#: ``type`` strings of the table of contents (Go's archive/tar type flags SOCI accepts).
FILE_TYPES = ("reg", "dir", "symlink", "hardlink", "char", "block", "fifo")

_CHECKPOINT_HEADER = struct.Struct("<iq")  # N, span_size
_CHECKPOINT_POINT = struct.Struct("<qqB")  # in, out, bits (then the window)
CHECKPOINT_RECORD_SIZE = _CHECKPOINT_POINT.size + WINDOW_SIZE  # 32 785
_LEGACY_FIRST_IN = 10  # a minimal gzip header
_TAR_ZINFO_RAW = struct.Struct("<iqq")  # the pre-flatbuffer TarZinfo: 20 bytes

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")
_RFC3339 = re.compile(
    r"(-?\d{4,})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|([+-])(\d\d):(\d\d))\Z"
)

_I8 = struct.Struct("<b")
_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
#: What reading a malformed flatbuffer's fields raises before a check can say what is wrong
#: (an offset out of bounds, a field cut short, bytes that are no UTF-8): a FormatError then
_MALFORMED = (struct.error, IndexError, ValueError, OverflowError, UnicodeError)


@dataclass
class ZtocFile:
    """One entry of a zTOC's table of contents (one tar member, in archive order)."""

    name: str  # as stored in the tar (PAX path / GNU long name / ustar prefix + name)
    type: str  # one of FILE_TYPES
    uncompressed_offset: int  # offset of the entry's data in the tar stream
    uncompressed_size: int
    linkname: str = ""
    mode: int = 0  # the raw header mode field
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mod_time: str = ""  # RFC 3339 with nanoseconds, as Go's time.MarshalText writes it
    devmajor: int = 0
    devminor: int = 0
    #: the entry's PAX records (SOCI calls them xattrs), raw values, sorted by key
    xattrs: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Ztoc:
    """A decoded zTOC. ``checkpoints`` are the checkpoint bytes exactly as stored."""

    version: str
    build_tool_identifier: str
    compressed_size: int
    uncompressed_size: int
    compression_algorithm: str  # "gzip" or "uncompressed"
    max_span_id: int
    span_digests: list[str]
    checkpoints: bytes
    files: list[ZtocFile]
    #: header offsets found by the last check (kept while ``files`` is the same list)
    _checked: tuple[int, int, list[tuple[int, ZtocFile]]] | None = field(
        default=None, init=False, repr=False, compare=False
    )


@dataclass(frozen=True)
class Checkpoint:
    """Where span i of a gzip layer starts: ``compressed_offset`` is the first whole byte
    after the block boundary, ``bits`` how many bits of the byte before it still belong to
    the span, ``window`` the 32 KiB of uncompressed data before ``uncompressed_offset``."""

    compressed_offset: int
    uncompressed_offset: int
    bits: int
    window: bytes

    @property
    def compressed_start(self) -> int:
        """First byte of the span's compressed bytes (one earlier when it starts mid-byte)."""
        return self.compressed_offset - (1 if self.bits else 0)


# --------------------------------------------------------------------------- checkpoints


def gzip_checkpoints_blob(span_size: int, points: Sequence[Checkpoint]) -> bytes:
    """SOCI's checkpoint blob for gzip layers (always the form with checkpoint 0)."""
    parts = [_CHECKPOINT_HEADER.pack(len(points), span_size)]
    for p in points:
        if len(p.window) > WINDOW_SIZE:
            raise ValueError("a checkpoint window is at most 32 KiB")
        parts.append(_CHECKPOINT_POINT.pack(p.compressed_offset, p.uncompressed_offset, p.bits))
        parts.append(bytes(WINDOW_SIZE - len(p.window)) + p.window)  # zero-padded at the front
    return b"".join(parts)


class _Record(NamedTuple):
    """One checkpoint as its blob stores it (a tuple: a zTOC's few hundred are made on
    every index load, and a frozen dataclass costs ~1 ms to create at import)."""

    cin: int
    cout: int
    bits: int
    window_offset: int  # in the blob; -1: no stored window (legacy checkpoint 0)


def _checkpoint_records(blob: bytes | memoryview, where: str) -> tuple[int, list[_Record]]:
    if len(blob) < _CHECKPOINT_HEADER.size:
        raise FormatError(f"{where}: checkpoint blob of {len(blob)} bytes is too short")
    count, span_size = _CHECKPOINT_HEADER.unpack_from(blob)
    if count < 1:
        raise FormatError(f"{where}: checkpoint blob holds {count} checkpoints")
    body = len(blob) - _CHECKPOINT_HEADER.size
    if body == count * CHECKPOINT_RECORD_SIZE:
        stored, records = count, []
    elif body == (count - 1) * CHECKPOINT_RECORD_SIZE:  # legacy: checkpoint 0 left out
        stored, records = count - 1, [_Record(_LEGACY_FIRST_IN, 0, 0, -1)]
    else:
        raise FormatError(
            f"{where}: checkpoint blob of {len(blob)} bytes does not hold {count} checkpoints"
        )
    if span_size <= 0:
        raise FormatError(f"{where}: checkpoint blob has span size {span_size}")
    for i in range(stored):
        at = _CHECKPOINT_HEADER.size + i * CHECKPOINT_RECORD_SIZE
        cin, cout, bits = _CHECKPOINT_POINT.unpack_from(blob, at)
        records.append(_Record(cin, cout, bits, at + _CHECKPOINT_POINT.size))
    if records[0].cout != 0:
        raise FormatError(f"{where}: checkpoint 0 is not at the start of the stream")
    for i, r in enumerate(records):
        if r.bits > 7 or r.cin < _LEGACY_FIRST_IN:
            raise FormatError(f"{where}: checkpoint {i} is out of range")
        if i and (r.cin <= records[i - 1].cin or r.cout <= records[i - 1].cout):
            raise FormatError(f"{where}: checkpoint {i} does not follow checkpoint {i - 1}")
    return span_size, records


def parse_gzip_checkpoints(blob: bytes, *, where: str = "zTOC") -> tuple[int, list[Checkpoint]]:
    """``(span_size, checkpoints)`` of a gzip checkpoint blob, either form. The legacy
    form's implied checkpoint 0 has an all-zero window."""
    span_size, records = _checkpoint_records(blob, where)
    return span_size, [
        Checkpoint(
            r.cin,
            r.cout,
            r.bits,
            bytes(blob[r.window_offset : r.window_offset + WINDOW_SIZE])  # bytes, from a view too
            if r.window_offset >= 0
            else bytes(WINDOW_SIZE),
        )
        for r in records
    ]


def tar_zinfo_blob(span_size: int, size: int) -> bytes:
    """The checkpoint bytes of an uncompressed layer: a ``TarZinfo`` flatbuffer."""
    b = _builder(64)
    b.StartObject(3)
    b.PrependInt32Slot(0, TAR_ZINFO_VERSION, 0)
    b.PrependInt64Slot(1, span_size, 0)
    b.PrependInt64Slot(2, size, 0)
    b.Finish(b.EndObject())
    return bytes(b.Output())


def parse_tar_zinfo(blob: bytes | memoryview, *, where: str = "zTOC") -> tuple[int, int]:
    """``(span_size, size)`` of an uncompressed layer's checkpoint bytes (the flatbuffer, or
    the 20 raw bytes older builders wrote; a flatbuffer cannot start with the int 2, which
    would point its root into its own first word)."""
    blob = bytes(blob)  # (a view of a zTOC's checkpoints: a few bytes here)
    try:
        if len(blob) == _TAR_ZINFO_RAW.size and _I32.unpack_from(blob)[0] == TAR_ZINFO_VERSION:
            _version, span_size, size = _TAR_ZINFO_RAW.unpack(blob)
        else:
            buf = _Buffer(blob, where)
            root = buf.table(buf.u32(0), "TarZinfo")
            span_size = root.scalar(1, _I64, 0)
            size = root.scalar(2, _I64, 0)
    except FormatError:
        raise
    except (struct.error, IndexError, ValueError, OverflowError) as exc:
        raise FormatError(f"{where}: tar checkpoint data is corrupt ({exc})") from None
    if span_size <= 0 or size < 0:
        raise FormatError(f"{where}: tar checkpoint data says span {span_size}, size {size}")
    return span_size, size


def _plain_span_count(size: int, span_size: int) -> int:
    return max(1, -(-size // span_size))


# --------------------------------------------------------------------------- mod_time


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """Proleptic Gregorian (year, month, day) of a day count since 1970-01-01, any year
    (Howard Hinnant's algorithm; ``datetime`` stops at year 1)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (1 if month <= 2 else 0), month, day


def _days_from_civil(year: int, month: int, day: int) -> int:
    year -= 1 if month <= 2 else 0
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def format_mod_time(mtime_ns: int) -> str:
    """Go's ``time.Unix(...).UTC().MarshalText()``: RFC 3339, fraction without trailing
    zeros, "Z"; "" for years outside 0-9999 (MarshalText fails there and SOCI writes the
    empty result)."""
    seconds, nanos = divmod(mtime_ns, 1_000_000_000)
    days, secs = divmod(seconds, 86400)
    year, month, day = _civil_from_days(days)
    if not 0 <= year <= 9999:
        return ""
    text = f"{year:04d}-{month:02d}-{day:02d}T{secs // 3600:02d}:{secs // 60 % 60:02d}:"
    text += f"{secs % 60:02d}"
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    return text + "Z"


@functools.lru_cache(maxsize=4096)  # a layer's entries share a handful of times
def parse_mod_time(text: str) -> int | None:
    """Nanoseconds since the epoch of an RFC 3339 time; None when it is not one that Go
    reads back (a year of four digits: a hostile zTOC's 400-digit year is no time, not an
    overflow)."""
    m = _RFC3339.match(text)
    if not m or len(m.group(1)) != 4:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 60):
        return None
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    if m.group(8) != "Z":
        offset = int(m.group(10)) * 3600 + int(m.group(11)) * 60
        seconds -= offset if m.group(9) == "+" else -offset
    return seconds * 1_000_000_000 + int((m.group(7) or "").ljust(9, "0"))


# --------------------------------------------------------------------------- encoding


def _utf8(text: str) -> bytes:
    # names that were not UTF-8 in the tar travel as surrogate escapes: write the raw bytes
    return text.encode("utf-8", "surrogateescape")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _builder(size: int) -> flatbuffers.Builder:
    # imported here: the flatbuffers package imports numpy (~0.13 s), and only writing a
    # zTOC needs it -- reading one (every SOCI read) does not
    import flatbuffers  # type: ignore[import-untyped, unused-ignore]

    return flatbuffers.Builder(size)


def _offsets_vector(b: flatbuffers.Builder, offsets: Sequence[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return int(b.EndVector())


def _encode_file(b: flatbuffers.Builder, f: ZtocFile) -> int:
    name = b.CreateString(_utf8(f.name))
    kind = b.CreateString(_utf8(f.type))
    linkname = b.CreateString(_utf8(f.linkname))
    uname = b.CreateString(_utf8(f.uname))
    gname = b.CreateString(_utf8(f.gname))
    mod_time = b.CreateString(_utf8(f.mod_time))
    xattrs = []
    for key in sorted(f.xattrs):
        k = b.CreateString(_utf8(key))
        v = b.CreateString(bytes(f.xattrs[key]))
        b.StartObject(2)
        b.PrependUOffsetTRelativeSlot(0, k, 0)
        b.PrependUOffsetTRelativeSlot(1, v, 0)
        xattrs.append(b.EndObject())
    xattr_vector = _offsets_vector(b, xattrs)
    b.StartObject(14)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    b.PrependUOffsetTRelativeSlot(1, kind, 0)
    b.PrependInt64Slot(2, f.uncompressed_offset, 0)
    b.PrependInt64Slot(3, f.uncompressed_size, 0)
    b.PrependUOffsetTRelativeSlot(4, linkname, 0)
    b.PrependInt64Slot(5, f.mode, 0)
    b.PrependUint32Slot(6, f.uid & 0xFFFFFFFF, 0)  # Go: uint32(hdr.Uid)
    b.PrependUint32Slot(7, f.gid & 0xFFFFFFFF, 0)
    b.PrependUOffsetTRelativeSlot(8, uname, 0)
    b.PrependUOffsetTRelativeSlot(9, gname, 0)
    b.PrependUOffsetTRelativeSlot(10, mod_time, 0)
    b.PrependInt64Slot(11, f.devmajor, 0)
    b.PrependInt64Slot(12, f.devminor, 0)
    b.PrependUOffsetTRelativeSlot(13, xattr_vector, 0)
    return int(b.EndObject())


def encode_ztoc(z: Ztoc) -> bytes:
    """The zTOC flatbuffer bytes of ``z``."""
    if z.compression_algorithm not in _ALGORITHM_IDS:
        raise ValueError(f"unknown compression algorithm {z.compression_algorithm!r}")
    b = _builder(1024 + len(z.checkpoints) + 256 * len(z.files))
    version = b.CreateString(_utf8(z.version))
    tool = b.CreateString(_utf8(z.build_tool_identifier))
    # children before parents: flatbuffers are written back to front
    files = [0] * len(z.files)
    for i in range(len(z.files) - 1, -1, -1):
        files[i] = _encode_file(b, z.files[i])
    metadata = _offsets_vector(b, files)
    b.StartObject(1)
    b.PrependUOffsetTRelativeSlot(0, metadata, 0)
    toc = b.EndObject()
    checkpoints = b.CreateByteVector(bytes(z.checkpoints))
    digests = _offsets_vector(b, [b.CreateString(_utf8(d)) for d in z.span_digests])
    b.StartObject(4)
    b.PrependInt8Slot(0, _ALGORITHM_IDS[z.compression_algorithm], 1)  # Gzip: the default
    b.PrependInt32Slot(1, z.max_span_id, 0)
    b.PrependUOffsetTRelativeSlot(2, digests, 0)
    b.PrependUOffsetTRelativeSlot(3, checkpoints, 0)
    info = b.EndObject()
    b.StartObject(6)
    b.PrependUOffsetTRelativeSlot(0, version, 0)
    b.PrependUOffsetTRelativeSlot(1, tool, 0)
    b.PrependInt64Slot(2, z.compressed_size, 0)
    b.PrependInt64Slot(3, z.uncompressed_size, 0)
    b.PrependUOffsetTRelativeSlot(4, toc, 0)
    b.PrependUOffsetTRelativeSlot(5, info, 0)
    b.Finish(b.EndObject())
    return bytes(b.Output())


# --------------------------------------------------------------------------- decoding


class _Buffer:
    """A flatbuffer read with every offset checked against its length."""

    __slots__ = ("data", "size", "where")

    def __init__(self, data: bytes, where: str) -> None:
        self.data = data
        self.size = len(data)
        self.where = where

    def fail(self, what: str) -> FormatError:
        return FormatError(f"{self.where}: corrupt flatbuffer ({what})")

    def u32(self, pos: int) -> int:
        if not 0 <= pos <= self.size - 4:
            raise self.fail(f"offset {pos} out of range")
        value: int = _U32.unpack_from(self.data, pos)[0]
        return value

    def table(self, pos: int, what: str) -> _Table:
        return _Table(self, pos, what)


class _Table:
    __slots__ = ("buf", "fields", "obj_size", "pos", "what")

    def __init__(self, buf: _Buffer, pos: int, what: str) -> None:
        self.buf = buf
        self.pos = pos
        self.what = what
        if not 0 <= pos <= buf.size - 4:
            raise buf.fail(f"{what} table at {pos} out of range")
        vtable = pos - _I32.unpack_from(buf.data, pos)[0]
        if not 0 <= vtable <= buf.size - 4:
            raise buf.fail(f"{what} vtable out of range")
        vt_size, self.obj_size = struct.unpack_from("<HH", buf.data, vtable)
        if vt_size < 4 or vt_size % 2 or vtable + vt_size > buf.size:
            raise buf.fail(f"{what} vtable of {vt_size} bytes")
        if self.obj_size < 4 or pos + self.obj_size > buf.size:
            raise buf.fail(f"{what} table of {self.obj_size} bytes")
        self.fields: tuple[int, ...] = struct.unpack_from(
            f"<{(vt_size - 4) // 2}H", buf.data, vtable + 4
        )

    def _field(self, slot: int, width: int) -> int:
        """Absolute position of a field, 0 when absent."""
        if slot >= len(self.fields) or not self.fields[slot]:
            return 0
        off = self.fields[slot]
        if off < 4 or off + width > self.obj_size:
            raise self.buf.fail(f"{self.what} field {slot} lies outside its table")
        return self.pos + off

    def scalar(self, slot: int, kind: struct.Struct, default: int) -> int:
        at = self._field(slot, kind.size)
        if not at:
            return default
        value: int = kind.unpack_from(self.buf.data, at)[0]
        return value

    def _target(self, slot: int) -> int:
        at = self._field(slot, 4)
        return at + self.buf.u32(at) if at else 0

    def vector(self, slot: int, elem_size: int) -> tuple[int, int]:
        """(start, count) of a vector field; (0, 0) when absent."""
        at = self._target(slot)
        if not at:
            return 0, 0
        count = self.buf.u32(at)
        if count * elem_size > self.buf.size - at - 4:
            raise self.buf.fail(f"{self.what} field {slot}: vector of {count} does not fit")
        return at + 4, count

    def string(self, slot: int) -> bytes:
        start, count = self.vector(slot, 1)
        if start:
            self._terminated(start + count, slot)
        return self.buf.data[start : start + count]

    def _terminated(self, end: int, slot: int) -> None:
        # flatbuffers strings end with a NUL (the verifier checks it); a buffer cut right
        # before it would otherwise decode
        if end >= self.buf.size or self.buf.data[end]:
            raise self.buf.fail(f"{self.what} field {slot}: string without its terminator")

    def table(self, slot: int, what: str) -> _Table | None:
        at = self._target(slot)
        return _Table(self.buf, at, what) if at else None

    def tables(self, slot: int, what: str) -> Iterator[_Table]:
        start, count = self.vector(slot, 4)
        for i in range(count):
            at = start + 4 * i
            yield _Table(self.buf, at + self.buf.u32(at), what)

    def strings(self, slot: int) -> list[bytes]:
        start, count = self.vector(slot, 4)
        out = []
        text = 0  # (a string counted at each place naming it: see _SHARED_STRINGS)
        for i in range(count):
            at = start + 4 * i
            target = at + self.buf.u32(at)
            length = self.buf.u32(target)
            if length > self.buf.size - target - 4:
                raise self.buf.fail(f"{self.what} field {slot}: string {i} does not fit")
            self._terminated(target + 4 + length, slot)
            text += length
            if text > self.buf.size:
                raise self.buf.fail(f"{self.what} field {slot}: {_SHARED_STRINGS}")
            out.append(self.buf.data[target + 4 : target + 4 + length])
        return out


#: FileMetadata slots: strings, then 64-bit and 32-bit scalars (the schema's field order)
_FILE_STRINGS = (0, 1, 4, 8, 9, 10)
_FILE_I64 = (2, 3, 5, 11, 12)
_FILE_U32 = (6, 7)
_VTABLE_FIELDS = [struct.Struct(f"<{n}H") for n in range(64)]


def _text_of(f: ZtocFile) -> int:
    """The characters of a decoded table's strings and xattrs (at most a byte each), as
    the checks against strings shared by many tables count them (:data:`_SHARED_STRINGS`)."""
    text = len(f.name) + len(f.type) + len(f.linkname) + len(f.uname) + len(f.gname)
    return text + len(f.mod_time) + sum(len(k) + len(v) for k, v in f.xattrs.items())


def _decode_files(buf: _Buffer, toc: _Table) -> list[ZtocFile]:
    """Every FileMetadata of the TOC: the same checks as :class:`_Table` does field by
    field, written out in one loop (a zTOC has one table per tar entry; ~5x faster)."""
    data = buf.data
    start, count = toc.vector(0, 4)
    u32 = _U32.unpack_from
    files = []
    text = 0  # _text_of every table so far (see _scan_any)
    for i in range(count):
        pos = start + 4 * i + u32(data, start + 4 * i)[0]
        if pos <= buf.size - 4:  # (else _decode_file says what is wrong)
            obj_size, fields = _file_layout(buf, pos)
            if len(fields) > 13:  # its xattrs, counted before they are read (_xattrs_checked)
                text += 4 * _xattr_references(buf, pos, obj_size, fields[13])
                if text > buf.size:
                    raise buf.fail(_SHARED_STRINGS)
        f = _decode_file(buf, pos)
        text += _text_of(f)
        if text > buf.size:
            raise buf.fail(_SHARED_STRINGS)
        files.append(f)
    return files


def _file_layout(buf: _Buffer, pos: int) -> tuple[int, tuple[int, ...]]:
    """``(obj_size, field offsets)`` of the FileMetadata table at ``pos``, checked."""
    data, size = buf.data, buf.size
    if pos > size - 4:
        raise buf.fail(f"FileMetadata table at {pos} out of range")
    vtable = pos - _I32.unpack_from(data, pos)[0]
    if not 0 <= vtable <= size - 4:
        raise buf.fail("FileMetadata vtable out of range")
    vt_size, obj_size = struct.unpack_from("<HH", data, vtable)
    if vt_size < 4 or vt_size % 2 or vtable + vt_size > size:
        raise buf.fail(f"FileMetadata vtable of {vt_size} bytes")
    if obj_size < 4 or pos + obj_size > size:
        raise buf.fail(f"FileMetadata table of {obj_size} bytes")
    n = (vt_size - 4) // 2
    layout = _VTABLE_FIELDS[n] if n < len(_VTABLE_FIELDS) else struct.Struct(f"<{n}H")
    return obj_size, layout.unpack_from(data, vtable + 4)


def _decode_file(buf: _Buffer, pos: int) -> ZtocFile:
    """The FileMetadata table at ``pos``, every field checked."""
    data, size = buf.data, buf.size
    u32, i64 = _U32.unpack_from, _I64.unpack_from
    obj_size, fields = _file_layout(buf, pos)
    nfields = len(fields)
    values: list[Any] = [""] * 13
    for slot in _FILE_STRINGS:
        off = fields[slot] if slot < nfields else 0
        if not off:
            continue
        if off < 4 or off + 4 > obj_size:
            raise buf.fail(f"FileMetadata field {slot} lies outside its table")
        field_at = pos + off
        target = field_at + u32(data, field_at)[0]
        if target > size - 4:
            raise buf.fail(f"offset {target} out of range")
        length = u32(data, target)[0]
        end = target + 4 + length
        if end >= size or data[end]:  # past the buffer, or no NUL terminator
            raise buf.fail(f"FileMetadata field {slot}: string does not fit or is not ended")
        values[slot] = data[target + 4 : end].decode("utf-8", "surrogateescape")
    for slots, unpack, width in ((_FILE_I64, i64, 8), (_FILE_U32, u32, 4)):
        for slot in slots:
            off = fields[slot] if slot < nfields else 0
            if not off:
                values[slot] = 0
                continue
            if off < 4 or off + width > obj_size:
                raise buf.fail(f"FileMetadata field {slot} lies outside its table")
            values[slot] = unpack(data, pos + off)[0]
    xattrs = _xattrs(buf, pos, obj_size, fields)
    name, kind, offset, size_, link, mode, uid, gid, uname, gname, mtime, major, minor = values
    return ZtocFile(
        name, kind, offset, size_, link, mode, uid, gid, uname, gname, mtime, major, minor, xattrs
    )


def _xattrs(buf: _Buffer, pos: int, obj_size: int, fields: tuple[int, ...]) -> dict[str, bytes]:
    data, u32 = buf.data, _U32.unpack_from
    off = fields[13] if len(fields) > 13 else 0
    if off and off + 4 <= obj_size and pos + off + u32(data, pos + off)[0] <= buf.size - 4:
        vector = pos + off + u32(data, pos + off)[0]
        if not u32(data, vector)[0]:  # most entries carry an empty vector: skip the table
            return {}
    elif not off:
        return {}
    # a vector with entries, or a malformed one: the careful reader says what is wrong
    table = _Table(buf, pos, "FileMetadata")
    return {_text(x.string(0)): x.string(1) for x in table.tables(13, "Xattr")}


def without_prefetch_list(data: bytes) -> bytes:
    """``data`` without the prefetch file list a newer builder may append to a zTOC
    (:data:`PREFETCH_SEPARATOR`, then a JSON list): not ours to read.

    The list is looked for from the end, where it is: the last separator followed by a
    JSON list that runs to the end of ``data`` begins it. A zTOC whose last byte (blanks
    aside) is not the list's ``]`` has none and is not searched (a 19 MB zTOC: 7 ms
    saved), and the separator's bytes inside the flatbuffer itself (in a file's name, in
    a checkpoint's window of file data) never cut it short."""
    if not data[-4096:].rstrip(b" \t\r\n").endswith(b"]"):
        return data
    cut, skip = len(data), len(PREFETCH_SEPARATOR)
    for _ in range(_PREFETCH_TRIES):
        cut = data.rfind(PREFETCH_SEPARATOR, 0, cut)
        if cut < 0:
            break
        if not data[cut + skip : cut + skip + 4096].lstrip(b" \t\r\n").startswith(b"["):
            continue
        if len(data) - cut - skip > _PREFETCH_PARSED:  # "[...]" is all that is checked
            return data[:cut]
        try:
            listed = _json.loads(data[cut + skip :])
        except ValueError:  # (UnicodeDecodeError is one)
            continue
        if isinstance(listed, list):
            return data[:cut]
    return data


def decode_ztoc(data: bytes, *, where: str = "zTOC") -> Ztoc:
    """Decode and check a zTOC; any structural problem is a :class:`FormatError`."""
    data = without_prefetch_list(bytes(data))
    try:
        ztoc = _decode(_Buffer(data, where))
    except FormatError:
        raise
    except _MALFORMED as exc:
        raise FormatError(f"{where}: corrupt flatbuffer ({exc})") from None
    check_ztoc(ztoc, where=where)
    return ztoc


def _decode(buf: _Buffer) -> Ztoc:
    root = buf.table(buf.u32(0), "Ztoc")
    info = root.table(5, "CompressionInfo")
    if info is None:
        raise FormatError(f"{buf.where}: no compression info")
    algorithm = info.scalar(0, _I8, 1)
    if algorithm not in _ALGORITHMS:
        raise FormatError(f"{buf.where}: unknown compression algorithm {algorithm}")
    start, count = info.vector(3, 1)
    toc = root.table(4, "TOC")
    return Ztoc(
        version=_text(root.string(0)),
        build_tool_identifier=_text(root.string(1)),
        compressed_size=root.scalar(2, _I64, 0),
        uncompressed_size=root.scalar(3, _I64, 0),
        compression_algorithm=_ALGORITHMS[algorithm],
        max_span_id=info.scalar(1, _I32, 0),
        span_digests=[_text(d) for d in info.strings(2)],
        checkpoints=buf.data[start : start + count],
        files=[] if toc is None else _decode_files(buf, toc),
    )


def _align(offset: int) -> int:
    return offset + (-offset % BLOCK)


def _header_offsets(files: Sequence[ZtocFile], where: str) -> list[tuple[int, ZtocFile]]:
    """(tar header offset, file) in stream order, derived the way SOCI's readers do: the
    first header at 0, each next one right after the previous entry's padded data."""
    out = []
    next_header = 0
    for f in sorted(files, key=lambda f: f.uncompressed_offset):
        _check_follows(f, next_header, where)
        out.append((next_header, f))
        next_header = _align(f.uncompressed_offset + f.uncompressed_size)
    return out


def _check_follows(f: ZtocFile, header: int, where: str) -> None:
    """``f``'s data must start a block or more after ``header`` (where the entry before it
    leaves the next tar header), on a block boundary."""
    gap = f.uncompressed_offset - header
    if gap < BLOCK or gap % BLOCK:
        raise FormatError(
            f"{where}: entry {f.name!r} at offset {f.uncompressed_offset} overlaps the "
            f"entry before it or does not follow a tar header (next header at {header})"
        )


def _check_file(f: ZtocFile, uncompressed_size: int, where: str) -> None:
    """One entry's own facts: a known type, and data inside the layer."""
    if f.type not in FILE_TYPES:
        raise FormatError(f"{where}: entry {f.name!r} has unknown type {f.type[:40]!r}")
    if f.uncompressed_offset < 0 or f.uncompressed_size < 0:
        raise FormatError(f"{where}: entry {f.name!r} has a negative offset or size")
    if f.uncompressed_offset + f.uncompressed_size > uncompressed_size:
        raise FormatError(f"{where}: entry {f.name!r} lies past the end of the layer")


def _check_archive(
    compressed_size: int,
    uncompressed_size: int,
    algorithm: str,
    max_span_id: int,
    span_digests: Sequence[str],
    checkpoints: bytes | memoryview,
    where: str,
) -> tuple[int, list[_Record]] | None:
    """The checks of :func:`check_ztoc` that do not look at entries. Returns the gzip
    checkpoints as it read them, ``(span size, records)`` (None for an uncompressed
    layer's), for :func:`_layer_index` to take rather than read them again."""
    if compressed_size < 0 or uncompressed_size < 0:
        raise FormatError(f"{where}: negative archive size")
    if algorithm not in _ALGORITHM_IDS:
        raise FormatError(f"{where}: unknown compression algorithm {algorithm!r}")
    spans = max_span_id + 1
    if spans < 1:
        raise FormatError(f"{where}: max_span_id is {max_span_id}")
    if len(span_digests) != spans:
        raise FormatError(f"{where}: {len(span_digests)} span digests for {spans} spans")
    for d in span_digests:
        if not _DIGEST.match(d):
            raise FormatError(f"{where}: bad span digest {d[:80]!r}")
    if algorithm == GZIP:
        read = _checkpoint_records(checkpoints, where)
        records = read[1]
        if len(records) != spans:
            raise FormatError(f"{where}: {len(records)} checkpoints for {spans} spans")
        if records[-1].cin > compressed_size:
            raise FormatError(f"{where}: a checkpoint lies past the end of the layer")
        return read
    else:
        span_size, size = parse_tar_zinfo(checkpoints, where=where)
        if size != compressed_size:
            raise FormatError(f"{where}: tar checkpoint size {size} != {compressed_size}")
        if _plain_span_count(size, span_size) != spans:
            raise FormatError(f"{where}: {spans} spans of {span_size} for {size} bytes")
        if uncompressed_size > size:
            raise FormatError(f"{where}: uncompressed size larger than the tar")
        return None


def check_ztoc(z: Ztoc, *, where: str = "zTOC") -> None:
    """Raise FormatError unless ``z`` is consistent: sizes, spans, checkpoints, entries."""
    _check_archive(
        z.compressed_size,
        z.uncompressed_size,
        z.compression_algorithm,
        z.max_span_id,
        z.span_digests,
        z.checkpoints,
        where,
    )
    for f in z.files:
        _check_file(f, z.uncompressed_size, where)
    z._checked = (id(z.files), len(z.files), _header_offsets(z.files, where))


def _checked_offsets(z: Ztoc, where: str) -> list[tuple[int, ZtocFile]]:
    """(header offset, file) of a checked zTOC, checking it unless that was just done."""
    done = z._checked
    if done is None or done[:2] != (id(z.files), len(z.files)):
        check_ztoc(z, where=where)
        done = z._checked
    assert done is not None
    return done[2]


# --------------------------------------------------------------------------- building

#: Go's archive/tar type flags whose SOCI names are the tar parser's ("0" and "\0" are
#: handled apart: Go turns "\0" with a trailing "/" into a directory, and "7", contiguous,
#: is a file).
_GO_TYPES = {flag: _TYPES[flag] for flag in (b"1", b"2", b"3", b"4", b"5", b"6")}


class _TocBuilder:
    """Feeds the tar stream to a TarScanner and turns each entry into a ZtocFile the way
    SOCI's builder (Go's archive/tar) sees it. Needs each entry's header block, so keeps the
    last 512 bytes fed."""

    def __init__(self, name: str) -> None:
        self.scanner = TarScanner(name=name, hash_files=False)  # zTOCs carry no digests
        self.files: list[ZtocFile] = []
        self._name = name
        self._pos = 0  # stream offset of the next byte
        self._tail = b""  # up to 512 bytes before _pos
        self._next_header = 0  # where Go's reader looks for the next header

    def feed(self, data: bytes) -> None:
        entries = self.scanner.entries
        seen = len(entries)
        self.scanner.feed(data)
        for entry in entries[seen:]:
            self.files.append(self._file(entry, self._header_block(entry.data_offset, data)))
        del entries[:]  # the ZtocFile is all we need
        self._pos += len(data)
        self._tail = (self._tail + data[-BLOCK:])[-BLOCK:]

    def _header_block(self, end: int, data: bytes) -> bytes:
        # the block was completed by this chunk: end lies in (self._pos, self._pos + len)
        start = end - BLOCK
        if start >= self._pos:
            return data[start - self._pos : end - self._pos]
        return self._tail[len(self._tail) - (self._pos - start) :] + data[: end - self._pos]

    def _file(self, entry: TarEntry, block: bytes) -> ZtocFile:
        at = entry.data_offset - BLOCK  # the entry's own (last) header block
        if entry.header_offset != self._next_header:
            # something Go's reader returns as an entry of its own and SOCI refuses (a
            # global PAX header, a volume label) or a lone zero block in the middle
            raise FormatError(
                f"{self._name}: tar stream has a header at offset {self._next_header} that a "
                "zTOC cannot describe (global PAX header, volume label or stray zero block)"
            )
        typeflag = block[156:157]
        size = 0
        if typeflag in (b"0", b"7") or (typeflag == b"\x00" and entry.type == "file"):
            kind = "reg"
            size = entry.size
            if entry.type != "file":  # "0" with a trailing "/": a directory to tarfile only
                records = entry.pax_records or {}
                stored = records.get("size")
                size = int(stored) if stored else _number(block[124:136], "size", at)
        elif typeflag == b"\x00":
            kind = "dir"
        elif typeflag in _GO_TYPES:
            kind = _GO_TYPES[typeflag]
        else:
            raise FormatError(
                f"{self._name}: tar entry {entry.raw_name!r} at offset {at} has type "
                f"{typeflag!r}, which a zTOC cannot describe"
            )
        magic = block[257:265]
        devmajor = devminor = 0
        if magic in (b"ustar\x0000", b"ustar  \x00"):  # Go reads them in ustar/PAX/GNU only
            devmajor = _number(block[329:337], "devmajor", at)
            devminor = _number(block[337:345], "devminor", at)
        self._next_header = _align(entry.data_offset + size)
        mtime_ns = entry.mtime_ns if entry.mtime_ns is not None else int(entry.mtime * 1e9)
        return ZtocFile(
            name=entry.raw_name,
            type=kind,
            uncompressed_offset=entry.data_offset,
            uncompressed_size=size,
            linkname=entry.linkname,
            mode=entry.mode,
            uid=entry.uid,
            gid=entry.gid,
            uname=entry.uname,
            gname=entry.gname,
            mod_time=format_mod_time(mtime_ns),
            devmajor=devmajor,
            devminor=devminor,
            xattrs=dict(sorted((entry.pax_records or {}).items())),
        )

    def finish(self) -> int:
        """End of the stream; returns where Go's reader stops (after two zero blocks)."""
        self.scanner.finish()
        return min(self._pos, self._next_header + 2 * BLOCK)


def _chunks(source: BinaryIO | Iterable[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    read = getattr(source, "read", None)
    if read is not None:
        while chunk := read(size):
            yield bytes(chunk)
    else:
        for chunk in source:
            if chunk:
                yield bytes(chunk)


def ztoc_from_blob(
    source: BinaryIO | Iterable[bytes],
    span_size: int = 4 << 20,
    *,
    build_tool_identifier: str | None = None,
    name: str = "layer",
) -> Ztoc:
    """The zTOC of a tar or tar+gzip blob (a binary file object or an iterable of chunks),
    in one pass. Checkpoints are placed by SOCI's rule, so the same blob and span size give
    the reference builder's checkpoint bytes and span digests."""
    if span_size <= 0:
        raise ValueError("span_size must be positive")
    if build_tool_identifier is None:
        from .. import __version__

        build_tool_identifier = f"seekoci {__version__}"
    chunks = _chunks(source)
    head = b""
    for chunk in chunks:  # enough bytes to see the magic
        head += chunk
        if len(head) >= 4:
            break
    is_gzip = head[:2] == GZIP_MAGIC
    if len(head) >= 4 and (
        int.from_bytes(head[:4], "little") == 0xFD2FB528
        or int.from_bytes(head[:4], "little") & 0xFFFFFFF0 == 0x184D2A50
    ):
        raise FormatError(f"{name}: a zstd layer (SOCI indexes gzip and plain tar only)")
    indexer: GzipIndexer | PlainIndexer
    indexer = GzipIndexer(span_size, name=name) if is_gzip else PlainIndexer(span_size, name=name)
    toc = _TocBuilder(name)
    fed = 0
    for chunk in _prepend(head, chunks):
        fed += len(chunk)
        for out in indexer.feed(chunk):
            toc.feed(out)
    indexer.finish()
    tar_end = toc.finish()
    spans: list[Span] = indexer.spans
    if isinstance(indexer, GzipIndexer):
        points = [
            Checkpoint(
                s.compressed_start + (1 if s.bits else 0),
                s.uncompressed_start,
                s.bits,
                indexer.window(i) or b"",
            )
            for i, s in enumerate(spans)
        ]
        checkpoints = gzip_checkpoints_blob(span_size, points)
    else:
        checkpoints = tar_zinfo_blob(span_size, fed)
    return Ztoc(
        version=ZTOC_VERSION,
        build_tool_identifier=build_tool_identifier,
        compressed_size=fed,
        uncompressed_size=tar_end,
        compression_algorithm=GZIP if is_gzip else UNCOMPRESSED,
        max_span_id=len(spans) - 1,
        span_digests=["sha256:" + s.digest for s in spans],
        checkpoints=checkpoints,
        files=toc.files,
    )


def _prepend(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from rest


# --------------------------------------------------------------------------- to seekoci


def _tar_entry(f: ZtocFile, header_offset: int) -> TarEntry:
    mtime_ns = parse_mod_time(f.mod_time)  # Go ignores unparsable times too (zero time)
    xattrs: dict[str, bytes] = {}
    pax: dict[str, str] = {}
    for key, value in f.xattrs.items():
        if key.startswith("SCHILY.xattr."):
            xattrs[key[len("SCHILY.xattr.") :]] = value
        elif key not in ("path", "linkpath", "size", "mtime", "uid", "gid", "uname", "gname"):
            pax[key] = _text(value)
    kind = "file" if f.type == "reg" else f.type
    device = kind in ("char", "block")
    return TarEntry(
        name=normalize_name(f.name),
        type=kind,
        size=f.uncompressed_size if kind == "file" else 0,
        mode=f.mode,
        uid=f.uid,
        gid=f.gid,
        mtime=mtime_ns / 1_000_000_000 if mtime_ns is not None else 0.0,  # int / int: exact
        linkname=f.linkname,
        uname=f.uname,
        gname=f.gname,
        devmajor=f.devmajor if device else 0,
        devminor=f.devminor if device else 0,
        xattrs=xattrs,
        header_offset=header_offset,
        data_offset=f.uncompressed_offset,
        pax=pax,
        raw_name=f.name,
        unsafe=unsafe_name(f.name),
        mtime_ns=mtime_ns,
    )


def ztoc_to_layer_index(
    ztoc: Ztoc,
    *,
    layer_digest: str,
    media_type: str,
    blob_size: int,
    raw_checkpoints: bytes | None = None,
) -> LayerIndex:
    """A seekoci :class:`LayerIndex` over a zTOC: its spans, entries and windows.

    Windows stay in the checkpoint bytes (``raw_checkpoints``, by default
    ``ztoc.checkpoints``): ``read_windows`` slices them, raw (``windows_packed=False``).
    """
    where = f"zTOC of {layer_digest}"
    offsets = _checked_offsets(ztoc, where)
    if blob_size != ztoc.compressed_size:
        raise FormatError(f"{where}: for a blob of {ztoc.compressed_size} bytes, not {blob_size}")
    blob = ztoc.checkpoints if raw_checkpoints is None else bytes(raw_checkpoints)
    entries = [_tar_entry(f, h) for h, f in offsets]
    return _layer_index(
        ztoc.compression_algorithm,
        blob,
        ztoc.span_digests,
        ztoc.uncompressed_size,
        entries,
        layer_digest=layer_digest,
        media_type=media_type,
        blob_size=blob_size,
        tool=ztoc.build_tool_identifier,
        where=where,
    )


def _layer_index(
    algorithm: str,
    blob: bytes | memoryview,
    span_digests: Sequence[str],
    uncompressed_size: int,
    entries: Sequence[TarEntry],
    *,
    layer_digest: str,
    media_type: str,
    blob_size: int,
    tool: str,
    where: str,
    checkpoints_read: tuple[int, list[_Record]] | None = None,
) -> LayerIndex:
    """The spans and windows of a checked zTOC's checkpoints, around its entries
    (``checkpoints_read``: what :func:`_check_archive` read of ``blob``, if it did)."""
    digests = [d[len("sha256:") :] for d in span_digests]
    spans: list[Span] = []
    locations: list[tuple[int, int]] = []
    if algorithm == GZIP:
        span_size, records = checkpoints_read or _checkpoint_records(blob, where)
        if len(records) != len(digests):
            raise FormatError(f"{where}: {len(records)} checkpoints for {len(digests)} spans")
        # the zTOC's uncompressed size is where the tar ends; the stream may run on (padding)
        usize = max(uncompressed_size, records[-1].cout)
        for i, r in enumerate(records):
            last = i == len(records) - 1
            spans.append(
                Span(
                    index=i,
                    compressed_start=r.cin - (1 if r.bits else 0),
                    compressed_end=blob_size if last else records[i + 1].cin,
                    uncompressed_start=r.cout,
                    uncompressed_end=usize if last else records[i + 1].cout,
                    digest=digests[i],
                    bits=r.bits,
                )
            )
            # nothing precedes out = 0, so no window is needed there
            needed = r.window_offset >= 0 and r.cout > 0
            locations.append((r.window_offset, WINDOW_SIZE) if needed else (0, 0))
        compression = "gzip"
    else:
        span_size, usize = parse_tar_zinfo(blob, where=where)
        for i, digest in enumerate(digests):
            start = i * span_size
            end = min(start + span_size, usize)
            spans.append(Span(i, start, end, start, end, digest))
            locations.append((0, 0))
        compression = "none"

    def read_windows(offset: int, length: int) -> bytes:
        return bytes(blob[offset : offset + length])

    return LayerIndex(
        layer_digest=layer_digest,
        media_type=media_type,
        compression=compression,
        blob_size=blob_size,
        uncompressed_size=usize,
        span_size=span_size,
        spans=spans,
        entries=entries,
        window_locations=locations,
        read_windows=read_windows,
        tool=tool,
        windows_packed=False,
        records_local=True,  # the windows are slices of the zTOC in hand
    )


# --------------------------------------------------------------------------- lazily

_FILE_TYPE_BYTES = frozenset(t.encode() for t in FILE_TYPES)


def _normalized(name: str) -> str:
    """:func:`normalize_name`, with a shortcut for the usual name that is normal already."""
    if (
        name
        and "//" not in name
        and "/./" not in name
        and not name.startswith(("/", "./"))
        and not name.endswith(("/", "/."))
        and name != "."
    ):
        return name
    return normalize_name(name)


class _Unaligned(Exception):
    """A table or string not on a 4-byte boundary: legal only in theory (flatbuffers align
    every uoffset and length); the careful loop handles it."""


def _scan_files(
    buf: _Buffer, toc: _Table | None
) -> tuple[list[int], list[bytes], list[bytes], list[int], list[int]]:
    """``(positions, names, types, offsets, sizes)`` of every FileMetadata table, each
    table checked as :func:`_decode_file` checks it -- every string in bounds and ended,
    every scalar inside its table, the xattrs vector -- but only names and types sliced
    out and only offsets and sizes read (a vtable shared by many tables is checked once)."""
    if toc is None:
        return [], [], [], [], []
    start, count = toc.vector(0, 4)
    if sys.byteorder == "little" and not buf.size % 4:
        try:
            return _scan_aligned(buf, start, count)
        except _Unaligned:
            pass
    return _scan_any(buf, start, count)


def _file_vtable(buf: _Buffer, pos: int) -> tuple[int, tuple[tuple[int, int], ...], int, int, int]:
    """What :func:`_scan_files` needs of a FileMetadata vtable, checked once:
    ``(obj_size, (slot, offset) of each string present, the offset, size and xattrs
    field offsets)``."""
    obj_size, fields = _file_layout(buf, pos)
    nfields = len(fields)
    strings = []
    for slot in _FILE_STRINGS:
        off = fields[slot] if slot < nfields else 0
        if off and (off < 4 or off + 4 > obj_size):
            raise buf.fail(f"FileMetadata field {slot} lies outside its table")
        if off:
            strings.append((slot, off))
    for slots, width in ((_FILE_I64, 8), (_FILE_U32, 4)):
        for slot in slots:
            off = fields[slot] if slot < nfields else 0
            if off and (off < 4 or off + width > obj_size):
                raise buf.fail(f"FileMetadata field {slot} lies outside its table")

    def at(slot: int) -> int:
        return fields[slot] if slot < nfields else 0

    return obj_size, tuple(strings), at(2), at(3), at(13)


#: Strings of a zTOC's tables that add up to more than the zTOC itself are strings shared by
#: many tables (no builder shares a file's name): each entry made of them would be a copy
_SHARED_STRINGS = "its tables' strings add up to more than the zTOC (shared by many tables)"


def _xattrs_checked(buf: _Buffer, pos: int, obj_size: int, off: int, text: int) -> int:
    """Check the xattrs of the table at ``pos`` (``off``: its field) as :func:`_xattrs`
    does, and return what they add to the scan's count of string bytes: 4 a reference
    (before they are read: a vector naming one Xattr table 50k times, shared by many tables,
    was hours of CPU), then their keys' and values' bytes (a value shared by many tables
    was a copy in each entry made of them)."""
    references = _xattr_references(buf, pos, obj_size, off)
    if text + 4 * references > buf.size:
        raise buf.fail(_SHARED_STRINGS)
    found = _xattrs(buf, pos, obj_size, (0,) * 13 + (off,))
    return 4 * references + sum(len(k) + len(v) for k, v in found.items())


def _xattr_references(buf: _Buffer, pos: int, obj_size: int, off: int) -> int:
    """How many Xattr tables the xattrs vector of the table at ``pos`` names (0 where
    it is out of bounds: :func:`_xattrs` says what is wrong then)."""
    data, size = buf.data, buf.size
    field = pos + off
    if off and off + 4 <= obj_size and field + 4 <= size:
        vector = field + _U32.unpack_from(data, field)[0]
        if vector + 4 <= size:
            return int(_U32.unpack_from(data, vector)[0])
    return 0


def _scan_any(
    buf: _Buffer, start: int, count: int
) -> tuple[list[int], list[bytes], list[bytes], list[int], list[int]]:
    data, size = buf.data, buf.size
    u32, i32, i64 = _U32.unpack_from, _I32.unpack_from, _I64.unpack_from
    layouts: dict[int, tuple[int, tuple[tuple[int, int], ...], int, int, int]] = {}
    positions: list[int] = []
    names: list[bytes] = []
    kinds: list[bytes] = []
    offsets: list[int] = []
    sizes: list[int] = []
    text = 0  # bytes of every table's strings, a string counted at each table naming it
    for i in range(count):
        at = start + 4 * i
        pos = at + u32(data, at)[0]
        if pos > size - 4:
            raise buf.fail(f"FileMetadata table at {pos} out of range")
        vtable = pos - i32(data, pos)[0]
        layout = layouts.get(vtable)
        if layout is None:
            layout = layouts[vtable] = _file_vtable(buf, pos)
        obj_size, strings, offset_off, size_off, xattr_off = layout
        if pos + obj_size > size:
            raise buf.fail(f"FileMetadata table of {obj_size} bytes")
        name = kind = b""
        for slot, off in strings:
            field_at = pos + off
            target = field_at + u32(data, field_at)[0]
            if target > size - 4:
                raise buf.fail(f"offset {target} out of range")
            end = target + 4 + u32(data, target)[0]
            if end >= size or data[end]:
                raise buf.fail(f"FileMetadata field {slot}: string does not fit or is not ended")
            text += end - target
            if text > size:
                raise buf.fail(_SHARED_STRINGS)
            if slot == 0:
                name = data[target + 4 : end]
            elif slot == 1:
                kind = data[target + 4 : end]
        if xattr_off:
            text += _xattrs_checked(buf, pos, obj_size, xattr_off, text)
        positions.append(pos)
        names.append(name)
        kinds.append(kind)
        offsets.append(i64(data, pos + offset_off)[0] if offset_off else 0)
        sizes.append(i64(data, pos + size_off)[0] if size_off else 0)
    return positions, names, kinds, offsets, sizes


def _scan_aligned(
    buf: _Buffer, start: int, count: int
) -> tuple[list[int], list[bytes], list[bytes], list[int], list[int]]:
    """:func:`_scan_any` over a buffer whose uoffsets and lengths all sit on 4-byte
    boundaries (every flatbuffer builder's output): words read as list items of a
    memoryview cast instead of struct calls, ~3x faster. Raises :class:`_Unaligned` at
    the first position that is not aligned."""
    data, size = buf.data, buf.size
    words = memoryview(data).cast("I")
    signed = memoryview(data).cast("i")
    i64 = _I64.unpack_from
    layouts: dict[int, tuple[int, tuple[tuple[int, int], ...], int, int, int]] = {}
    positions: list[int] = []
    names: list[bytes] = []
    kinds: list[bytes] = []
    offsets: list[int] = []
    sizes: list[int] = []
    if start & 3:
        raise _Unaligned
    last = size - 4
    add_position, add_name, add_kind = positions.append, names.append, kinds.append
    add_offset, add_size = offsets.append, sizes.append
    text = 0  # as _scan_any
    for at in range(start, start + 4 * count, 4):
        pos = at + words[at >> 2]
        if pos > last:
            raise buf.fail(f"FileMetadata table at {pos} out of range")
        if pos & 3:
            raise _Unaligned
        vtable = pos - signed[pos >> 2]
        layout = layouts.get(vtable)
        if layout is None:
            layout = layouts[vtable] = _file_vtable(buf, pos)
        obj_size, strings, offset_off, size_off, xattr_off = layout
        if pos + obj_size > size:
            raise buf.fail(f"FileMetadata table of {obj_size} bytes")
        name = kind = b""
        for slot, off in strings:
            field_at = pos + off
            if field_at & 3:
                raise _Unaligned
            target = field_at + words[field_at >> 2]
            if target > last:
                raise buf.fail(f"offset {target} out of range")
            if target & 3:
                raise _Unaligned
            end = target + 4 + words[target >> 2]
            if end >= size or data[end]:
                raise buf.fail(f"FileMetadata field {slot}: string does not fit or is not ended")
            text += end - target
            if text > size:
                raise buf.fail(_SHARED_STRINGS)
            if slot == 0:
                name = data[target + 4 : end]
            elif slot == 1:
                kind = data[target + 4 : end]
        if xattr_off:
            field_at = pos + xattr_off
            if xattr_off + 4 <= obj_size and not field_at & 3:
                vector = field_at + words[field_at >> 2]
                if vector > last or vector & 3 or words[vector >> 2]:
                    text += _xattrs_checked(buf, pos, obj_size, xattr_off, text)
            else:
                text += _xattrs_checked(buf, pos, obj_size, xattr_off, text)
        add_position(pos)
        add_name(name)
        add_kind(kind)
        add_offset(i64(data, pos + offset_off)[0] if offset_off else 0)
        add_size(i64(data, pos + size_off)[0] if size_off else 0)
    return positions, names, kinds, offsets, sizes


def _entry_names(raw: list[bytes]) -> tuple[list[str], dict[int, bool]]:
    """Normalised names and the positions of unsafe ones (absolute, ``..``), in one decode
    and a few substring searches over all names joined when none holds a newline (what
    160k separate calls cost is most of a cold SOCI read)."""
    joined = b"\n".join(raw)
    if joined.count(b"\n") == max(len(raw) - 1, 0):
        text = "\n" + joined.decode("utf-8", "surrogateescape") + "\n"
        # a directory's trailing slash (what Go's archive/tar and GNU tar write) and one
        # leading "./" (tar -C DIR .) are dropped from all names at once; anything still
        # odd after that takes the loop below
        text = text.replace("/\n", "\n").replace("\n./", "\n")
        names = text[1:-1].split("\n") if raw else []
        marks = ("//", "/./", "\n/", "\n./", "/\n", "/.\n", "\n.\n", "\n\n")
        if len(names) == len(raw) and not any(m in text for m in marks):
            unsafe = {}
            # a ".." component has "/" or a name's end on both sides
            if any(m in text for m in ("/../", "\n../", "/..\n", "\n..\n")):
                unsafe = {i: True for i, n in enumerate(names) if ".." in n.split("/")}
            return names, unsafe
    names, unsafe = [], {}
    for i, name in enumerate(raw):
        decoded = name.decode("utf-8", "surrogateescape")
        names.append(_normalized(decoded))
        if unsafe_name(decoded):
            unsafe[i] = True
    return names, unsafe


class ZtocEntries(EntryTable):
    """A zTOC's entries in stream order, made into TarEntry objects only when touched: the
    names (for lookups) are all a read needs of a 150k-entry table of contents."""

    def __init__(
        self,
        buf: _Buffer,
        positions: list[int],
        headers: list[int],
        names: list[str],
        unsafe: dict[int, bool],
        data_end: int,
        *,
        where: str,
    ) -> None:
        self._buf = buf
        self._positions = positions
        self._headers = headers
        self.names = names
        self._count = len(names)
        self._made: list[TarEntry | None] = [None] * len(names)
        self._sparse = {"unsafe": unsafe}
        self._defaults = {"unsafe": False}
        self._data_end = data_end
        self._where = where
        self._digests = None  # a zTOC holds no content digests
        self._lock = threading.Lock()  # guards _made (ZtocLookup takes it after its own)
        self._all_made = False

    def data_end(self) -> int:
        return self._data_end

    def encoded(self) -> dict[str, Any]:
        from .entries import encode

        return encode(list(self))

    def _make(self, i: int) -> TarEntry:
        try:
            entry = _tar_entry(_decode_file(self._buf, self._positions[i]), self._headers[i])
        except _MALFORMED as exc:
            raise FormatError(f"{self._where}: entry {i} is malformed ({exc})") from None
        with self._lock:  # one object per entry, whichever thread made it first
            made = self._made[i]
            if made is None:
                self._made[i] = made = entry
        return made

    def __iter__(self) -> Iterator[TarEntry]:
        # each from its own table (EntryTable makes its columns' entries all at once)
        for i in range(self._count):
            made = self._made[i]
            yield made if made is not None else self._make(i)


#: More distinct FileMetadata vtables than this and a zTOC is read whole (a builder shares
#: one vtable among the tables with the same fields present: real zTOCs have a handful)
_LOOKUP_VTABLES = 32
#: Names spelt so that normalising them takes more than dropping a leading ``./`` and a
#: trailing ``/`` (``a//b``, ``a/./b``, ``a/.``), in the names joined by NULs
_ODD_NAMES = re.compile(rb"//|/\.[/\x00]")


def _gather(source: Any, indexes: Iterable[int]) -> tuple[Any, ...]:
    """``source[i]`` for each of ``indexes`` (at least two) in one C loop, itemgetter's:
    ``map`` over a bound ``__getitem__`` costs ~2.5x as much (54k words of a memoryview:
    10.3 -> 3.8 ms)."""
    return operator.itemgetter(*indexes)(source)  # type: ignore[no-any-return]


def _lookup_columns(
    buf: _Buffer, start: int, count: int
) -> tuple[list[int], dict[bytes, int]] | None:
    """What lookups by name need of a TOC of ``count`` FileMetadata tables: ``(table
    positions, {name as stored: the last table of that name})``, or None where a zTOC is
    unusual and has to be read whole.

    Every column of all tables at once, by ``map`` over C functions: the positions (in
    the buffer, 4-byte aligned), the vtables (few, each checked), the names (strings in
    the buffer, ended by a NUL) and the data offsets, which must grow from table to table
    (the tar's order, which a header offset depends on). The rest of a table is checked
    when an entry is made of it. None also when a name is spelt in a way a lookup of its
    normal form would miss."""
    data, size = buf.data, buf.size
    if sys.byteorder != "little" or size % 4 or start & 3 or count < 2:
        return None  # (one table: reading it whole costs no more)
    words = memoryview(data).cast("I")
    add, rshift, and_ = operator.add, operator.rshift, operator.and_
    two, three, four = itertools.repeat(2), itertools.repeat(3), itertools.repeat(4)
    last = size - 4
    first = start >> 2
    pos = list(map(add, words[first : first + count].tolist(), range(start, start + 4 * count, 4)))
    if len(pos) != count:  # the TOC's vector was checked to fit: never, but cheap
        return None
    highest = max(pos)
    if highest > last or any(map(and_, pos, three)):
        return None
    signed = memoryview(data).cast("i")
    vts = list(map(operator.sub, pos, _gather(signed, map(rshift, pos, two))))
    distinct = set(vts)
    if len(distinct) > _LOOKUP_VTABLES:
        return None
    try:
        layouts = {vt: _file_vtable(buf, pos[vts.index(vt)]) for vt in distinct}
    except FormatError:
        return None  # the whole read says which table is wrong
    name_at = {vt: dict(layout[1]).get(0, 0) for vt, layout in layouts.items()}
    offset_at = {vt: layout[2] for vt, layout in layouts.items()}
    if not all(name_at.values()) or not all(offset_at.values()):
        return None
    table_size = {vt: layout[0] for vt, layout in layouts.items()}
    if highest + max(table_size.values()) > size and (
        max(map(add, pos, map(table_size.__getitem__, vts))) > size
    ):
        return None
    if any(off & 3 for off in name_at.values()):  # the tables' positions are aligned
        return None

    def column(at: dict[int, int], vts: list[int]) -> list[int]:
        """``pos`` plus each table's field offset (one offset for all: no look-up each)."""
        offsets = set(at.values())
        each = itertools.repeat(offsets.pop()) if len(offsets) == 1 else map(at.__getitem__, vts)
        return list(map(add, pos, each))

    # Columns are dropped as soon as they are used: their ints are freed for the next
    # ones, and a fresh process touches fewer new pages (a page fault costs ~2 us here;
    # 54k tables are ~2 MB a column)
    offsets = column(offset_at, vts)
    tar_offsets: Sequence[int]
    if any(map(and_, offsets, itertools.repeat(7))):
        tar_offsets = list(
            map(operator.itemgetter(0), map(_I64.unpack_from, itertools.repeat(data), offsets))
        )
    else:  # int64s aligned as a flatbuffer builder aligns them: one gather
        longs = memoryview(data)[: size & ~7].cast("q")
        tar_offsets = _gather(longs, map(rshift, offsets, three))
    del offsets
    if any(map(operator.ge, tar_offsets, itertools.islice(tar_offsets, 1, None))):
        return None
    del tar_offsets
    fields = column(name_at, vts)
    del vts
    targets = list(map(add, fields, _gather(words, map(rshift, fields, two))))
    del fields
    if max(targets) > last or any(map(and_, targets, three)):
        return None
    begins = list(map(add, targets, four))
    ends = list(map(add, begins, _gather(words, map(rshift, targets, two))))
    del targets
    if max(ends) >= size or any(_gather(data, ends)):  # past the buffer, no NUL
        return None
    if sum(ends) - sum(begins) > size:  # names shared by many tables: the whole read refuses
        return None
    names = [data[b:e] for b, e in zip(begins, ends, strict=True)]
    del begins, ends
    if _ODD_NAMES.search(b"\x00".join(names) + b"\x00"):
        return None
    return pos, dict(zip(names, range(count), strict=True))


class ZtocLookup(NameLookup):
    """A zTOC's entries for a read that looks a few names up: a name is found among the
    names as stored (every spelling a tar gives it: ``name``, ``name/``, ``./name``,
    ``./name/``), and the entry it belongs to is checked as the eager reader checks it --
    every field of its table, its type, its extent, its place after the entry before --
    when it is made. Anything that needs every entry (a listing, the names,
    a walk) reads the zTOC whole first (:class:`ZtocEntries`, every table checked), so a
    damaged table is an error whenever it is used and never an answer.

    :func:`_lookup_columns`, run by the first lookup, gives the positions of the tables and
    their stored names; a zTOC it cannot take is read whole then."""

    def __init__(
        self,
        buf: _Buffer,
        files: tuple[int, int],
        every_entry: Callable[[], ZtocEntries],
        *,
        uncompressed_size: int,
        where: str,
    ) -> None:
        self._buf = buf
        self._vector = files  # (start, count) of the TOC's FileMetadata offsets
        self._every_entry = every_entry
        self._limit = uncompressed_size
        self._where = where
        self._lock = threading.Lock()
        self._columns: tuple[list[int], dict[bytes, int]] | None = None
        self._columns_tried = False
        self._whole: ZtocEntries | None = None
        self._map: dict[str, int] | None = None
        self._files: dict[int, ZtocFile] = {}
        self._text = 0  # characters of the strings of the tables in _files
        self._made: dict[int, TarEntry] = {}

    def __len__(self) -> int:
        return self._vector[1]

    def _lookups(self) -> tuple[list[int], dict[bytes, int]] | None:
        """What lookups need (:func:`_lookup_columns`), made by the first one that asks:
        a listing that comes first reads the zTOC whole without making them. None: the
        zTOC has to be read whole."""
        with self._lock:
            if not self._columns_tried:
                self._columns_tried = True
                self._columns = _lookup_columns(self._buf, *self._vector)
            return self._columns

    # -- read whole ---------------------------------------------------------------------
    def whole(self) -> ZtocEntries:
        """Every entry, every table checked (once). Entries lookups made already are
        handed over (the same objects: a hard link is found by identity)."""
        with self._lock:
            if self._whole is None:
                whole = self._every_entry()
                for i, made in self._made.items():  # tables in tar order: the same positions
                    whole._made[i] = made
                self._whole = whole
            return self._whole

    @property
    def names(self) -> list[str]:
        return self.whole().names

    def name_map(self, start: int = 0) -> dict[str, int]:
        if start:
            return self.whole().name_map(start)
        whole = self.whole()
        with self._lock:
            if self._map is None:
                self._map = whole.name_map()
            return self._map

    def unsafe(self, i: int) -> bool:
        return self.whole().unsafe(i)

    def unsafe_positions(self) -> list[int]:
        return self.whole().unsafe_positions()

    def encoded(self) -> dict[str, Any]:
        return self.whole().encoded()

    def __iter__(self) -> Iterator[TarEntry]:
        return iter(self.whole())

    def data_end(self) -> int:
        last = self[-1]
        return last.data_offset + last.size

    # -- one entry ----------------------------------------------------------------------
    def _at(self, i: int) -> TarEntry:
        with self._lock:
            whole, made = self._whole, self._made.get(i)
        if whole is not None:
            return whole[i]
        if made is not None:
            return made
        return self.whole()[i] if self._lookups() is None else self._make(i)

    def _file(self, i: int) -> ZtocFile:
        with self._lock:
            f = self._files.get(i)
        if f is None:
            columns = self._lookups()
            assert columns is not None  # entries are made here only when there are columns
            try:
                f = _decode_file(self._buf, columns[0][i])
            except _MALFORMED as exc:
                raise FormatError(f"{self._where}: entry {i} is malformed ({exc})") from None
            text = _text_of(f)
            with self._lock:
                if i not in self._files:
                    self._text += text
                    self._files[i] = f
                over = self._text > self._buf.size
            if over:  # (the whole read refuses such a zTOC too: see _SHARED_STRINGS)
                raise FormatError(f"{self._where}: {_SHARED_STRINGS}")
        return f

    def _make(self, i: int) -> TarEntry:
        """Entry ``i``, with the checks the whole read makes of it (the offsets grow from
        table to table: :func:`_lookup_columns` saw them all). Table ``i - 1`` is decoded
        (every field in bounds) for the header offset; its own type and extent are
        checked when an entry is made of it."""
        f = self._file(i)
        where = self._where
        _check_file(f, self._limit, where)
        header = 0
        if i:
            before = self._file(i - 1)
            header = _align(before.uncompressed_offset + before.uncompressed_size)
        _check_follows(f, header, where)
        try:
            entry = _tar_entry(f, header)
        except (ValueError, OverflowError, UnicodeError) as exc:
            raise FormatError(f"{where}: entry {i} is malformed ({exc})") from None
        with self._lock:  # one object per entry, whichever thread made it first
            entry = self._made.setdefault(i, entry)
            whole = self._whole
            if whole is not None:  # read whole meanwhile: the same object there too
                with whole._lock:
                    entry = whole._made[i] or entry
                    whole._made[i] = entry
        return entry

    def lookup(self, name: str) -> TarEntry | None:
        """The last entry stored under ``name`` whose name is safe, or None. ``name`` is
        normalised (as :meth:`Layer.find` gives it); any other reads the zTOC whole."""
        with self._lock:
            whole = self._whole
        if whole is not None:
            return self._whole_lookup(name)
        if ".." in name.split("/"):
            return None  # never a safe name
        if not name or normalize_name(name) != name:
            return self._whole_lookup(name)
        columns = self._lookups()
        if columns is None:
            return self._whole_lookup(name)
        try:  # stored names are decoded with surrogateescape: only its results can match
            raw = name.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return None
        if raw.decode("utf-8", "surrogateescape") != name:
            return None
        stored = columns[1]
        found = max(
            stored.get(raw, -1),
            stored.get(raw + b"/", -1),
            stored.get(b"./" + raw, -1),
            stored.get(b"./" + raw + b"/", -1),
        )
        return None if found < 0 else self[found]

    def _whole_lookup(self, name: str) -> TarEntry | None:
        i = self.name_map().get(name)
        return None if i is None else self.whole()[i]


def lazy_layer_index(
    data: bytes, *, layer_digest: str, media_type: str, blob_size: int
) -> LayerIndex:
    """:func:`ztoc_to_layer_index` of :func:`decode_ztoc` of ``data``, without decoding
    every entry. The zTOC's own tables (root, compression info, checkpoints) are checked
    at once; the entries come as a :class:`ZtocLookup`: a lookup by name reads what it
    needs of every file table and checks the entry it finds as the eager reader does, a
    listing checks every table first (:class:`ZtocEntries`). A damaged file table is an
    error when it is used, before any of its fields is."""
    where = f"zTOC of {layer_digest}"
    data = without_prefetch_list(bytes(data))
    buf = _Buffer(data, where)
    try:
        root = buf.table(buf.u32(0), "Ztoc")
        info = root.table(5, "CompressionInfo")
        if info is None:
            raise FormatError(f"{where}: no compression info")
        algorithm_id = info.scalar(0, _I8, 1)
        if algorithm_id not in _ALGORITHMS:
            raise FormatError(f"{where}: unknown compression algorithm {algorithm_id}")
        start, count = info.vector(3, 1)
        _text(root.string(0))
        tool = _text(root.string(1))
        compressed_size = root.scalar(2, _I64, 0)
        uncompressed_size = root.scalar(3, _I64, 0)
        max_span_id = info.scalar(1, _I32, 0)
        span_digests = [_text(d) for d in info.strings(2)]
        # a view: the checkpoints are most of a zTOC (8.4 MB of 19 MB for the bench's
        # layer), and copying them out cost 7 ms of a cold read; windows are copied
        # one by one when a span needs them
        checkpoints = memoryview(data)[start : start + count]
        toc = root.table(4, "TOC")
        files = toc.vector(0, 4) if toc is not None else (0, 0)
    except FormatError:
        raise
    except _MALFORMED as exc:
        raise FormatError(f"{where}: corrupt flatbuffer ({exc})") from None
    algorithm = _ALGORITHMS[algorithm_id]
    checkpoints_read = _check_archive(
        compressed_size, uncompressed_size, algorithm, max_span_id, span_digests, checkpoints, where
    )
    if blob_size != compressed_size:
        raise FormatError(f"{where}: for a blob of {compressed_size} bytes, not {blob_size}")

    def every_entry() -> ZtocEntries:
        return _ztoc_entries(buf, toc, uncompressed_size, where)

    entries: Sequence[TarEntry] = (
        every_entry()
        if not files[1]
        else ZtocLookup(buf, files, every_entry, uncompressed_size=uncompressed_size, where=where)
    )
    return _layer_index(
        algorithm,
        checkpoints,
        span_digests,
        uncompressed_size,
        entries,
        layer_digest=layer_digest,
        media_type=media_type,
        blob_size=blob_size,
        tool=tool,
        where=where,
        checkpoints_read=checkpoints_read,
    )


def _ztoc_entries(
    buf: _Buffer, toc: _Table | None, uncompressed_size: int, where: str
) -> ZtocEntries:
    """Every entry of the TOC as :func:`decode_ztoc` and :func:`check_ztoc` would take
    them -- every table checked -- without making them objects: the file tables are
    scanned for names, types, offsets and sizes."""
    try:
        columns = _scan_files(buf, toc)
    except FormatError:
        raise
    except _MALFORMED as exc:
        raise FormatError(f"{where}: corrupt flatbuffer ({exc})") from None
    positions, raw_names, kinds, offsets, sizes = columns
    bad = set(kinds) - _FILE_TYPE_BYTES
    if bad:
        i = kinds.index(min(bad))
        name = _text(raw_names[i])
        raise FormatError(f"{where}: entry {name!r} has unknown type {_text(kinds[i])[:40]!r}")
    if offsets and (
        min(offsets) < 0
        or min(sizes) < 0
        or max(map(operator.add, offsets, sizes)) > uncompressed_size
    ):
        for i, (offset, size) in enumerate(zip(offsets, sizes, strict=True)):
            if offset < 0 or size < 0:
                raise FormatError(
                    f"{where}: entry {_text(raw_names[i])!r} has a negative offset or size"
                )
            if offset + size > uncompressed_size:
                raise FormatError(
                    f"{where}: entry {_text(raw_names[i])!r} lies past the end of the layer"
                )
    order: Sequence[int] = range(len(offsets))
    if any(a > b for a, b in itertools.pairwise(offsets)):
        order = sorted(order, key=offsets.__getitem__)
        offsets, sizes = [offsets[i] for i in order], [sizes[i] for i in order]
    # SOCI's reader's rule, as _header_offsets: the first header at 0, each next one right
    # after the padded data of the entry before; each entry's data one block or more later
    mask = -BLOCK  # BLOCK is a power of two: x & mask rounds down to a block
    ends = map(operator.add, offsets[:-1], sizes[:-1])
    headers = [0, *[(e + BLOCK - 1) & mask for e in ends]] if offsets else []
    gaps = list(map(operator.sub, offsets, headers))
    if gaps and (min(gaps) < BLOCK or any(map((BLOCK - 1).__and__, gaps))):
        k = next(k for k, g in enumerate(gaps) if g < BLOCK or g % BLOCK)
        i = order[k]
        raise FormatError(
            f"{where}: entry {_text(raw_names[i])!r} at offset {offsets[k]} overlaps the "
            f"entry before it or does not follow a tar header (next header at {headers[k]})"
        )
    in_order = isinstance(order, range)
    names, unsafe = _entry_names(raw_names if in_order else [raw_names[i] for i in order])
    data_end = 0
    if offsets:  # the last entry's data ends last: entries never overlap
        data_end = offsets[-1] + (sizes[-1] if kinds[order[-1]] == b"reg" else 0)
    return ZtocEntries(
        buf,
        positions if in_order else [positions[i] for i in order],
        headers,
        names,
        unsafe,
        data_end,
        where=where,
    )


__all__ = [
    "CHECKPOINT_RECORD_SIZE",
    "FILE_TYPES",
    "Checkpoint",
    "Ztoc",
    "ZtocEntries",
    "ZtocFile",
    "ZtocLookup",
    "check_ztoc",
    "decode_ztoc",
    "encode_ztoc",
    "format_mod_time",
    "gzip_checkpoints_blob",
    "lazy_layer_index",
    "parse_gzip_checkpoints",
    "parse_mod_time",
    "parse_tar_zinfo",
    "tar_zinfo_blob",
    "ztoc_from_blob",
    "ztoc_to_layer_index",
]
