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

import functools
import hashlib
import struct
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import FormatError, IntegrityError
from .base import decompress_bounded
from .index import LayerIndex
from .plugin import NO_ANNOTATIONS, ReadRange
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


def _check_sizes(
    toc_pos: tuple[int, ...], split_pos: tuple[int, ...] | None, most: int, *, where: str
) -> None:
    """The TOC's and tar-split's compressed lengths, checked before the blob's tail is read
    (a length past the blob made the whole blob be read, from the offset on)."""
    if toc_pos[1] > most or (split_pos is not None and split_pos[1] > most):
        raise FormatError(f"{where}: the TOC or tar-split is over {most} bytes")


def _position(value: str, fields: int, *, where: str) -> tuple[int, int, int]:
    try:
        parts = [int(p) for p in value.split(":")]
    except ValueError:
        raise FormatError(f"{where}: position annotation {value!r} is malformed") from None
    if len(parts) != fields or any(p < 0 for p in parts):
        raise FormatError(f"{where}: position annotation {value!r} is malformed")
    return parts[0], parts[1], parts[2]


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
        from .toc import MAX_TOC_SIZE, build_index, load_json  # a TOC to read: once
        from .toc_lookup import lazy_index, toc_columns
        from .zstd_chunked_toc import file_at, files_of, layout_of

        toc_pos: tuple[int, int, int] | None = None
        split_pos: tuple[int, int, int] | None = None
        manifest = annotation(annotations, "manifest-position")
        if manifest is not None:
            off, length, ulen = _position(manifest, 4, where=name)[:3]
            toc_pos = (off, length, ulen)
            split = annotation(annotations, "tarsplit-position")
            if split is not None:
                split_pos = _position(split, 3, where=name)
            _check_sizes(toc_pos, split_pos, MAX_TOC_SIZE, where=name)  # before any read
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
            _check_sizes(toc_pos, split_pos, MAX_TOC_SIZE, where=name)  # before any read
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

        def toc_doc() -> dict[str, Any]:
            text = decompress_bounded(compressed, limit, what=f"{name}: TOC")
            return load_json(text, packed=len(compressed), where=name)

        doc = toc_doc()
        # its entries are made when a read needs them (toc_lookup), unless they are not of
        # the shape that takes: then all of them now, which says what is wrong
        columns = toc_columns(doc["entries"])
        files = files_of(doc, where=name) if columns is None else None
        data_end = toc_pos[0] - 8
        split_data: bytes | None = None
        note = "no tar-split: payload offsets only"
        if split_pos is not None:
            data_end = min(data_end, split_pos[0] - 8)
            split_data = piece(split_pos, "tar-split")
            split_digest = doc.get("tarSplitDigest")
            actual = "sha256:" + hashlib.sha256(split_data).hexdigest()
            if split_digest and actual != split_digest:
                raise IntegrityError(f"{name}: the tar-split does not match tarSplitDigest")
            if split_digest or not require_verified:
                note = "tar offsets from the tar-split when a tar-stream range is read"
            else:
                split_data = None
                note = "no tar offsets (tar-split not verifiable)"
        if expected:
            verification = f"TOC matches the manifest-checksum annotation; chunks checked; {note}"
        else:
            verification = (
                f"TOC not verified (no manifest-checksum annotation); chunks checked; {note}"
            )
        made = functools.partial(
            build_index,
            fmt=self.name,
            compression=self.compression,
            media_type="application/vnd.oci.image.layer.v1.tar+zstd",
            blob_size=size,
            data_end=data_end,
            verification=verification,
            where=name,
        )
        # payload offsets now (a read of a few files needs nothing else); the tar-split's
        # header offsets only for a read of tar-stream ranges: for 54k files its 57 MB of
        # JSON cost about as much again as the TOC
        if files is not None:
            index = made(files, layout=None)
        else:
            assert columns is not None
            index = lazy_index(
                columns,
                lambda raw_entries, lo, hi: file_at(raw_entries, lo, hi, where=name),
                lambda raw_entries: made(
                    files_of({"entries": raw_entries}, where=name), layout=None
                ),
                like=made([], layout=None),
                extra=None,
                data_end=data_end,
                where=name,
            )
        if split_data is not None:
            tar_split = split_data
            ulimit = min(split_pos[2] or MAX_TOC_SIZE, MAX_TOC_SIZE) if split_pos else 0

            def tar_index() -> LayerIndex:
                # entries of their own (the tar offsets are set on them): the TOC read again
                again = toc_doc()
                raw = decompress_bounded(tar_split, ulimit, what=f"{name}: tar-split")
                layout = layout_of(raw, packed=len(tar_split), where=name)
                return made(files_of(again, where=name), layout=layout)

            index.tar_index = _once(tar_index)
        return index


def _once(make: Callable[[], LayerIndex]) -> Callable[[], LayerIndex]:
    """``make``, called once whoever asks first (the others wait for its result); an error
    is raised to each caller and the next call tries again."""
    lock = threading.Lock()
    made: list[LayerIndex] = []

    def once() -> LayerIndex:
        with lock:
            if not made:
                made.append(make())
            return made[0]

    return once
