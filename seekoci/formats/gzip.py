"""gzip random access: checkpoints at deflate block boundaries, and resuming from them.

Building (one forward pass, :class:`GzipIndexer`): raw inflate through the system zlib with
``Z_BLOCK`` (see :mod:`._zlib`). A checkpoint is taken at the first block end where more than
``span_size`` bytes were produced since the previous checkpoint -- the rule of zran and of
AWS SOCI, so the same blob and span size give SOCI's checkpoints. Checkpoint 0 sits right
after the first member's header (``out = 0``, no window).

Resuming (:func:`decode_span`): pure ``zlib``. A checkpoint may fall inside a byte (``bits``
of the byte at ``in - 1`` still belong to the next block). Python's ``zlib`` has no
``inflatePrime``, and shifting the compressed bytes is wrong (a stored block pads to the
*original* byte boundary). Instead we splice: a synthetic deflate prefix of empty, non-final
blocks whose bit length is ``8 - bits`` (mod 8), completed by the ``bits`` leftover bits,
so the original bytes from ``in`` on are byte-aligned for the decoder. It produces no output
and copies nothing.

Multi-member gzip (pigz, concatenated files) is handled in both directions: at a member's
end its 8-byte trailer is checked (CRC32, ISIZE) and a new member header must follow.
"""

from __future__ import annotations

import collections
import concurrent.futures
import struct
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .._threads import shared_pool, submit_or_run
from ..errors import FormatError
from ._inflate import INFLATE_ERRORS, gzip_inflater, raw_inflater
from .base import (
    ChunkTable,
    IndexerBase,
    Span,
    SpanHasher,
    SpanIndexer,
    WindowPacker,
    WindowStore,
    unpack_window,
)
from .plugin import NO_ANNOTATIONS, LayerFormat

GZIP_MAGIC = b"\x1f\x8b"
_FTEXT, _FHCRC, _FEXTRA, _FNAME, _FCOMMENT = 1, 2, 4, 8, 16
#: A header larger than this (an FNAME without its NUL, say) is not a real gzip header.
MAX_HEADER_SIZE = 1 << 16
_TRAILER_SIZE = 8
#: Output a span's back-references can reach its window from: 32 KiB, plus the longest
#: match (258) that may start inside it.
_PROBE_SIZE = 32768 + 258
#: Compressed bytes kept for the probe: enough for _PROBE_SIZE of output even from stored
#: blocks; if not, the decode comes up short and the window is kept.
_PROBE_INPUT = 48 << 10


@dataclass
class _WindowProbe:
    span: int
    bits: int
    start: int  # compressed offset of the span
    comp: bytearray  # compressed bytes from ``start`` on
    out: bytearray  # the span's first output bytes
    window: bytes  # the span's full window (up to 32 KiB)


#: Probed spans waiting for the analysis thread before the pass waits for it.
_PENDING_PROBES = 8


def _analysis() -> concurrent.futures.ThreadPoolExecutor:
    """One thread shared by every pass, for window analysis."""
    return shared_pool("seekoci-window", 1)


#: Window blocks told apart when finding what a span uses from its window.
_BLOCK = 128
#: A window whose every byte holds the number of its block (p // 128).
_BLOCKS = b"".join(bytes([k]) * _BLOCK for k in range(32768 // _BLOCK))
#: bytes.translate table: 0 stays 0, anything else becomes 0xFF
_NONZERO = bytes([0] + [0xFF] * 255)


def window_uses(window: bytes, decode: Callable[[bytes], bytes], real: bytes) -> bytes | None:
    """``window`` with every 128-byte block the decoding never copies from zeroed (b"" when
    it copies nothing; None when it cannot tell).

    ``decode(w)`` decodes the span's first bytes with ``w`` as the window; ``real`` is what
    they decode to with ``window``. Decoding does not depend on the window's values, it only
    copies them: decoded with a window holding each byte's block number, an output byte that
    differs from ``real`` came from the window, and its value names the block. (A copied byte
    that happens to equal its block number looks like a literal: its block may be missed,
    which the caller's check of the result catches.) One decode and a few whole-buffer
    integer operations, ~0.2 ms.
    """
    n = len(window)
    numbered = decode(_BLOCKS[:n])
    m = len(numbered)
    if m != len(real) or not m:
        return None  # the probe did not reach every byte that may copy from the window
    ones = (1 << (8 * m)) - 1
    first = int.from_bytes(numbered, "little")
    copied = int.from_bytes(
        (first ^ int.from_bytes(real, "little")).to_bytes(m, "little").translate(_NONZERO),
        "little",
    )  # 0xFF where the byte came from the window
    # block numbers where copied, 0xFF elsewhere (dropped before the set: most bytes may be
    # literals); block 255 itself shows where only copied bytes are kept
    marks = (first | (copied ^ ones)).to_bytes(m, "little").translate(None, b"\xff")
    # which of the 255 values occur: a memchr each is ~10x faster than set() of 33k bytes
    used = {k for k in range(255) if k in marks}
    if b"\xff" in (first & copied).to_bytes(m, "little"):
        used.add(0xFF)
    if not used:
        return b""
    if max(used) * _BLOCK >= n:
        return None
    zeros = bytes(_BLOCK)
    return b"".join(
        window[at : at + _BLOCK] if at // _BLOCK in used else zeros[: n - at]
        for at in range(0, n, _BLOCK)
    )


def parse_gzip_header(buf: bytes | bytearray, *, where: str = "") -> int | None:
    """Length of the gzip member header at the start of ``buf``; None if ``buf`` is too short.

    Layout (RFC 1952): ``1f 8b`` CM=8 FLG MTIME(4) XFL OS, then the optional fields
    FEXTRA (u16 length + data), FNAME and FCOMMENT (NUL-terminated), FHCRC (2 bytes).
    """
    if len(buf) < 10:
        if buf[: len(GZIP_MAGIC)] != GZIP_MAGIC[: len(buf)]:
            raise FormatError(f"not a gzip member header{where}")
        return None
    if buf[:2] != GZIP_MAGIC or buf[2] != 8:
        raise FormatError(f"not a gzip member header{where}")
    flags = buf[3]
    if flags & 0xE0:
        raise FormatError(f"gzip header with reserved flags set{where}")
    pos = 10
    if flags & _FEXTRA:
        if len(buf) < pos + 2:
            return None
        (xlen,) = struct.unpack_from("<H", buf, pos)
        pos += 2 + xlen
    for flag in (_FNAME, _FCOMMENT):
        if flags & flag:
            end = buf.find(b"\x00", pos)
            if end < 0:
                if len(buf) > MAX_HEADER_SIZE:
                    raise FormatError(f"gzip header field without terminator{where}")
                return None
            pos = end + 1
    if flags & _FHCRC:
        pos += 2
    if len(buf) < pos:
        return None
    return pos


class GzipIndexer(IndexerBase):
    """One forward pass over a gzip blob: uncompressed bytes out, spans and windows recorded."""

    compression = "gzip"

    def __init__(
        self,
        span_size: int,
        *,
        name: str = "gzip blob",
        check_crc: bool = True,
        elide_windows: bool = False,
        chunk_size: int = 0,
        member_checkpoints: bool = False,
    ) -> None:
        super().__init__(span_size, name=name, chunk_size=chunk_size)
        # member CRCs; off only where something else checks the bytes (~5% of a build)
        self._check_crc = check_crc
        # a member start is a checkpoint that needs no window: eStargz writes a member per
        # file, most of them one deflate block, so block ends alone would leave a whole
        # layer in one span. Off for SOCI's zTOC, whose placement rule has no such point.
        self._member_checkpoints = member_checkpoints
        # the ctypes binding of zlib: imported by the first pass (reads never need it)
        from . import _zlib

        self._zlib = _zlib
        self._inflater = _zlib.BlockInflater()
        self._hasher: SpanHasher | None = None
        self._state = "header"
        self._buf = bytearray()  # header/trailer bytes being collected
        self._buf_start = 0  # stream offset of _buf[0]
        self._member = 0
        self._member_deflate_start = 0
        self._member_crc = 0
        self._member_out = 0
        # the open span: where it starts, its first-byte bits and its window
        self._span_cstart = 0
        self._span_ustart = 0
        self._span_bits = 0
        self._windows = WindowStore()  # packed window of each span (b"" = none)
        self._packer = WindowPacker()
        # Drop the window of a span whose data never reaches back into it (incompressible
        # data: weights, compressed files, random bytes). SOCI's format keeps every window,
        # so the zTOC builder leaves this off.
        self._elide = elide_windows
        self._probe: _WindowProbe | None = None
        self._pending: collections.deque[concurrent.futures.Future[None]] = collections.deque()
        # spans handed to the analysis thread, until it stored their window; read by any
        # thread that asks for a window (readers of a layer while its index builds)
        self._probing: dict[int, _WindowProbe] = {}
        self._probing_lock = threading.Lock()
        self._chunk = b""
        self._chunk_offset = 0
        self._prev_last = b""
        # chunk marks of the open span, and the output when the input was last looked at:
        # every chunk boundary at or past that input position decodes to at least that much
        self._marks: list[int] = []
        self._seen_out = 0
        self._member_end = 0  # where the last member's deflate data ended

    def window(self, span_index: int) -> bytes | None:
        probe = self._probe
        if probe is None or probe.span != span_index:
            with self._probing_lock:
                probe = self._probing.get(span_index)
        if probe is not None:  # not stored yet
            return probe.window or None
        packed = self._windows.read(span_index)  # stored before it left _probing
        return unpack_window(packed, where=self._name) if packed else None

    def packed_window(self, span_index: int) -> bytes:
        """The window of a span, packed (b"" when the span needs none)."""
        return self._windows.read(span_index)

    def packed_length(self, span_index: int) -> int:
        return self._windows.length(span_index)

    def _fail(self, what: str, offset: int) -> FormatError:
        return FormatError(f"{self._name}: {what} at compressed offset {offset}")

    # -- the pass ---------------------------------------------------------------------------
    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        offset = self._fed
        self._fed += len(data)
        if self._hasher is not None:
            self._hasher.add(data, offset)
        if self._chunk:
            self._prev_last = self._chunk[-1:]
        self._chunk, self._chunk_offset = data, offset
        if self._probe is not None and len(self._probe.comp) < _PROBE_INPUT:
            self._probe.comp += data[: _PROBE_INPUT - len(self._probe.comp)]
        pos = 0  # position in data
        while pos < len(data):
            if self._state == "header" or self._state == "next":
                if self._state == "next" and not self._buf and data[pos] != 0x1F:
                    raise self._fail("garbage after the end of the gzip stream", offset + pos)
                if not self._buf:
                    self._buf_start = offset + pos
                self._buf += data[pos:]
                where = f" in {self._name} at compressed offset {self._buf_start}"
                header_len = parse_gzip_header(self._buf, where=where)
                if header_len is None:
                    return
                deflate_start = self._buf_start + header_len
                pos = deflate_start - offset
                self._buf.clear()
                self._start_member(deflate_start, data, offset)
            elif self._state == "deflate":
                yield from self._inflate(data, pos, offset)
                if self._state == "deflate":
                    return  # input used up
                pos = self._member_end - offset
            else:  # trailer
                need = _TRAILER_SIZE - len(self._buf)
                self._buf += data[pos : pos + need]
                pos += min(need, len(data) - pos)
                if len(self._buf) == _TRAILER_SIZE:
                    self._check_trailer(offset + pos - _TRAILER_SIZE)

    def _start_member(self, deflate_start: int, data: bytes, offset: int) -> None:
        if self._member == 0:
            self._hasher = SpanHasher(deflate_start, self.chunk_size)
            self._seen_out = 0
            self._hasher.add(data, offset)
            self._span_cstart = deflate_start
            self._windows.append(b"")
        else:
            self._inflater.reset()
            if self._member_checkpoints and self._out - self._span_ustart > self.span_size:
                self._member_checkpoint(deflate_start)
        self._member += 1
        self._member_deflate_start = deflate_start
        self._member_crc = 0
        self._member_out = 0
        self._state = "deflate"

    def _inflate(self, data: bytes, pos: int, offset: int) -> Iterator[bytes]:
        """Inflate ``data[pos:]``. Chunked spans: the input goes in pieces that end on the
        open span's chunk boundaries, so the output seen when a piece is used up is exactly
        what the chunks up to that boundary decode to (the chunk's mark)."""
        inflater = self._inflater
        while True:
            stop = len(data)
            if self.chunk_size:
                at = offset + pos
                boundary = at + self.chunk_size - (at - self._span_cstart) % self.chunk_size
                stop = min(stop, boundary - offset)
            inflater.feed(data, pos, stop)
            yield from self._inflate_fed()
            if self._state != "deflate":  # the member ended inside this piece
                self._member_end = offset + stop - inflater.avail_in
                return
            if stop >= len(data):
                return
            pos = stop

    def _inflate_fed(self) -> Iterator[bytes]:
        inflater, zlib = self._inflater, self._zlib
        while True:
            # Until the open span holds span_size bytes no block end can take a checkpoint,
            # so inflate in large Z_NO_FLUSH calls that stop exactly there; only then stop
            # at every block end (Z_BLOCK). Few calls keep the GIL free for the tar parser.
            short = self.span_size - (self._out - self._span_ustart)
            try:
                if short > 0:
                    out = inflater.step(zlib.Z_NO_FLUSH, short)
                else:
                    out = inflater.step(zlib.Z_BLOCK)
            except FormatError as exc:
                at = self._member_deflate_start + inflater.total_in
                raise self._fail(str(exc), at) from None
            if out:
                if self._probe is not None:
                    self._feed_probe(out)
                self._out += len(out)
                self._member_out += len(out)
                if self._check_crc:
                    self._member_crc = zlib.crc32(out, self._member_crc)
                yield out
            if self.chunk_size:
                self._observe(self._member_deflate_start + inflater.total_in)
            if inflater.finished:
                self._state = "trailer"
                self._buf.clear()
                return
            if (
                short <= 0
                and inflater.at_block_boundary()
                and self._out - self._span_ustart > self.span_size
            ):
                self._checkpoint()
            if inflater.avail_in == 0 and (not out or inflater.starved):
                return

    def _observe(self, cin: int) -> None:
        """Input consumed up to ``cin`` produced ``self._out``: mark the chunk boundaries the
        previous observation had not reached with what it had produced."""
        seen_out = self._seen_out
        size = self.chunk_size
        boundary = self._span_cstart + (len(self._marks) + 1) * size
        while boundary < cin:
            self._marks.append(max(0, seen_out - self._span_ustart))
            boundary += size
        self._seen_out = self._out

    def _checkpoint(self) -> None:
        inflater = self._inflater
        assert self._hasher is not None
        cin = self._member_deflate_start + inflater.total_in
        bits = inflater.data_type & self._zlib.DT_UNUSED_BITS
        start = cin - 1 if bits else cin
        digest = self._hasher.cut(cin, start)
        self._close_span(cin, digest)
        self._end_probe()
        self._span_cstart = start
        self._span_ustart = self._out
        self._span_bits = bits
        window = inflater.window()
        # with elision the window is packed once its probe decided what to keep
        self._windows.append(b"" if self._elide else self._packer.pack(window))
        if self._elide:
            if start >= self._chunk_offset:
                at = start - self._chunk_offset
                comp = bytearray(self._chunk[at : at + _PROBE_INPUT])
            else:  # the span starts in the last byte of the previous chunk
                comp = bytearray(self._prev_last + self._chunk[: _PROBE_INPUT - 1])
            self._probe = _WindowProbe(
                len(self._windows) - 1, bits, start, comp, bytearray(), window
            )

    def _member_checkpoint(self, cin: int) -> None:
        """Close the open span where a new member's deflate data starts (no window)."""
        assert self._hasher is not None
        digest = self._hasher.cut(cin, cin)
        self._close_span(cin, digest)
        self._end_probe()
        self._span_cstart = cin
        self._span_ustart = self._out
        self._span_bits = 0
        self._windows.append(b"")

    def _feed_probe(self, out: bytes) -> None:
        probe = self._probe
        assert probe is not None
        probe.out += out[: _PROBE_SIZE - len(probe.out)]
        if len(probe.out) >= _PROBE_SIZE:
            self._end_probe()

    def _end_probe(self) -> None:
        """Hand the probed span to :meth:`_sparsen` on the analysis thread: its decodes and
        packing run without the GIL, next to this pass's inflate (~4% of a build otherwise).
        Until it is stored, :meth:`window` serves the span's whole window."""
        probe = self._probe
        if probe is None:
            return
        with self._probing_lock:
            self._probing[probe.span] = probe  # before it stops being the open probe
        self._probe = None
        pending = self._pending
        pending.append(submit_or_run(_analysis(), self._sparsen, probe))
        while len(pending) > _PENDING_PROBES or (pending and pending[0].done()):
            pending.popleft().result()

    def _sparsen(self, probe: _WindowProbe) -> None:
        """Store the probed span's window, keeping only what its data reaches back into.

        The first 32 KiB + 258 bytes of a span are all that back-references can take from
        the window. The window is dropped when they decode without it (incompressible data:
        weights, compressed files); else :func:`window_uses` finds the 128-byte blocks they
        copy from and every other block is zeroed -- such a window compresses to a fraction
        of the whole one. The result must decode exactly the same bytes, else the window is
        stored whole: never a wrong one.
        """
        comp = bytes(probe.comp)
        want = len(probe.out)
        trial = Span(probe.span, probe.start, probe.start + len(comp), 0, want, "", probe.bits)

        def decode(window: bytes | None) -> bytes:
            return decode_span(trial, comp, window, name=self._name, partial=True)[:want]

        keep = probe.window
        try:
            try:
                copies = decode(None) != probe.out  # one decode settles incompressible data
            except FormatError:
                copies = True  # it reaches back into the window
            if not copies:
                keep = b""
            else:
                sparse = window_uses(probe.window, decode, bytes(probe.out))
                if sparse is not None and decode(sparse or None) == probe.out:
                    keep = sparse
        except Exception:  # any doubt keeps the whole window (it is only an optimisation)
            keep = probe.window
        try:
            if keep:
                self._windows.replace(probe.span, WindowPacker().pack(keep))
            else:
                self._windows.drop(probe.span)
        finally:
            with self._probing_lock:
                self._probing.pop(probe.span, None)

    def _close_span(self, cend: int, digest: str) -> None:
        span = Span(
            index=len(self.spans),
            compressed_start=self._span_cstart,
            compressed_end=cend,
            uncompressed_start=self._span_ustart,
            uncompressed_end=self._out,
            digest=digest,
            bits=self._span_bits,
            chunk_size=self.chunk_size,
        )
        self.spans.append(span)
        if self.chunk_size:
            assert self._hasher is not None
            self._observe(cend)
            chunks = self._hasher.last_chunks
            marks = [*self._marks[: len(chunks) - 1], span.uncompressed_size]
            if len(marks) != len(chunks):
                raise AssertionError("chunk marks out of step with chunk digests")
            self._chunk_tables.append(ChunkTable(chunks, marks))
            self._marks = []
            self._seen_out = self._out

    def _check_trailer(self, at: int) -> None:
        crc, isize = struct.unpack("<II", self._buf)
        if self._check_crc and crc != self._member_crc & 0xFFFFFFFF:
            raise self._fail(f"gzip member {self._member} fails its CRC check", at)
        if isize != self._member_out & 0xFFFFFFFF:
            raise self._fail(f"gzip member {self._member} fails its size check", at)
        self._buf.clear()
        self._state = "next"

    def finish(self) -> None:
        if self._finished:
            return
        if self._member == 0:
            raise self._fail("no gzip member (empty or truncated header)", self._fed)
        if self._state != "next" or self._buf:
            raise self._fail("truncated gzip stream", self._fed)
        assert self._hasher is not None
        self._close_span(self._fed, self._hasher.cut(self._fed, self._fed))
        self._end_probe()
        while self._pending:
            self._pending.popleft().result()
        self._finished = True
        self._inflater.close()


# -- resuming ------------------------------------------------------------------------------


class _BitWriter:
    """Deflate's bit order: fields LSB first, Huffman codes MSB first."""

    def __init__(self) -> None:
        self.value = 0
        self.nbits = 0

    def bits(self, value: int, count: int) -> None:
        self.value |= (value & ((1 << count) - 1)) << self.nbits
        self.nbits += count

    def code(self, code: int, length: int) -> None:
        for i in range(length - 1, -1, -1):
            self.bits((code >> i) & 1, 1)

    def getvalue(self) -> bytes:
        assert self.nbits % 8 == 0
        return self.value.to_bytes(self.nbits // 8, "little")


def _empty_fixed_block(w: _BitWriter) -> None:
    # BFINAL=0, BTYPE=01 (fixed Huffman), end-of-block = 7-bit code 0000000: 10 bits.
    w.bits(0, 1)
    w.bits(1, 2)
    w.code(0, 7)


# Code-length alphabet order of the HCLEN entries (RFC 1951 3.2.7).
_CLEN_ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)


def _empty_dynamic_block(w: _BitWriter) -> None:
    """A non-final dynamic-Huffman block holding only end-of-block: 95 bits (odd).

    Literal/length code: symbol 256 alone, length 1 (zlib accepts a single 1-bit code);
    distance code: one unused symbol of length 0. The code-length code gives 18 (run of
    zeros) length 1, and 0 and 1 length 2. All 19 HCLEN entries are sent, which is what
    makes the total odd.
    """
    w.bits(0, 1)  # BFINAL
    w.bits(2, 2)  # BTYPE=10
    w.bits(0, 5)  # HLIT: 257 literal/length codes
    w.bits(0, 5)  # HDIST: 1 distance code
    w.bits(15, 4)  # HCLEN: 19 code-length codes
    lengths = {18: 1, 0: 2, 1: 2}
    for sym in _CLEN_ORDER:
        w.bits(lengths.get(sym, 0), 3)
    # canonical codes: 18 -> 0, 0 -> 10, 1 -> 11
    w.code(0, 1)
    w.bits(138 - 11, 7)  # 138 zeros
    w.code(0, 1)
    w.bits(118 - 11, 7)  # 118 zeros: literals 0..255 unused
    w.code(0b11, 2)  # symbol 256 (end of block): length 1
    w.code(0b10, 2)  # the one distance code: length 0
    w.code(0, 1)  # end of block


def splice_prefix(bits: int, byte: int) -> bytes:
    """Bytes that put a raw inflater ``8 - bits`` bits into ``byte``, producing no output.

    ``bits`` (1-7) high bits of ``byte`` are the start of the next real block.
    """
    if not 1 <= bits <= 7:
        raise ValueError("bits must be 1..7")
    w = _BitWriter()
    need = (8 - bits) % 8  # residue of the prefix length mod 8
    if need % 2:  # odd: one dynamic block (95 = 7 mod 8), then fixed blocks (10 = 2 mod 8)
        _empty_dynamic_block(w)
        need = (need - 7) % 8
    for _ in range(need // 2):
        _empty_fixed_block(w)
    w.bits(byte >> (8 - bits), bits)
    return w.getvalue()


def gunzip(data: bytes | memoryview, limit: int, *, what: str) -> bytes:
    """Decode gzip members (one or several, each whole: header and trailer checked) to at
    most ``limit`` bytes, with isal when it is installed (about twice zlib's rate: an
    eStargz chunk, a 16 MB TOC); FormatError naming ``what`` if they are corrupt."""
    out: list[bytes] = []
    produced = 0
    pending = data
    limit = min(limit, sys.maxsize)  # (a TOC's sizes are not bounded: 10**30 is a size)
    try:
        while pending and produced < limit:
            d = gzip_inflater()
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
    except INFLATE_ERRORS as exc:
        raise FormatError(f"{what} is corrupt ({exc})") from None
    return b"".join(out)


#: What feeding a decoder can raise (kept for :meth:`SpanDecoder.result`)
_DECODE_ERRORS: tuple[type[Exception], ...] = (FormatError, *INFLATE_ERRORS)


class SpanDecoder:
    """:func:`decode_span` fed piece by piece: a span's compressed bytes inflated as they
    arrive, so the inflate works while the rest is still on the way. Nothing is raised
    while feeding: the bytes are not checked yet, and damaged bytes are a refetch, not a
    format error. :meth:`result` (after the last piece, once the caller has checked them)
    gives the span's bytes or the error.

    Crosses gzip member boundaries inside the span. Produces at most the span's size
    (a decompression bomb cannot make it allocate more). ``partial``: the bytes fed are
    only the start of the span's; :meth:`result` gives what they decode to.
    """

    def __init__(
        self, span: Span, window: bytes | None, *, name: str = "gzip blob", partial: bool = False
    ) -> None:
        self._where = (
            f"{name}: span {span.index} (compressed {span.compressed_start}-{span.compressed_end})"
        )
        self._bits = span.bits
        self._want = span.uncompressed_size
        self._partial = partial
        self._decomp = raw_inflater(window, whole=not partial)
        self._out: list[bytes] = []
        self._produced = 0
        self._started = False
        #: after a member's end: its trailer and the next member's header, as they come
        self._between: bytearray | None = None
        self._error: Exception | None = None

    def feed(self, data: bytes | memoryview) -> None:
        """Inflate the next compressed bytes of the span (as far as they go)."""
        if self._error is not None or self._produced >= self._want or not data:
            return
        try:
            # the inflater copies what it leaves unused (unconsumed_tail, unused_data), so
            # ``data`` is read in place, never copied: a span's bytes are 1 MiB or more
            piece = data
            if not self._started:
                self._started = True
                if self._bits:  # the prefix takes the first byte's high bits: no output
                    self._inflate(splice_prefix(self._bits, data[0]))
                    piece = memoryview(data)[1:]
            pending: bytes | memoryview | None = piece
            if self._between is not None:
                self._between += piece
                pending = self._next_member()
            if pending is not None:
                self._inflate(pending)
        except _DECODE_ERRORS as exc:
            self._error = exc

    def _next_member(self) -> bytes | None:
        """Once a member's trailer and the next member's header are in: a fresh inflater,
        and the bytes after the header (None until then)."""
        between = self._between
        assert between is not None
        header_len = parse_gzip_header(between[_TRAILER_SIZE:], where=f" ({self._where})")
        if header_len is None:
            return None
        self._between = None
        self._decomp = raw_inflater(None, whole=not self._partial)
        return bytes(between[_TRAILER_SIZE + header_len :])

    def _inflate(self, pending: bytes | memoryview) -> None:
        decomp = self._decomp
        while self._produced < self._want:
            chunk = decomp.decompress(pending, self._want - self._produced)
            if chunk:  # (one piece in all, mostly: result() then joins without a copy)
                self._out.append(chunk)
                self._produced += len(chunk)
            left = decomp.unconsumed_tail
            if decomp.eof:
                if self._produced >= self._want:
                    return
                self._between = bytearray(decomp.unused_data)
                after = self._next_member()
                if after is None:
                    return
                pending, decomp = after, self._decomp
            elif not chunk and (not left or len(left) == len(pending)):
                return  # all in (or nothing more comes of it without more bytes)
            else:
                pending = left

    def result(self) -> bytes:
        """The span's uncompressed bytes from everything fed (FormatError if they are not
        them; with ``partial``, what they decode to)."""
        where = self._where
        if self._bits and not self._started:
            raise FormatError(f"{where}: no data")
        if self._error is not None:
            if isinstance(self._error, FormatError):
                raise self._error
            raise FormatError(f"{where}: corrupt deflate data ({self._error})") from self._error
        short = self._produced < self._want
        if short and self._between is not None and not self._partial:
            raise FormatError(f"{where}: data ends inside a gzip member header")
        result = b"".join(self._out)
        if short and not self._partial:
            raise FormatError(f"{where}: produced {len(result)} bytes, index says {self._want}")
        return result


def decode_span(
    span: Span,
    data: bytes | memoryview,
    window: bytes | None,
    *,
    name: str = "gzip blob",
    partial: bool = False,
) -> bytes:
    """Uncompressed bytes of ``span`` from its compressed bytes ``data`` (already verified).

    Crosses gzip member boundaries inside the span. Produces at most the span's size
    (a decompression bomb cannot make it allocate more). ``partial``: ``data`` is only the
    start of the span's bytes; return what it decodes to.
    """
    decoder = SpanDecoder(span, window, name=name, partial=partial)
    decoder.feed(data)
    return decoder.result()


#: Most uncompressed bytes :meth:`GzipStream.feed` yields at a time (a bound for bombs).
STREAM_PIECE = 2 << 20
#: Compressed bytes handed to the decoder at a time: small enough that their output rarely
#: reaches STREAM_PIECE, since every call that stops there copies the input left over
#: (256 KiB output pieces cut from 1 MiB inputs cost ~0.9 of 7.4 CPU-s of a first touch).
STREAM_SLICE = 256 << 10


class GzipStream:
    """A gzip blob (one or more members) inflated front to back with the fastest decoder at
    hand, keeping nothing for resuming: about a third less CPU than :class:`GzipIndexer`,
    which stops at block ends and records windows and chunk digests. Each member's CRC-32
    and size are checked, and bytes after a member's end must be another member."""

    def __init__(self, *, name: str = "gzip blob") -> None:
        self._name = name
        self._decomp: Any = None  # None between members
        self._members = 0
        self._fed = 0  # compressed bytes given to feed() so far
        self._between = bytearray()  # bytes after a member's end, until they show a header
        self.uncompressed_size = 0

    def _fail(self, what: str) -> FormatError:
        return FormatError(f"{self._name}: {what} (compressed bytes fed: {self._fed})")

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._fed += len(data)
        view = memoryview(data)
        for at in range(0, len(view), STREAM_SLICE):
            yield from self._feed(view[at : at + STREAM_SLICE])

    def _feed(self, pending: bytes | memoryview) -> Iterator[bytes]:
        while True:
            if self._decomp is None:
                if not pending:
                    return
                self._between += pending
                if self._between[:2] != GZIP_MAGIC[: len(self._between[:2])]:
                    raise self._fail("garbage after the end of the gzip stream")
                if len(self._between) < 2:
                    return
                self._decomp = gzip_inflater()
                self._members += 1
                pending = bytes(self._between)
                self._between.clear()
            decomp = self._decomp
            try:
                out = decomp.decompress(pending, STREAM_PIECE)
            except INFLATE_ERRORS as exc:
                raise self._fail(f"gzip member {self._members} is corrupt ({exc})") from exc
            if out:
                self.uncompressed_size += len(out)
                yield out
            if decomp.eof:
                self._decomp = None
                pending = decomp.unused_data
                continue
            tail = decomp.unconsumed_tail
            if not tail and len(out) < STREAM_PIECE:
                return  # room was left: every byte fed is used, more input is needed
            if tail and not out and len(tail) == len(pending):
                raise self._fail(f"gzip member {self._members}: the decoder makes no progress")
            pending = tail  # output was cut at STREAM_PIECE: more of it may be pending

    def finish(self) -> None:
        if self._members == 0:
            raise self._fail("no gzip member (empty or truncated header)")
        if self._decomp is not None or self._between:
            raise self._fail("truncated gzip stream")


class GzipFormat(LayerFormat):
    """``tar+gzip`` layers (eStargz refines it)."""

    name = compression = "gzip"
    layer_format = "tar"
    media_types = frozenset(
        {
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        }
    )

    def sniff(
        self,
        *,
        head: bytes | None = None,
        tail: bytes | None = None,
        annotations: Mapping[str, str] = NO_ANNOTATIONS,
    ) -> bool:
        return head is not None and head[:2] == b"\x1f\x8b"

    def new_indexer(
        self,
        span_size: int,
        *,
        name: str,
        check_crc: bool = True,
        elide_windows: bool = False,
        chunk_size: int = 0,
    ) -> SpanIndexer:
        return GzipIndexer(
            span_size,
            name=name,
            check_crc=check_crc,
            elide_windows=elide_windows,
            chunk_size=chunk_size,
            member_checkpoints=True,
        )

    def decode_span(
        self,
        span: Span,
        data: bytes | memoryview,
        window: bytes | None,
        *,
        name: str = "layer",
        partial: bool = False,
    ) -> bytes:
        return decode_span(span, data, window, name=name, partial=partial)

    def span_decoder(
        self, span: Span, window: bytes | None, *, name: str = "layer"
    ) -> SpanDecoder | None:
        return SpanDecoder(span, window, name=name)

    def stream_inflater(self, *, name: str) -> GzipStream:
        return GzipStream(name=name)
