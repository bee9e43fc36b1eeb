"""resolve_image against a local fake registry: manifests, indexes, platforms, verification."""

from __future__ import annotations

import json

import pytest

from seekoci.errors import FormatError, ImageNotFoundError, IntegrityError, PlatformNotFoundError
from seekoci.registry import (
    MANIFEST_MEDIA_TYPES,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_OCI_MANIFEST,
    Descriptor,
    resolve_image,
)
from seekoci.registry.digest import compute_digest

pytestmark = pytest.mark.usefixtures("isolated_docker_config")

ATTESTATION = {"vnd.docker.reference.type": "attestation-manifest"}


def multi_platform(reg, *, docker=False):
    amd = reg.add_image("multi", layers=(b"amd-0", b"amd-1"), platform="linux/amd64", docker=docker)
    arm = reg.add_image("multi", layers=(b"arm-0",), platform="linux/arm64/v8", docker=docker)
    armv7 = reg.add_image("multi", layers=(b"arm7-0",), platform="linux/arm/v7", docker=docker)
    att = reg.add_manifest(
        "multi",
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": reg.add_blob(b"{}", "application/vnd.in-toto+json"),
            "layers": [],
        },
    )
    att["platform"] = {"os": "unknown", "architecture": "unknown"}
    att["annotations"] = {**ATTESTATION, "vnd.docker.reference.digest": amd["digest"]}
    index = reg.add_index("multi", [amd, att, arm, armv7], tags=("v1",), docker=docker)
    return index, amd, arm, armv7


def test_single_platform_oci_image(fake_registry):
    desc = fake_registry.add_image("app/one", tags=("1.0",), layers=(b"base", b"top"))
    with resolve_image(f"{fake_registry.netloc}/app/one:1.0") as img:
        assert img.reference == f"{fake_registry.netloc}/app/one:1.0"
        assert img.digest == desc["digest"]
        assert img.index_digest is None
        assert img.platform == "linux/amd64"
        assert img.media_type == MEDIA_TYPE_OCI_MANIFEST
        assert img.config["architecture"] == "amd64"
        assert [layer.digest for layer in img.layers] == [
            compute_digest(b"base"),
            compute_digest(b"top"),
        ]
        assert all(isinstance(layer, Descriptor) for layer in img.layers)
        assert img.fetch_blob(img.layers[1]) == b"top"
        assert img.blob_source(img.layers[0]).read_range(1, 2) == b"as"
    accept = [r.headers["Accept"] for r in fake_registry.requests if "/manifests/" in r.path]
    assert accept and all(all(t in a for t in MANIFEST_MEDIA_TYPES) for a in accept)


@pytest.mark.parametrize("docker", [False, True])
def test_index_resolves_to_requested_platform(fake_registry, docker):
    index, amd, arm, armv7 = multi_platform(fake_registry, docker=docker)
    ref = f"{fake_registry.netloc}/multi:v1"
    img = resolve_image(ref, platform="linux/arm64")
    assert img.digest == arm["digest"]
    assert img.index_digest == index["digest"]
    assert img.platform == "linux/arm64/v8"
    assert img.fetch_blob(img.layers[0]) == b"arm-0"
    if docker:
        assert img.media_type == MEDIA_TYPE_DOCKER_MANIFEST
    img.close()
    assert resolve_image(ref, platform="linux/amd64").digest == amd["digest"]
    assert resolve_image(ref, platform="linux/arm/v7").digest == armv7["digest"]


def test_default_platform_is_the_host(fake_registry, monkeypatch):
    _, amd, arm, _ = multi_platform(fake_registry)
    monkeypatch.setattr("seekoci.registry.platform._machine", lambda: "aarch64")
    assert resolve_image(f"{fake_registry.netloc}/multi:v1").digest == arm["digest"]
    monkeypatch.setattr("seekoci.registry.platform._machine", lambda: "x86_64")
    assert resolve_image(f"{fake_registry.netloc}/multi:v1").digest == amd["digest"]


def test_resolve_by_index_digest_and_by_manifest_digest(fake_registry):
    index, amd, _, _ = multi_platform(fake_registry)
    img = resolve_image(f"{fake_registry.netloc}/multi@{index['digest']}", platform="linux/amd64")
    assert (img.digest, img.index_digest) == (amd["digest"], index["digest"])
    img = resolve_image(f"{fake_registry.netloc}/multi@{amd['digest']}")
    assert (img.digest, img.index_digest) == (amd["digest"], None)


def test_missing_platform(fake_registry):
    multi_platform(fake_registry)
    with pytest.raises(PlatformNotFoundError) as caught:
        resolve_image(f"{fake_registry.netloc}/multi:v1", platform="linux/s390x")
    assert caught.value.available == ["linux/amd64", "linux/arm64/v8", "linux/arm/v7"]
    assert "linux/arm/v7" in str(caught.value) and "multi:v1" in str(caught.value)
    with pytest.raises(PlatformNotFoundError):
        resolve_image(f"{fake_registry.netloc}/multi:v1", platform="linux/arm/v6")


def test_single_platform_checked_only_when_asked(fake_registry, monkeypatch):
    fake_registry.add_image("solo", tags=("latest",), platform="linux/arm64")
    monkeypatch.setattr("seekoci.registry.platform._machine", lambda: "x86_64")
    assert resolve_image(f"{fake_registry.netloc}/solo").platform == "linux/arm64"
    assert (
        resolve_image(f"{fake_registry.netloc}/solo", platform="linux/arm64/v8").platform
        == "linux/arm64"
    )
    with pytest.raises(PlatformNotFoundError) as caught:
        resolve_image(f"{fake_registry.netloc}/solo", platform="linux/amd64")
    assert caught.value.available == ["linux/arm64"]


def test_not_found(fake_registry):
    with pytest.raises(ImageNotFoundError) as caught:
        resolve_image(f"{fake_registry.netloc}/nothing:here")
    assert caught.value.status == 404
    assert "nothing:here" in str(caught.value)
    assert isinstance(caught.value, LookupError)


def test_tampered_manifest_by_digest(fake_registry):
    desc = fake_registry.add_image("t", tags=("x",))
    body, media_type = fake_registry.manifests[("t", desc["digest"])]
    fake_registry.manifests[("t", desc["digest"])] = (body + b" ", media_type)
    with pytest.raises(IntegrityError, match=f"t@{desc['digest']}"):
        resolve_image(f"{fake_registry.netloc}/t@{desc['digest']}")


def test_tag_with_wrong_docker_content_digest(fake_registry):
    fake_registry.add_image("t", tags=("x",))

    def lie(h, request):
        if "/manifests/" not in request.path:
            return False
        body, media_type = fake_registry.manifests[("t", "x")]
        h.reply(
            200,
            body,
            {"Content-Type": media_type, "Docker-Content-Digest": compute_digest(b"other")},
        )
        return True

    fake_registry.hook = lie
    with pytest.raises(IntegrityError, match="/t:x"):
        resolve_image(f"{fake_registry.netloc}/t:x")


def test_tag_without_digest_header_is_hashed(fake_registry):
    desc = fake_registry.add_image("t", tags=("x",))
    fake_registry.send_digest_header = False
    assert resolve_image(f"{fake_registry.netloc}/t:x").digest == desc["digest"]


def test_index_entry_pointing_at_tampered_manifest(fake_registry):
    _index, amd, _, _ = multi_platform(fake_registry)
    body, media_type = fake_registry.manifests[("multi", amd["digest"])]
    fake_registry.manifests[("multi", amd["digest"])] = (body + b"\n", media_type)
    with pytest.raises(IntegrityError):
        resolve_image(f"{fake_registry.netloc}/multi:v1", platform="linux/amd64")


def test_tampered_config(fake_registry):
    desc = fake_registry.add_image("t", tags=("x",))
    body, _ = fake_registry.manifests[("t", desc["digest"])]
    config_digest = json.loads(body)["config"]["digest"]
    fake_registry.blobs[config_digest] = fake_registry.blobs[config_digest].replace(
        b"amd64", b"arm64"
    )
    with pytest.raises(IntegrityError, match=config_digest):
        resolve_image(f"{fake_registry.netloc}/t:x")


def test_manifest_not_json_or_unknown_type(fake_registry):
    fake_registry.add_manifest(
        "bad", b"<html>hello</html>", tags=("html",), media_type=MEDIA_TYPE_OCI_MANIFEST
    )
    with pytest.raises(FormatError, match="bad:html"):
        resolve_image(f"{fake_registry.netloc}/bad:html")
    fake_registry.add_manifest(
        "bad",
        {"schemaVersion": 1, "name": "bad", "fsLayers": []},
        tags=("s1",),
        media_type=MEDIA_TYPE_DOCKER_MANIFEST,
    )
    with pytest.raises(FormatError, match="schema 1"):
        resolve_image(f"{fake_registry.netloc}/bad:s1")


def test_layer_blob_missing(fake_registry):
    fake_registry.add_image("gone", tags=("x",), layers=(b"layer",))
    img = resolve_image(f"{fake_registry.netloc}/gone:x")
    del fake_registry.blobs[img.layers[0].digest]
    with pytest.raises(ImageNotFoundError) as caught:
        img.blob_source(img.layers[0]).read_range(0, 1)
    assert caught.value.status == 404
    with pytest.raises(ImageNotFoundError):
        img.fetch_blob(img.layers[0])


def test_fetch_blob_verifies(fake_registry):
    fake_registry.add_image("v", tags=("x",), layers=(b"layer-bytes",))
    img = resolve_image(f"{fake_registry.netloc}/v:x")
    fake_registry.blobs[img.layers[0].digest] = b"layer-BYTES"
    with pytest.raises(IntegrityError, match=img.layers[0].digest):
        img.fetch_blob(img.layers[0])
    fake_registry.blobs[img.layers[0].digest] = b"layer-bytes-and-more"
    with pytest.raises(IntegrityError):
        img.fetch_blob(img.layers[0])


def test_fetch_blob_hashes_each_attempt_afresh(fake_registry):
    # the body is hashed as it arrives: a copy damaged on the way is refetched, and the
    # second attempt is checked with a hasher of its own (not one fed both bodies)
    fake_registry.add_image("w", tags=("x",), layers=(b"layer-bytes" * 1000,))
    img = resolve_image(f"{fake_registry.netloc}/w:x")
    digest = img.layers[0].digest
    good = fake_registry.blobs[digest]
    served: list[bytes] = []

    class OnceDamaged(dict):  # type: ignore[type-arg]
        def get(self, key, default=None):
            value = super().get(key, default)
            if key == digest:
                value = good.replace(b"bytes", b"BYTES", 1) if not served else good
                served.append(value)
            return value

    fake_registry.blobs = OnceDamaged(fake_registry.blobs)
    assert img.fetch_blob(img.layers[0]) == good
    assert len(served) == 2 and served[0] != good
