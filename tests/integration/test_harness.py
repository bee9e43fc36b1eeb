"""Self-checks of the test harness itself (builder, push client, registries, proxy).

None of these import seekoci: they prove the fixtures right, so that a failing contract test
points at the library and not at the harness.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest
import requests
from imagebuilder import (
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    block,
    char,
    dir,
    fifo,
    file,
    hardlink,
    image,
    index,
    layer,
    opaque,
    random_bytes,
    sha256_digest,
    symlink,
    text_bytes,
    whiteout,
    write_oci_layout,
)
from pushclient import MANIFEST_ACCEPT, PushError, RegistryClient, parse_challenge

from .servers import RegistryServer, path_kind

pytestmark = pytest.mark.integration

LONG_DIR = "long/" + "d" * 120
LONG_NAME = LONG_DIR + "/file-" + "x" * 60


def sample_entries() -> list:
    return [
        dir("etc"),
        file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
        file("usr/bin/tool", b"#!/bin/sh\necho tool\n", mode=0o4755, uid=0, gid=0),
        file("owned.txt", b"owned", uid=1234, gid=5678),
        file("frac.txt", b"f", mtime=1_700_000_000.25),
        file("xattr.txt", b"x", xattrs={"user.comment": b"hello", "user.bin": b"\x00\xff\x01"}),
        file(LONG_NAME, b"long"),
        symlink("long-link", "/" + LONG_NAME),
        symlink("bin", "usr/bin"),
        hardlink("etc/passwd-hard", "etc/passwd"),
        char("dev/null", 1, 3),
        block("dev/sda", 8, 0),
        fifo("dev/fifo"),
        whiteout("var/gone"),
        opaque("opq"),
        file("empty", b""),
    ]


def read_tar(data: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m) if m.isreg() else None
            out[m.name] = (m, f.read() if f else b"")
    return out


# --------------------------------------------------------------------------- builder


def test_tar_holds_every_declared_entry() -> None:
    lay = layer(sample_entries())
    members = read_tar(lay.tar)
    assert members["etc/passwd"][1] == b"root:x:0:0:root:/root:/bin/sh\n"
    assert members["usr/bin/tool"][0].mode == 0o4755
    assert (members["owned.txt"][0].uid, members["owned.txt"][0].gid) == (1234, 5678)
    assert members["frac.txt"][0].pax_headers["mtime"] == "1700000000.25"
    xattr_headers = members["xattr.txt"][0].pax_headers
    assert xattr_headers["SCHILY.xattr.user.comment"] == "hello"
    assert xattr_headers["SCHILY.xattr.user.bin"].encode("utf-8", "surrogateescape") == (
        b"\x00\xff\x01"
    )
    assert members[LONG_NAME][1] == b"long"
    assert members["long-link"][0].linkname == "/" + LONG_NAME
    assert members["bin"][0].issym() and members["bin"][0].linkname == "usr/bin"
    assert members["etc/passwd-hard"][0].islnk()
    assert members["dev/null"][0].ischr() and members["dev/null"][0].devminor == 3
    assert members["dev/sda"][0].isblk() and members["dev/fifo"][0].isfifo()
    assert "var/.wh.gone" in members and "opq/.wh..wh..opq" in members
    assert members["empty"][1] == b""


@pytest.mark.parametrize("tar_format", ["gnu", "ustar"])
def test_other_tar_formats(tar_format: str) -> None:
    entries = [file("a/b.txt", b"abc", mtime=1_600_000_000), symlink("c", "a/b.txt")]
    if tar_format == "gnu":
        entries.append(file(LONG_NAME, b"long"))
    lay = layer(entries, tar_format=tar_format)
    members = read_tar(lay.tar)
    assert members["a/b.txt"][1] == b"abc"
    assert members["a/b.txt"][0].mtime == 1_600_000_000
    assert not any(m.pax_headers for m, _ in members.values())
    if tar_format == "gnu":
        assert members[LONG_NAME][1] == b"long"
        assert b"././@LongLink" in lay.tar


@pytest.mark.parametrize("producer", ["python", "gzip", "pigz", "multi-member", "fname"])
def test_gzip_producers_round_trip(producer: str) -> None:
    entries = [file("big.bin", random_bytes("prod", 300_000)), file("t.txt", text_bytes(1, 5000))]
    lay = layer(entries, producer=producer, seed="cuts", members=5)
    assert lay.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert lay.compression == "gzip"
    assert gzip.decompress(lay.blob) == lay.tar
    assert lay.blob[:2] == b"\x1f\x8b"
    assert lay.digest == sha256_digest(lay.blob) and lay.diff_id == sha256_digest(lay.tar)


def count_gzip_members(blob: bytes) -> int:
    members, rest = 0, blob
    while rest:
        d = zlib.decompressobj(31)
        d.decompress(rest)
        assert d.eof
        rest = d.unused_data
        members += 1
    return members


def test_multi_member_really_has_members() -> None:
    lay = layer(file("x", text_bytes(2, 200_000)), producer="multi-member", members=6, seed=3)
    assert count_gzip_members(lay.blob) == 6
    single = layer(file("x", text_bytes(2, 200_000)), producer="python")
    assert count_gzip_members(single.blob) == 1


def test_fname_header_fields() -> None:
    lay = layer(file("x", b"hello"), producer="fname")
    flags = lay.blob[3]
    assert flags & 0x04 and flags & 0x08 and flags & 0x10  # FEXTRA, FNAME, FCOMMENT
    assert b"layer.tar\x00" in lay.blob[:100]
    assert gzip.decompress(lay.blob) == lay.tar


def test_none_and_zstd_and_docker_media_types() -> None:
    plain = layer(file("x", b"1"), producer="none")
    assert plain.blob == plain.tar and plain.media_type == "application/vnd.oci.image.layer.v1.tar"
    zst = layer(file("x", b"1"), producer="zstd")
    assert zst.media_type.endswith("+zstd") and zst.blob[:4] == b"\x28\xb5\x2f\xfd"
    docker = layer(file("x", b"1"), docker=True)
    assert docker.media_type == DOCKER_LAYER + ".gzip"
    img = image(docker, docker=True)
    assert json.loads(img.manifest_bytes)["mediaType"] == DOCKER_MANIFEST


def test_builder_is_deterministic() -> None:
    for producer in ("python", "multi-member", "fname", "none"):
        a = layer(sample_entries(), producer=producer)
        b = layer(sample_entries(), producer=producer)
        assert a.digest == b.digest
    assert image(layer(file("a", b"1"))).digest == image(layer(file("a", b"1"))).digest


def test_image_and_index_documents() -> None:
    l1, l2 = layer(file("a", b"1")), layer(file("b", b"2"), producer="none")
    img = image(l1, l2, arch="arm64", variant="v8", config={"Cmd": ["/bin/sh"]})
    manifest = json.loads(img.manifest_bytes)
    assert manifest["mediaType"] == OCI_MANIFEST
    assert [d["digest"] for d in manifest["layers"]] == [l1.digest, l2.digest]
    assert manifest["config"]["digest"] == img.config_digest
    assert img.config["rootfs"]["diff_ids"] == [l1.diff_id, l2.diff_id]
    assert img.config["variant"] == "v8" and img.platform == "linux/arm64/v8"
    idx = index(img, image(l1, arch="amd64"))
    body = json.loads(idx.manifest_bytes)
    assert body["mediaType"] == OCI_INDEX
    assert [m["platform"]["architecture"] for m in body["manifests"]] == ["arm64", "amd64"]
    assert idx.for_platform("linux/amd64").architecture == "amd64"


def test_write_oci_layout(tmp_path: Path) -> None:
    img = image(layer(file("a", b"1")))
    root = write_oci_layout(tmp_path / "layout", img, "v1")
    top = json.loads((root / "index.json").read_text())
    (desc,) = top["manifests"]
    assert desc["digest"] == img.digest
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    for digest, data in img.blobs().items():
        assert (root / "blobs/sha256" / digest.split(":")[1]).read_bytes() == data
    write_oci_layout(root, image(layer(file("b", b"2"))), "v2")
    assert len(json.loads((root / "index.json").read_text())["manifests"]) == 2
    idx = index(image(layer(file("c", b"3")), arch="arm64", variant="v8"), img)
    write_oci_layout(root, idx, "v1")  # replaces the tag
    top = json.loads((root / "index.json").read_text())
    assert [m["digest"] for m in top["manifests"]] == [
        image(layer(file("b", b"2"))).digest,
        idx.digest,
    ]
    for digest, (_, body) in idx.manifests().items():
        assert (root / "blobs/sha256" / digest.split(":")[1]).read_bytes() == body


def test_path_kinds() -> None:
    digest = "sha256:" + "a" * 64
    assert path_kind("/v2/") == "base"
    assert path_kind("/v2/a/b/manifests/latest") == "manifest"
    assert path_kind(f"/v2/a/blobs/{digest}") == "blob"
    assert path_kind("/v2/a/blobs/uploads/123?_state=x") == "upload"


# --------------------------------------------------------------------------- registries


def smoke_image(name: str):
    return image(
        layer(file("hello.txt", f"hello from {name}\n".encode()), producer="pigz"),
        layer(file("big.bin", random_bytes(name, 9 << 20)), producer="python"),  # > 1 chunk
    )


def plain_get_manifest(url: str, auth=None) -> requests.Response:
    return requests.get(url, headers={"Accept": MANIFEST_ACCEPT}, auth=auth, timeout=10)


def check_stored(resp: requests.Response, img) -> None:
    assert resp.status_code == 200, resp.text
    assert resp.content == img.manifest_bytes
    assert resp.headers["Docker-Content-Digest"] == img.digest
    assert resp.headers["Content-Type"] == OCI_MANIFEST


def test_smoke_no_auth(registry) -> None:
    img = smoke_image("noauth")
    assert registry.push("smoke/noauth", "v1", img) == img.digest
    check_stored(plain_get_manifest(f"{registry.url}/v2/smoke/noauth/manifests/v1"), img)
    big = img.layers[1]
    resp = requests.get(
        registry.blob_url("smoke/noauth", big.digest),
        headers={"Range": "bytes=100-199"},
        timeout=10,
    )
    assert resp.status_code == 206 and resp.content == big.blob[100:200]


def test_smoke_basic_auth(basic_registry) -> None:
    img = smoke_image("basic")
    assert basic_registry.push("smoke/basic", "v1", img) == img.digest
    url = f"{basic_registry.url}/v2/smoke/basic/manifests/v1"
    denied = plain_get_manifest(url)
    assert denied.status_code == 401
    assert parse_challenge(denied.headers["WWW-Authenticate"])[0] == "basic"
    assert plain_get_manifest(url, auth=(basic_registry.username, "wrong")).status_code == 401
    check_stored(plain_get_manifest(url, auth=basic_registry.credentials), img)
    with pytest.raises(PushError):
        RegistryClient(basic_registry.url, (basic_registry.username, "wrong")).push(
            "smoke/basic", "v2", img
        )


def bearer_for(resp: requests.Response, auth=None) -> str:
    scheme, params = parse_challenge(resp.headers["WWW-Authenticate"])
    assert scheme == "bearer"
    token_resp = requests.get(
        params["realm"],
        params={"service": params["service"], "scope": params["scope"]},
        auth=auth,
        timeout=10,
    )
    assert token_resp.status_code == 200, token_resp.text
    return token_resp.json()["token"]


@pytest.mark.parametrize("repo", ["smoke/token", "private/smoke-token"])
def test_smoke_token_auth(token_registry, repo: str) -> None:
    img = smoke_image(repo)
    assert token_registry.push(repo, "v1", img) == img.digest
    url = f"{token_registry.url}/v2/{repo}/manifests/v1"
    challenge = plain_get_manifest(url)
    assert challenge.status_code == 401
    assert f"repository:{repo}:pull" in challenge.headers["WWW-Authenticate"]

    before = token_registry.tokens_issued
    anonymous = bearer_for(challenge)
    assert token_registry.tokens_issued == before + 1
    resp = requests.get(
        url,
        headers={"Accept": MANIFEST_ACCEPT, "Authorization": f"Bearer {anonymous}"},
        timeout=10,
    )
    if repo.startswith("private/"):
        assert resp.status_code == 401
        assert "insufficient_scope" in resp.headers["WWW-Authenticate"]
    else:
        check_stored(resp, img)

    token = bearer_for(challenge, auth=token_registry.credentials)
    check_stored(
        requests.get(
            url, headers={"Accept": MANIFEST_ACCEPT, "Authorization": f"Bearer {token}"}, timeout=10
        ),
        img,
    )
    _, params = parse_challenge(challenge.headers["WWW-Authenticate"])
    refused = requests.get(
        params["realm"],
        params={"service": params["service"], "scope": params["scope"]},
        auth=(token_registry.username, "wrong"),
        timeout=10,
    )
    assert refused.status_code == 401


def test_token_service_oauth_post(token_registry) -> None:
    service = token_registry.token_service
    form = {
        "grant_type": "password",
        "username": token_registry.username,
        "password": token_registry.password,
        "service": service.service,
        "scope": "repository:smoke/token:pull",
        "client_id": "test",
    }
    resp = requests.post(service.realm, data=form, timeout=10)
    assert resp.status_code == 200 and resp.json()["access_token"]
    form["password"] = "wrong"
    assert requests.post(service.realm, data=form, timeout=10).status_code == 401


def test_smoke_index_push(registry) -> None:
    base = layer(file("arch", b"?"))
    idx = index(
        image(base, layer(file("arch", b"amd64")), arch="amd64"),
        image(base, layer(file("arch", b"arm64")), arch="arm64", variant="v8"),
    )
    assert registry.push("smoke/index", "multi", idx) == idx.digest
    resp = plain_get_manifest(f"{registry.url}/v2/smoke/index/manifests/multi")
    assert resp.status_code == 200 and resp.content == idx.manifest_bytes
    for img in idx.images:
        got = plain_get_manifest(f"{registry.url}/v2/smoke/index/manifests/{img.digest}")
        assert got.content == img.manifest_bytes


def test_counting_proxy_counts_and_forwards(registry, counting_proxy) -> None:
    img = smoke_image("proxy")
    big = img.layers[1]
    proxy = counting_proxy(registry)
    # Push through the proxy: uploads' Location headers must lead back to the proxy.
    assert RegistryClient(proxy.url).push("smoke/proxy", "v1", img) == img.digest
    assert proxy.requests("upload") >= 3
    proxy.reset()
    check_stored(plain_get_manifest(f"{proxy.url}/v2/smoke/proxy/manifests/v1"), img)
    assert proxy.requests("manifest") == 1
    assert proxy.bytes("manifest") == len(img.manifest_bytes)
    resp = requests.get(
        f"{proxy.url}/v2/smoke/proxy/blobs/{big.digest}",
        headers={"Range": "bytes=1000-1999"},
        timeout=10,
    )
    assert resp.status_code == 206 and resp.content == big.blob[1000:2000]
    assert proxy.bytes("blob") == 1000 and proxy.records[-1].range == "bytes=1000-1999"
    full = requests.get(f"{proxy.url}/v2/smoke/proxy/blobs/{big.digest}", timeout=30)
    assert full.content == big.blob
    assert proxy.bytes("blob") == 1000 + len(big.blob)
    assert proxy.bytes() == proxy.bytes("blob") + proxy.bytes("manifest")


def test_counting_proxy_passes_token_challenges(token_registry, counting_proxy) -> None:
    img = smoke_image("smoke/token-proxy")
    token_registry.push("smoke/token-proxy", "v1", img)
    proxy = counting_proxy(token_registry)
    client = RegistryClient(proxy.url)
    body, _, digest = client.get_manifest("smoke/token-proxy", "v1")
    assert body == img.manifest_bytes and digest == img.digest
    assert client.tokens_fetched == 1
    assert [r.status for r in proxy.records] == [401, 200]


def test_tamper_blob_changes_served_bytes(registry) -> None:
    img = image(layer(file("t.bin", random_bytes("tamper-harness", 50_000)), producer="none"))
    registry.push("smoke/tamper", "v1", img)
    lay = img.layers[0]
    before = registry.tamper_blob(lay.digest, 30_000, b"EVIL")
    assert before == lay.blob[30_000:30_004]
    served = registry.client().get_blob("smoke/tamper", lay.digest)
    assert len(served) == len(lay.blob) and served != lay.blob
    assert served[30_000:30_004] == b"EVIL"
    registry.tamper_blob(lay.digest, 30_000, before)
    assert registry.client().get_blob("smoke/tamper", lay.digest) == lay.blob


def test_skopeo_copies_an_oci_layout(registry, tmp_path: Path) -> None:
    assert shutil.which("skopeo"), "skopeo is part of the test environment"
    img = image(layer(file("via-skopeo.txt", b"copied by skopeo\n"), producer="gzip"))
    write_oci_layout(tmp_path / "layout", img, "v1")
    subprocess.run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--quiet",
            f"oci:{tmp_path / 'layout'}:v1",
            f"docker://{registry.host}/smoke/skopeo:v1",
            "--dest-tls-verify=false",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    body, _, _ = registry.client().get_manifest("smoke/skopeo", "v1")
    assert [d["digest"] for d in json.loads(body)["layers"]] == [img.layers[0].digest]


def test_registry_that_cannot_start_fails_clearly(tmp_path: Path) -> None:
    server = RegistryServer(tmp_path)
    server.auth_config = {"token": {"realm": "http://127.0.0.1:1/token"}}  # incomplete: panics
    with pytest.raises(RuntimeError) as excinfo:
        server.start()
    server.stop()
    message = str(excinfo.value)
    assert "did not answer" in message
    assert "--- its output" in message and len(message.split("--- its output", 1)[1]) > 20
