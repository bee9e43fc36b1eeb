"""OCI image layout directories resolved like registry images."""

from __future__ import annotations

import json

import pytest

from seekoci.errors import FormatError, ImageNotFoundError, IntegrityError, PlatformNotFoundError
from seekoci.registry import resolve_image
from seekoci.source import FileSource


def test_single_tagged_image(oci_layout):
    desc = oci_layout.add_image(layers=(b"base layer", b"top layer"))
    oci_layout.tag(desc, "v1")
    img = resolve_image(f"oci:{oci_layout.root}:v1")
    assert img.reference == f"oci:{oci_layout.root}:v1"
    assert img.digest == desc["digest"]
    assert img.platform == "linux/amd64"
    assert img.index_digest is None
    assert img.config["os"] == "linux"
    source = img.blob_source(img.layers[1])
    assert isinstance(source, FileSource)
    assert source.name == img.layers[1].digest
    assert source.read_range(4, 5) == b"layer"
    assert img.fetch_blob(img.layers[0]) == b"base layer"
    source.close()


def test_no_tag_uses_the_only_manifest(oci_layout):
    desc = oci_layout.add_image()
    oci_layout.tag(desc, "only")
    img = resolve_image(f"oci:{oci_layout.root}")
    assert (img.digest, img.reference) == (desc["digest"], f"oci:{oci_layout.root}:only")


def test_no_tag_and_no_name_reports_the_digest(oci_layout):
    desc = oci_layout.add_image()
    oci_layout.tag(desc, None)
    img = resolve_image(f"oci:{oci_layout.root}")
    assert img.reference == f"oci:{oci_layout.root}@{desc['digest']}"


def test_no_tag_with_several_manifests_means_latest(oci_layout):
    old = oci_layout.add_image(layers=(b"old",))
    new = oci_layout.add_image(layers=(b"new",))
    oci_layout.tag(old, "v1")
    oci_layout.tag(new, "latest")
    assert resolve_image(f"oci:{oci_layout.root}").digest == new["digest"]
    assert resolve_image(f"oci:{oci_layout.root}:v1").digest == old["digest"]
    with pytest.raises(ImageNotFoundError, match="latest, v1"):
        resolve_image(f"oci:{oci_layout.root}:v2")


def test_by_digest(oci_layout):
    desc = oci_layout.add_image()
    oci_layout.tag(desc, "v1")
    img = resolve_image(f"oci:{oci_layout.root}@{desc['digest']}")
    assert img.digest == desc["digest"]
    with pytest.raises(ImageNotFoundError):
        resolve_image(f"oci:{oci_layout.root}@sha256:{'0' * 64}")


def test_nested_index_for_multi_platform(oci_layout):
    amd = oci_layout.add_image(layers=(b"amd",), platform="linux/amd64")
    arm = oci_layout.add_image(layers=(b"arm",), platform="linux/arm64/v8")
    attestation = dict(oci_layout.add_image(layers=(b"att",), platform="unknown/unknown"))
    attestation["annotations"] = {"vnd.docker.reference.type": "attestation-manifest"}
    index = oci_layout.add_index([amd, arm, attestation])
    oci_layout.tag(index, "multi")
    img = resolve_image(f"oci:{oci_layout.root}:multi", platform="linux/arm64")
    assert (img.digest, img.index_digest, img.platform) == (
        arm["digest"],
        index["digest"],
        "linux/arm64/v8",
    )
    assert img.fetch_blob(img.layers[0]) == b"arm"
    with pytest.raises(PlatformNotFoundError) as caught:
        resolve_image(f"oci:{oci_layout.root}:multi", platform="linux/riscv64")
    assert caught.value.available == ["linux/amd64", "linux/arm64/v8"]


def test_same_tag_on_several_platform_entries(oci_layout):
    amd = oci_layout.add_image(layers=(b"amd",), platform="linux/amd64")
    arm = oci_layout.add_image(layers=(b"arm",), platform="linux/arm64")
    oci_layout.tag(amd, "v1")
    oci_layout.tag(arm, "v1")
    img = resolve_image(f"oci:{oci_layout.root}:v1", platform="linux/arm64")
    assert (img.digest, img.index_digest) == (arm["digest"], None)


def test_full_reference_in_ref_name(oci_layout):
    desc = oci_layout.add_image()
    oci_layout.tag(desc, "docker.io/library/alpine:3.19")
    assert resolve_image(f"oci:{oci_layout.root}:3.19").digest == desc["digest"]


def test_missing_directory_or_marker(tmp_path):
    with pytest.raises(ImageNotFoundError, match="no such"):
        resolve_image(f"oci:{tmp_path}/nowhere")
    with pytest.raises(ImageNotFoundError, match="oci-layout"):
        resolve_image(f"oci:{tmp_path}")


def test_broken_layouts(oci_layout):
    desc = oci_layout.add_image()
    oci_layout.tag(desc, "v1")
    (oci_layout.root / "index.json").write_text("{broken")
    with pytest.raises(FormatError, match=r"index\.json"):
        resolve_image(f"oci:{oci_layout.root}:v1")
    (oci_layout.root / "index.json").unlink()
    with pytest.raises(FormatError, match=r"index\.json"):
        resolve_image(f"oci:{oci_layout.root}:v1")
    oci_layout.write_index()
    (oci_layout.root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "2.0.0"}))
    with pytest.raises(FormatError, match="imageLayoutVersion"):
        resolve_image(f"oci:{oci_layout.root}:v1")


def blob_file(layout, digest):
    return layout.root / "blobs" / "sha256" / digest.split(":")[1]


def test_tampered_blobs(oci_layout):
    desc = oci_layout.add_image(layers=(b"layer-bytes",))
    oci_layout.tag(desc, "v1")
    img = resolve_image(f"oci:{oci_layout.root}:v1")
    layer = img.layers[0]
    blob_file(oci_layout, layer.digest).write_bytes(b"layer-BYTES")
    with pytest.raises(IntegrityError, match=layer.digest):
        img.fetch_blob(layer)
    blob_file(oci_layout, layer.digest).write_bytes(b"longer layer bytes")
    with pytest.raises(IntegrityError):
        img.blob_source(layer)
    blob_file(oci_layout, layer.digest).unlink()
    with pytest.raises(ImageNotFoundError):
        img.blob_source(layer)
    with pytest.raises(ImageNotFoundError):
        img.fetch_blob(layer)
    manifest_file = blob_file(oci_layout, desc["digest"])
    manifest_file.write_bytes(manifest_file.read_bytes() + b" ")
    with pytest.raises(IntegrityError, match=desc["digest"]):
        resolve_image(f"oci:{oci_layout.root}:v1")


def test_config_checked_against_explicit_platform(oci_layout):
    desc = oci_layout.add_image(platform="linux/arm64")
    oci_layout.tag(desc, "v1")
    with pytest.raises(PlatformNotFoundError):
        resolve_image(f"oci:{oci_layout.root}:v1", platform="linux/amd64")
