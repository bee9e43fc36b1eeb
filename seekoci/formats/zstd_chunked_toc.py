"""Reading a zstd:chunked TOC and tar-split: the TOC's entries and the frames their chunks
are stored in, and the tar layout, for :func:`~seekoci.formats.toc.build_index`. Imported
when a layer's TOC is read (:meth:`~seekoci.formats.zstd_chunked.ZstdChunkedFormat.
embedded_index`), not with the plug-in: recognising a zstd:chunked blob needs none of it."""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import json
import sys
from collections.abc import Callable
from typing import Any

from ..errors import FormatError
from .toc import Chunk, Payload, Segment, TocFile, digest_hex, entry_of, toc_entry

#: base64 to bytes, refusing anything but the alphabet and its padding (the C function
#: itself from Python 3.11: ``b64decode``'s wrapping costs as much as decoding 1 KiB)
_b64decode: Callable[[str], bytes]
if sys.version_info >= (3, 11):
    _b64decode = functools.partial(binascii.a2b_base64, strict_mode=True)
else:
    _b64decode = functools.partial(base64.b64decode, validate=True)


def files_of(doc: dict[str, Any], *, where: str) -> list[TocFile]:
    """The TOC's entries with their chunks; a chunk's compressed bytes run to the next
    chunk's ``offset``, the file's last one to its ``endOffset``. A file's chunks are made
    when the entry after its last one shows where that one ends (once each)."""
    files: list[TocFile] = []
    current: TocFile | None = None
    pending: list[tuple[int, int, str, bool]] = []  # current's chunks: offset, size, ...
    end = 0  # current's endOffset
    for i, item in enumerate(doc["entries"]):
        raw, at, chunk = toc_entry(item, i, current, where=where)
        if chunk:
            assert current is not None  # toc_entry saw to it
            _add_chunk(current, pending, raw, at)
            continue
        if pending:
            assert current is not None
            _close_file(current, pending, end, where=where)
        current = TocFile(entry_of(raw, where=at))
        files.append(current)
        if current.entry.type == "file" and current.entry.size:
            found = raw.get("endOffset")
            if not isinstance(found, int):
                raise FormatError(f"{at}: {current.entry.name!r} has no endOffset")
            end = found
            _add_chunk(current, pending, raw, at)
        else:
            current = None
    if pending:
        assert current is not None
        _close_file(current, pending, end, where=where)
    return files


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
    pending.append((offset, size, digest_hex(digest, where=at), get("chunkType", "") == "zeros"))
    f.filled = done + size


def _close_file(
    f: TocFile, pending: list[tuple[int, int, str, bool]], end: int, *, where: str
) -> None:
    """``f``'s chunks, each ending where the next one starts (the last at ``end``);
    ``pending`` is emptied."""
    chunks = f.chunks
    for k, (start, size, digest, zeros) in enumerate(pending, 1):
        e = pending[k][0] if k < len(pending) else end
        if e <= start:
            raise FormatError(f"{where}: {f.entry.name!r}: chunk offsets go backwards")
        chunks.append(Chunk(start, e, size, 0, digest, zeros))
    pending.clear()


def layout_of(data: bytes, *, where: str) -> list[Segment | Payload]:
    """The tar layout from tar-split's JSON lines (type 1: an entry and its payload size,
    type 2: raw tar bytes, base64), parsed as one JSON array (a call per line costs ~3x).

    A tar-split is one record per line, so its newlines (but the last) become the array's
    commas: a copy of a 57 MB tar-split costs ~80 ms here, most of it page faults, and
    splitting it into lines and joining them made two. Where that is not JSON (blank lines,
    lines ended by a lone CR) the lines are split and joined, which gives the same records
    wherever both parse."""
    records: Any = None
    last = len(data) - 1 if data.endswith(b"\n") else len(data)
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        commas = data.replace(b"\n", b",", data.count(b"\n", 0, last))
        records = json.loads(b"".join((b"[", commas, b"]")))
        del commas
    if records is None:
        lines = [line for line in data.splitlines() if line.strip()]
        try:
            records = json.loads(b"[" + b",".join(lines) + b"]")
        except (ValueError, UnicodeDecodeError) as exc:
            raise FormatError(f"{where}: the tar-split is not JSON lines ({exc})") from None
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
