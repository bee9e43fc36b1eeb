"""Failures: missing images, corrupt manifests and blobs, a registry that lies, no disk cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from imagebuilder import (
    OCI_MANIFEST,
    file,
    image,
    layer,
    random_bytes,
    sha256_digest,
    text_bytes,
    write_oci_layout,
)

import seekoci

from .servers import FakeResponse, free_port

pytestmark = pytest.mark.integration


def names_digest(exc: BaseException, digest: str) -> bool:
    """Whether a message names a digest (in full or by its first 12 hex digits)."""
    return digest.split(":", 1)[1][:12] in str(exc)


def files_under(*roots: Path) -> list[Path]:
    return [Path(d) / f for root in roots for d, _, fs in os.walk(root) for f in fs]


# --------------------------------------------------------------------------- not found


def test_missing_tag(registry, cache_dir: Path) -> None:
    registry.push("errors/present", "v1", image(layer(file("a", b"a"))))
    with pytest.raises(seekoci.ImageNotFoundError) as excinfo:
        seekoci.open_image(registry.ref("errors/present", "no-such-tag"), cache_dir=cache_dir)
    assert isinstance(excinfo.value, LookupError)
    assert isinstance(excinfo.value, seekoci.RegistryError)
    assert excinfo.value.status == 404
    assert "errors/present" in str(excinfo.value)


def test_missing_repository_and_digest(registry, cache_dir: Path) -> None:
    with pytest.raises(seekoci.ImageNotFoundError):
        seekoci.open_image(registry.ref("errors/never-pushed", "v1"), cache_dir=cache_dir)
    registry.push("errors/present", "v1", image(layer(file("a", b"a"))))
    absent = sha256_digest(b"no manifest has these bytes")
    with pytest.raises(seekoci.ImageNotFoundError):
        seekoci.open_image(registry.ref("errors/present", absent), cache_dir=cache_dir)


def test_unreachable_registry_is_a_registry_error(cache_dir: Path) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(seekoci.RegistryError):
        seekoci.open_image(f"127.0.0.1:{port}/errors/down:v1", cache_dir=cache_dir)


def test_malformed_reference(cache_dir: Path) -> None:
    with pytest.raises(seekoci.SeekociError):
        seekoci.open_image("127.0.0.1:5000/UPPER/Case::bad@@", cache_dir=cache_dir)


# --------------------------------------------------------------------------- bad documents


#: a body json cannot read, and one nested deeper than its parser follows (~1,000 levels)
NOT_JSON = [b"this is not json at all\n", b"[" * 100_000]
not_json = pytest.mark.parametrize("body", NOT_JSON, ids=["garbage", "deep"])


@not_json
def test_manifest_that_is_not_json(registry, counting_proxy, cache_dir: Path, body: bytes) -> None:
    # The registry refuses to store such a manifest, so a proxy plays the lying registry.
    proxy = counting_proxy(registry)
    headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": sha256_digest(body)}
    proxy.fakes["/v2/errors/notjson/manifests/v1"] = FakeResponse(200, body, headers)
    with pytest.raises(seekoci.FormatError) as excinfo:
        seekoci.open_image(proxy.ref("errors/notjson", "v1"), cache_dir=cache_dir)
    assert "errors/notjson" in str(excinfo.value)
    assert proxy.requests("manifest") >= 1


@pytest.mark.parametrize(
    "garbage", [b"\x00\x01 definitely not a manifest", b"[" * 100_000], ids=["garbage", "deep"]
)
def test_manifest_that_is_not_json_in_an_oci_layout(
    tmp_path: Path, cache_dir: Path, garbage: bytes
) -> None:
    root = write_oci_layout(tmp_path / "layout", image(layer(file("a", b"a"))), "v1")
    index = json.loads((root / "index.json").read_text())
    (root / "blobs/sha256" / sha256_digest(garbage).split(":")[1]).write_bytes(garbage)
    index["manifests"][0].update(digest=sha256_digest(garbage), size=len(garbage))
    (root / "index.json").write_text(json.dumps(index))
    with pytest.raises(seekoci.FormatError):
        seekoci.open_image(f"oci:{root}:v1", cache_dir=cache_dir)


@pytest.mark.parametrize("config", [b"<config>not json</config>", b'{"a":' * 50_000])
def test_config_blob_that_is_not_json(registry, cache_dir: Path, config: bytes) -> None:
    lay = layer(file("a.txt", b"a\n"))
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256_digest(config),
            "size": len(config),
        },
        "layers": [lay.descriptor()],
    }
    client = registry.client()
    client.push_blob("errors/badconfig", config)
    client.push_blob("errors/badconfig", lay.blob)
    client.push_manifest("errors/badconfig", "v1", json.dumps(manifest).encode(), OCI_MANIFEST)
    with pytest.raises(seekoci.FormatError):
        img = seekoci.open_image(registry.ref("errors/badconfig", "v1"), cache_dir=cache_dir)
        _ = img.config


def test_layer_that_is_not_gzip(registry, cache_dir: Path) -> None:
    good = layer(file("fine.txt", b"fine\n"))
    junk = random_bytes("not-gzip", 50_000)
    bad_descriptor = {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": sha256_digest(junk),
        "size": len(junk),
    }
    img = image(good)
    manifest = json.loads(img.manifest_bytes)
    manifest["layers"].append(bad_descriptor)
    client = registry.client()
    for blob in (*img.blobs().values(), junk):
        client.push_blob("errors/notgzip", blob)
    client.push_manifest("errors/notgzip", "v1", json.dumps(manifest).encode(), OCI_MANIFEST)
    with pytest.raises(seekoci.FormatError) as excinfo:
        opened = seekoci.open_image(registry.ref("errors/notgzip", "v1"), cache_dir=cache_dir)
        opened.read_bytes("/fine.txt")
    assert names_digest(excinfo.value, bad_descriptor["digest"])


# --------------------------------------------------------------------------- lying registry


def tamper_case(name: str, producer: str):
    """A one-layer image whose file is incompressible: deflate stores it verbatim, so bytes
    changed in the blob inflate without any deflate error: only a digest check can notice."""
    data = random_bytes(f"tamper-{name}", 600_000)
    lay = layer(file("victim.bin", data), file("after.txt", b"after\n"), producer=producer)
    return image(lay), lay, data


@pytest.mark.parametrize("producer", ["python", "none"])
def test_tampered_blob_is_never_returned(registry, producer: str, cache_dir: Path) -> None:
    img, lay, data = tamper_case(f"fresh-{producer}", producer)
    repo = f"errors/tampered-{producer}"
    registry.push(repo, "v1", img)
    registry.tamper_blob(lay.digest, len(lay.blob) // 2, b"TAMPERED")
    with pytest.raises((seekoci.IntegrityError, seekoci.FormatError)) as excinfo:
        opened = seekoci.open_image(registry.ref(repo, "v1"), cache_dir=cache_dir)
        got = opened.read_bytes("/victim.bin")
        assert got == data, "tampered bytes were returned"
    assert names_digest(excinfo.value, lay.digest)


@pytest.mark.parametrize("producer", ["python", "none"])
def test_a_tampered_blob_fails_a_whole_image_copy_cleanly(
    registry, producer: str, tmp_path: Path
) -> None:
    """``get /`` with no index streams the layer and stages its files as they pass (on a
    writer thread): a blob that fails its digest fails the copy with the layer named, no
    staged file is left behind and nothing of the tampered bytes is placed."""
    img, lay, _ = tamper_case(f"extract-{producer}", producer)
    repo = f"errors/tampered-extract-{producer}"
    registry.push(repo, "v1", img)
    registry.tamper_blob(lay.digest, len(lay.blob) // 2, b"TAMPERED")
    opened = seekoci.open_image(registry.ref(repo, "v1"), cache_dir=tmp_path / "cache")
    dest = tmp_path / "rootfs"
    with pytest.raises((seekoci.IntegrityError, seekoci.FormatError)) as excinfo:
        opened.extract("/", dest)
    assert names_digest(excinfo.value, lay.digest)
    left = [p.relative_to(dest) for p in dest.rglob("*")] if dest.exists() else []
    assert left == [], left  # the staging directory went with the error


@pytest.mark.parametrize("producer", ["python", "none"])
def test_tampered_after_indexing_never_returns_wrong_bytes(
    registry, producer: str, tmp_path: Path
) -> None:
    """An index built from the true blob, then the registry starts lying."""
    img, lay, data = tamper_case(f"indexed-{producer}", producer)
    repo = f"errors/tampered-late-{producer}"
    registry.push(repo, "v1", img)
    cache = tmp_path / "cache"
    seekoci.open_image(registry.ref(repo, "v1"), cache_dir=cache).build_index()
    registry.tamper_blob(lay.digest, len(lay.blob) // 2, b"TAMPERED")
    opened = seekoci.open_image(registry.ref(repo, "v1"), cache_dir=cache)
    try:
        got = opened.read_bytes("/victim.bin")
    except (seekoci.IntegrityError, seekoci.FormatError) as exc:
        assert names_digest(exc, lay.digest)
    else:
        assert got == data, "tampered bytes were returned"


# --------------------------------------------------------------------------- disk use


def test_cache_dir_false_writes_nothing(
    registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lay = layer(file("nocache/data.bin", text_bytes("nocache", 300_000)), producer="pigz")
    registry.push("errors/nocache", "v1", image(lay))
    env_dirs = [tmp_path / name for name in ("seekoci", "xdg", "home")]
    for d in env_dirs:
        d.mkdir()
    monkeypatch.setenv("SEEKOCI_CACHE_DIR", str(env_dirs[0]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(env_dirs[1]))
    monkeypatch.setenv("HOME", str(env_dirs[2]))
    img = seekoci.open_image(registry.ref("errors/nocache", "v1"), cache_dir=False)
    img.build_index()
    assert img.read_bytes("/nocache/data.bin") == lay.entries[0].data
    assert files_under(*env_dirs) == []


def test_default_cache_dir_is_the_environment_variable(
    registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lay = layer(file("envcache/data.bin", text_bytes("envcache", 300_000)), producer="pigz")
    registry.push("errors/envcache", "v1", image(lay))
    env_cache = tmp_path / "from-env"
    monkeypatch.setenv("SEEKOCI_CACHE_DIR", str(env_cache))
    img = seekoci.open_image(registry.ref("errors/envcache", "v1"))
    img.build_index()
    assert img.read_bytes("/envcache/data.bin") == lay.entries[0].data
    assert files_under(env_cache), "nothing was kept in $SEEKOCI_CACHE_DIR"
