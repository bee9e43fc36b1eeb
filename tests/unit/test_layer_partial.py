"""Partial indexing: a file near the start of a layer costs only the bytes up to it; the rest
of the pass resumes later, and only a complete, verified index is saved and reused."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from layers import build_tar, compress_layer, file, random_bytes, sha256_digest, tar_members

import seekoci
from seekoci.source import FileSource

SPAN = 65536
BIG = 6 << 20


@functools.cache
def blob_parts() -> tuple[bytes, bytes, dict[str, bytes]]:
    files = {
        "first": b"small and early\n",
        "big": random_bytes("big", BIG),
        "last": b"small and late\n",
    }
    tar = build_tar([file(name, data) for name, data in files.items()])
    return tar, compress_layer(tar, "python"), files


@pytest.fixture
def blob_path(tmp_path: Path) -> Path:
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(blob_parts()[1])
    return path


def index_files(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "indexes").rglob("*") if p.is_file())


def covering_bytes(layer: seekoci.Layer, start: int, end: int) -> int:
    """Compressed bytes of the spans that hold uncompressed ``[start, end)``."""
    return sum(
        s.compressed_size
        for s in layer.index().spans
        if s.uncompressed_start < end and s.uncompressed_end > start
    )


def test_a_small_first_file_reads_only_a_prefix(blob_path: Path, tmp_path: Path) -> None:
    tar, blob, files = blob_parts()
    cache = tmp_path / "cache"
    digest = sha256_digest(blob)
    layer = seekoci.open_layer(blob_path, digest=digest, cache_dir=cache, span_size=SPAN)
    source = layer.source
    assert isinstance(source, FileSource)

    entry = layer.find("first")
    assert entry is not None and entry.size == len(files["first"])
    assert layer.index_status == "partial"
    assert layer.open("/first").read() == files["first"]
    prefix_read = source.bytes_read
    assert 0 < prefix_read < len(blob) / 2
    assert index_files(cache) == []  # nothing is saved before the whole blob is verified

    index = layer.index()
    assert layer.index_status == "built"
    assert index.uncompressed_size == len(tar)
    # the pass resumed where it stopped: about one read of the blob in all
    assert source.bytes_read < len(blob) + prefix_read / 2
    saved = index_files(cache)
    assert [p.parent for p in saved] == [cache / "indexes" / "sha256"]
    assert saved[0].name.startswith(digest.removeprefix("sha256:"))


def test_a_second_layer_loads_the_index_and_reads_about_one_span(
    blob_path: Path, tmp_path: Path
) -> None:
    tar, blob, files = blob_parts()
    cache = tmp_path / "cache"
    digest = sha256_digest(blob)
    seekoci.open_layer(blob_path, digest=digest, cache_dir=cache, span_size=SPAN).index()

    layer = seekoci.open_layer(blob_path, digest=digest, cache_dir=cache, span_size=SPAN)
    assert layer.index_status == "cached"
    source = layer.source
    assert isinstance(source, FileSource)
    offsets = {name: data for name, _, data in tar_members(tar)}

    assert layer.open("last").read() == files["last"]
    start = offsets["last"]
    expected = covering_bytes(layer, start, start + len(files["last"]))
    assert source.bytes_read <= expected < 3 * SPAN

    before = source.bytes_read
    middle = BIG // 2
    with layer.open("big") as f:
        f.seek(middle)
        assert f.read(100) == files["big"][middle : middle + 100]
    start = offsets["big"] + middle
    assert source.bytes_read - before <= covering_bytes(layer, start, start + 100) < 3 * SPAN


def test_looking_up_a_missing_name_indexes_the_whole_layer(blob_path: Path) -> None:
    layer = seekoci.open_layer(blob_path, cache_dir=False, span_size=SPAN)
    assert layer.find("no/such/file") is None
    assert layer.complete()
    assert layer.index_status == "built"
    assert [e.name for e in layer.entries()] == ["first", "big", "last"]


def test_read_range_during_a_partial_pass(blob_path: Path) -> None:
    tar, _, _ = blob_parts()
    layer = seekoci.open_layer(blob_path, cache_dir=False, span_size=SPAN)
    assert layer.read_range(0, 2000) == tar[:2000]
    assert layer.index_status == "partial"
    assert layer.read_range(BIG // 3, 5000) == tar[BIG // 3 : BIG // 3 + 5000]
    assert layer.read_range(len(tar) - 10, 100) == tar[-10:]
    assert layer.index_status == "built"


def test_without_a_digest_nothing_is_saved(blob_path: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    layer = seekoci.open_layer(blob_path, cache_dir=cache, span_size=SPAN)
    layer.index()
    assert index_files(cache) == []
    again = seekoci.open_layer(blob_path, cache_dir=cache, span_size=SPAN)
    assert again.index_status == "none"


def test_a_memory_cache_keeps_nothing_on_disk(
    blob_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("SEEKOCI_CACHE_DIR", str(home / "seekoci"))
    blob = blob_parts()[1]
    layer = seekoci.open_layer(
        blob_path, digest=sha256_digest(blob), cache_dir=False, span_size=SPAN
    )
    layer.index()
    assert layer.open("last").read() == blob_parts()[2]["last"]
    assert not home.exists()
