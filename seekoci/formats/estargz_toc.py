"""Reading an eStargz TOC (``stargz.index.json``): its entries and the gzip members their
chunks are stored in, for :func:`~seekoci.formats.toc.build_index`. Imported when a layer's
TOC is read (:meth:`~seekoci.formats.estargz.EstargzFormat.embedded_index`), not with the
plug-in: recognising an eStargz blob needs none of it."""

from __future__ import annotations

import bisect
import hashlib
import itertools
import operator
from typing import Any

from ..errors import FormatError
from .gzip import gunzip
from .tar import BLOCK, TarScanner
from .toc import (
    MAX_TOC_SIZE,
    Chunk,
    TocFile,
    chunk_entries,
    digest_hex,
    entry_of,
    file_runs,
)

#: Blocks of the TOC member decoded for the TOC's tar header (its first block)
_HEAD_BLOCKS = 4


def toc_file(
    member: bytes, toc: bytes, start: int, end: int, *, where: str, digest: str | None = None
) -> TocFile:
    """The tar entry ``stargz.index.json`` itself (it is part of the tar, so a layer lists
    it as a pass-built index would), read from its member and checked against the TOC."""
    scanner = TarScanner(name=where)
    # the entry is made of its header, the member's first block (toc_of_member saw to it,
    # decoding the whole member once already): the first few are decoded, not all of it
    scanner.feed(gunzip(member, BLOCK * _HEAD_BLOCKS, what=f"{where}: TOC member"))
    if not scanner.entries:
        raise FormatError(f"{where}: the TOC member holds no tar entry")
    entry = scanner.entries[0]
    if digest is None:  # (the caller may have it: the TOC checked against its annotation)
        digest = hashlib.sha256(toc).hexdigest()
    landmark = TocFile(entry)
    landmark.add(Chunk(start, end, len(toc), entry.data_offset, digest))
    return landmark


def toc_of_member(member: bytes, toc_name: str, *, where: str) -> bytes:
    """The TOC JSON bytes from the (decoded) tar entry ``toc_name``
    (``stargz.index.json``)."""
    tar = gunzip(member, MAX_TOC_SIZE + 2 * BLOCK, what=f"{where}: TOC member")
    header = tar[:BLOCK]
    if len(header) < BLOCK or header[:100].rstrip(b"\0") != toc_name.encode():
        raise FormatError(f"{where}: the TOC member does not hold {toc_name}")
    try:
        size = int(header[124:136].rstrip(b"\0 ").decode("ascii") or "0", 8)
    except (UnicodeDecodeError, ValueError):
        raise FormatError(f"{where}: the TOC's tar header is malformed") from None
    data = tar[BLOCK : BLOCK + size]
    if len(data) != size:
        raise FormatError(f"{where}: the TOC is cut short")
    return data


def member_ends(raw_entries: list[Any], toc_offset: int) -> dict[int, int]:
    """Member start -> the next member's start (the TOC's for the last): a chunk's offset
    must be a member start before the TOC, others have no end here."""
    try:  # C calls only, one per entry: the offsets in TOC order, nearly sorted already
        found: list[Any] = list(map(dict.get, raw_entries, itertools.repeat("offset")))
    except TypeError:  # an entry that is not an object (the whole read says which)
        found = [e.get("offset") for e in raw_entries if isinstance(e, dict)]
    starts: list[Any] = list(
        itertools.compress(found, map(operator.is_not, found, itertools.repeat(None)))
    )
    offsets: list[int]
    if set(map(type, starts)) <= {int}:
        starts.sort()  # (a start twice, members shared by small files: the pair after wins)
        offsets = starts[bisect.bisect_left(starts, 0) : bisect.bisect_left(starts, toc_offset)]
    else:
        offsets = sorted({o for o in starts if isinstance(o, int) and 0 <= o < toc_offset})
    offsets.append(toc_offset)
    return dict(itertools.pairwise(offsets))


def files_of(doc: dict[str, Any], toc_offset: int, *, where: str) -> tuple[list[TocFile], bool]:
    """The TOC's entries with their chunks, and whether every chunk has a digest. A chunk's
    compressed bytes run from its member's ``offset`` to the next member's."""
    raw_entries = doc["entries"]
    ends = member_ends(raw_entries, toc_offset)
    files: list[TocFile] = []
    digested = True
    for lo, hi in file_runs(raw_entries, where=where):
        f, has_digests = file_at(raw_entries, lo, hi, ends, where=where)
        files.append(f)
        digested &= has_digests
    return files, digested


def file_at(
    raw_entries: list[Any], lo: int, hi: int, ends: dict[int, int], *, where: str
) -> tuple[TocFile, bool]:
    """The entry ``lo`` of the TOC and its chunks (the entries up to ``hi``, all of type
    ``chunk``), checked; and whether every chunk has a digest."""
    at = f"{where}: TOC entry {lo}"
    raw = raw_entries[lo]
    f = TocFile(entry_of(raw, where=at))
    regular = f.entry.type == "file"
    digested = True
    if regular and f.entry.size:
        digested = _add_chunk(f, raw, ends, at)
    for raw, at in chunk_entries(raw_entries, lo, hi, f if regular else None, where=where):
        digested &= _add_chunk(f, raw, ends, at)
    return f, digested


def _add_chunk(f: TocFile, raw: dict[str, Any], ends: dict[int, int], at: str) -> bool:
    offset = raw.get("offset")
    if not isinstance(offset, int) or offset not in ends:
        raise FormatError(f"{at}: offset {offset!r} is not inside the blob's data")
    chunk_offset = raw.get("chunkOffset", 0) or 0
    done = f.filled
    if chunk_offset != done:
        raise FormatError(f"{at}: chunk at {chunk_offset!r} of {f.entry.name!r}, expected {done}")
    size = raw.get("chunkSize") or f.entry.size - done
    inner = raw.get("innerOffset", 0) or 0
    if not isinstance(size, int) or size <= 0 or done + size > f.entry.size:
        raise FormatError(f"{at}: chunk size {size!r} does not fit {f.entry.name!r}")
    if not isinstance(inner, int) or inner < 0:
        raise FormatError(f"{at}: innerOffset {inner!r} is not valid")
    digest = raw.get("chunkDigest")
    hexdigest = digest_hex(digest, where=at) if digest else ""
    # (+ 0: copies, not the parsed TOC's objects; see toc.own_str)
    f.add(Chunk(offset + 0, ends[offset] + 0, size + 0, inner + 0, hexdigest))
    return bool(hexdigest)
