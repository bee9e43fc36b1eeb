"""Blob uploads, cross-repository mounts and referrers against the real docker-registry 2.8.

That registry has no referrers API (``GET /v2/R/referrers/D`` is a plain-text 404), so every
referrer here goes through the referrers tag schema: an image index under ``sha256-<hex>``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from imagebuilder import file, image, layer, random_bytes, sha256_digest

from seekoci.errors import AuthenticationError
from seekoci.registry import RegistryClient
from seekoci.registry.push import blob_exists, put_manifest, upload_blob
from seekoci.registry.referrers import list_referrers, push_referrer, referrers_tag

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
SOCI_V1 = "application/vnd.amazon.soci.index.v1+json"
SIG_TYPE = "application/vnd.example.signature.v1+json"


def compact(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def client_for(server: Any, host: str | None = None) -> RegistryClient:
    return RegistryClient(host or server.host, auth=server.credentials)


def push_subject(server: Any, repo: str) -> dict[str, Any]:
    img = image(layer(file("etc/hello.txt", f"subject of {repo}\n".encode())))
    server.push(repo, "v1", img)
    return img.descriptor(with_platform=False)


def artifact_manifest(
    subject: dict[str, Any],
    *,
    config_type: str = OCI_EMPTY,
    artifact_type: str | None = None,
    blob: tuple[str, int] | None = None,
    annotations: dict[str, str] | None = None,
) -> bytes:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": EMPTY_DIGEST, "size": 2},
        "layers": [],
        "subject": subject,
    }
    if artifact_type:
        doc["artifactType"] = artifact_type
    if blob:
        doc["layers"] = [
            {"mediaType": "application/octet-stream", "digest": blob[0], "size": blob[1]}
        ]
    if annotations:
        doc["annotations"] = annotations
    return compact(doc)


def raw_get(server: Any, path: str, accept: str | None = None) -> requests.Response:
    headers = {"Accept": accept} if accept else {}
    return requests.get(f"{server.url}{path}", headers=headers, timeout=10)


# --------------------------------------------------------------------------- blobs


def test_small_blob_upload_is_one_put(registry, counting_proxy) -> None:
    proxy = counting_proxy(registry)
    client = RegistryClient(proxy.host)
    data = b"a small blob\n" * 100
    digest = upload_blob(client, "push/small", data)
    assert digest == sha256_digest(data)
    assert registry.client().get_blob("push/small", digest) == data
    assert [(r.method, r.status) for r in proxy.records] == [
        ("HEAD", 404),
        ("POST", 202),
        ("PUT", 201),
    ]
    assert blob_exists(client, "push/small", digest)
    assert not blob_exists(client, "push/elsewhere", digest)
    proxy.reset()
    assert upload_blob(client, "push/small", data) == digest
    assert [(r.method, r.status) for r in proxy.records] == [("HEAD", 200)]


def test_large_blob_upload_in_chunks(registry, counting_proxy) -> None:
    proxy = counting_proxy(registry)
    data = random_bytes("push-large", (5 << 20) + 12345)
    digest = upload_blob(RegistryClient(proxy.host), "push/large", data, chunk_size=2 << 20)
    assert registry.client().get_blob("push/large", digest) == data
    assert [r.method for r in proxy.records] == ["HEAD", "POST", "PATCH", "PATCH", "PATCH", "PUT"]
    assert all(r.status == 202 for r in proxy.records if r.method == "PATCH")


def test_blob_just_over_the_default_chunk_size(registry) -> None:
    data = random_bytes("push-default-chunk", (8 << 20) + 1)
    digest = upload_blob(client_for(registry), "push/default-chunk", data)
    assert registry.blob_path(digest).read_bytes() == data


def test_mount_across_repositories(registry, counting_proxy) -> None:
    client = client_for(registry)
    data = b"a base layer shared by two repositories" * 50
    digest = upload_blob(client, "push/mount-src", data)
    proxy = counting_proxy(registry)
    assert (
        upload_blob(RegistryClient(proxy.host), "push/mount-dst", data, mount_from="push/mount-src")
        == digest
    )
    assert [(r.method, r.status) for r in proxy.records] == [("HEAD", 404), ("POST", 201)]
    assert registry.client().get_blob("push/mount-dst", digest) == data


def test_mount_of_a_blob_the_source_lacks_uploads_it(registry, counting_proxy) -> None:
    proxy = counting_proxy(registry)
    data = b"only here" * 1000
    digest = upload_blob(
        RegistryClient(proxy.host),
        "push/mount-dst2",
        data,
        mount_from="push/nowhere",
        chunk_size=4096,
    )
    assert registry.client().get_blob("push/mount-dst2", digest) == data
    posts = [r for r in proxy.records if r.method == "POST"]
    assert len(posts) == 1 and "mount=" in posts[0].path and posts[0].status == 202
    assert [r.method for r in proxy.records].count("PATCH") == 3


def test_mount_under_token_auth_asks_for_pull_on_the_source(token_registry, counting_proxy) -> None:
    client = client_for(token_registry)
    data = b"token-guarded shared layer" * 40
    digest = upload_blob(client, "push/tok-src", data)
    proxy = counting_proxy(token_registry)
    service = token_registry.token_service
    before = len(service.records)
    mounted = upload_blob(
        client_for(token_registry, proxy.host), "push/tok-dst", data, mount_from="push/tok-src"
    )
    assert mounted == digest
    assert ("POST", 201) in [(r.method, r.status) for r in proxy.records]
    assert not any(r.method in ("PATCH", "PUT") for r in proxy.records), proxy.summary()
    granted = [a for rec in service.records[before:] for a in rec.access]
    assert {"type": "repository", "name": "push/tok-src", "actions": ["pull"]} in granted
    assert token_registry.client().get_blob("push/tok-dst", digest) == data


def test_anonymous_push_under_token_auth_is_refused(token_registry) -> None:
    with pytest.raises(AuthenticationError) as info:
        upload_blob(RegistryClient(token_registry.host), "push/anon", b"no credentials")
    assert info.value.status == 401


def test_basic_auth_upload_and_manifest(basic_registry) -> None:
    client = client_for(basic_registry)
    data = random_bytes("basic-push", 300_000)
    digest = upload_blob(client, "push/basic", data, chunk_size=100_000)
    assert basic_registry.client().get_blob("push/basic", digest) == data
    subject = push_subject(basic_registry, "push/basic")
    upload_blob(client, "push/basic", EMPTY_JSON)
    body = artifact_manifest(subject, config_type=SOCI_V1, blob=(digest, len(data)))
    pushed = push_referrer(client, "push/basic", body, OCI_MANIFEST)
    assert [d.digest for d in list_referrers(client, "push/basic", subject["digest"])] == [pushed]


# --------------------------------------------------------------------------- referrers


def test_registry_has_no_referrers_api(registry) -> None:
    subject = push_subject(registry, "push/probe")
    response = raw_get(registry, f"/v2/push/probe/referrers/{subject['digest']}", OCI_INDEX)
    assert response.status_code == 404
    assert not response.headers.get("Content-Type", "").startswith("application/json")


def test_push_referrer_and_list_it_through_the_tag(registry, counting_proxy) -> None:
    repo = "push/referrers"
    subject = push_subject(registry, repo)
    client = client_for(registry)
    assert upload_blob(client, repo, EMPTY_JSON) == EMPTY_DIGEST
    body = artifact_manifest(
        subject,
        config_type=SOCI_V1,
        annotations={"com.amazon.soci.build-tool-identifier": "seekoci"},
    )
    proxy = counting_proxy(registry)
    digest = push_referrer(
        RegistryClient(proxy.host), repo, body, OCI_MANIFEST, artifact_type=SOCI_V1
    )
    assert digest == sha256_digest(body)
    kinds = [(r.method, r.kind, r.status) for r in proxy.records]
    assert kinds == [
        ("PUT", "manifest", 201),  # the artifact, by digest
        ("GET", "other", 404),  # the referrers API: absent
        ("GET", "manifest", 404),  # no referrers tag yet
        ("PUT", "manifest", 201),  # the tag, created
    ], proxy.summary()

    # the artifact is stored byte for byte
    stored, content_type, _ = registry.client().get_manifest(repo, digest)
    assert stored == body and content_type == OCI_MANIFEST
    # and so is the tag index: exactly the compact JSON seekoci wrote
    tag = referrers_tag(subject["digest"])
    assert tag == "sha256-" + subject["digest"].split(":")[1]
    raw = raw_get(registry, f"/v2/{repo}/manifests/{tag}", OCI_INDEX)
    assert raw.status_code == 200 and raw.headers["Content-Type"] == OCI_INDEX
    index = json.loads(raw.content)
    assert raw.content == compact(index)
    assert index == {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": len(body),
                "artifactType": SOCI_V1,
                "annotations": {"com.amazon.soci.build-tool-identifier": "seekoci"},
            }
        ],
    }
    # without Accept naming OCI types the registry hides the index
    assert raw_get(registry, f"/v2/{repo}/manifests/{tag}").status_code == 404

    listed = list_referrers(client, repo, subject["digest"])
    assert [(d.digest, d.artifact_type, d.size) for d in listed] == [(digest, SOCI_V1, len(body))]
    assert list_referrers(client, repo, subject["digest"], artifact_type=SOCI_V1) == listed
    assert list_referrers(client, repo, subject["digest"], artifact_type=SIG_TYPE) == []


def test_second_referrer_keeps_the_first_and_other_tools_entries(registry) -> None:
    repo = "push/two-referrers"
    subject = push_subject(registry, repo)
    client = client_for(registry)
    upload_blob(client, repo, EMPTY_JSON)

    # another tool's signature, listed in a tag index it wrote with fields of its own
    sig_body = artifact_manifest(subject, artifact_type=SIG_TYPE)
    sig = put_manifest(client, repo, sha256_digest(sig_body), sig_body, OCI_MANIFEST)
    foreign_entry = {
        "mediaType": OCI_MANIFEST,
        "digest": sig,
        "size": len(sig_body),
        "artifactType": SIG_TYPE,
        "annotations": {"org.opencontainers.image.created": "2024-05-01T00:00:00Z"},
    }
    foreign_index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [foreign_entry],
        "annotations": {"written-by": "another tool"},
    }
    tag = referrers_tag(subject["digest"])
    put_manifest(client, repo, tag, compact(foreign_index), OCI_INDEX)

    first = push_referrer(
        client, repo, artifact_manifest(subject, config_type=SOCI_V1), OCI_MANIFEST
    )
    second = push_referrer(
        client,
        repo,
        artifact_manifest(subject, config_type=SOCI_V1, annotations={"n": "2"}),
        OCI_MANIFEST,
    )
    index = json.loads(registry.client().get_manifest(repo, tag)[0])
    assert index["annotations"] == {"written-by": "another tool"}
    assert index["manifests"][0] == foreign_entry
    assert [m["digest"] for m in index["manifests"]] == [sig, first, second]
    assert [
        d.digest for d in list_referrers(client, repo, subject["digest"], artifact_type=SOCI_V1)
    ] == [first, second]
    assert [
        d.digest for d in list_referrers(client, repo, subject["digest"], artifact_type=SIG_TYPE)
    ] == [sig]

    # pushing one again changes nothing
    before = registry.client().get_manifest(repo, tag)
    push_referrer(client, repo, artifact_manifest(subject, config_type=SOCI_V1), OCI_MANIFEST)
    assert registry.client().get_manifest(repo, tag) == before


def test_a_deleted_referrer_is_dropped_from_the_tag(registry) -> None:
    repo = "push/stale-referrer"
    subject = push_subject(registry, repo)
    client = client_for(registry)
    upload_blob(client, repo, EMPTY_JSON)
    gone = push_referrer(
        client, repo, artifact_manifest(subject, artifact_type=SIG_TYPE), OCI_MANIFEST
    )
    kept = push_referrer(
        client, repo, artifact_manifest(subject, config_type=SOCI_V1), OCI_MANIFEST
    )
    deleted = requests.delete(f"{registry.url}/v2/{repo}/manifests/{gone}", timeout=10)
    assert deleted.status_code == 202
    # the tag's index now names a missing manifest: the registry refuses to store it as is
    tag = referrers_tag(subject["digest"])
    old_index = registry.client().get_manifest(repo, tag)[0]
    refused = requests.put(
        f"{registry.url}/v2/{repo}/manifests/{tag}",
        data=old_index,
        headers={"Content-Type": OCI_INDEX},
        timeout=10,
    )
    assert refused.status_code == 400, refused.text
    new = push_referrer(
        client,
        repo,
        artifact_manifest(subject, config_type=SOCI_V1, annotations={"x": "y"}),
        OCI_MANIFEST,
    )
    assert [d.digest for d in list_referrers(client, repo, subject["digest"])] == [kept, new]


def test_referrers_under_token_auth(token_registry) -> None:
    repo = "push/tok-referrers"
    subject = push_subject(token_registry, repo)
    client = client_for(token_registry)
    upload_blob(client, repo, EMPTY_JSON)
    digest = push_referrer(
        client, repo, artifact_manifest(subject, config_type=SOCI_V1), OCI_MANIFEST
    )
    anonymous = RegistryClient(token_registry.host)  # anonymous pull is allowed outside private/
    assert [d.digest for d in list_referrers(anonymous, repo, subject["digest"])] == [digest]
    assert list_referrers(anonymous, repo, "sha256:" + "0" * 64) == []
