"""gzip checkpoints: SOCI's reference vectors, resuming at every bit position, multi-member
streams, header parsing and chunking independence."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import struct
import zlib
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from layers import (
    CI,
    VECTORS,
    build_tar,
    compress_layer,
    deflate_with_boundaries,
    file,
    gzip_member,
    gzip_with_header_fields,
    random_bytes,
    text_bytes,
)

from seekoci.errors import FormatError
from seekoci.formats.base import Span
from seekoci.formats.gzip import (
    GzipIndexer,
    SpanDecoder,
    decode_span,
    parse_gzip_header,
    splice_prefix,
)

SOCI = VECTORS / "soci"
WINDOW = 32768
RECORD = 8 + 8 + 1 + WINDOW


@dataclass(frozen=True)
class Checkpoint:
    cin: int
    cout: int
    bits: int
    window: bytes


def read_zinfo(data: bytes) -> tuple[int, list[Checkpoint]]:
    """SOCI's checkpoint blob: i32 N, i64 span_size, N x (i64 in, i64 out, u8 bits, window)."""
    count, span_size = struct.unpack_from("<iq", data)
    assert len(data) == 12 + count * RECORD
    points = []
    for i in range(count):
        at = 12 + i * RECORD
        cin, cout, bits = struct.unpack_from("<qqB", data, at)
        points.append(Checkpoint(cin, cout, bits, data[at + 17 : at + RECORD]))
    return span_size, points


def index_blob(blob: bytes, span_size: int, chunk: int = 1 << 16) -> tuple[GzipIndexer, bytes]:
    indexer = GzipIndexer(span_size, name="test blob")
    out = [piece for i in range(0, len(blob), chunk) for piece in indexer.feed(blob[i : i + chunk])]
    indexer.finish()
    return indexer, b"".join(out)


@functools.cache
def soci_case() -> tuple[dict[str, object], bytes, bytes, int, list[Checkpoint]]:
    vectors = json.loads((SOCI / "vectors.json").read_text())
    blob = (SOCI / "layer.tar.gz").read_bytes()
    tar = (SOCI / "layer.tar").read_bytes()
    span_size, points = read_zinfo((SOCI / "layer.tar.gz.zinfo").read_bytes())
    assert span_size == vectors["span_size"]
    return vectors, blob, tar, span_size, points


# --------------------------------------------------------------------------- SOCI vectors


def test_the_vectors_are_the_ones_described() -> None:
    vectors, blob, tar, _, points = soci_case()
    case = vectors["cases"]["layer.tar.gz"]  # type: ignore[index]
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == case["layer_sha256"]
    assert hashlib.sha256(tar).hexdigest() == vectors["uncompressed_tar_sha256"]
    assert [(p.cin, p.cout, p.bits) for p in points] == [
        (c["in"], c["out"], c["bits"]) for c in case["checkpoints"]
    ]


@pytest.mark.parametrize("chunk", [1 << 16, 4093, 1 << 20])
def test_checkpoints_equal_soci(chunk: int) -> None:
    _, blob, tar, span_size, points = soci_case()
    indexer, out = index_blob(blob, span_size, chunk)
    assert out == tar
    spans = indexer.spans
    assert len(spans) == len(points)
    for span, point in zip(spans, points, strict=True):
        # SOCI's `in` is the first whole byte after the boundary; a span with bits != 0
        # starts one byte earlier, in the byte it shares with the previous span
        assert span.compressed_start + (1 if span.bits else 0) == point.cin
        assert span.uncompressed_start == point.cout
        assert span.bits == point.bits


def test_span_digests_equal_soci() -> None:
    vectors, blob, _, span_size, _ = soci_case()
    indexer, _ = index_blob(blob, span_size)
    expected = vectors["cases"]["layer.tar.gz"]["span_digests"]  # type: ignore[index]
    assert ["sha256:" + s.digest for s in indexer.spans] == expected
    # SOCI's rule: span i is [in_i - (1 if bits_i else 0), in_{i+1}), the last one to the end
    assert indexer.spans[-1].compressed_end == len(blob)


def test_windows_equal_soci() -> None:
    _, blob, _, span_size, points = soci_case()
    indexer, _ = index_blob(blob, span_size)
    for span, point in zip(indexer.spans, points, strict=True):
        window = indexer.window(span.index) or b""
        assert len(window) <= WINDOW
        assert bytes(WINDOW - len(window)) + window == point.window, span.index


def test_every_soci_span_decodes_from_its_checkpoint() -> None:
    _, blob, tar, span_size, points = soci_case()
    indexer, _ = index_blob(blob, span_size)
    assert {p.bits for p in points} >= {0, 1, 2, 3, 4, 5}
    for span in indexer.spans:
        data = blob[span.compressed_start : span.compressed_end]
        out = decode_span(span, data, indexer.window(span.index))
        assert out == tar[span.uncompressed_start : span.uncompressed_end], span.index


def test_soci_windows_alone_resume_the_stream() -> None:
    """Resuming needs nothing but SOCI's own record: in, out, bits and the window."""
    _, blob, tar, _, points = soci_case()
    for i, point in enumerate(points[1:], start=1):
        end_out = points[i + 1].cout if i + 1 < len(points) else len(tar)
        end_in = points[i + 1].cin if i + 1 < len(points) else len(blob)
        start = point.cin - 1 if point.bits else point.cin
        span = Span(i, start, end_in, point.cout, end_out, "", point.bits)
        assert decode_span(span, blob[start:end_in], point.window) == tar[point.cout : end_out]


# --------------------------------------------------------------------------- splicing


@pytest.mark.parametrize("bits", range(1, 8))
def test_a_splice_prefix_inflates_to_nothing(bits: int) -> None:
    """The prefix leaves the inflater exactly ``8 - bits`` bits into ``byte``: what it reads
    next are the byte's top ``bits`` bits, the start of the next block's header (BFINAL,
    then BTYPE, least significant bit first)."""
    first = 8 - bits
    for byte in range(256):
        prefix = splice_prefix(bits, byte)
        assert prefix[-1] >> first == byte >> first  # the leftover bits, in place
        inflater = zlib.decompressobj(-15)
        btype = (byte >> (first + 1)) & 3 if bits >= 3 else None
        if btype == 3:  # the reserved block type: zlib must see exactly these bits
            with pytest.raises(zlib.error, match="invalid block type"):
                inflater.decompress(prefix)
            continue
        assert inflater.decompress(prefix) == b""
        assert not inflater.eof  # only non-final blocks so far
        assert inflater.unused_data == b""
        assert inflater.unconsumed_tail == b""


@pytest.mark.parametrize("bits", [0, 8, -1])
def test_a_splice_needs_one_to_seven_bits(bits: int) -> None:
    with pytest.raises(ValueError):
        splice_prefix(bits, 0)


@functools.cache
def small_blocks() -> tuple[bytes, bytes]:
    data = b"".join(
        text_bytes(i, 3000) if i % 3 else random_bytes(i, 2000) + bytes(1500) for i in range(60)
    )
    return data, gzip_member(deflate_with_boundaries(data, [], mem_level=1), data)


def test_resuming_at_every_bit_position() -> None:
    data, blob = small_blocks()
    indexer, out = index_blob(blob, 512)
    assert out == data
    assert {s.bits for s in indexer.spans} == set(range(8))
    for span in indexer.spans:
        chunk = blob[span.compressed_start : span.compressed_end]
        assert hashlib.sha256(chunk).hexdigest() == span.digest
        out = decode_span(span, chunk, indexer.window(span.index))
        assert out == data[span.uncompressed_start : span.uncompressed_end], span


def test_stored_blocks_resume_too() -> None:
    # level 0: stored blocks, whose padding is aligned to the original stream's bytes
    data = random_bytes("stored", 200_000)
    comp = zlib.compressobj(0, zlib.DEFLATED, -15)
    blob = gzip_member(comp.compress(data) + comp.flush(), data)
    indexer, out = index_blob(blob, 4096)
    assert out == data and len(indexer.spans) > 2
    for span in indexer.spans:
        chunk = blob[span.compressed_start : span.compressed_end]
        assert (
            decode_span(span, chunk, indexer.window(span.index))
            == (data[span.uncompressed_start : span.uncompressed_end])
        )


# --------------------------------------------------------------------------- members


def members_blob() -> tuple[bytes, bytes]:
    """Several members, one of them empty, one with every optional header field."""
    parts = [text_bytes("m1", 30_000), b"", random_bytes("m3", 20_000), text_bytes("m4", 40_000)]
    blob = b"".join(
        [
            gzip_member(deflate_with_boundaries(parts[0], [], mem_level=2), parts[0]),
            gzip_member(zlib.compress(parts[1])[2:-4], parts[1]),
            gzip_with_header_fields(parts[2], header_crc=True),
            gzip_member(deflate_with_boundaries(parts[3], [], mem_level=2), parts[3]),
        ]
    )
    return b"".join(parts), blob


@pytest.mark.parametrize("span_size", [1024, 8192, 1 << 20])
def test_spans_cross_member_boundaries(span_size: int) -> None:
    data, blob = members_blob()
    indexer, out = index_blob(blob, span_size, chunk=777)
    assert out == data
    assert indexer.spans[-1].compressed_end == len(blob)
    for span in indexer.spans:
        chunk = blob[span.compressed_start : span.compressed_end]
        assert (
            decode_span(span, chunk, indexer.window(span.index))
            == (data[span.uncompressed_start : span.uncompressed_end])
        )


@CI
@given(cuts=st.lists(st.integers(1, 400_000), max_size=12), producer=st.sampled_from(["a", "b"]))
def test_how_the_blob_is_chunked_does_not_matter(cuts: list[int], producer: str) -> None:
    data, blob = members_blob() if producer == "a" else small_blocks()
    reference, _ = index_blob(blob, 2048, chunk=len(blob))
    points = sorted({c % len(blob) for c in cuts} | {0, len(blob)})
    indexer = GzipIndexer(2048)
    out = b"".join(
        piece for a, b in itertools.pairwise(points) for piece in indexer.feed(blob[a:b])
    )
    indexer.finish()
    assert out == data
    assert indexer.spans == reference.spans
    assert [indexer.packed_window(i) for i in range(len(indexer.spans))] == [
        reference.packed_window(i) for i in range(len(reference.spans))
    ]


@pytest.mark.parametrize("producer", ["python", "gzip", "pigz", "multi-member", "fname"])
def test_real_producers(producer: str) -> None:
    tar = build_tar([file(f"f{i}", text_bytes(i, 25_000)) for i in range(8)])
    blob = compress_layer(tar, producer, seed=3)
    indexer, out = index_blob(blob, 4096, chunk=10_000)
    assert out == tar
    for span in indexer.spans:
        chunk = blob[span.compressed_start : span.compressed_end]
        assert (
            decode_span(span, chunk, indexer.window(span.index))
            == (tar[span.uncompressed_start : span.uncompressed_end])
        )


@pytest.mark.parametrize("library", ["zlib", "zlib-ng"])
def test_either_inflate_library_gives_the_same_checkpoints(
    library: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build pass runs on zlib-ng when installed (the `fast` and `test` extras), else
    the system zlib: same SOCI checkpoints, span digests, windows and CRCs either way."""
    from seekoci.formats import _zlib

    loaded = _zlib._load_zlib_ng() if library == "zlib-ng" else _zlib._load_zlib()
    assert loaded is not None and loaded.name.startswith(library + " ")
    monkeypatch.setattr(_zlib, "_lib", loaded)
    assert _zlib.library_name() == loaded.name
    for crc in (_zlib.crc32, _zlib._library_crc32):
        assert crc(b"seekoci" * 999, 7) == zlib.crc32(b"seekoci" * 999, 7)
        assert crc(b"", 7) == 7
    vectors, blob, tar, span_size, points = soci_case()
    indexer, out = index_blob(blob, span_size)
    assert out == tar
    assert [
        (s.compressed_start + (1 if s.bits else 0), s.uncompressed_start, s.bits)
        for s in indexer.spans
    ] == [(p.cin, p.cout, p.bits) for p in points]
    expected = vectors["cases"]["layer.tar.gz"]["span_digests"]  # type: ignore[index]
    assert ["sha256:" + s.digest for s in indexer.spans] == expected
    for span, point in zip(indexer.spans, points, strict=True):
        window = indexer.window(span.index) or b""
        assert bytes(WINDOW - len(window)) + window == point.window, span.index
    # a CRC mismatch is still caught through the library's crc32
    bad = bytearray(blob)
    bad[-8] ^= 1
    with pytest.raises(FormatError, match="CRC"):
        index_blob(bytes(bad), span_size)


@pytest.mark.parametrize("library", ["zlib", "zlib-ng"])
@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 1 << 30),
    level=st.integers(0, 9),
    cuts=st.lists(st.integers(1, 4096), min_size=1, max_size=24),
    flushes=st.lists(st.sampled_from(["block", "none"]), min_size=1, max_size=8),
)
def test_a_starved_step_means_the_next_one_would_produce_nothing(
    library: str, seed: int, level: int, cuts: list[int], flushes: list[str]
) -> None:
    """``BlockInflater.starved`` lets the indexer skip a call: wherever it says so, a
    further step makes no progress; and stepping until it says so, whatever the flush
    mode of each step, decodes the whole stream."""
    from seekoci.formats import _zlib

    loaded = _zlib._load_zlib_ng() if library == "zlib-ng" else _zlib._load_zlib()
    assert loaded is not None
    data = random_bytes(f"starve{seed}", 6_000) + text_bytes(seed, 30_000)
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    raw = c.compress(data[:10_000]) + c.flush(zlib.Z_FULL_FLUSH) + c.compress(data[10_000:])
    raw += c.flush()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_zlib, "_lib", loaded)
        inflater = _zlib.BlockInflater(out_buffer_size=1 << 12)
    out = bytearray()
    pos = 0
    calls = itertools.cycle(flushes)
    steps = 0
    for cut in itertools.cycle(cuts):
        stop = min(len(raw), pos + cut)
        inflater.feed(raw, pos, stop)
        while not inflater.finished:
            flush = _zlib.Z_BLOCK if next(calls) == "block" else _zlib.Z_NO_FLUSH
            out += inflater.step(flush)
            steps += 1
            assert steps < 4 * (len(raw) + len(data)), "no progress"
            if inflater.starved:
                # (a step that stopped where a block ends, for want of the next one's
                # header, may leave that mark to the next step: a checkpoint is only taken
                # where a Z_BLOCK step stops, which is never starved)
                state = (inflater.total_in, inflater.total_out)
                if not inflater.finished:  # not even the end of the stream is reached
                    assert inflater.step(_zlib.Z_BLOCK) == b""
                    assert inflater.step(_zlib.Z_NO_FLUSH) == b""
                    assert not inflater.finished
                    assert (inflater.total_in, inflater.total_out) == state
                break
        pos = stop - inflater.avail_in
        if inflater.finished:
            break
    assert bytes(out) == data and pos == len(raw)


# --------------------------------------------------------------------------- headers


def header(flags: int, extra: bytes = b"", fname: bytes = b"", comment: bytes = b"") -> bytes:
    head = b"\x1f\x8b\x08" + bytes([flags]) + bytes(6)
    if flags & 4:
        head += struct.pack("<H", len(extra)) + extra
    if flags & 8:
        head += fname + b"\x00"
    if flags & 16:
        head += comment + b"\x00"
    if flags & 2:
        head += struct.pack("<H", zlib.crc32(head) & 0xFFFF)
    return head


@pytest.mark.parametrize("flags", range(0, 32))
def test_header_lengths(flags: int) -> None:
    head = header(flags, b"EX\x02\x00ab", b"name.tar", b"a comment")
    assert parse_gzip_header(head + b"\x00deflate") == len(head)
    for cut in range(len(head)):
        assert parse_gzip_header(head[:cut]) is None


@pytest.mark.parametrize(
    "bad",
    [
        b"\x1f\x8c\x08\x00" + bytes(6),
        b"\x1f\x8b\x07\x00" + bytes(6),
        b"\x1f\x8b\x08\x20" + bytes(6),
    ],
    ids=["magic", "method", "reserved flag"],
)
def test_bad_headers(bad: bytes) -> None:
    with pytest.raises(FormatError):
        parse_gzip_header(bad)


def test_an_unterminated_name_is_refused_once_it_is_too_long() -> None:
    head = b"\x1f\x8b\x08\x08" + bytes(6) + b"n" * (1 << 17)
    with pytest.raises(FormatError):
        parse_gzip_header(head)


def test_decode_span_refuses_data_that_is_not_the_span() -> None:
    data, blob = small_blocks()
    indexer, _ = index_blob(blob, 4096)
    span = indexer.spans[3]
    chunk = blob[span.compressed_start : span.compressed_end]
    window = indexer.window(span.index)
    with pytest.raises(FormatError):
        decode_span(span, chunk[: len(chunk) // 2], window)
    with pytest.raises(FormatError):
        decode_span(span, bytes(len(chunk)), window)
    with pytest.raises(FormatError):
        decode_span(span, b"", window)
    assert decode_span(span, chunk, window) == data[span.uncompressed_start : span.uncompressed_end]


def test_decode_span_reads_a_view_of_a_larger_buffer() -> None:
    """The read pipeline decodes each span of a coalesced range in place (a view of the
    range's buffer, bit-aligned starts included): the same bytes as from a copy."""
    data, blob = small_blocks()
    indexer, _ = index_blob(blob, 4096)
    fetched = bytearray(blob)
    assert any(span.bits for span in indexer.spans)
    for span in indexer.spans:
        view = memoryview(fetched)[span.compressed_start : span.compressed_end]
        out = decode_span(span, view, indexer.window(span.index))
        assert type(out) is bytes
        assert out == data[span.uncompressed_start : span.uncompressed_end]


def test_a_zero_span_size_is_refused() -> None:
    with pytest.raises(ValueError):
        GzipIndexer(0)


# --------------------------------------------------------------------------- fed in pieces


def _fed(span: Span, chunk: bytes, window: bytes | None, cuts: list[int]) -> bytes:
    decoder = SpanDecoder(span, window, name="test blob")
    points = sorted({c % (len(chunk) + 1) for c in cuts} | {0, len(chunk)})
    received = bytearray(len(chunk))  # a receive buffer, each piece a view of it
    for a, b in itertools.pairwise(points):
        received[a:b] = chunk[a:b]
        decoder.feed(memoryview(received)[a:b])
        received[a:b] = bytes(b - a)  # reused once fed: the decoder kept no view of it
    return decoder.result()


@CI
@given(cuts=st.lists(st.integers(0, 200_000), max_size=10), producer=st.sampled_from("ab"))
def test_a_span_fed_in_pieces_decodes_as_whole(cuts: list[int], producer: str) -> None:
    """Any cut of a span's bytes (inside a member header or trailer, between members, one
    byte at a time at its start) decodes to what the whole bytes decode to: the spans of a
    multi-member blob with every header field, and of small blocks (bit-aligned starts)."""
    data, blob = members_blob() if producer == "a" else small_blocks()
    indexer, _ = index_blob(blob, 2048)
    for span in indexer.spans:
        chunk = blob[span.compressed_start : span.compressed_end]
        window = indexer.window(span.index)
        expected = data[span.uncompressed_start : span.uncompressed_end]
        assert _fed(span, chunk, window, cuts) == expected
        assert _fed(span, chunk, window, list(range(1, 40))) == expected


def test_a_fed_decoder_keeps_its_error_until_the_result() -> None:
    """Feeding never raises (the bytes are not checked yet): bad bytes, a cut member
    header, nothing at all are the result's FormatError, as decode_span's."""
    _, blob = members_blob()
    indexer, _ = index_blob(blob, 8192)
    span = next(s for s in indexer.spans if s.bits)
    chunk = blob[span.compressed_start : span.compressed_end]
    window = indexer.window(span.index)
    for bad in (bytes(len(chunk)), chunk[: len(chunk) // 2], b""):
        decoder = SpanDecoder(span, window)
        decoder.feed(bad)  # no exception here
        with pytest.raises(FormatError) as fed:
            decoder.result()
        with pytest.raises(FormatError) as whole:
            decode_span(span, bad, window)
        assert str(fed.value) == str(whole.value)
    crossing = next(
        s
        for s in indexer.spans
        if any(s.compressed_start < m < s.compressed_end for m in _member_starts(blob))
    )
    chunk = blob[crossing.compressed_start : crossing.compressed_end]
    cut = next(m for m in _member_starts(blob) if crossing.compressed_start < m) + 3
    decoder = SpanDecoder(crossing, indexer.window(crossing.index))
    decoder.feed(chunk[: cut - crossing.compressed_start])  # ends inside a member header
    with pytest.raises(FormatError, match="ends inside a gzip member header"):
        decoder.result()


def _member_starts(blob: bytes) -> list[int]:
    """Where each gzip member after the first starts (by decoding them one by one)."""
    starts, at = [], 0
    while True:
        member = zlib.decompressobj(31)
        member.decompress(blob[at:])
        at = len(blob) - len(member.unused_data)
        if not member.unused_data:
            return starts
        starts.append(at)


def test_a_fed_decoder_makes_no_more_than_the_span() -> None:
    data, blob = small_blocks()
    indexer, _ = index_blob(blob, 4096)
    span = indexer.spans[2]
    chunk = blob[span.compressed_start :]  # the span's bytes and everything after them
    decoder = SpanDecoder(span, indexer.window(span.index))
    for at in range(0, len(chunk), 999):
        decoder.feed(chunk[at : at + 999])
    assert decoder.result() == data[span.uncompressed_start : span.uncompressed_end]
