"""The Layer API (one layer alone, raw tar view) and seekoci.open_layer."""

from __future__ import annotations

import posixpath
from pathlib import Path

import pytest
from imagebuilder import (
    Layer,
    dir,
    file,
    hardlink,
    image,
    layer,
    opaque,
    random_bytes,
    symlink,
    text_bytes,
    whiteout,
)

import seekoci

pytestmark = pytest.mark.integration

REPO = "layers/api"

LOWER = layer(
    dir("data"),
    file("data/one.txt", b"one\n"),
    file("data/two.bin", text_bytes("layer-two", 400_000)),
    file("data/gone.txt", b"gone\n"),
    dir("cfg"),
    file("cfg/a", b"a\n"),
    producer="python",
)
UPPER_LAYERS = [
    layer(
        whiteout("data/gone.txt"),
        opaque("cfg"),
        file("cfg/b", b"b\n"),
        file("data/blob.bin", random_bytes("layer-none", 300_000)),
        hardlink("data/hard", "data/blob.bin"),
        symlink("data/link", "one.txt"),
        producer="none",
    ),
    layer(file("mm/big.txt", text_bytes("layer-mm", 700_000)), producer="multi-member", members=4),
    layer(file("fname/x", b"fname layer\n"), producer="fname"),
    layer(file("zst/y.bin", text_bytes("layer-zstd", 200_000)), producer="zstd"),
]
LAYERS = [LOWER, *UPPER_LAYERS]


@pytest.fixture(scope="module")
def img(registry, tmp_path_factory: pytest.TempPathFactory):
    registry.push(REPO, "v1", image(*LAYERS))
    return seekoci.open_image(
        registry.ref(REPO, "v1"), cache_dir=tmp_path_factory.mktemp("layers-cache")
    )


@pytest.mark.parametrize("position", range(len(LAYERS)))
def test_layer_descriptors(img, position: int) -> None:
    got, want = img.layers[position], LAYERS[position]
    assert got.digest == want.digest
    assert got.media_type == want.media_type
    assert got.size == want.size
    assert got.compression == want.compression
    assert got.format == "tar"
    assert got.uncompressed_size == len(want.tar)


@pytest.mark.parametrize("position", range(len(LAYERS)))
def test_read_range_returns_tar_bytes(img, position: int) -> None:
    got, want = img.layers[position], LAYERS[position]
    tar = want.tar
    for offset, length in ((0, 512), (512, 1000), (len(tar) // 2, 70_000), (len(tar) - 100, 100)):
        assert got.read_range(offset, length) == tar[offset : offset + length], (offset, length)


def test_read_range_at_a_file_data_offset(img) -> None:
    offsets = LOWER.tar_offsets()
    data = LOWER.entry("data/two.bin").data
    start = offsets["data/two.bin"]
    assert img.layers[0].read_range(start + 1000, 5000) == data[1000:6000]


def test_layer_listing_shows_raw_whiteouts(img) -> None:
    upper = img.layers[1]
    assert upper.listdir("/data") == sorted([".wh.gone.txt", "blob.bin", "hard", "link"])
    assert upper.listdir("/cfg") == [".wh..wh..opq", "b"]
    # The lower layer alone still has what the upper one deletes.
    assert img.layers[0].listdir("/data") == ["gone.txt", "one.txt", "two.bin"]
    assert img.layers[0].listdir("/cfg") == ["a"]
    walked = {d: (dn, fn) for d, dn, fn in upper.walk("/")}
    assert walked["/"] == (["cfg", "data"], [])
    assert walked["/cfg"] == ([], [".wh..wh..opq", "b"])


def test_layer_stat_and_open(img) -> None:
    upper = img.layers[1]
    hard = upper.stat("/data/hard")
    assert hard.type == "hardlink"
    assert hard.linkname.lstrip("/") == "data/blob.bin"
    link = upper.stat("/data/link")
    assert (link.type, link.linkname) == ("symlink", "one.txt")
    assert upper.stat("/data/blob.bin").layer == UPPER_LAYERS[0].digest
    with upper.open("/data/blob.bin") as f:
        assert f.read() == UPPER_LAYERS[0].entry("data/blob.bin").data
    with img.layers[2].open("/mm/big.txt") as f:
        f.seek(500_000)
        assert f.read(1000) == UPPER_LAYERS[1].entry("mm/big.txt").data[500_000:501_000]
    with pytest.raises(FileNotFoundError):
        upper.stat("/data/one.txt")  # only in the lower layer


def check_standalone(lay, want: Layer, path: str) -> None:
    assert lay.compression == want.compression
    assert lay.format == "tar"
    assert lay.uncompressed_size == len(want.tar)
    assert lay.read_range(0, 1024) == want.tar[:1024]
    parent = posixpath.dirname(path)
    assert lay.listdir("/" + parent) == sorted(
        posixpath.basename(e.name) for e in want.entries if posixpath.dirname(e.name) == parent
    )
    with lay.open("/" + path) as f:
        assert f.read() == want.entry(path).data


@pytest.mark.parametrize(
    ("position", "path"),
    [
        (0, "data/two.bin"),
        (1, "data/blob.bin"),
        (2, "mm/big.txt"),
        (3, "fname/x"),
        (4, "zst/y.bin"),
    ],
)
def test_open_layer_from_a_local_file(tmp_path: Path, position: int, path: str) -> None:
    want = LAYERS[position]
    blob = tmp_path / "blob"
    blob.write_bytes(want.blob)
    lay = seekoci.open_layer(blob, cache_dir=tmp_path / "cache")
    check_standalone(lay, want, path)
    as_str = seekoci.open_layer(str(blob), media_type=want.media_type, cache_dir=False)
    assert as_str.read_range(100, 300) == want.tar[100:400]


def test_open_layer_from_an_http_url(img, registry, tmp_path: Path) -> None:
    want = UPPER_LAYERS[1]
    url = registry.blob_url(REPO, want.digest)
    assert url.startswith("http://127.0.0.1:")
    lay = seekoci.open_layer(url, cache_dir=tmp_path / "cache")
    check_standalone(lay, want, "mm/big.txt")
    with_digest = seekoci.open_layer(
        url, media_type=want.media_type, digest=want.digest, cache_dir=False
    )
    assert with_digest.digest == want.digest
    assert with_digest.read_range(10_000, 100) == want.tar[10_000:10_100]
