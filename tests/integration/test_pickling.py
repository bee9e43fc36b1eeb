"""Pickling Image and Layer (contract "Pickling"): re-opened elsewhere from the reference
pinned to the manifest digest, with the same options, reading the same bytes."""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from imagebuilder import (
    OCI_INDEX,
    Index,
    file,
    image,
    index,
    layer,
    random_bytes,
    text_bytes,
    write_oci_layout,
)

import seekoci
from seekoci.source import BytesSource

pytestmark = pytest.mark.integration

BASE = text_bytes("pickle-base", 300_000)
APP = random_bytes("pickle-app", 200_000)
CONFIG = b"answer = 42\n"


def pickled_image(tag: str = "v1") -> Any:
    return image(
        layer(file("etc/base.txt", BASE), file("etc/shared.conf", b"base version\n")),
        layer(file("app/data.bin", APP), file("app/config.toml", CONFIG)),
    )


@pytest.fixture(scope="module")
def pushed(registry: Any) -> Any:
    img = pickled_image()
    registry.push("pickle/app", "v1", img)
    return img


def roundtrip(obj: Any) -> Any:
    return pickle.loads(pickle.dumps(obj))


def test_image_round_trip_reads_the_same_bytes(pushed: Any, registry: Any, cache_dir: Path) -> None:
    img = seekoci.open_image(registry.ref("pickle/app", "v1"), cache_dir=cache_dir)
    assert img.read_bytes("/app/config.toml") == CONFIG
    copy = roundtrip(img)
    assert copy is not img
    assert (copy.reference, copy.digest, copy.platform) == (img.reference, img.digest, img.platform)
    assert copy.reference.endswith("pickle/app:v1")  # the tag the user asked for, as shown
    assert copy.origin.pinned == f"{registry.host}/pickle/app@{pushed.digest}"
    assert [lay.digest for lay in copy.layers] == [lay.digest for lay in img.layers]
    assert copy.read_bytes("/etc/base.txt") == BASE
    assert copy.read_bytes("/app/data.bin") == APP
    assert copy.origin.options["cache_dir"] == str(cache_dir)
    # the index built by the first reader, in the same cache directory, serves the copy
    assert copy.layers[1].index_status == "cached"


def test_unpickled_image_stays_on_its_digest_when_the_tag_moves(
    registry: Any, cache_dir: Path
) -> None:
    first = image(layer(file("version.txt", b"one\n")))
    registry.push("pickle/moving", "latest", first)
    img = seekoci.open_image(registry.ref("pickle/moving"), cache_dir=cache_dir)
    data = pickle.dumps(img)
    registry.push("pickle/moving", "latest", image(layer(file("version.txt", b"two\n"))))
    assert seekoci.open_image(registry.ref("pickle/moving")).read_bytes("/version.txt") == b"two\n"
    copy = pickle.loads(data)
    assert copy.digest == first.digest
    assert copy.read_bytes("/version.txt") == b"one\n"


def test_layer_round_trip_is_the_layer_of_that_digest(
    pushed: Any, registry: Any, cache_dir: Path
) -> None:
    img = seekoci.open_image(registry.ref("pickle/app", "v1"), cache_dir=cache_dir)
    top = img.layers[1]
    copy = roundtrip(top)
    assert copy.digest == top.digest == pushed.layers[1].digest
    assert (copy.media_type, copy.size) == (top.media_type, top.size)
    with copy.open("/app/config.toml") as f:
        assert f.read() == CONFIG
    offset = pushed.layers[1].tar_offsets()["app/data.bin"]
    assert copy.read_range(offset, 1000) == APP[:1000]
    assert copy.listdir("/app") == ["config.toml", "data.bin"]


def test_file_objects_do_not_pickle(pushed: Any, registry: Any) -> None:
    img = seekoci.open_image(registry.ref("pickle/app", "v1"), cache_dir=False)
    with img.open("/app/config.toml") as f, pytest.raises(TypeError, match="cannot pickle"):
        pickle.dumps(f)
    with img.layers[0].open("/etc/base.txt") as f, pytest.raises(TypeError):
        pickle.dumps(f)


def test_platform_and_options_travel(registry: Any, tmp_path: Path) -> None:
    amd = image(layer(file("arch", b"amd64\n")), arch="amd64")
    arm = image(layer(file("arch", b"arm64\n")), arch="arm64", variant="v8")
    registry.push("pickle/multi", "v1", index(amd, arm))
    img = seekoci.open_image(
        registry.ref("pickle/multi", "v1"),
        platform="linux/arm64/v8",
        cache_dir=False,
        span_size=256 << 10,
    )
    copy = roundtrip(img)
    assert copy.platform == "linux/arm64/v8"
    assert copy.digest == arm.digest
    assert copy.read_bytes("/arch") == b"arm64\n"
    assert copy.layers[0].span_size == 256 << 10
    assert copy.origin.options["cache_dir"] is False
    assert roundtrip(img.layers[0]).read_range(0, 3) == img.layers[0].read_range(0, 3)


def test_a_variant_only_the_index_names_survives(registry: Any) -> None:
    # arm64 images often say "v8" in the index entry only, not in their config
    arm = image(layer(file("arch", b"arm64\n")), arch="arm64")
    amd = image(layer(file("arch", b"amd64\n")), arch="amd64")
    entries = [amd.descriptor(), arm.descriptor()]
    entries[1]["platform"]["variant"] = "v8"
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    registry.push("pickle/variant", "v1", Index(images=(amd, arm), manifest_bytes=body,
                                                 media_type=OCI_INDEX))  # fmt: skip
    img = seekoci.open_image(
        registry.ref("pickle/variant", "v1"), platform="linux/arm64/v8", cache_dir=False
    )
    assert img.platform == "linux/arm64/v8"
    copy = roundtrip(img)
    assert (copy.platform, copy.digest) == ("linux/arm64/v8", arm.digest)
    assert copy.read_bytes("/arch") == b"arm64\n"


def test_layout_image_and_open_layer_round_trip(tmp_path: Path) -> None:
    img_def = pickled_image()
    write_oci_layout(tmp_path / "layout", img_def, "v1")
    img = seekoci.open_image(f"oci:{tmp_path / 'layout'}:v1", cache_dir=tmp_path / "c")
    copy = roundtrip(img)
    assert copy.reference == img.reference
    assert copy.origin.pinned == f"oci:{tmp_path / 'layout'}@{img_def.digest}"
    assert copy.read_bytes("/app/data.bin") == APP

    blob = tmp_path / "layer.tar.gz"
    blob.write_bytes(img_def.layers[0].blob)
    lone = seekoci.open_layer(str(blob), digest=img_def.layers[0].digest, cache_dir=False)
    again = roundtrip(lone)
    assert again.digest == lone.digest
    assert again.open("/etc/base.txt").read() == BASE

    from_bytes = seekoci.open_layer(BytesSource(img_def.layers[0].blob), cache_dir=False)
    with pytest.raises(TypeError, match="cannot pickle"):
        pickle.dumps(from_bytes)


def test_explicit_credentials_travel_but_never_show(basic_registry: Any, tmp_path: Path) -> None:
    basic_registry.push("pickle/private", "v1", pickled_image())
    img = seekoci.open_image(
        basic_registry.ref("pickle/private", "v1"),
        auth=basic_registry.credentials,
        cache_dir=False,
    )
    password = basic_registry.password
    for text in (repr(img), repr(img.origin), repr(img.layers[0]), repr(img.layers[0].origin)):
        assert password not in text
    # a fresh process with an empty Docker config opens it only with the pickled credentials
    data = pickle.dumps(img.layers[1])
    script = (
        "import pickle, sys; layer = pickle.loads(sys.stdin.buffer.read()); "
        "sys.stdout.buffer.write(layer.open('/app/config.toml').read())"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], input=data, capture_output=True, timeout=60
    )
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout == CONFIG


def _read_with_pool(method: str, img: Any, paths: list[str]) -> list[bytes]:
    ctx = multiprocessing.get_context(method)
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        return list(pool.map(img.read_bytes, paths))


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_process_pools_read_through_pickled_images(
    method: str, pushed: Any, registry: Any, cache_dir: Path
) -> None:
    img = seekoci.open_image(registry.ref("pickle/app", "v1"), cache_dir=cache_dir)
    paths = ["/etc/base.txt", "/app/data.bin", "/app/config.toml", "/etc/shared.conf"]
    assert _read_with_pool(method, img, paths) == [BASE, APP, CONFIG, b"base version\n"]
    top = img.layers[1]
    offset = pushed.layers[1].tar_offsets()["app/data.bin"]
    ctx = multiprocessing.get_context(method)
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        got = list(pool.map(top.read_range, [offset, offset + 1000], [1000, 1000]))
    assert got == [APP[:1000], APP[1000:2000]]


def test_an_image_and_its_layers_pickled_together_come_back_as_one_image(
    pushed: Any, registry: Any, counting_proxy: Any, cache_dir: Path
) -> None:
    proxy = counting_proxy(registry)
    # no cache directory: a manifest kept there by digest would make every re-open free
    img = seekoci.open_image(proxy.ref("pickle/app", "v1"), cache_dir=False)
    data = pickle.dumps((img, img.layers[1], img.layers[0]))
    proxy.reset()
    copy, top, base = pickle.loads(data)
    assert top is copy.layers[1] and base is copy.layers[0]
    # opened once, not per layer: one fetch of the manifest by digest (referrers discovery,
    # which starts with an open, asks a tag under /manifests/ too)
    by_digest = [r for r in proxy.records if "/manifests/sha256:" in r.path]
    assert len(by_digest) == 1, proxy.summary()
    assert top.open("/app/config.toml").read() == CONFIG
    # separate pickles are separate images (each opened again)
    again = pickle.loads(pickle.dumps(img.layers[1]))
    assert again is not top and again.digest == top.digest
    # and a re-opened image pickles again
    assert pickle.loads(pickle.dumps(copy)).read_bytes("/etc/base.txt") == BASE
