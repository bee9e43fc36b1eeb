"""Reading a zstd:chunked TOC and tar-split: the TOC's entries and the frames their chunks
are stored in, and the tar layout, for :func:`~seekoci.formats.toc.build_index`. Imported
when a layer's TOC is read (:meth:`~seekoci.formats.zstd_chunked.ZstdChunkedFormat.
embedded_index`), not with the plug-in: recognising a zstd:chunked blob needs none of it."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from ..errors import FormatError
from .toc import Chunk, Payload, Segment, TocFile, digest_hex, entry_of, toc_entry


def files_of(doc: dict[str, Any], *, where: str) -> list[TocFile]:
    """The TOC's entries with their chunks; a chunk's compressed bytes run to the next
    chunk's ``offset``, the file's last one to its ``endOffset``."""
    files: list[TocFile] = []
    ends: dict[int, int] = {}  # position in files -> the file's endOffset
    current: TocFile | None = None
    for i, item in enumerate(doc["entries"]):
        raw, at, chunk = toc_entry(item, i, current, where=where)
        if chunk:
            assert current is not None  # toc_entry saw to it
            _add_chunk(current, raw, at)
            continue
        current = TocFile(entry_of(raw, where=at))
        files.append(current)
        if current.entry.type == "file" and current.entry.size:
            end = raw.get("endOffset")
            if not isinstance(end, int):
                raise FormatError(f"{at}: {current.entry.name!r} has no endOffset")
            ends[len(files) - 1] = end
            _add_chunk(current, raw, at)
        else:
            current = None
    for n, end in ends.items():
        _close_file(files[n], end, where=where)
    return files


def _add_chunk(f: TocFile, raw: dict[str, Any], at: str) -> None:
    offset = raw.get("offset")
    if not isinstance(offset, int) or offset < 0:
        raise FormatError(f"{at}: offset {offset!r} is not valid")
    done = f.filled
    if (raw.get("chunkOffset", 0) or 0) != done:
        raise FormatError(f"{at}: chunk of {f.entry.name!r} does not follow the one before")
    size = raw.get("chunkSize") or f.entry.size - done
    if not isinstance(size, int) or size <= 0 or done + size > f.entry.size:
        raise FormatError(f"{at}: chunk size {size!r} does not fit {f.entry.name!r}")
    digest = raw.get("chunkDigest") or (raw.get("digest") if not f.chunks else None)
    if not digest:
        raise FormatError(f"{at}: chunk of {f.entry.name!r} has no digest")
    zeros = raw.get("chunkType", "") == "zeros"
    # the end is the next chunk's offset, filled in by _close_file
    f.add(Chunk(offset, offset, size, 0, digest_hex(digest, where=at), zeros))


def _close_file(f: TocFile, end: int, *, where: str) -> None:
    ends = [c.compressed_start for c in f.chunks[1:]] + [end]
    closed = []
    for c, e in zip(f.chunks, ends, strict=True):
        if e <= c.compressed_start:
            raise FormatError(f"{where}: {f.entry.name!r}: chunk offsets go backwards")
        closed.append(Chunk(c.compressed_start, e, c.size, 0, c.digest, c.zeros))
    f.chunks = closed


def layout_of(data: bytes, *, where: str) -> list[Segment | Payload]:
    """The tar layout from tar-split's JSON lines (type 1: an entry and its payload size,
    type 2: raw tar bytes, base64), parsed as one JSON array (a call per line costs ~3x)."""
    lines = [line for line in data.splitlines() if line.strip()]
    try:
        records = json.loads(b"[" + b",".join(lines) + b"]")
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{where}: the tar-split is not JSON lines ({exc})") from None
    items: list[Segment | Payload] = []
    for n, rec in enumerate(records):
        try:
            if rec["type"] == 1:
                size = rec.get("size", 0) or 0
                if not isinstance(size, int) or size < 0:
                    raise ValueError(f"size {size!r}")
                items.append(Payload(str(rec["name"]), size))
            elif rec["type"] == 2:
                items.append(Segment(base64.b64decode(rec["payload"], validate=True)))
            else:
                raise ValueError(f"type {rec['type']!r}")
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise FormatError(f"{where}: tar-split record {n + 1} is malformed ({exc})") from None
    return items
