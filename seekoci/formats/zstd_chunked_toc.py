"""Reading a zstd:chunked TOC and tar-split: the TOC's entries and the frames their chunks
are stored in, and the tar layout, for :func:`~seekoci.formats.toc.build_index`. Imported
when a layer's TOC is read (:meth:`~seekoci.formats.zstd_chunked.ZstdChunkedFormat.
embedded_index`), not with the plug-in: recognising a zstd:chunked blob needs none of it."""

from __future__ import annotations

import base64
import binascii
import functools
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .. import _json
from ..errors import FormatError
from .toc import (
    MIN_TOC_VALUES,
    Chunk,
    Payload,
    Segment,
    TocFile,
    chunk_entries,
    digest_hex,
    entry_of,
    file_runs,
)

#: base64 to bytes, refusing anything but the alphabet and its padding (the C function
#: itself from Python 3.11: ``b64decode``'s wrapping costs as much as decoding 1 KiB)
_b64decode: Callable[[str], bytes]
if sys.version_info >= (3, 11):
    _b64decode = functools.partial(binascii.a2b_base64, strict_mode=True)
else:
    _b64decode = functools.partial(base64.b64decode, validate=True)


def files_of(doc: dict[str, Any], *, where: str) -> list[TocFile]:
    """The TOC's entries with their chunks; a chunk's compressed bytes run to the next
    chunk's ``offset``, the file's last one to its ``endOffset``."""
    raw_entries = doc["entries"]
    runs = file_runs(raw_entries, where=where)
    return [file_at(raw_entries, lo, hi, where=where) for lo, hi in runs]


def file_at(raw_entries: list[Any], lo: int, hi: int, *, where: str) -> TocFile:
    """The entry ``lo`` of the TOC and its chunks (the entries up to ``hi``, all of type
    ``chunk``), checked. The chunks are made once the last one's end is known."""
    at = f"{where}: TOC entry {lo}"
    raw = raw_entries[lo]
    f = TocFile(entry_of(raw, where=at))
    if not (f.entry.type == "file" and f.entry.size):
        next(chunk_entries(raw_entries, lo, hi, None, where=where), None)  # any is an error
        return f
    end = raw.get("endOffset")
    if not isinstance(end, int):
        raise FormatError(f"{at}: {f.entry.name!r} has no endOffset")
    pending: list[tuple[int, int, str, bool]] = []  # the chunks: offset, size, ...
    _add_chunk(f, pending, raw, at)
    for raw, at in chunk_entries(raw_entries, lo, hi, f, where=where):
        _add_chunk(f, pending, raw, at)
    _close_file(f, pending, end, where=where)
    return f


def _add_chunk(
    f: TocFile, pending: list[tuple[int, int, str, bool]], raw: dict[str, Any], at: str
) -> None:
    get = raw.get
    offset = get("offset")
    if not isinstance(offset, int) or offset < 0:
        raise FormatError(f"{at}: offset {offset!r} is not valid")
    done = f.filled
    if (get("chunkOffset", 0) or 0) != done:
        raise FormatError(f"{at}: chunk of {f.entry.name!r} does not follow the one before")
    size = get("chunkSize") or f.entry.size - done
    if not isinstance(size, int) or size <= 0 or done + size > f.entry.size:
        raise FormatError(f"{at}: chunk size {size!r} does not fit {f.entry.name!r}")
    digest = get("chunkDigest") or (get("digest") if not pending else None)
    if not digest:
        raise FormatError(f"{at}: chunk of {f.entry.name!r} has no digest")
    zeros = get("chunkType", "") == "zeros"
    # (+ 0: copies, not the parsed TOC's objects; see toc.own_str)
    pending.append((offset + 0, size + 0, digest_hex(digest, where=at), zeros))
    f.filled = done + size


def _close_file(
    f: TocFile, pending: list[tuple[int, int, str, bool]], end: int, *, where: str
) -> None:
    """``f``'s chunks, each ending where the next one starts (the last at ``end``);
    ``pending`` is emptied."""
    chunks = f.chunks
    for k, (start, size, digest, zeros) in enumerate(pending, 1):
        e = pending[k][0] if k < len(pending) else end + 0
        if e <= start:
            raise FormatError(f"{where}: {f.entry.name!r}: chunk offsets go backwards")
        chunks.append(Chunk(start, e, size, 0, digest, zeros))
    pending.clear()


def layout_of(data: bytes, *, packed: int | None = None, where: str) -> list[Segment | Payload]:
    """The tar layout from tar-split's JSON lines (type 1: an entry and its payload size,
    type 2: raw tar bytes, base64), inflated from ``packed`` bytes.

    A tar-split is one record per line, ended by LF: each record is decoded where it lies
    in the text and made an item at once, so no array of 100k records is ever held (nor
    the copies that would make one JSON array of the lines): ~200 ms for the 57 MB
    tar-split of a 54k-file layer, against ~340 for one ``json.loads`` of it. A tar-split
    that is not exactly that (blank lines, CRs, another encoding) is split into its
    non-blank lines, parsed as one JSON array, which gives the same records wherever both
    read it."""
    try:
        _json.check(data, packed=packed, min_values=MIN_TOC_VALUES, whole=False)
    except ValueError as exc:
        raise FormatError(f"{where}: the tar-split is too large ({exc})") from None
    try:
        return _layout(_records(data, where), where)
    except (_NotLines, UnicodeDecodeError):
        pass
    # every line is an object and a value before any is parsed ("1\r1\r..." has no marks)
    breaks = data.count(b"\n") + data.count(b"\r")
    if packed is not None and breaks >= _json.limit(packed, MIN_TOC_VALUES):
        raise FormatError(f"{where}: the tar-split is too large ({breaks} lines)")
    lines = [line for line in data.splitlines() if line.strip()]
    try:
        records = _json.loads(
            b"[" + b",".join(lines) + b"]", packed=packed, min_values=MIN_TOC_VALUES
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{where}: the tar-split is not JSON lines ({exc})") from None
    return _layout(records, where)


class _NotLines(Exception):
    """A tar-split that is not one JSON record per LF-ended line."""


#: what the tar-split reader decodes at once, in whole lines (a line of more than 4x this
#: must be ASCII: base64 and the names of real layers)
_SLICE = 1 << 20


def _records(data: bytes, where: str) -> Iterator[Any]:
    """The records of ``data``, decoded a slice of whole lines at a time (one name past
    U+FFFF would make Python keep every character of a whole text in 4 bytes)."""
    start, end = 0, len(data)
    while start < end:
        cut = data.find(b"\n", start + _SLICE)
        stop = end if cut < 0 else cut + 1
        piece = data[start:stop]
        if stop - start > 4 * _SLICE and not piece.isascii():
            raise FormatError(f"{where}: a tar-split line of {stop - start} bytes is not ASCII")
        yield from _records_of(piece.decode("utf-8"))
        start = stop


def _records_of(text: str) -> Iterator[Any]:
    """The records of ``text``, one JSON value per line, each line ended by LF (the last
    one may not be); :class:`_NotLines` for anything else."""
    decode = json.JSONDecoder().raw_decode
    pos, end = 0, len(text)
    while pos < end:
        try:
            record, stop = decode(text, pos)
        except (ValueError, RecursionError):  # (read again as one array: a FormatError)
            raise _NotLines from None
        if stop < end and text[stop] != "\n":
            raise _NotLines
        pos = stop + 1
        yield record


def _layout(records: Iterable[Any], where: str) -> list[Segment | Payload]:
    items: list[Segment | Payload] = []
    add = items.append
    decode = _b64decode
    for n, rec in enumerate(records):
        try:
            kind = rec["type"]
            if kind == 2:
                payload = rec["payload"]
                if not isinstance(payload, str):
                    raise TypeError(f"payload {type(payload).__name__}")
                add(Segment(decode(payload)))
            elif kind == 1:
                size = rec.get("size", 0) or 0
                if not isinstance(size, int) or size < 0:
                    raise ValueError(f"size {size!r}")
                add(Payload(str(rec["name"]), size))
            else:
                raise ValueError(f"type {kind!r}")
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise FormatError(f"{where}: tar-split record {n + 1} is malformed ({exc})") from None
    return items
