"""eStargz (and legacy stargz) layers: a tar.gz that carries its own TOC.

The blob is a series of gzip members -- one starting at every regular file's payload and
every chunk of it, several small files sometimes sharing one (``innerOffset``) -- then a
member holding the tar entry ``stargz.index.json`` (the TOC, JSON), then a footer. A reader
fetches the footer and the TOC (one range read of the blob's tail, two when the TOC is larger
than the guess), checks the TOC against the manifest's ``toc.digest`` annotation, and reads a
file from its members, each chunk checked against its ``chunkDigest`` (sha256 of the
uncompressed chunk).

Footer (eStargz, 51 bytes): an empty gzip member whose header carries an extra field::

     0 10  gzip header: 1f 8b 08 (FEXTRA) 00000000 00 ff
    10  2  XLEN = 26
    12  2  subfield id "SG"     14 2  subfield length 22
    16 16  TOC offset, lowercase hex     32 6  "STARGZ"
    38 13  an empty deflate stream (01 00 00 ff ff) + CRC32 and ISIZE (zeros)

Legacy stargz (47 bytes): XLEN = 22 and the 22 bytes (hex offset + "STARGZ") with no subfield
header; its TOC has no digests, so nothing read from it can be verified.
"""

from __future__ import annotations

import hashlib
import itertools
import zlib
from collections.abc import Mapping
from typing import Any

from ..errors import FormatError, IntegrityError
from .base import Span
from .gzip import GzipFormat
from .index import LayerIndex
from .plugin import NO_ANNOTATIONS, ReadRange
from .tar import BLOCK, TarScanner
from .toc import MAX_TOC_SIZE, Chunk, TocFile, build_index, digest_hex, entry_of, load_json

FOOTER_SIZE = 51
LEGACY_FOOTER_SIZE = 47
TOC_NAME = "stargz.index.json"
#: The TOC digest annotation (sha256 of the TOC JSON as stored) and the tar size one.
TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED_SIZE = "io.containers.estargz.uncompressed-size"
#: Names the format adds to the tar that are not part of the image's filesystem.
LANDMARKS = frozenset({".prefetch.landmark", ".no.prefetch.landmark", TOC_NAME})
#: Bytes of the blob's end fetched to find footer and TOC in one read (a TOC of ~1500
#: files compresses to about this much; a larger one costs a second read).
TAIL_GUESS = 64 << 10


def parse_footer(tail: bytes) -> tuple[int, int] | None:
    """(TOC offset, footer size) from the blob's last bytes, or None when they are no
    stargz footer."""
    if len(tail) >= FOOTER_SIZE:
        f = tail[-FOOTER_SIZE:]
        if (
            f[:4] == b"\x1f\x8b\x08\x04"
            and f[10:16] == b"\x1a\x00SG\x16\x00"
            and f[32:38] == b"STARGZ"
        ):
            offset = _hex(f[16:32])
            if offset is not None:
                return offset, FOOTER_SIZE
    if len(tail) >= LEGACY_FOOTER_SIZE:
        f = tail[-LEGACY_FOOTER_SIZE:]
        if f[:4] == b"\x1f\x8b\x08\x04" and f[10:12] == b"\x16\x00" and f[28:34] == b"STARGZ":
            offset = _hex(f[12:28])
            if offset is not None:
                return offset, LEGACY_FOOTER_SIZE
    return None


def _hex(raw: bytes) -> int | None:
    try:
        text = raw.decode("ascii")
        return int(text, 16) if all(c in "0123456789abcdef" for c in text) else None
    except (UnicodeDecodeError, ValueError):
        return None


def gunzip(data: bytes, limit: int, *, what: str) -> bytes:
    """Decode gzip members (one or several) to at most ``limit`` bytes."""
    out: list[bytes] = []
    produced = 0
    pending = data
    try:
        while pending and produced < limit:
            d = zlib.decompressobj(31)
            while pending and produced < limit:
                piece = d.decompress(pending, limit - produced)
                out.append(piece)
                produced += len(piece)
                pending = d.unconsumed_tail
                if d.eof:
                    pending = d.unused_data
                    break
                if not piece and not pending:
                    break
            if not d.eof:
                break
    except zlib.error as exc:
        raise FormatError(f"{what} is corrupt ({exc})") from None
    return b"".join(out)


def toc_file(member: bytes, toc: bytes, start: int, end: int, *, where: str) -> TocFile:
    """The tar entry ``stargz.index.json`` itself (it is part of the tar, so a layer lists
    it as a pass-built index would), read from its member and checked against the TOC."""
    scanner = TarScanner(name=where)
    scanner.feed(gunzip(member, BLOCK * 3 + len(toc) + 2 * BLOCK, what=f"{where}: TOC member"))
    if not scanner.entries:
        raise FormatError(f"{where}: the TOC member holds no tar entry")
    entry = scanner.entries[0]
    digest = hashlib.sha256(toc).hexdigest()
    landmark = TocFile(entry)
    landmark.add(Chunk(start, end, len(toc), entry.data_offset, digest))
    return landmark


def toc_of_member(member: bytes, *, where: str) -> bytes:
    """The TOC JSON bytes from the (decoded) tar entry ``stargz.index.json``."""
    tar = gunzip(member, MAX_TOC_SIZE + 2 * BLOCK, what=f"{where}: TOC member")
    header = tar[:BLOCK]
    if len(header) < BLOCK or header[:100].rstrip(b"\0") != TOC_NAME.encode():
        raise FormatError(f"{where}: the TOC member does not hold {TOC_NAME}")
    try:
        size = int(header[124:136].rstrip(b"\0 ").decode("ascii") or "0", 8)
    except (UnicodeDecodeError, ValueError):
        raise FormatError(f"{where}: the TOC's tar header is malformed") from None
    data = tar[BLOCK : BLOCK + size]
    if len(data) != size:
        raise FormatError(f"{where}: the TOC is cut short")
    return data


def files_of(doc: dict[str, Any], toc_offset: int, *, where: str) -> tuple[list[TocFile], bool]:
    """The TOC's entries with their chunks, and whether every chunk has a digest. A chunk's
    compressed bytes run from its member's ``offset`` to the next member's."""
    raw_entries = doc["entries"]
    # a chunk's offset must be a member start before the TOC: others have no end here
    starts = {e.get("offset") for e in raw_entries if isinstance(e, dict)}
    offsets = sorted({o for o in starts if isinstance(o, int) and 0 <= o < toc_offset})
    offsets.append(toc_offset)
    ends = dict(itertools.pairwise(offsets))
    files: list[TocFile] = []
    current: TocFile | None = None
    digested = True
    for i, raw in enumerate(raw_entries):
        at = f"{where}: TOC entry {i}"
        if not isinstance(raw, dict):
            raise FormatError(f"{at} is not an object")
        if raw.get("type") == "chunk":
            if current is None or raw.get("name") != current.entry.raw_name:
                raise FormatError(f"{at}: a chunk of {raw.get('name')!r} follows no such file")
            digested &= _add_chunk(current, raw, ends, at)
            continue
        current = TocFile(entry_of(raw, where=at))
        files.append(current)
        if current.entry.type == "file" and current.entry.size:
            digested &= _add_chunk(current, raw, ends, at)
        elif current.entry.type != "file":
            current = None
    return files, digested


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
    f.add(Chunk(offset, ends[offset], size, inner, hexdigest))
    return bool(hexdigest)


class EstargzFormat(GzipFormat):
    """eStargz and legacy stargz: gzip layers that carry their TOC (a pass over one indexes
    it as the gzip tar it also is: the indexer is gzip's)."""

    name = layer_format = "estargz"
    compression = "gzip"
    media_types: frozenset[str] = frozenset()  # found by annotation or footer, not type
    hidden_names = LANDMARKS

    def sniff(
        self,
        *,
        head: bytes | None = None,
        tail: bytes | None = None,
        annotations: Mapping[str, str] = NO_ANNOTATIONS,
    ) -> bool:
        if TOC_DIGEST in annotations:
            return True
        return tail is not None and parse_footer(tail) is not None

    def decode_span(
        self,
        span: Span,
        data: bytes,
        window: bytes | None,
        *,
        name: str = "layer",
        partial: bool = False,
    ) -> bytes:
        """A chunk from its gzip member(s): decode, drop ``skip`` bytes, keep its size."""
        what = f"{name}: chunk at compressed {span.compressed_start}"
        out = gunzip(data, span.skip + span.uncompressed_size, what=what)
        return out[span.skip :]

    def span_decoder(self, span: Span, window: bytes | None, *, name: str = "layer") -> None:
        return None  # a chunk is its own gzip members, decoded whole (decode_span)

    def embedded_index(
        self,
        read_range: ReadRange,
        size: int,
        annotations: Mapping[str, str],
        *,
        name: str,
        require_verified: bool = False,
    ) -> LayerIndex | None:
        expected = annotations.get(TOC_DIGEST)
        if require_verified and not expected:
            return None
        if size < LEGACY_FOOTER_SIZE:
            raise FormatError(f"{name}: blob of {size} bytes is too short for a stargz footer")
        start = max(0, size - TAIL_GUESS)
        tail = read_range(start, size - start)
        if len(tail) != size - start:
            raise FormatError(f"{name}: the blob's tail is cut short")
        found = parse_footer(tail)
        if found is None:
            raise FormatError(f"{name}: no eStargz footer at the end of the blob")
        toc_offset, footer_size = found
        toc_end = size - footer_size
        if not 0 <= toc_offset < toc_end:
            raise FormatError(f"{name}: the footer's TOC offset {toc_offset} is outside the blob")
        if toc_offset < start:  # a TOC larger than the guess: the rest of it, once
            head = read_range(toc_offset, start - toc_offset)
            if len(head) != start - toc_offset:
                raise FormatError(f"{name}: the TOC is cut short")
            tail, start = head + tail, toc_offset
        toc = toc_of_member(tail[toc_offset - start : toc_end - start], where=name)
        if expected:
            actual = "sha256:" + hashlib.sha256(toc).hexdigest()
            if actual != expected:
                raise IntegrityError(
                    f"{name}: the TOC's digest is {actual}, the manifest says {expected}"
                )
        files, digested = files_of(load_json(toc, where=name), toc_offset, where=name)
        files.append(
            toc_file(
                tail[toc_offset - start : toc_end - start], toc, toc_offset, toc_end, where=name
            )
        )
        if not digested and require_verified:
            return None  # a stargz TOC without digests vouches for nothing: build instead
        if footer_size == LEGACY_FOOTER_SIZE or not digested:
            verification = "legacy stargz: no chunk digests, bytes not verified"
        elif expected:
            verification = "TOC matches the toc.digest annotation; chunks checked (chunkDigest)"
        else:
            verification = "TOC not verified (no toc.digest annotation); chunks checked"
        return build_index(
            files,
            fmt=self.name,
            compression=self.compression,
            media_type="application/vnd.oci.image.layer.v1.tar+gzip",
            blob_size=size,
            data_end=toc_end,
            layout=None,
            verification=verification,
            where=name,
        )
