"""Plain-file layers without a registry: which descriptors are files, their names, reads."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import seekoci
from seekoci.artifact import WHOLE_BLOB_LIMIT, FileLayer, file_name, is_file_layer

TITLE = "org.opencontainers.image.title"


@pytest.mark.parametrize(
    ("media_type", "annotations", "expected"),
    [
        ("application/vnd.oci.image.layer.v1.tar+gzip", {}, False),
        ("application/vnd.oci.image.layer.v1.tar", {}, False),
        ("application/vnd.oci.image.layer.v1.tar+zstd", {}, False),
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", {}, False),
        ("application/vnd.cncf.model.weight.v1.tar+gzip", {}, False),
        ("application/vnd.cncf.helm.chart.content.v1.tar+gzip", {}, False),
        ("application/x-tar", {}, False),
        ("", {}, False),  # no media type: sniffed from the bytes, as before
        ("application/vnd.docker.ai.gguf.v3", {}, True),
        ("application/vnd.cncf.model.weight.v1.raw", {}, True),
        ("application/vnd.example.avatar", {}, True),  # "tar" inside a word is no tar
        ("application/json", {}, True),
        # ORAS's default media type for a file, with its title: a file
        ("application/vnd.oci.image.layer.v1.tar", {TITLE: "model.gguf"}, True),
        # ORAS's directory push: a tar+gzip to unpack under the title
        (
            "application/vnd.oci.image.layer.v1.tar+gzip",
            {TITLE: "models", "io.deis.oras.content.unpack": "true"},
            False,
        ),
    ],
)
def test_which_layers_are_files(
    media_type: str, annotations: dict[str, str], expected: bool
) -> None:
    assert is_file_layer(media_type, annotations) is expected


def test_names_never_climb_out() -> None:
    assert file_name("sha256:ab", {TITLE: "model.gguf"}) == "model.gguf"
    assert file_name("sha256:ab", {TITLE: "../../etc/passwd"}) == "etc/passwd"
    assert file_name("sha256:ab", {TITLE: "/abs/./x"}) == "abs/x"
    assert file_name("sha256:ab", {TITLE: ".."}) == "sha256:ab"
    assert file_name("sha256:ab", {"org.cncf.model.filepath": "w/m.safetensors"}) == (
        "w/m.safetensors"
    )


def test_open_layer_of_a_raw_file(tmp_path: Path) -> None:
    data = bytes(range(256)) * 20
    path = tmp_path / "model.gguf"
    path.write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    layer = seekoci.open_layer(
        path, media_type="application/vnd.docker.ai.gguf.v3", digest=digest, cache_dir=False
    )
    assert isinstance(layer, FileLayer)
    assert (layer.format, layer.compression, layer.uncompressed_size) == ("file", "none", len(data))
    name = digest
    assert layer.listdir("/") == [name]
    assert layer.stat("/" + name).size == len(data)
    assert layer.read_range(10, 5) == data[10:15]
    with layer.open("/" + name) as f:
        f.seek(-3, 2)
        assert f.read() == data[-3:]
    with pytest.raises(FileNotFoundError):
        layer.open("/other")


def test_a_small_blob_that_does_not_match_its_digest(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"what the registry sent\n")
    layer = seekoci.open_layer(
        path, media_type="text/plain", digest="sha256:" + "0" * 64, cache_dir=False
    )
    assert layer.size <= WHOLE_BLOB_LIMIT
    with pytest.raises(seekoci.IntegrityError, match="does not match"):
        layer.read_range(0, 4)
