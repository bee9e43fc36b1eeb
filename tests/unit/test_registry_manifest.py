"""Manifest and descriptor parsing: media types, schema 1, malformed documents, digests."""

from __future__ import annotations

import json

import pytest

from seekoci.errors import FormatError, IntegrityError
from seekoci.registry import (
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    Descriptor,
)
from seekoci.registry.digest import compute_digest, digest_problem, verify_digest
from seekoci.registry.manifest import parse_manifest

DIGEST = "sha256:" + "c" * 64
DESC = {"mediaType": "x", "digest": DIGEST, "size": 3}


def parse(doc, hint=None):
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return parse_manifest(body, media_type_hint=hint, digest=DIGEST, where="reg/repo:tag")


@pytest.mark.parametrize(
    ("doc", "hint", "media_type", "is_index"),
    [
        (
            {"mediaType": MEDIA_TYPE_OCI_MANIFEST, "config": DESC, "layers": []},
            None,
            MEDIA_TYPE_OCI_MANIFEST,
            False,
        ),
        (
            {"mediaType": MEDIA_TYPE_DOCKER_MANIFEST, "config": DESC, "layers": []},
            None,
            MEDIA_TYPE_DOCKER_MANIFEST,
            False,
        ),
        ({"mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": []}, None, MEDIA_TYPE_OCI_INDEX, True),
        (
            {"mediaType": MEDIA_TYPE_DOCKER_MANIFEST_LIST, "manifests": []},
            None,
            MEDIA_TYPE_DOCKER_MANIFEST_LIST,
            True,
        ),
        # no mediaType field: the Content-Type decides, else the shape
        (
            {"config": DESC, "layers": []},
            MEDIA_TYPE_DOCKER_MANIFEST + "; charset=utf-8",
            MEDIA_TYPE_DOCKER_MANIFEST,
            False,
        ),
        ({"config": DESC, "layers": []}, "application/json", MEDIA_TYPE_OCI_MANIFEST, False),
        ({"manifests": []}, None, MEDIA_TYPE_OCI_INDEX, True),
    ],
)
def test_media_types(doc, hint, media_type, is_index):
    parsed = parse({"schemaVersion": 2, **doc}, hint)
    assert parsed.media_type == media_type
    assert parsed.is_index is is_index
    assert parsed.digest == DIGEST


@pytest.mark.parametrize(
    ("body", "hint", "message"),
    [
        (b"not json", None, "not valid JSON"),
        (b"\xff\xfe", None, "not valid JSON"),
        pytest.param(b"[" * 100_000, None, "not valid JSON", id="nested-too-deep"),
        (b"[1, 2]", None, "not a JSON object"),
        (json.dumps({"schemaVersion": 1, "fsLayers": []}).encode(), None, "schema 1"),
        (b"{}", "application/vnd.docker.distribution.manifest.v1+prettyjws", "schema 1"),
        (
            json.dumps(
                {"mediaType": "application/vnd.docker.distribution.manifest.v1+json"}
            ).encode(),
            None,
            "schema 1",
        ),
        (
            json.dumps({"mediaType": "application/vnd.example+json"}).encode(),
            None,
            "unsupported manifest media type",
        ),
        (json.dumps({"schemaVersion": 2, "foo": 1}).encode(), None, "cannot tell"),
        (json.dumps({"schemaVersion": 3, "manifests": []}).encode(), None, "schemaVersion"),
    ],
)
def test_bad_manifests(body, hint, message):
    with pytest.raises(FormatError, match=message) as caught:
        parse(body, hint)
    assert "reg/repo:tag" in str(caught.value)


def test_descriptor_fields():
    desc = Descriptor.from_json(
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": DIGEST,
            "size": 42,
            "annotations": {"a": "b"},
            "platform": {"os": "linux", "architecture": "amd64"},
            "artifactType": "application/x",
            "urls": ["https://example.invalid/blob"],
        },
        where="w",
    )
    assert desc == Descriptor(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        DIGEST,
        42,
        {"a": "b"},
        {"os": "linux", "architecture": "amd64"},
        "application/x",
        ["https://example.invalid/blob"],
    )
    assert hash(desc) == hash(
        Descriptor(desc.media_type, DIGEST, 42, artifact_type="application/x")
    )
    with pytest.raises(AttributeError):
        desc.size = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        {"digest": DIGEST},
        {"digest": DIGEST, "size": -1},
        {"digest": DIGEST, "size": True},
        {"digest": DIGEST, "size": "3"},
        {"digest": "sha256:xyz", "size": 3},
        {"digest": "../../etc/passwd", "size": 3},
        {"size": 3},
        {"digest": DIGEST, "size": 3, "mediaType": 5},
        {"digest": DIGEST, "size": 3, "annotations": {"a": 1}},
        {"digest": DIGEST, "size": 3, "platform": "linux"},
        {"digest": DIGEST, "size": 3, "urls": "http://x"},
    ],
)
def test_bad_descriptors(raw):
    with pytest.raises(FormatError):
        Descriptor.from_json(raw, where="w")


def test_manifest_layers_and_config():
    layer = {"mediaType": "l", "digest": DIGEST, "size": 9}
    doc = parse(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": DESC,
            "layers": [layer, layer],
        }
    )
    assert doc.config(where="w").size == 3
    assert [d.size for d in doc.layers(where="w")] == [9, 9]
    broken = parse(
        {"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_MANIFEST, "config": DESC, "layers": {}}
    )
    with pytest.raises(FormatError, match="layers"):
        broken.layers(where="w")
    index = parse({"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": None})
    with pytest.raises(FormatError, match="manifests"):
        index.entries(where="w")


def test_digests():
    assert (
        compute_digest(b"")
        == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert compute_digest(b"x", "sha512").startswith("sha512:")
    verify_digest(b"", compute_digest(b""), what="thing")
    verify_digest(b"x", compute_digest(b"x", "sha512"), what="thing")
    with pytest.raises(IntegrityError, match="thing"):
        verify_digest(b"y", compute_digest(b"x"), what="thing")
    with pytest.raises(IntegrityError, match="cannot verify"):
        verify_digest(b"y", "md5:" + "0" * 32, what="thing")
    assert digest_problem("sha384:" + "0" * 96) is not None
