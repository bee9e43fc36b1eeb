"""Uncompressed tar layers (fixed slices), zstd frames, compression detection and the codec
table."""

from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st
from layers import CI, build_tar, compress, file, random_bytes, text_bytes, zstd_frames

from seekoci.errors import FormatError
from seekoci.formats import CODECS, codec_for, compression_of, detect_compression
from seekoci.formats.base import Span
from seekoci.formats.plain import PlainIndexer
from seekoci.formats.plain import decode_span as plain_decode
from seekoci.formats.zstd import ZstdIndexer
from seekoci.formats.zstd import decode_span as zstd_decode


def run(indexer: PlainIndexer | ZstdIndexer, blob: bytes, cuts: list[int]) -> bytes:
    points = sorted({0, len(blob), *(c % (len(blob) + 1) for c in cuts)})
    out = b"".join(p for a, b in itertools.pairwise(points) for p in indexer.feed(blob[a:b]))
    indexer.finish()
    return out


@CI
@given(
    size=st.integers(0, 20_000),
    span_size=st.integers(1, 5000),
    cuts=st.lists(st.integers(0, 20_000), max_size=8),
)
def test_plain_spans_are_fixed_slices(size: int, span_size: int, cuts: list[int]) -> None:
    blob = random_bytes(size, size)
    indexer = PlainIndexer(span_size)
    assert run(indexer, blob, cuts) == blob
    spans = indexer.spans
    expected = [(a, min(a + span_size, size)) for a in range(0, size, span_size)] or [(0, 0)]
    assert [(s.compressed_start, s.compressed_end) for s in spans] == expected
    for s in spans:
        assert (s.uncompressed_start, s.uncompressed_end) == (s.compressed_start, s.compressed_end)
        assert s.digest == hashlib.sha256(blob[s.compressed_start : s.compressed_end]).hexdigest()
        assert (
            plain_decode(s, blob[s.compressed_start : s.compressed_end], None)
            == (blob[s.compressed_start : s.compressed_end])
        )
        # a view of a larger buffer (the read pipeline's coalesced range): bytes come out
        view = memoryview(bytearray(blob))[s.compressed_start : s.compressed_end]
        out = plain_decode(s, view, None)
        assert type(out) is bytes and out == blob[s.compressed_start : s.compressed_end]
        assert indexer.window(s.index) is None


def test_a_plain_span_of_the_wrong_length_is_refused() -> None:
    span = Span(0, 0, 10, 0, 10, "00" * 32)
    with pytest.raises(FormatError):
        plain_decode(span, b"123456789", None)


@pytest.mark.parametrize("frame_size", [1000, 8192, 1 << 20])
def test_zstd_spans_are_runs_of_whole_frames(frame_size: int) -> None:
    data = text_bytes("zstd", 60_000) + random_bytes("zstd", 20_000)
    blob = zstd_frames(data, frame_size)
    indexer = ZstdIndexer(4096)
    assert run(indexer, blob, [1, 77, 5000, 33_333]) == data
    spans = indexer.spans
    assert spans[-1].compressed_end == len(blob) and spans[-1].uncompressed_end == len(data)
    for a, b in itertools.pairwise(spans):
        assert a.compressed_end == b.compressed_start
        assert a.uncompressed_end == b.uncompressed_start
        assert a.uncompressed_size > 4096
    frames_per_span = 4096 // frame_size + 1  # a span closes once it holds > 4096 bytes
    assert len(spans) == -(-len(data) // (frames_per_span * frame_size))
    for s in spans:
        chunk = blob[s.compressed_start : s.compressed_end]
        assert s.digest == hashlib.sha256(chunk).hexdigest()
        assert zstd_decode(s, chunk, None) == data[s.uncompressed_start : s.uncompressed_end]
        view = memoryview(bytearray(blob))[s.compressed_start : s.compressed_end]
        assert zstd_decode(s, view, None) == data[s.uncompressed_start : s.uncompressed_end]


def test_only_small_zstd_spans_share_their_thread_s_decompressor() -> None:
    """A decompressor keeps the buffers of the largest frame it decoded: a span larger than
    REUSE_UP_TO gets one of its own (dropped after it), smaller ones their thread's."""
    from seekoci.formats import zstd as zstd_format

    small, big = zstd_format.REUSE_UP_TO, zstd_format.REUSE_UP_TO + 1
    mine = zstd_format.decompressor_for(small)
    assert zstd_format.decompressor_for(1) is mine
    assert zstd_format.decompressor_for(big) is not mine
    assert zstd_format.decompressor_for(big) is not zstd_format.decompressor_for(big)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert pool.submit(zstd_format.decompressor_for, small).result() is not mine


def test_a_thread_reuses_its_zstd_decompressor_after_a_bad_span() -> None:
    """A thread decodes every zstd span with one decompressor: a span that fails half-way
    (a cut frame, garbage) leaves nothing behind for the next one, and threads decoding at
    once each use their own."""
    data = text_bytes("zstd-reuse", 80_000)
    blob = zstd_frames(data, 8192)
    indexer = ZstdIndexer(16_384)
    assert run(indexer, blob, []) == data
    spans = indexer.spans
    assert len(spans) >= 3
    first, second = spans[0], spans[1]
    chunk = blob[first.compressed_start : first.compressed_end]
    for bad in (chunk[: len(chunk) // 2], b"\x28\xb5\x2f\xfd" + bytes(40), chunk[:-3]):
        with pytest.raises(FormatError):
            zstd_decode(first, bad, None)
        for s in (second, first):
            whole = blob[s.compressed_start : s.compressed_end]
            assert zstd_decode(s, whole, None) == data[s.uncompressed_start : s.uncompressed_end]

    barrier = threading.Barrier(4)

    def decode_all() -> list[bytes]:
        barrier.wait()
        return [
            zstd_decode(s, blob[s.compressed_start : s.compressed_end], None)
            for _ in range(20)
            for s in spans
        ]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = [f.result() for f in [pool.submit(decode_all) for _ in range(4)]]
    expected = [data[s.uncompressed_start : s.uncompressed_end] for _ in range(20) for s in spans]
    assert all(r == expected for r in results)


@pytest.mark.parametrize(
    "blob",
    [b"", b"\x28\xb5\x2f\xfd", b"\x28\xb5\x2f\xfd\x00\x00\x00\x00\x00", b"not zstd at all"],
    ids=["empty", "magic only", "cut frame", "garbage"],
)
def test_bad_zstd_blobs(blob: bytes) -> None:
    indexer = ZstdIndexer(4096)
    with pytest.raises(FormatError):
        list(indexer.feed(blob))
        indexer.finish()


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x1f\x8b\x08\x00", "gzip"),
        (b"\x28\xb5\x2f\xfd\x00", "zstd"),
        (b"", "none"),
        (bytes(1024), "none"),
        (build_tar([file("a", b"x")]), "none"),
        (build_tar([file("a", b"x")], "gnu"), "none"),
        (compress(build_tar([file("a", b"x")]), "python"), "gzip"),
    ],
)
def test_detect_compression(head: bytes, expected: str) -> None:
    assert detect_compression(head) == expected


def test_a_zstd_blob_may_start_with_a_skippable_frame() -> None:
    # RFC 8878 3.1.2: magic 0x184D2A5?, then a 4-byte length; decoders skip it
    skippable = (0x184D2A50).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"hello"
    blob = skippable + zstd_frames(b"tar bytes", 4096)
    assert detect_compression(blob) == "zstd"


@pytest.mark.parametrize("head", [b"PK\x03\x04", b"BZh91AY", b"\xfd7zXZ\x00" + bytes(600)])
def test_detect_compression_refuses_other_formats(head: bytes) -> None:
    with pytest.raises(FormatError):
        detect_compression(head)


@pytest.mark.parametrize(
    ("media_type", "expected"),
    [
        ("application/vnd.oci.image.layer.v1.tar+gzip", "gzip"),
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", "gzip"),
        ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "gzip"),
        ("application/vnd.oci.image.layer.v1.tar", "none"),
        ("application/vnd.docker.image.rootfs.diff.tar", "none"),
        ("application/vnd.oci.image.layer.v1.tar+zstd", "zstd"),
        ("application/octet-stream", None),
    ],
)
def test_compression_of_media_types(media_type: str, expected: str | None) -> None:
    assert compression_of(media_type) == expected


def test_an_unknown_codec_is_a_format_error_naming_where() -> None:
    with pytest.raises(FormatError, match="layer X"):
        codec_for("bzip2", where="layer X")
    assert {"gzip", "none", "zstd"} <= set(CODECS)


def test_zstd_decode_run_decodes_the_frames_of_one_buffer_in_one_call() -> None:
    """``decode_run``: one frame per span (a zstd:chunked layer's chunks), read in place
    from a buffer that holds the blob from ``base`` on, each span's bytes a view."""
    from seekoci.formats import zstd as zstd_format

    data = text_bytes("zstd-run", 60_000)
    blob = zstd_frames(data, 4096)
    indexer = ZstdIndexer(1)  # a span at every frame boundary: one frame each
    assert run(indexer, blob, []) == data
    spans = indexer.spans[2:9]
    base = spans[0].compressed_start - 7  # the buffer starts before the first span
    for buffer in (blob[base:], bytearray(blob[base : spans[-1].compressed_end])):
        views = zstd_format.decode_run(spans, buffer, base)
        assert views is not None
        assert [bytes(v) for v in views] == [
            data[s.uncompressed_start : s.uncompressed_end] for s in spans
        ]
    # a span of two frames decodes short: the batch refuses, each span is decoded alone
    two = ZstdIndexer(6000)
    assert run(two, blob, []) == data
    assert two.spans[0].compressed_size > len(zstd_frames(data[:4096], 4096))
    with pytest.raises(FormatError, match="spans 0-1"):
        zstd_format.decode_run(two.spans[:2], blob, 0)
    # a damaged frame: a FormatError, and the thread's decompressor still decodes after it
    # (damage zstd does not notice, without checksums, is for the caller's digests)
    bad = bytearray(blob)
    bad[spans[3].compressed_start] ^= 0xFF  # its magic number
    with pytest.raises(FormatError):
        zstd_format.decode_run(spans, bytes(bad), 0)
    views = zstd_format.decode_run(spans, blob, 0)
    assert views is not None and bytes(views[3]) == data[spans[3].uncompressed_start :][:4096]
    # spans the batch call is not for: none of them is decoded by it
    big = Span(0, 0, 10, 0, zstd_format.REUSE_UP_TO + 1, "")
    assert zstd_format.decode_run([spans[0], big], blob, 0) is None
    assert zstd_format.decode_run([], blob, 0) is None
