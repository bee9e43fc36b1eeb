"""Pickling without a registry: what a pickle carries, what it refuses, what it never shows."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

import seekoci
from seekoci._reopen import ImageOrigin, LayerOrigin, Secret
from seekoci._sample import make_sample_image
from seekoci.image import Image
from seekoci.source import BytesSource


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_sample_image(str(tmp_path_factory.mktemp("sample") / "image"))


def test_secrets_pickle_but_never_show() -> None:
    secret = Secret(("alice", "hunter2"))
    assert "hunter2" not in repr(secret)
    assert pickle.loads(pickle.dumps(secret)).value == ("alice", "hunter2")
    origin = ImageOrigin(
        pinned="r.example/a@sha256:" + "0" * 64,
        reference="r.example/a:1",
        digest="sha256:" + "0" * 64,
        auth=secret,
    )
    assert "hunter2" not in repr(origin) and "alice" not in repr(origin)
    layer_origin = LayerOrigin(digest=None, source=Secret("https://u:pw@host/blob"))
    assert "pw@" not in repr(layer_origin)


def test_a_layout_image_pickles_pinned_with_its_options(sample: str, tmp_path: Path) -> None:
    img = seekoci.open_image(sample, platform="linux/amd64", cache_dir=tmp_path / "c")
    assert img.origin is not None
    assert img.origin.pinned.endswith("@" + img.digest)
    assert img.origin.options["cache_dir"] == str(tmp_path / "c")  # a path, as a string
    assert img.origin.options["platform"] is None  # the pinned manifest is that platform's
    copy = pickle.loads(pickle.dumps(img))
    assert (copy.reference, copy.platform, copy.digest) == (img.reference, img.platform, img.digest)
    assert copy.read_bytes("/etc/app/config.yaml") == img.read_bytes("/etc/app/config.yaml")


def test_objects_that_cannot_be_opened_again_refuse_to_pickle(sample: str) -> None:
    img = seekoci.open_image(sample, platform="linux/amd64", cache_dir=False)
    by_hand = Image(
        reference="x", digest="sha256:" + "1" * 64, platform="linux/amd64", config={},
        manifest={}, layers=[],
    )  # fmt: skip
    with pytest.raises(TypeError, match="open_image"):
        pickle.dumps(by_hand)
    with pytest.raises(TypeError, match="open_layer"):
        pickle.dumps(seekoci.open_layer(BytesSource(b"\0" * 1024), cache_dir=False))
    with img.open("/etc/app/config.yaml") as f, pytest.raises(TypeError, match="cannot pickle"):
        pickle.dumps(f)
