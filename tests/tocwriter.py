"""Test-only writers of layers that carry their own TOC: eStargz and zstd:chunked.

They follow the layouts the reference producers write (checked against the shared vectors,
which those producers made): a new gzip member / zstd frame at every payload chunk, the tar
bytes between payloads in members/frames of their own run, then the TOC, (tar-split,) footer.
Knobs let a test make what producers in the wild make (small files packed into one gzip
member with ``innerOffset``, the legacy stargz footer, the older zstd:chunked footer) and what
they must never make (a TOC edited after the fact).
"""

from __future__ import annotations

import base64
import bisect
import datetime
import gzip
import hashlib
import io
import json
import struct
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zstandard

TocEdit = Callable[[dict[str, Any]], None]


@dataclass
class Made:
    blob: bytes
    toc: bytes  # the TOC JSON as stored
    annotations: dict[str, str]
    tar: bytes  # the uncompressed tar stream the blob decodes to


def _members(tar: bytes) -> tuple[list[tarfile.TarInfo], int]:
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        members = tf.getmembers()
    end = 0
    for m in members:
        end = m.offset_data + (-(-m.size // 512) * 512 if m.isreg() else 0)
    return members, end


_KINDS = {
    tarfile.REGTYPE: "reg",
    tarfile.AREGTYPE: "reg",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


def _toc_entry(m: tarfile.TarInfo) -> dict[str, Any]:
    kind = _KINDS[m.type]
    entry: dict[str, Any] = {
        "name": m.name + ("/" if kind == "dir" else ""),
        "type": kind,
        "modtime": datetime.datetime.fromtimestamp(int(m.mtime), datetime.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        ),
        "mode": m.mode,
        "uid": m.uid,
        "gid": m.gid,
        "userName": m.uname,
        "groupName": m.gname,
    }
    if kind == "reg":
        entry["size"] = m.size
    if kind in ("symlink", "hardlink"):
        entry["linkName"] = m.linkname
    if kind in ("char", "block"):
        entry["devMajor"], entry["devMinor"] = m.devmajor, m.devminor
    xattrs = {
        k[len("SCHILY.xattr.") :]: base64.b64encode(v.encode("utf-8", "surrogateescape")).decode()
        for k, v in m.pax_headers.items()
        if k.startswith("SCHILY.xattr.")
    }
    if xattrs:
        entry["xattrs"] = xattrs
    return entry


def _tar_entry(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(data))
    return out.getvalue()  # header + data + padding + end-of-archive


def estargz(
    tar: bytes,
    *,
    chunk_size: int = 64 << 10,
    pack_below: int = 0,
    legacy: bool = False,
    edit: TocEdit | None = None,
    toc_bytes: bytes | None = None,
) -> Made:
    """An eStargz blob of ``tar``: a gzip member at every payload chunk (files smaller than
    ``pack_below`` share the member they start in, found by ``innerOffset``)."""
    members, end = _members(tar)
    body = tar[:end]
    cuts: list[int] = [0]
    entries: list[dict[str, Any]] = []
    pieces: list[tuple[dict[str, Any], int]] = []  # TOC entry, tar offset of its chunk
    for m in members:
        entry = _toc_entry(m)
        entries.append(entry)
        if entry["type"] != "reg" or not m.size:
            continue
        data = tar[m.offset_data : m.offset_data + m.size]
        entry["digest"] = "sha256:" + hashlib.sha256(data).hexdigest()
        if m.size < pack_below:
            pieces.append((entry, m.offset_data))
            entry["chunkDigest"] = entry["digest"]
            continue
        for k in range(0, m.size, chunk_size):
            part = data[k : k + chunk_size]
            chunk = entry if k == 0 else {"name": m.name, "type": "chunk", "chunkOffset": k}
            if m.size > chunk_size:
                chunk["chunkSize"] = len(part)
            if not legacy:
                chunk["chunkDigest"] = "sha256:" + hashlib.sha256(part).hexdigest()
            if k:
                entries.append(chunk)
            cuts.append(m.offset_data + k)
            pieces.append((chunk, m.offset_data + k))
    cuts = sorted(set(cuts))
    blob = bytearray()
    starts: list[tuple[int, int]] = []  # (tar offset, compressed offset) of each member
    for a, b in zip(cuts, [*cuts[1:], end], strict=True):
        starts.append((a, len(blob)))
        blob += gzip.compress(body[a:b], mtime=0)
    tar_starts = [s[0] for s in starts]  # (ascending: cuts are sorted)
    for entry, at in pieces:
        ustart, cstart = starts[bisect.bisect_right(tar_starts, at) - 1]
        entry["offset"] = cstart
        if at != ustart:
            entry["innerOffset"] = at - ustart
    if legacy:
        for e in entries:
            e.pop("digest", None)
            e.pop("chunkDigest", None)
    doc = {"version": 1, "entries": entries}
    if edit is not None:
        edit(doc)
    toc = json.dumps(doc, indent="\t").encode() if toc_bytes is None else toc_bytes
    toc_offset = len(blob)
    toc_tar = _tar_entry("stargz.index.json", toc)
    blob += gzip.compress(toc_tar, mtime=0)
    blob += _footer(toc_offset, legacy=legacy)
    annotations = (
        {}
        if legacy
        else {
            "containerd.io/snapshot/stargz/toc.digest": "sha256:" + hashlib.sha256(toc).hexdigest(),
            "io.containers.estargz.uncompressed-size": str(end + len(toc_tar)),
        }
    )
    return Made(bytes(blob), toc, annotations, body + toc_tar)


def _footer(toc_offset: int, *, legacy: bool) -> bytes:
    extra = f"{toc_offset:016x}STARGZ".encode()
    if not legacy:
        extra = b"SG" + struct.pack("<H", len(extra)) + extra
    header = b"\x1f\x8b\x08\x04" + bytes(4) + b"\x00\xff" + struct.pack("<H", len(extra)) + extra
    empty = b"\x01\x00\x00\xff\xff"  # one final stored block of no bytes, as Go writes it
    return header + empty + struct.pack("<II", 0, 0)


def _skippable(payload: bytes) -> bytes:
    return struct.pack("<II", 0x184D2A50, len(payload)) + payload


def zstd_chunked(
    tar: bytes,
    *,
    chunk_size: int = 64 << 10,
    old_footer: bool = False,
    zero_chunks: bool = True,
    edit: TocEdit | None = None,
    annotate: bool = True,
) -> Made:
    """A zstd:chunked blob of ``tar``: a frame per payload chunk and per run of tar bytes
    between payloads, then TOC, tar-split (not with ``old_footer``) and footer."""
    members, _ = _members(tar)
    cctx = zstandard.ZstdCompressor(level=3)
    blob = bytearray()
    entries: list[dict[str, Any]] = []
    split: list[dict[str, Any]] = []
    pos = 0

    def segment(upto: int) -> None:
        nonlocal pos
        if upto > pos:
            blob.extend(cctx.compress(tar[pos:upto]))
            split.append({"type": 2, "payload": base64.b64encode(tar[pos:upto]).decode()})
            pos = upto

    for m in members:
        entry = _toc_entry(m)
        entries.append(entry)
        segment(m.offset_data)
        split.append({"type": 1, "name": m.name, "size": m.size if m.isreg() else 0})
        if entry["type"] != "reg" or not m.size:
            continue
        data = tar[m.offset_data : m.offset_data + m.size]
        entry["digest"] = "sha256:" + hashlib.sha256(data).hexdigest()
        for k in range(0, m.size, chunk_size):
            part = data[k : k + chunk_size]
            chunk = entry if k == 0 else {"name": m.name, "type": "chunk", "chunkOffset": k}
            chunk["offset"] = len(blob)
            if m.size > chunk_size:
                chunk["chunkSize"] = len(part)
                chunk["chunkDigest"] = "sha256:" + hashlib.sha256(part).hexdigest()
            if zero_chunks and part.count(0) == len(part):
                chunk["chunkType"] = "zeros"
            if k:
                entries.append(chunk)
            blob.extend(cctx.compress(part))
        entry["endOffset"] = len(blob)
        pos = m.offset_data + m.size
    segment(len(tar))
    doc: dict[str, Any] = {"version": 1, "entries": entries}
    split_raw = "".join(json.dumps(r) + "\n" for r in split).encode()
    split_z = cctx.compress(split_raw)
    if not old_footer:
        doc["tarSplitDigest"] = "sha256:" + hashlib.sha256(split_z).hexdigest()
    if edit is not None:
        edit(doc)
    toc = json.dumps(doc).encode()
    toc_z = cctx.compress(toc)
    toc_off = len(blob) + 8
    blob += _skippable(toc_z)
    position = f"{toc_off}:{len(toc_z)}:{len(toc)}:1"
    annotations = {
        "io.github.containers.zstd-chunked.manifest-checksum": "sha256:"
        + hashlib.sha256(toc_z).hexdigest(),
        "io.github.containers.zstd-chunked.manifest-position": position,
    }
    if old_footer:
        blob += _skippable(struct.pack("<4Q", toc_off, len(toc_z), len(toc), 1) + b"GnUlInUx")
        annotations = {
            "io.containers.zstd-chunked.manifest-checksum": annotations[
                "io.github.containers.zstd-chunked.manifest-checksum"
            ],
            "io.containers.zstd-chunked.manifest-position": f"{toc_off}:{len(toc_z)}:{len(toc)}:1",
        }
    else:
        split_off = len(blob) + 8
        blob += _skippable(split_z)
        annotations["io.github.containers.zstd-chunked.tarsplit-position"] = (
            f"{split_off}:{len(split_z)}:{len(split_raw)}"
        )
        blob += _skippable(
            struct.pack(
                "<7Q",
                toc_off,
                len(toc_z),
                len(toc),
                1,
                split_off,
                len(split_z),
                len(split_raw),
            )
            + b"GNUlInUx"
        )
    return Made(bytes(blob), toc, annotations if annotate else {}, tar)


def seekable_zstd(data: bytes, *, frame_size: int = 16 << 10, checksums: bool = True) -> bytes:
    """``data`` in the zstd seekable format: a frame per ``frame_size`` bytes, then the seek
    table (with XXH64 checksums when ``checksums``)."""
    import xxhash

    cctx = zstandard.ZstdCompressor(level=3)
    pieces = [data[i : i + frame_size] for i in range(0, max(len(data), 1), frame_size)]
    frames = [cctx.compress(p) for p in pieces]
    table = b"".join(
        struct.pack("<II", len(f), len(p))
        + (struct.pack("<I", xxhash.xxh64_intdigest(p) & 0xFFFFFFFF) if checksums else b"")
        for f, p in zip(frames, pieces, strict=True)
    )
    payload = table + struct.pack("<IBI", len(frames), 0x80 if checksums else 0, 0x8F92EAB1)
    return b"".join(frames) + _skippable_seek(payload)


def _skippable_seek(payload: bytes) -> bytes:
    return struct.pack("<II", 0x184D2A5E, len(payload)) + payload
