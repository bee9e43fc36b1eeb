"""The zstd seekable format (shared vectors from the reference implementation) and plain
zstd edge cases: seek tables, XXH64 checks, skippable frames that lie."""

from __future__ import annotations

import random
import struct

import pytest
import zstandard
from layers import (
    VECTORS,
    CountingSource,
    build_tar,
    compress_layer,
    file,
    random_bytes,
    text_bytes,
)
from tocwriter import seekable_zstd

import seekoci
from seekoci.cache import MemoryCache
from seekoci.formats.seekable import SeekTable, is_seekable

SEEKABLE = VECTORS / "zstd-seekable"
INPUT = (SEEKABLE / "seekable-input.bin").read_bytes()


def table_of(blob: bytes) -> tuple[SeekTable, CountingSource]:
    source = CountingSource(blob)
    return SeekTable.read(source.read_range, len(blob), name="vector"), source


@pytest.mark.parametrize("name", ["seekable-checksum-64k.zst", "seekable-nochecksum-64k.zst"])
def test_any_range_is_served_from_the_frames_that_hold_it(name: str) -> None:
    blob = (SEEKABLE / name).read_bytes()
    table, source = table_of(blob)
    assert is_seekable(blob[-9:])
    assert len(table.frames) == 5 and table.uncompressed_size == len(INPUT)
    assert (table.frames[0].checksum is not None) == ("nochecksum" not in name)
    rnd = random.Random(name)
    for _ in range(30):
        offset, length = rnd.randrange(len(INPUT)), rnd.randrange(150_000)
        source.calls.clear()
        assert (
            table.read_range(source.read_range, offset, length) == INPUT[offset : offset + length]
        )
        # one read, of only the frames that hold the range
        ((start, size),) = source.calls
        first = next(f for f in table.frames if f.uncompressed_end > offset)
        last = next(f for f in reversed(table.frames) if f.uncompressed_start < offset + length)
        assert (start, start + size) == (first.compressed_start, last.compressed_end)
    assert table.read_range(source.read_range, len(INPUT), 10) == b""


def test_the_empty_vector() -> None:
    blob = (SEEKABLE / "seekable-empty.zst").read_bytes()
    table, source = table_of(blob)
    assert table.uncompressed_size == 0
    assert table.read_range(source.read_range, 0, 10) == b""


@pytest.mark.parametrize(
    "name", ["seekable-neg-frame-not-in-table.zst", "seekable-neg-zero-frames-desc03.zst"]
)
def test_the_invalid_vectors_are_format_errors(name: str) -> None:
    blob = (SEEKABLE / name).read_bytes()
    with pytest.raises(seekoci.FormatError):
        table_of(blob)


def test_a_checksum_mismatch_is_an_integrity_error() -> None:
    blob = bytearray((SEEKABLE / "seekable-checksum-64k.zst").read_bytes())
    # the table's checksum of frame 2, wrong: the frame itself is fine
    entry = len(blob) - 9 - 12 * (5 - 2)
    blob[entry + 8] ^= 0x01
    bad, source = table_of(bytes(blob))
    frame = bad.frames[2]
    with pytest.raises(seekoci.IntegrityError, match="XXH64"):
        bad.read_range(source.read_range, frame.uncompressed_start, 10)
    assert bad.read_range(source.read_range, 0, 100) == INPUT[:100]


def test_a_table_that_does_not_cover_the_blob() -> None:
    blob = bytearray((SEEKABLE / "seekable-nochecksum-64k.zst").read_bytes())
    entry = len(blob) - 9 - 8 * 5
    struct.pack_into("<I", blob, entry, struct.unpack_from("<I", blob, entry)[0] + 1)
    with pytest.raises(seekoci.FormatError, match="compressed bytes"):
        table_of(bytes(blob))


# --------------------------------------------------------------------------- as layers


def layer(blob: bytes) -> seekoci.Layer:
    return seekoci.Layer(
        CountingSource(blob),
        cache=MemoryCache(),
        media_type="application/vnd.oci.image.layer.v1.tar+zstd",
        span_size=16 << 10,
    )


def sample_tar() -> bytes:
    return build_tar(
        [file(f"d/f{i}", text_bytes(i, 7000 + 500 * i)) for i in range(20)]
        + [file("big", text_bytes("big", 120_000))]
    )


def test_random_access_is_known_per_kind_of_zstd_layer() -> None:
    tar = sample_tar()
    single = layer(compress_layer(tar, "zstd"))
    assert single.random_access is False  # one frame: forward reads only
    assert len(single.index().spans) == 1
    many = layer(compress_layer(tar, "zstd-frames"))
    assert many.random_access is True
    seek = layer(seekable_zstd(tar, frame_size=16 << 10))
    assert seek.random_access is True and seek.index_status == "none"  # the table says so
    assert seek.open("big").read() == text_bytes("big", 120_000)
    assert seek.read_range(0, len(tar) + 1) == tar
    assert len(seek.index().spans) > 1
    gz = seekoci.Layer(CountingSource(compress_layer(tar, "gzip")), cache=MemoryCache())
    assert gz.random_access is True


def test_a_skippable_frame_that_lies_about_its_size() -> None:
    tar = sample_tar()
    blob = compress_layer(tar, "zstd") + struct.pack("<II", 0x184D2A50, 1 << 20) + b"short"
    with pytest.raises(seekoci.FormatError, match="truncated"):
        layer(blob).index()


def test_a_skippable_frame_in_the_middle_is_skipped() -> None:
    tar = sample_tar()
    half = len(tar) // 2
    cctx = zstandard.ZstdCompressor()
    blob = (
        cctx.compress(tar[:half])
        + struct.pack("<II", 0x184D2A53, 7)
        + b"ignored"
        + cctx.compress(tar[half:])
    )
    lay = layer(blob)
    assert lay.read_range(0, len(tar)) == tar
    assert lay.random_access is True


def test_a_single_frame_layer_is_read_forward_and_stops_once_the_file_is_served() -> None:
    tar = build_tar(
        [file("first.txt", text_bytes("first", 20_000))]
        + [file(f"bulk/{i}", random_bytes(f"bulk{i}", 400_000)) for i in range(10)]
        + [file("last.txt", text_bytes("last", 5_000))]
    )
    blob = compress_layer(tar, "zstd")
    lay = layer(blob)
    source = lay.source
    assert lay.open("first.txt").read() == text_bytes("first", 20_000)
    assert source.streamed < len(blob) // 3  # type: ignore[attr-defined]
    # nothing read by range but the tail (72 bytes: no embedded TOC there)
    assert lay.index_status == "partial" and source.bytes_read <= 72  # type: ignore[attr-defined]
    # the table of contents learned so far stays: the next file continues the same pass
    assert lay.open("bulk/3").read() == random_bytes("bulk3", 400_000)
    assert source.streamed < len(blob) * 2 // 3  # type: ignore[attr-defined]
    assert lay.open("last.txt").read() == text_bytes("last", 5_000)
    assert source.streamed <= len(blob) + (1 << 16)  # type: ignore[attr-defined]
    assert lay.read_range(0, len(tar)) == tar
    assert lay.random_access is False


def test_the_last_file_of_a_single_frame_is_served_by_the_pass_that_found_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the pass reads the whole blob to reach the last file and completes the index; the
    # file's bytes come from what it decoded last, not from decoding the one span again
    monkeypatch.setattr("seekoci.build.FORWARD_WINDOW", 512 << 10)  # less than the tar
    tar = build_tar(
        [file(f"bulk/{i}", random_bytes(f"bulk{i}", 400_000)) for i in range(6)]
        + [file("last.txt", text_bytes("last", 5_000))]
    )
    blob = compress_layer(tar, "zstd")
    lay = layer(blob)
    source = lay.source
    assert lay.open("last.txt").read() == text_bytes("last", 5_000)
    assert lay.complete()
    assert source.streamed <= len(blob) + (1 << 16)  # type: ignore[attr-defined]
    assert source.bytes_read <= 72  # type: ignore[attr-defined]  # the tail probe only
    # bytes further back than the pass kept come from decoding the span again, and the
    # kept end is let go (a reader that moved on)
    assert lay.read_range(0, 1000) == tar[:1000]
    assert lay._pass_end is None
