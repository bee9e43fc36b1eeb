"""zstd:chunked layers: a tar.zst whose file payloads are frames of their own, with a TOC.

After the tar's frames come skippable frames (magic ``0x184D2A50``, u32 length): the
zstd-compressed TOC (JSON, stargz field names plus ``endOffset`` and ``chunkType``), the
tar-split (JSON lines: every tar header's bytes and every payload's size, in order), and a
footer. Positions and the TOC's sha256 (of its compressed bytes) are also in the manifest's
annotations, so a reader with the manifest fetches TOC and tar-split with one exact range
read; without annotations it reads the footer first.

Footer payloads, little-endian (the blob's last bytes, after their skippable-frame header)::

    current, 64 bytes: u64 TOC offset, u64 TOC length, u64 TOC uncompressed length,
                       u64 TOC type (1), u64 tar-split offset, u64 tar-split length,
                       u64 tar-split uncompressed length, b"GNUlInUx"
    older,   40 bytes: u64 TOC offset, u64 TOC length, u64 TOC uncompressed length,
                       u64 TOC type (1), b"GnUlInUx"       (no tar-split)

Offsets point at frame payloads (after the 8-byte skippable header). With the tar-split the
index has real tar-stream offsets and the header frames between payloads become spans checked
against the tar-split's bytes; without one (older producers) offsets are the payloads'
laid end to end. Chunks whose ``chunkType`` is ``zeros`` are produced, never fetched.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from collections.abc import Mapping
from typing import Any

from ..errors import FormatError, IntegrityError
from .base import decompress_bounded
from .index import LayerIndex
from .plugin import NO_ANNOTATIONS, ReadRange
from .toc import (
    MAX_TOC_SIZE,
    Chunk,
    Payload,
    Segment,
    TocFile,
    build_index,
    digest_hex,
    entry_of,
    load_json,
)
from .zstd import SKIPPABLE_MAGIC, ZstdFormat

_FOOTER = struct.Struct("<7Q8s")
_OLD_FOOTER = struct.Struct("<4Q8s")
MAGIC, OLD_MAGIC = b"GNUlInUx", b"GnUlInUx"
_PREFIXES = ("io.github.containers.zstd-chunked.", "io.containers.zstd-chunked.")
#: See estargz.TAIL_GUESS: footer, TOC and tar-split in one read for layers of ~1000 files.
TAIL_GUESS = 64 << 10


def annotation(annotations: Mapping[str, str], key: str) -> str | None:
    """``manifest-checksum`` etc. under the current key or the older one."""
    for prefix in _PREFIXES:
        value = annotations.get(prefix + key)
        if value is not None:
            return value
    return None


def _skippable_header(tail: bytes, payload: int) -> bool:
    if len(tail) < payload + 8:
        return False
    header = tail[-payload - 8 : -payload]
    return header == struct.pack("<II", SKIPPABLE_MAGIC, payload)


def parse_footer(tail: bytes) -> tuple[tuple[int, int, int], tuple[int, int, int] | None] | None:
    """((TOC offset, length, uncompressed length), tar-split position or None) from the
    blob's last bytes, or None when they are no zstd:chunked footer."""
    if tail[-8:] == MAGIC and _skippable_header(tail, _FOOTER.size):
        off, length, ulen, _kind, ts_off, ts_len, ts_ulen, _ = _FOOTER.unpack(tail[-_FOOTER.size :])
        return (off, length, ulen), ((ts_off, ts_len, ts_ulen) if ts_len else None)
    if tail[-8:] == OLD_MAGIC and _skippable_header(tail, _OLD_FOOTER.size):
        off, length, ulen, _kind, _ = _OLD_FOOTER.unpack(tail[-_OLD_FOOTER.size :])
        return (off, length, ulen), None
    return None


def _position(value: str, fields: int, *, where: str) -> tuple[int, int, int]:
    try:
        parts = [int(p) for p in value.split(":")]
    except ValueError:
        raise FormatError(f"{where}: position annotation {value!r} is malformed") from None
    if len(parts) != fields or any(p < 0 for p in parts):
        raise FormatError(f"{where}: position annotation {value!r} is malformed")
    return parts[0], parts[1], parts[2]


def files_of(doc: dict[str, Any], *, where: str) -> list[TocFile]:
    """The TOC's entries with their chunks; a chunk's compressed bytes run to the next
    chunk's ``offset``, the file's last one to its ``endOffset``."""
    files: list[TocFile] = []
    ends: dict[int, int] = {}  # position in files -> the file's endOffset
    current: TocFile | None = None
    for i, raw in enumerate(doc["entries"]):
        at = f"{where}: TOC entry {i}"
        if not isinstance(raw, dict):
            raise FormatError(f"{at} is not an object")
        if raw.get("type") == "chunk":
            if current is None or raw.get("name") != current.entry.raw_name:
                raise FormatError(f"{at}: a chunk of {raw.get('name')!r} follows no such file")
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


class ZstdChunkedFormat(ZstdFormat):
    """zstd:chunked (containers/storage, podman, skopeo, buildah; stargz-snapshotter); a pass
    over one indexes it frame by frame, as the zstd tar it also is."""

    name = layer_format = "zstd:chunked"
    compression = "zstd"
    media_types: frozenset[str] = frozenset()  # found by annotation or footer, not type

    def sniff(
        self,
        *,
        head: bytes | None = None,
        tail: bytes | None = None,
        annotations: Mapping[str, str] = NO_ANNOTATIONS,
    ) -> bool:
        if annotation(annotations, "manifest-checksum") is not None:
            return True
        return tail is not None and parse_footer(tail) is not None

    def embedded_index(
        self,
        read_range: ReadRange,
        size: int,
        annotations: Mapping[str, str],
        *,
        name: str,
        require_verified: bool = False,
    ) -> LayerIndex | None:
        expected = annotation(annotations, "manifest-checksum")
        if require_verified and not expected:
            return None
        toc_pos: tuple[int, int, int] | None = None
        split_pos: tuple[int, int, int] | None = None
        manifest = annotation(annotations, "manifest-position")
        if manifest is not None:
            off, length, ulen = _position(manifest, 4, where=name)[:3]
            toc_pos = (off, length, ulen)
            split = annotation(annotations, "tarsplit-position")
            if split is not None:
                split_pos = _position(split, 3, where=name)
            start = off
            tail_len = length + (split_pos[1] if split_pos else 0) + 8 * 3 + 72
            if not 0 <= size - start <= tail_len:
                raise FormatError(
                    f"{name}: the TOC position {off} is outside the frames that end the blob"
                )
            data = read_range(start, size - start)
            if len(data) != size - start:
                raise FormatError(f"{name}: the TOC position {off} is outside the blob")
        else:
            start = max(0, size - TAIL_GUESS)
            data = read_range(start, size - start)
            if len(data) != size - start:
                raise FormatError(f"{name}: the blob's tail is cut short")
            found = parse_footer(data)
            if found is None:
                raise FormatError(f"{name}: no zstd:chunked footer at the end of the blob")
            toc_pos, split_pos = found
            first = min(toc_pos[0], split_pos[0] if split_pos else toc_pos[0])
            tail_len = toc_pos[1] + (split_pos[1] if split_pos else 0) + 8 * 3 + 72
            if not 0 <= first <= size or size - first > tail_len:
                raise FormatError(f"{name}: the footer's TOC offset {first} is outside the blob")
            if first < start:
                head = read_range(first, start - first)
                if len(head) != start - first:
                    raise FormatError(f"{name}: the TOC is cut short")
                data, start = head + data, first

        # TOC and tar-split are the blob's last frames (then the footer): a position that
        # would make us read much more than them is refused, not followed
        tail_len = toc_pos[1] + (split_pos[1] if split_pos else 0) + 8 * 3 + 72
        if toc_pos[1] > MAX_TOC_SIZE or (split_pos and split_pos[1] > MAX_TOC_SIZE):
            raise FormatError(f"{name}: the TOC or tar-split is over {MAX_TOC_SIZE} bytes")

        def piece(pos: tuple[int, int, int], what: str) -> bytes:
            off, length, _ = pos
            if off < max(start, 8) or off + length > size:
                raise FormatError(f"{name}: the {what} at {off} (+{length}) is outside the blob")
            return data[off - start : off - start + length]

        compressed = piece(toc_pos, "TOC")
        if expected:
            actual = "sha256:" + hashlib.sha256(compressed).hexdigest()
            if actual != expected:
                raise IntegrityError(
                    f"{name}: the TOC's digest is {actual}, the manifest says {expected}"
                )
        limit = min(toc_pos[2] or MAX_TOC_SIZE, MAX_TOC_SIZE)
        doc = load_json(decompress_bounded(compressed, limit, what=f"{name}: TOC"), where=name)
        files = files_of(doc, where=name)
        data_end = toc_pos[0] - 8
        layout = None
        note = "tar offsets from the tar-split"
        if split_pos is not None:
            data_end = min(data_end, split_pos[0] - 8)
            split_bytes = piece(split_pos, "tar-split")
            split_digest = doc.get("tarSplitDigest")
            actual = "sha256:" + hashlib.sha256(split_bytes).hexdigest()
            if split_digest and actual != split_digest:
                raise IntegrityError(f"{name}: the tar-split does not match tarSplitDigest")
            if split_digest or not require_verified:
                ulimit = min(split_pos[2] or MAX_TOC_SIZE, MAX_TOC_SIZE)
                raw = decompress_bounded(split_bytes, ulimit, what=f"{name}: tar-split")
                layout = layout_of(raw, where=name)
            else:
                note = "no tar offsets (tar-split not verifiable)"
        else:
            note = "no tar-split: payload offsets only"
        if expected:
            verification = f"TOC matches the manifest-checksum annotation; chunks checked; {note}"
        else:
            verification = (
                f"TOC not verified (no manifest-checksum annotation); chunks checked; {note}"
            )
        return build_index(
            files,
            fmt=self.name,
            compression=self.compression,
            media_type="application/vnd.oci.image.layer.v1.tar+zstd",
            blob_size=size,
            data_end=data_end,
            layout=layout,
            verification=verification,
            where=name,
        )
