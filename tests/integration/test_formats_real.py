"""Layers made by real producers, pushed to the real registry, read through seekoci.

skopeo (Debian's) re-compresses a gzip image into ``zstd`` (one frame per layer) and
``zstd:chunked`` (containers/storage's compressor: TOC, tar-split, annotations); the eStargz
and zstd:chunked layers of the test writer (tests/tocwriter.py) are pushed with their
annotations, as stargz tooling and podman push them. A counting proxy shows what one small
file costs: the manifest, the footer/TOC read and that file's chunks, never the layer.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable

import pytest
from imagebuilder import (
    OCI_LAYER,
    Layer,
    build_tar,
    file,
    image,
    layer,
    random_bytes,
    symlink,
    text_bytes,
    write_oci_layout,
)
from tocwriter import estargz, zstd_chunked

import seekoci

pytestmark = pytest.mark.integration

REPO = "formats/real"


def tree() -> list:
    """~34 MB: many small files, large incompressible ones, a symlink."""
    entries = [
        file(f"etc/conf/{i:03d}.conf", text_bytes(f"conf{i}", 300 + 37 * i)) for i in range(120)
    ]
    entries += [file(f"lib/big{i}.bin", random_bytes(f"big{i}", 4 << 20)) for i in range(8)]
    entries += [file("usr/share/doc/readme.txt", text_bytes("readme", 200_000))]
    entries += [symlink("usr/share/doc/link", "readme.txt")]
    return entries


FILES = {e.name: e.data for e in tree() if e.type == "file"}
SMALL = "etc/conf/042.conf"


def skopeo_copy(registry, src: str, dst: str, fmt: str) -> None:
    """Copy the OCI layout ``src`` (uncompressed layers: skopeo compresses them, a registry
    copy would reuse the blobs as they are) to the registry as ``dst``."""
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--dest-compress-format",
            fmt,
            f"oci:{src}:v1",
            f"docker://{registry.ref(REPO, dst)}",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def pushed(registry, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    """tag -> reference, for: zstd and zstd:chunked (skopeo, from an uncompressed OCI
    layout), and the test writer's estargz and zstd:chunked layers."""
    assert shutil.which("skopeo"), "skopeo is part of the test environment"
    for tag, fmt in (("zstd", "zstd"), ("chunked", "zstd:chunked")):
        # a tar of its own per copy: skopeo reuses a blob it once made of the same tar
        marked = image(layer(*tree(), file("marker", tag.encode()), producer="none"))
        source = write_oci_layout(tmp_path_factory.mktemp("oci"), marked, "v1")
        skopeo_copy(registry, source, tag, fmt)
    tar = build_tar(tree())
    for tag, made in (
        ("estargz", estargz(tar, chunk_size=1 << 20)),
        ("toc-chunked", zstd_chunked(tar)),
    ):
        media = "application/vnd.oci.image.layer.v1.tar+" + ("gzip" if tag == "estargz" else "zstd")
        registry.push(
            REPO,
            tag,
            image(
                Layer(
                    entries=(),
                    producer="tocwriter",
                    tar_format="pax",
                    tar=made.tar,
                    blob=made.blob,
                    media_type=media,
                    annotations=tuple(made.annotations.items()),
                )
            ),
        )
    return lambda tag: registry.ref(REPO, tag)


def read_all(img: seekoci.Image) -> None:
    for name, data in FILES.items():
        assert img.read_bytes("/" + name) == data, name
    assert img.stat("/usr/share/doc/link", follow_symlinks=False).linkname == "readme.txt"


@pytest.mark.parametrize(
    ("tag", "compression", "fmt"),
    [
        ("zstd", "zstd", "tar"),
        ("chunked", "zstd", "zstd:chunked"),
        ("estargz", "gzip", "estargz"),
        ("toc-chunked", "zstd", "zstd:chunked"),
    ],
)
def test_every_file_reads_back(pushed, tmp_path, tag: str, compression: str, fmt: str) -> None:
    img = seekoci.open_image(pushed(tag), cache_dir=tmp_path / "cache")
    (lay,) = img.layers
    assert (lay.compression, lay.format) == (compression, fmt)
    read_all(img)
    if fmt != "tar":
        assert lay.index_status == "embedded" and lay.random_access
    else:
        assert lay.random_access is False  # skopeo writes one frame: forward reads only


def test_skopeo_zstd_chunked_is_the_older_generation(pushed, tmp_path) -> None:
    """Debian's skopeo (1.9) writes the older zstd:chunked: ``io.containers.`` annotation
    keys, the 40-byte footer and no tar-split, so the TOC gives payload offsets only and
    tar-stream reads come from a pass (its tar is the stream the blob decodes to)."""
    import zstandard

    img = seekoci.open_image(pushed("chunked"), cache_dir=False)
    (lay,) = img.layers
    assert "io.containers.zstd-chunked.manifest-checksum" in lay.annotations
    assert lay.source.read_range(lay.size - 8, 8) == b"GnUlInUx"
    assert lay.open(SMALL).read() == FILES[SMALL]
    assert not lay.index().tar_offsets and lay.index_status == "embedded"
    assert "manifest-checksum" in lay.index().verification
    blob = lay.source.read_range(0, lay.size)
    tar = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True).read()
    assert lay.uncompressed_size == len(tar)
    assert lay.read_range(0, len(tar) + 1) == tar


@pytest.mark.parametrize("tag", ["chunked", "estargz", "toc-chunked"])
def test_one_small_file_costs_the_toc_and_its_chunk(
    pushed, registry, counting_proxy, tmp_path, tag: str
) -> None:
    proxy = counting_proxy(registry)
    ref = pushed(tag).replace(registry.host, proxy.host)
    img = seekoci.open_image(ref, cache_dir=tmp_path / "cache")
    (lay,) = img.layers
    assert lay.size > 32 << 20  # tens of MB
    proxy.reset()
    assert lay.open(SMALL).read() == FILES[SMALL]
    blob_bytes = proxy.bytes("blob")
    # the tail read (TOC; a 64 KiB guess for eStargz) and the file's member / frames
    assert proxy.requests("blob") == 2, proxy.summary()
    assert blob_bytes < 200_000, proxy.summary()
    proxy.reset()
    assert img.read_bytes("/usr/share/doc/readme.txt") == FILES["usr/share/doc/readme.txt"]
    assert proxy.bytes("blob") < 300_000, proxy.summary()


def test_inspect_says_which_layers_read_forward_only(pushed, tmp_path) -> None:
    def inspect(tag: str) -> dict:
        out = subprocess.run(
            ["python", "-m", "seekoci", "inspect", "--json", pushed(tag)],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        (row,) = json.loads(out)["layers"]
        return row

    zstd = inspect("zstd")
    assert zstd["format"] == "tar" and zstd["compression"] == "zstd"
    assert zstd["random_access"] in (None, False)
    chunked = inspect("chunked")
    assert chunked["format"] == "zstd:chunked" and chunked["random_access"] is True
    # once indexed, a single-frame zstd layer is known to read forward only
    img = seekoci.open_image(pushed("zstd"))
    img.layers[0].index()
    again = inspect("zstd")
    assert again["random_access"] is False and again["index"] == "cached"
    assert any("forward" in n for n in again["notes"])


def test_files_of_a_lower_and_the_top_layer_cost_the_tocs_and_their_chunks(
    registry, counting_proxy, tmp_path
) -> None:
    lower_tar = build_tar(tree())
    upper_tar = build_tar(
        [file("top/only.txt", b"top layer\n"), file("lib/extra.bin", random_bytes("x", 6 << 20))]
    )
    lower, upper = zstd_chunked(lower_tar), estargz(upper_tar, chunk_size=1 << 20)

    def as_layer(made, media: str) -> Layer:
        return Layer(
            entries=(),
            producer="tocwriter",
            tar_format="pax",
            tar=made.tar,
            blob=made.blob,
            media_type=OCI_LAYER + media,
            annotations=tuple(made.annotations.items()),
        )

    registry.push(REPO, "two", image(as_layer(lower, "+zstd"), as_layer(upper, "+gzip")))
    proxy = counting_proxy(registry)
    img = seekoci.open_image(proxy.ref(REPO, "two"), cache_dir=tmp_path / "cache")
    proxy.reset()
    assert img.read_bytes("/top/only.txt") == b"top layer\n"
    assert proxy.requests("blob") == 2, proxy.summary()  # the top TOC, the file's member
    proxy.reset()
    assert img.read_bytes("/" + SMALL) == FILES[SMALL]
    # the top layer's TOC is known now: the lower one's, and the file's frames
    assert proxy.requests("blob") == 2, proxy.summary()
    assert proxy.bytes("blob") < 200_000, proxy.summary()
    assert [lay.index_status for lay in img.layers] == ["embedded", "embedded"]


@pytest.mark.parametrize("tag", ["chunked", "estargz", "toc-chunked"])
def test_a_whole_tree_comes_in_few_requests(
    pushed, registry, counting_proxy, tmp_path, tag: str
) -> None:
    """``get /`` of a TOC image (the parallel-pull mode): every file as the tar has it, its
    chunks fetched in large ranges -- not one request per chunk (121 files here)."""
    proxy = counting_proxy(registry)
    img = seekoci.open_image(
        pushed(tag).replace(registry.host, proxy.host), cache_dir=tmp_path / "cache"
    )
    img.extract("/", tmp_path / "tree")
    found = {
        str(p.relative_to(tmp_path / "tree")): p.read_bytes()
        for p in (tmp_path / "tree").rglob("*")
        if p.is_file() and not p.is_symlink()
    }
    found.pop("marker", None)  # skopeo's copies carry a file of their own
    assert found == FILES
    assert (tmp_path / "tree/usr/share/doc/link").readlink().as_posix() == "readme.txt"
    assert proxy.requests("blob") <= 12, proxy.summary()  # the TOC, then a few large runs
