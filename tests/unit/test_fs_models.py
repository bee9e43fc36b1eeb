"""fsspec filesystem, safetensors headers and notebook reprs over the built-in sample image."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pytest

import seekoci
from seekoci._sample import CONFIG_TEXT, make_sample_image
from seekoci.models import safetensors_metadata


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_sample_image(str(tmp_path_factory.mktemp("sample") / "image"))


def test_fsspec_filesystem_reads_the_merged_view(sample: str) -> None:
    fs = fsspec.filesystem("seekoci", ref=sample, cache_dir=False, platform="linux/amd64")
    assert fs.ls("/etc", detail=False) == ["/etc/app", "/etc/os-release"]
    assert fs.cat_file("/etc/app/config.yaml") == CONFIG_TEXT
    assert fs.cat_file("seekoci:///etc/app/config.yaml", start=2, end=-1) == CONFIG_TEXT[2:-1]
    assert fs.exists("/etc/os-release") and not fs.exists("/etc/nope")
    assert fs.info("/etc/app")["type"] == "directory"
    assert fs.info("/etc/app/config.yaml")["size"] == len(CONFIG_TEXT)
    with fs.open("/etc/app/config.yaml", "rb") as f:
        assert f.read() == CONFIG_TEXT
    assert "/usr/share/doc/README" in fs.find("/usr/share")
    assert list(fs.walk("/etc")) == [
        ("/etc", ["app"], ["os-release"]),
        ("/etc/app", [], ["config.yaml"]),
    ]
    with pytest.raises(NotImplementedError):
        fs.open("/etc/app/config.yaml", "wb")


def test_safetensors_header_is_read_without_the_weights(sample: str) -> None:
    img = seekoci.open_image(sample, cache_dir=False, platform="linux/amd64")
    img.build_index()
    before = sum(layer.source.bytes_read for layer in img.layers)  # type: ignore[attr-defined]
    meta = safetensors_metadata(img, "/opt/app/model.safetensors")
    assert meta["weight"] == {"dtype": "F32", "shape": [1024, 1024], "data_offsets": [0, 4 << 20]}
    fetched = sum(layer.source.bytes_read for layer in img.layers) - before  # type: ignore[attr-defined]
    assert 0 < fetched <= 2 * seekoci.DEFAULT_SPAN_SIZE  # about one span, not 4 MB of weights


def test_safetensors_rejects_a_file_that_is_not_one(sample: str) -> None:
    img = seekoci.open_image(sample, cache_dir=False, platform="linux/amd64")
    with pytest.raises(seekoci.FormatError, match=r"config\.yaml"):
        safetensors_metadata(img, "/etc/app/config.yaml")


def test_reprs_are_html_tables(sample: str, tmp_path: Path) -> None:
    img = seekoci.open_image(sample, cache_dir=tmp_path, platform="linux/amd64")
    html = img._repr_html_()
    assert html.startswith("<table>") and html.count("<tr>") == 1 + len(img.layers)
    assert img.layers[0].digest in html and "none" in html
    img.build_index()
    assert "built" in img.layers[0]._repr_html_()
    assert json.loads(json.dumps(img.config))["os"] == "linux"
