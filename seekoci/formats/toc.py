"""Shared by the formats that carry a JSON table of contents (eStargz, zstd:chunked).

Both TOCs list every tar entry with stargz's field names and, for each regular file, the
compressed pieces its payload is stored in (``offset`` of a gzip member / zstd frame run,
``chunkOffset``/``chunkSize`` inside the file, ``chunkDigest``: sha256 of the uncompressed
chunk). :func:`build_index` turns such a TOC into a :class:`LayerIndex` whose spans are those
pieces, checked after decoding against their ``chunkDigest``.

Offsets: a TOC does not say where each tar header is. With a *layout* of the tar stream (the
tar-split zstd:chunked carries: header bytes and payload sizes in order) spans and entries get
their real tar-stream offsets and the header bytes between payloads become spans of their own.
Without one (eStargz), offsets are those of the payloads laid end to end
(``LayerIndex.tar_offsets`` False): files read the same, and the layer serves tar-stream
ranges another way.
"""

from __future__ import annotations

import base64
import binascii
import collections
import datetime
import functools
import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .. import _json
from ..errors import FormatError
from .base import CHECK_NONE, CHECK_UNCOMPRESSED, Span
from .index import LayerIndex
from .tar import _NO_PAX, _NO_XATTRS, BLOCK, TarEntry, normalize_name, unsafe_name

#: A TOC (JSON) that inflates past this is refused (hostile blob).
MAX_TOC_SIZE = 512 << 20
#: A TOC or tar-split may always hold this many JSON values, however well it packs
#: (``_json.VALUES_PER_PACKED_BYTE``): files that all carry the same few hundred xattrs
#: pack to ~60 values a byte (skopeo: 67 for 3,000 files of 320 one-byte xattrs, ~1M
#: values). Once parsed: 30-200 bytes a value (a chain of one-key objects the most), so
#: at most ~200 MB a TOC, held as long as its layer is.
MIN_TOC_VALUES = 1 << 20

_TYPES = {
    "reg": "file",
    "dir": "dir",
    "symlink": "symlink",
    "hardlink": "hardlink",
    "char": "char",
    "block": "block",
    "fifo": "fifo",
}
_HEX_DIGITS = "0123456789abcdef"
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|z|[+-]\d\d:\d\d)"
)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One compressed piece of a file's payload."""

    compressed_start: int
    compressed_end: int
    size: int  # uncompressed bytes of the file it holds
    skip: int  # uncompressed bytes before them in the decoded piece (innerOffset)
    digest: str  # sha256 hex of the uncompressed chunk, "" when the TOC gives none
    zeros: bool = False


@dataclass(slots=True)
class TocFile:
    entry: TarEntry
    chunks: list[Chunk] = field(default_factory=list)
    #: bytes of the file its chunks hold so far (kept as they are added: summing them for
    #: each new chunk made a file of 10k chunks cost 1.6 s)
    filled: int = 0

    def add(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        self.filled += chunk.size


class Segment(NamedTuple):
    """Tar bytes between payloads (headers, padding), from a tar layout. (A tuple: a
    layout has one per tar entry, and a tuple is made in half a frozen dataclass's time.)"""

    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


class Payload(NamedTuple):
    """A tar entry's place in a tar layout: its name and payload size."""

    name: str
    size: int


def load_json(data: bytes, *, packed: int, where: str) -> dict[str, Any]:
    """The TOC document ``data``, inflated from ``packed`` bytes."""
    try:
        doc = _json.loads(data, packed=packed, min_values=MIN_TOC_VALUES)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{where}: TOC is not JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise FormatError(f"{where}: TOC has no entry list")
    return doc


def digest_hex(value: object, *, where: str) -> str:
    """``sha256:HEX`` -> HEX (FormatError for anything else)."""
    if not isinstance(value, str) or not value.startswith("sha256:"):
        raise FormatError(f"{where}: digest {value!r} is not a sha256 digest")
    hexpart = value[7:]
    # 64 lowercase hex digits: stripping them leaves nothing (a C call, not a regex: one
    # digest per chunk of a TOC)
    if len(hexpart) != 64 or hexpart.strip(_HEX_DIGITS):
        raise FormatError(f"{where}: digest {value!r} is malformed")
    return hexpart


# The index outlives the parsed TOC it is made from: ~80 MiB of small objects for a
# 54k-entry layer. Had it kept the document's own strings and integers (a name, a size, an
# offset of each entry), those few would pin nearly every memory pool the document used --
# CPython gives a pool back only once every object in it is gone -- and the process would
# hold the document's memory for as long as the index lives: 105 MiB of RSS for that
# layer's whole index against 48 MiB with copies. Values kept from the document are
# therefore copies: ``n + 0`` for an integer (a new object, unless one of the small
# integers CPython shares; written out, not a call: ~10 a TOC entry), ``own_str`` for a
# string.


def own_str(value: str) -> str:
    """``value`` as an object of its own, not the parsed TOC's (see above)."""
    if len(value) == 1:
        return chr(ord(value))  # (a Latin-1 character: CPython's shared one)
    return value[:1] + value[1:]  # a new string (none: CPython's shared one)


# (the memos below keep the parsed TOC's strings as their keys: at most 256 user and
# group names and 4096 times, a bounded cost; a memo keyed by copies took a lock a call,
# 3-7% of a whole index's CPU)
@functools.lru_cache(maxsize=256)  # a layer has a handful of user and group names
def _owner_name(value: str) -> str:
    """A user or group name, one object per name (not one per entry)."""
    return own_str(value)


def parse_time(value: str, *, where: str) -> tuple[float, int | None]:
    """RFC 3339 (Go's time.Time in JSON) -> (seconds, nanoseconds)."""
    if not value:
        return 0.0, None
    parsed = _parse_time(value)
    if parsed is None:
        raise FormatError(f"{where}: modtime {value!r} is not an RFC 3339 date")
    return parsed


@functools.lru_cache(maxsize=4096)  # most entries of a layer share a handful of times
def _parse_time(value: str) -> tuple[float, int] | None:
    m = _RFC3339.fullmatch(value)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    zone = m.group(8)
    offset = 0 if zone in ("Z", "z") else (int(zone[1:3]) * 60 + int(zone[4:6])) * 60
    if zone.startswith("-"):
        offset = -offset
    try:
        moment = datetime.datetime(
            year, month, day, hour, minute, second, tzinfo=datetime.timezone.utc
        )
    except ValueError:
        return None
    seconds = int(moment.timestamp()) - offset
    nanos = int((m.group(7) or "0").ljust(9, "0"))
    return seconds + nanos / 1e9, seconds * 1_000_000_000 + nanos


_INT_FIELDS = ("size", "mode", "uid", "gid", "devMajor", "devMinor")
_STR_FIELDS = ("name", "modtime", "linkName", "userName", "groupName")


def entry_of(raw: Mapping[str, Any], *, where: str) -> TarEntry:
    """A :class:`TarEntry` from a TOC entry (offsets filled in later). Every TOC entry of a
    layer is made before its first read (30-50k of them): the fields are checked together
    and only a field that fails is looked at again, for the message."""
    get = raw.get
    declared = get("type")
    kind = _TYPES.get(declared) if isinstance(declared, str) else None
    if kind is None:
        raise FormatError(f"{where}: entry type {get('type')!r} is not known")
    size = get("size") or 0
    mode = get("mode") or 0
    uid = get("uid") or 0
    gid = get("gid") or 0
    major = get("devMajor") or 0
    minor = get("devMinor") or 0
    if not (
        type(size) is type(mode) is type(uid) is type(gid) is type(major) is type(minor) is int
        and min(size, mode, uid, gid, major, minor) >= 0
    ):
        for key, value in zip(_INT_FIELDS, (size, mode, uid, gid, major, minor), strict=True):
            if type(value) is not int or value < 0:
                raise FormatError(f"{where}: {key} {value!r} is not a non-negative integer")
    raw_name = get("name") or ""
    modtime = get("modtime") or ""
    linkname = get("linkName") or ""
    uname = get("userName") or ""
    gname = get("groupName") or ""
    if not type(raw_name) is type(modtime) is type(linkname) is type(uname) is type(gname) is str:
        for key, value in zip(
            _STR_FIELDS, (raw_name, modtime, linkname, uname, gname), strict=True
        ):
            if type(value) is not str:
                raise FormatError(f"{where}: {key} {value!r} is not a string")
    xattrs = _NO_XATTRS
    found = get("xattrs")
    if found:
        if not isinstance(found, dict):
            raise FormatError(f"{where}: xattrs are not an object")
        xattrs = {}
        for key, value in found.items():
            try:
                xattrs[own_str(str(key))] = base64.b64decode(value, validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise FormatError(f"{where}: xattr {key!r} is not base64") from None
    mtime, mtime_ns = parse_time(modtime, where=where)
    raw_name = own_str(raw_name)
    # positional, in the fields' order (a third of the call's cost with keywords)
    return TarEntry(
        normalize_name(raw_name),  # name
        kind,  # type
        size + 0 if kind == "file" else 0,  # (+ 0: a copy, see own_str)
        mode & 0o7777,
        uid + 0,
        gid + 0,
        mtime,
        own_str(linkname) if linkname else "",
        _owner_name(uname) if uname else "",
        _owner_name(gname) if gname else "",
        major + 0,
        minor + 0,
        xattrs,
        0,  # header_offset: filled in later
        0,  # data_offset: filled in later
        _NO_PAX,  # pax (a TOC has no PAX records)
        raw_name,
        unsafe_name(raw_name),  # unsafe
        mtime_ns,
    )


def file_runs(raw_entries: Sequence[Any], *, where: str) -> list[tuple[int, int]]:
    """``(lo, hi)`` for each entry of a TOC's list that is not a chunk: the entry ``lo``,
    then the chunks that follow it (each checked to be one of that file's when the file is
    made). Every entry must be an object, and a chunk must follow a file."""
    starts: list[int] = []
    for i, raw in enumerate(raw_entries):
        if not isinstance(raw, dict):
            raise FormatError(f"{where}: TOC entry {i} is not an object")
        if raw.get("type") != "chunk":
            starts.append(i)
        elif not starts:
            raise FormatError(
                f"{where}: TOC entry {i}: a chunk of {raw.get('name')!r} follows no such file"
            )
    return list(zip(starts, [*starts[1:], len(raw_entries)][: len(starts)], strict=True))


def chunk_entries(
    raw_entries: Sequence[Any], lo: int, hi: int, f: TocFile | None, *, where: str
) -> Iterator[tuple[dict[str, Any], str]]:
    """The chunk entries after entry ``lo`` (up to ``hi``, :func:`file_runs`) with where
    each is for messages, each checked to be one of ``f``'s (None: a file that has no
    chunks, so that any is an error)."""
    for i in range(lo + 1, hi):
        raw = raw_entries[i]
        at = f"{where}: TOC entry {i}"
        if f is None or raw.get("name") != f.entry.raw_name:
            raise FormatError(f"{at}: a chunk of {raw.get('name')!r} follows no such file")
        yield raw, at


def check_chunks(files: Sequence[TocFile], data_end: int, *, where: str) -> None:
    """Every file's chunks tile its payload and lie inside ``[0, data_end)``."""
    for f in files:
        total = sum(c.size for c in f.chunks)
        if f.entry.size and total != f.entry.size:
            raise FormatError(
                f"{where}: {f.entry.name!r}: chunks hold {total} bytes, the entry {f.entry.size}"
            )
        for c in f.chunks:
            if c.size <= 0:
                raise FormatError(f"{where}: {f.entry.name!r}: a chunk is empty")
            if not 0 <= c.compressed_start < c.compressed_end <= data_end:
                raise FormatError(
                    f"{where}: {f.entry.name!r}: chunk at {c.compressed_start} lies outside "
                    f"the blob's data (0-{data_end})"
                )


def _chunk_span(index: int, chunk: Chunk, ustart: int) -> Span:
    # positional, in the fields' order (bits and chunk_size 0): one per chunk of a layer
    return Span(
        index,
        chunk.compressed_start,
        chunk.compressed_end,
        ustart,
        ustart + chunk.size,
        chunk.digest,
        0,  # bits
        0,  # chunk_size
        CHECK_UNCOMPRESSED if chunk.digest else CHECK_NONE,
        chunk.skip,
        chunk.zeros,
    )


def _payload_space(files: Sequence[TocFile]) -> tuple[list[Span], list[TarEntry], int]:
    """Spans and entries with the payloads laid end to end."""
    spans: list[Span] = []
    entries: list[TarEntry] = []
    v = 0
    for f in files:
        f.entry.header_offset = f.entry.data_offset = v
        entries.append(f.entry)
        for c in f.chunks:
            spans.append(_chunk_span(len(spans), c, v))
            v += c.size
    return spans, entries, v


def _tar_space(
    files: Sequence[TocFile],
    layout: Sequence[Segment | Payload],
    data_end: int,
    *,
    where: str,
) -> tuple[list[Span], list[TarEntry], int]:
    """Spans and entries at their tar-stream offsets; the header bytes between payloads
    are spans of the compressed bytes between the payloads' pieces, checked against the
    layout's digest of them."""
    queue: dict[str, collections.deque[TocFile]] = collections.defaultdict(collections.deque)
    for f in files:
        queue[f.entry.name].append(f)
    spans: list[Span] = []
    entries: list[TarEntry] = []
    pos = 0  # tar-stream offset
    cpos = 0  # compressed offset where the bytes not yet in a span start
    gap = hashlib.sha256()
    gap_start = 0
    data_end_prev = 0  # end of the last payload (tar stream)

    def close_gap(cend: int) -> None:
        nonlocal cpos, gap_start, gap
        size = pos - gap_start
        if size:
            if cend <= cpos:
                raise FormatError(f"{where}: tar header bytes at {gap_start} have no frames")
            spans.append(
                Span(
                    len(spans),
                    cpos,
                    cend,
                    gap_start,
                    pos,
                    gap.hexdigest(),
                    0,
                    0,
                    CHECK_UNCOMPRESSED,
                )
            )
        elif cend != cpos:
            raise FormatError(f"{where}: compressed bytes {cpos}-{cend} hold no tar bytes")
        cpos = cend
        gap = hashlib.sha256()
        gap_start = pos

    for item in layout:
        if type(item) is Segment:
            data = item.data
            gap.update(data)
            pos += len(data)
            continue
        assert isinstance(item, Payload)
        name = normalize_name(item.name)
        pending = queue.get(name)
        if not pending:
            raise FormatError(f"{where}: tar entry {item.name!r} is not in the TOC")
        f = pending.popleft()
        if item.size != f.entry.size:
            raise FormatError(f"{where}: {item.name!r}: tar size {item.size}, TOC {f.entry.size}")
        f.entry.header_offset = -(-data_end_prev // BLOCK) * BLOCK
        f.entry.data_offset = pos
        entries.append(f.entry)
        if f.chunks:
            close_gap(f.chunks[0].compressed_start)
            for c in f.chunks:
                if c.compressed_start != cpos:
                    raise FormatError(f"{where}: {item.name!r}: chunks are not in blob order")
                spans.append(_chunk_span(len(spans), c, pos))
                pos += c.size
                cpos = c.compressed_end
            gap_start = pos
        else:
            pos += item.size
        data_end_prev = pos
    close_gap(data_end)
    left = [n for n, q in queue.items() if q]
    if left:
        raise FormatError(f"{where}: TOC entry {left[0]!r} is not in the tar layout")
    return spans, entries, pos


def build_index(
    files: Sequence[TocFile],
    *,
    fmt: str,
    compression: str,
    media_type: str,
    blob_size: int,
    data_end: int,
    layout: Sequence[Segment | Payload] | None,
    verification: str,
    where: str,
) -> LayerIndex:
    """The index of a layer from its TOC (``data_end``: where the layer's compressed tar
    data ends and the TOC begins)."""
    check_chunks(files, data_end, where=where)
    if layout is None:
        spans, entries, total = _payload_space(files)
    else:
        spans, entries, total = _tar_space(files, layout, data_end, where=where)
    return LayerIndex(
        layer_digest="",
        media_type=media_type,
        compression=compression,
        blob_size=blob_size,
        uncompressed_size=total,
        span_size=0,
        spans=spans,
        entries=entries,
        window_locations=[(0, 0)] * len(spans),
        tool=f"{fmt} TOC",
        format=fmt,
        tar_offsets=layout is not None,
        verification=verification,
    )
