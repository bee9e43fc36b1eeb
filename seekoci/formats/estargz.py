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

import functools
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import FormatError, IntegrityError
from ._inflate import gunzip_members
from .base import Span
from .gzip import GzipFormat, gunzip
from .index import LayerIndex
from .plugin import NO_ANNOTATIONS, ReadRange

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
#: The longest TOC member a footer may point at: the TOC's own limit and its tar headers
#: (gzip adds a few bytes in 32 KiB to data it cannot compress)
MAX_TOC_MEMBER = (512 << 20) + (1 << 20)
#: The smallest gzip member: a 10-byte header, an empty deflate block, an 8-byte trailer.
_MIN_MEMBER = 20
#: What a run's members may decode to beyond four times its chunks (tar headers after a
#: payload share its member), before the run is decoded chunk by chunk instead.
_RUN_SLACK = 4 << 20
#: The most deflate makes of a byte of its stream (a run of one byte: 258 per 2 bits).
_MAX_EXPANSION = 1032


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
        data: bytes | memoryview,
        window: bytes | None,
        *,
        name: str = "layer",
        partial: bool = False,
    ) -> bytes:
        """A chunk from its gzip member(s): decode, drop ``skip`` bytes, keep its size."""
        what = f"{name}: chunk at compressed {span.compressed_start}"
        out = gunzip(data, span.skip + span.uncompressed_size, what=what)
        return out[span.skip :]

    def decode_run(
        self,
        spans: Sequence[Span],
        data: bytes | bytearray,
        base: int,
        *,
        name: str = "layer",
    ) -> list[memoryview] | None:
        """Chunks whose compressed bytes are in ``data`` (from blob offset ``base``),
        decoded by one call for each stretch of gzip members back to back, where
        :meth:`decode_span` makes a call each (65k for a 1 GB layer, each a hand-over of
        the GIL between threads). A chunk's range is one member (what eStargz writers make
        of a file's payload), whose trailer gives the length it decodes to (ISIZE): so
        each chunk is found in its stretch's output without decoding member by member,
        and the decoder checks every trailer. A range that holds more than its trailer
        says (several small files' members, shared by their chunks: ``innerOffset``) is
        decoded once for all of its chunks. None for ranges that fit neither; the caller
        checks every chunk's digest."""
        ranges: list[tuple[int, int]] = []  # distinct ranges, in blob order
        range_of: list[int] = []
        for span in spans:
            start, end = span.compressed_start, span.compressed_end
            if not ranges or ranges[-1] != (start, end):
                if ranges and start < ranges[-1][1]:
                    return None  # overlaps the one before without being it
                if end - start < _MIN_MEMBER or start < base or end - base > len(data):
                    return None
                ranges.append((start, end))
            range_of.append(len(ranges) - 1)
        need = [0] * len(ranges)  # bytes each range must decode to
        for span, r in zip(spans, range_of, strict=True):
            need[r] = max(need[r], span.skip + span.uncompressed_size)
        sizes = [int.from_bytes(data[end - 4 - base : end - base], "little") for _, end in ranges]
        # one member a range, as its trailer says: no more than deflate can make of its
        # bytes, and all of them together within a bound of the chunks' own sizes (a
        # chunk's skip is the TOC's word, unbounded: not part of it), so that trailers that
        # lie never make a buffer larger than what they could decode to
        single = [
            n <= size <= _MAX_EXPANSION * (hi - lo)
            for size, n, (lo, hi) in zip(sizes, need, ranges, strict=True)
        ]
        wanted = sum(span.uncompressed_size for span in spans)
        if sum(size for size, one in zip(sizes, single, strict=True) if one) > (
            4 * wanted + _RUN_SLACK
        ):
            return None  # trailers that promise far more than the chunks: one by one
        whole = memoryview(data)
        outputs: list[memoryview] = [whole] * len(ranges)  # each range's output ...
        where = [0] * len(ranges)  # ... and where it starts there
        r = 0
        while r < len(ranges):
            lo, hi = ranges[r]
            if not single[r]:  # members of its own: once for all its chunks
                try:
                    outputs[r] = memoryview(
                        gunzip(whole[lo - base : hi - base], need[r], what=name)
                    )
                except FormatError:
                    return None
                r += 1
                continue
            first, total = r, sizes[r]
            while r + 1 < len(ranges) and single[r + 1] and ranges[r + 1][0] == ranges[r][1]:
                r += 1
                where[r] = total
                total += sizes[r]
            out = gunzip_members(whole[ranges[first][0] - base : ranges[r][1] - base], total)
            if out is None:
                return None
            outputs[first : r + 1] = [memoryview(out)] * (r + 1 - first)
            r += 1
        views = []
        for span, r in zip(spans, range_of, strict=True):
            at = where[r] + span.skip
            views.append(outputs[r][at : at + span.uncompressed_size])
        return views

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
        if toc_end - toc_offset > MAX_TOC_MEMBER:  # (an offset of 0: the whole blob read)
            raise FormatError(
                f"{name}: the footer puts a TOC of {toc_end - toc_offset} bytes at {toc_offset}"
            )
        if toc_offset < start:  # a TOC larger than the guess: the rest of it, once
            head = read_range(toc_offset, start - toc_offset)
            if len(head) != start - toc_offset:
                raise FormatError(f"{name}: the TOC is cut short")
            tail, start = head + tail, toc_offset
        from .estargz_toc import file_at, files_of, member_ends, toc_file, toc_of_member
        from .toc import build_index, load_json  # (a TOC to read: imported once it is)
        from .toc_lookup import lazy_index, toc_columns

        member = tail[toc_offset - start : toc_end - start]
        toc = toc_of_member(member, TOC_NAME, where=name)
        toc_digest = hashlib.sha256(toc).hexdigest()  # 21 MB for 54k files: once
        if expected:
            actual = "sha256:" + toc_digest
            if actual != expected:
                raise IntegrityError(
                    f"{name}: the TOC's digest is {actual}, the manifest says {expected}"
                )
        doc = load_json(toc, packed=len(member), where=name)
        landmark = toc_file(member, toc, toc_offset, toc_end, where=name, digest=toc_digest)
        # its entries are made when a read needs them (toc_lookup), unless they are not of
        # the shape that takes: then all of them now, which says what is wrong
        columns = toc_columns(doc["entries"])
        if columns is None:
            files, digested = files_of(doc, toc_offset, where=name)
        else:
            digested = columns.every_chunk_has("chunkDigest")
        if not digested and require_verified:
            if columns is not None:  # a malformed one is an error, as the whole read says
                files_of(doc, toc_offset, where=name)
            return None  # a stargz TOC without digests vouches for nothing: build instead
        if footer_size == LEGACY_FOOTER_SIZE or not digested:
            verification = "legacy stargz: no chunk digests, bytes not verified"
        elif expected:
            verification = "TOC matches the toc.digest annotation; chunks checked (chunkDigest)"
        else:
            verification = "TOC not verified (no toc.digest annotation); chunks checked"
        made = functools.partial(
            build_index,
            fmt=self.name,
            compression=self.compression,
            media_type="application/vnd.oci.image.layer.v1.tar+gzip",
            blob_size=size,
            data_end=toc_end,
            layout=None,
            verification=verification,
            where=name,
        )
        if columns is None:
            return made([*files, landmark])
        ends = member_ends(doc["entries"], toc_offset)
        del doc  # the entries stay, for as long as the index makes entries from them

        def whole(raw_entries: list[Any]) -> LayerIndex:
            every, _ = files_of({"entries": raw_entries}, toc_offset, where=name)
            return made([*every, landmark])

        return lazy_index(
            columns,
            lambda raw_entries, lo, hi: file_at(raw_entries, lo, hi, ends, where=name)[0],
            whole,
            like=made([]),
            extra=landmark,
            data_end=toc_end,
            where=name,
        )
