"""Integrity: bytes that do not match their digest are never returned, and never saved."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from layers import (
    CountingSource,
    FlakySource,
    build_tar,
    compress_layer,
    file,
    random_bytes,
    sha256_digest,
    tar_members,
    text_bytes,
)

import seekoci
from seekoci.cache import MemoryCache
from seekoci.source import BytesSource

SPAN = 16384
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


@functools.cache
def sample() -> tuple[bytes, bytes, dict[str, bytes]]:
    # random contents: every file is its own run of spans
    files = {f"f{i}": random_bytes(f"integrity-{i}", 40_000) for i in range(6)}
    tar = build_tar([file(name, data) for name, data in files.items()])
    return tar, compress_layer(tar, "python"), files


def all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.mark.parametrize("look_first", [False, True])
def test_a_wrong_layer_digest_fails_and_saves_nothing(tmp_path: Path, look_first: bool) -> None:
    _, blob, _ = sample()
    path = tmp_path / "blob"
    path.write_bytes(blob)
    cache = tmp_path / "cache"
    wrong = sha256_digest(blob + b"!")
    layer = seekoci.open_layer(path, digest=wrong, cache_dir=cache, span_size=SPAN)
    if look_first:
        try:  # a lookup whose pass has read the whole blob already checks its digest
            layer.find("f0")
        except seekoci.IntegrityError as exc:
            assert wrong in str(exc)
    with pytest.raises(seekoci.IntegrityError) as info:
        layer.index()
    assert wrong in str(info.value)
    assert not any(p.is_relative_to(cache / "indexes") for p in all_files(cache))
    with pytest.raises(seekoci.IntegrityError):  # and again: no half-built state is kept
        layer.index()
    assert layer.index_status != "built"


def test_a_flipped_byte_in_a_cached_layer_is_an_integrity_error(tmp_path: Path) -> None:
    tar, blob, files = sample()
    path = tmp_path / "blob"
    path.write_bytes(blob)
    digest = sha256_digest(blob)
    cache = tmp_path / "cache"
    seekoci.open_layer(path, digest=digest, cache_dir=cache, span_size=SPAN).index()

    layer = seekoci.open_layer(path, digest=digest, cache_dir=cache, span_size=SPAN)
    assert layer.index_status == "cached"
    offsets = {name: data for name, _, data in tar_members(tar)}
    target = offsets["f3"] + 20_000
    span = next(
        s for s in layer.index().spans if s.uncompressed_start <= target < s.uncompressed_end
    )
    damaged = bytearray(blob)
    damaged[(span.compressed_start + span.compressed_end) // 2] ^= 0x01
    path.write_bytes(damaged)

    with pytest.raises(seekoci.IntegrityError) as info, layer.open("f3") as f:
        f.seek(20_000)
        f.read(10)
    assert digest in str(info.value)
    with pytest.raises(seekoci.IntegrityError):
        layer.read_range(target, 1)
    # files in untouched spans still read
    assert layer.open("f0").read() == files["f0"]


def test_a_bad_read_is_fetched_again() -> None:
    _, blob, files = sample()
    source = FlakySource(blob, bad_reads=0)
    layer = seekoci.Layer(source, cache=MemoryCache(), media_type=GZIP, span_size=SPAN)
    layer.index()
    # without a digest the blob's tail is read once, for an embedded TOC: nothing else
    assert source.calls == [(len(blob) - 72, 72)]
    source.calls.clear()
    source.bad_reads = 1
    with layer.open("f2") as f:
        f.seek(100)
        assert f.read(50) == files["f2"][100:150]
    first, second = source.calls[:2]
    assert first == second  # the same span, fetched twice
    assert source.bad_reads == 0


def test_bytes_that_stay_bad_raise_after_one_refetch() -> None:
    _, blob, _ = sample()
    source = FlakySource(blob, bad_reads=0)
    layer = seekoci.Layer(source, cache=MemoryCache(), media_type=GZIP, span_size=SPAN)
    layer.index()
    source.calls.clear()
    source.bad_reads = 1000
    with pytest.raises(seekoci.IntegrityError):
        layer.open("f1").read(10)
    assert len(source.calls) == 2
    assert len(set(source.calls)) == 1


def test_a_short_read_is_an_integrity_error_too() -> None:
    _, blob, _ = sample()

    class ShortSource(CountingSource):
        def read_range(self, offset: int, length: int) -> bytes:
            return super().read_range(offset, length)[:-1]

    source = ShortSource(blob)
    layer = seekoci.Layer(source, cache=MemoryCache(), media_type=GZIP, span_size=SPAN)
    layer.index()
    with pytest.raises(seekoci.IntegrityError):
        layer.open("f4").read(10)


@pytest.mark.parametrize("delta", [-1, 1])
def test_a_blob_of_another_size_than_declared(delta: int) -> None:
    _, blob, _ = sample()
    layer = seekoci.Layer(
        BytesSource(blob), cache=MemoryCache(), size=len(blob) + delta, span_size=SPAN
    )
    with pytest.raises(seekoci.IntegrityError):
        layer.index()


def test_integrity_errors_are_seekoci_errors() -> None:
    assert issubclass(seekoci.IntegrityError, seekoci.SeekociError)
    assert not issubclass(seekoci.IntegrityError, ValueError)


def test_a_damaged_streamed_span_is_an_integrity_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A span too large to hold (one zstd frame) is decoded while it streams in; bytes that
    do not match the span digest are still an IntegrityError, whatever the decoder makes of
    them on the way (they are not a corrupt layer: the index was built from the real one)."""
    import seekoci.spans

    monkeypatch.setattr(seekoci.spans, "LARGE_SPAN", 1000)
    # compressible text: zstd's compressed blocks, which its decoder can find corrupt
    tar = build_tar([file("a", b"first"), file("b", text_bytes("s", 50_000)), file("c", b"end")])
    blob = compress_layer(tar, "zstd")
    path = tmp_path / "blob"
    path.write_bytes(blob)
    digest = sha256_digest(blob)
    cache = tmp_path / "cache"
    seekoci.open_layer(path, digest=digest, cache_dir=cache).index()
    for at in range(20, len(blob) - 4, 97):
        damaged = bytearray(blob)
        damaged[at] ^= 0x10
        path.write_bytes(damaged)
        layer = seekoci.open_layer(path, digest=digest, cache_dir=cache)
        assert layer.index_status == "cached"
        with pytest.raises(seekoci.IntegrityError):
            layer.open("c").read()
