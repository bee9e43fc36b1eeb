"""Artifacts whose layers are plain files (ORAS pushes, Docker model artifacts, ModelPack)
next to tar layers, and model headers and tensors read from them and from tar layers while
counting the bytes on the wire."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from imagebuilder import dir, file, image, layer, random_bytes, sha256_digest
from modelfiles import bf16_round, gguf_bytes, safetensors_bytes

import seekoci
from seekoci.models import gguf_metadata, read_tensor, safetensors_metadata

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
TITLE = "org.opencontainers.image.title"
RNG = np.random.default_rng(11)

SMALL = RNG.standard_normal((8, 8)).astype(np.float16)
BF = bf16_round(RNG.standard_normal((4, 6)).astype(np.float32))
F32 = RNG.standard_normal(16).astype(np.float32)
WEIGHTS = RNG.standard_normal((1024, 1024)).astype(np.float32)  # 4 MiB
SAFETENSORS = safetensors_bytes(
    {"small": ("F16", SMALL), "bf": ("BF16", BF), "f": ("F32", F32), "weights": ("F32", WEIGHTS)}
)
README = b"# a model card\n"


def push_artifact(
    registry, repo: str, tag: str, files: list[tuple[bytes, str, dict[str, str]]], **kw
) -> str:
    """Push raw blobs as layers (media type, annotations each) with an ORAS-style manifest."""
    client = registry.client()
    config = kw.get("config", b"{}")
    config_type = kw.get("config_type", EMPTY)
    client.push_blob(repo, config)
    layers = []
    for data, media_type, notes in files:
        client.push_blob(repo, data)
        desc = {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data)}
        if notes:
            desc["annotations"] = notes
        layers.append(desc)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": kw.get("artifact_type", "application/vnd.example.model.v1"),
        "config": {"mediaType": config_type, "digest": sha256_digest(config), "size": len(config)},
        "layers": layers,
    }
    body = json.dumps(manifest).encode()
    client.push_manifest(repo, tag, body, OCI_MANIFEST)
    return registry.ref(repo, tag)


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory) -> bytes:
    tensors = {
        "tok_embd.weight": RNG.standard_normal((1024, 512)).astype(np.float16),  # 1 MiB
        "output.weight": RNG.standard_normal((1024, 1024)).astype(np.float32),  # 4 MiB
    }
    kv = {"general.name": "tiny", "llama.context_length": 2048, "tokenizer.ggml.tokens": ["a"]}
    return gguf_bytes(tmp_path_factory.mktemp("gguf"), tensors, kv)


@pytest.fixture(scope="module")
def oras_artifact(registry, gguf_file: bytes) -> str:
    tokenizer = layer(dir("tokenizer"), file("tokenizer/vocab.txt", b"a\nb\n"))
    pushed_dir = layer(file("extra/notes.txt", b"notes\n"))  # oras push extra/ (a directory)
    return push_artifact(
        registry,
        "artifacts/oras",
        "v1",
        [
            # ORAS's default media type for a file, though the bytes are no tar
            (gguf_file, "application/vnd.oci.image.layer.v1.tar", {TITLE: "model.gguf"}),
            (README, "text/markdown", {TITLE: "README.md"}),
            (
                pushed_dir.blob,
                pushed_dir.media_type,
                {TITLE: "extra", "io.deis.oras.content.unpack": "true"},
            ),
            (tokenizer.blob, tokenizer.media_type, {}),
        ],
    )


@pytest.fixture(scope="module")
def model_artifacts(registry, gguf_file: bytes) -> dict[str, str]:
    docker = push_artifact(
        registry,
        "artifacts/docker-model",
        "v1",
        [(gguf_file, "application/vnd.docker.ai.gguf.v3", {TITLE: "model.gguf"})],
        config=json.dumps({"config": {"format": "gguf", "size": "5 MB"}}).encode(),
        config_type="application/vnd.docker.ai.model.config.v0.1+json",
    )
    modelpack = push_artifact(
        registry,
        "artifacts/modelpack",
        "v1",
        [
            (
                SAFETENSORS,
                "application/vnd.cncf.model.weight.v1.raw",
                {"org.cncf.model.filepath": "weights/model.safetensors"},
            ),
            (README, "application/vnd.cncf.model.doc.v1.raw", {}),  # no name: its digest
        ],
        config=b"format: safetensors\n",  # not JSON: an artifact's config may be anything
        config_type="application/vnd.example.config.v1+yaml",
        artifact_type="application/vnd.cncf.model.manifest.v1+json",
    )
    return {"docker": docker, "modelpack": modelpack}


def test_oras_files_show_at_the_root_and_tar_layers_merge(oras_artifact: str, gguf_file) -> None:
    img = seekoci.open_image(oras_artifact)
    assert img.config == {} and img.platform == "unknown/unknown"
    assert img.listdir("/") == ["README.md", "extra", "model.gguf", "tokenizer"]
    assert img.read_bytes("/README.md") == README
    assert img.read_bytes("/extra/notes.txt") == b"notes\n"
    assert img.read_bytes("/tokenizer/vocab.txt") == b"a\nb\n"
    info = img.stat("/model.gguf")
    assert (info.type, info.size, info.mode) == ("file", len(gguf_file), 0o644)
    assert info.layer == img.layers[0].digest
    assert img.layers[0].format == "file" and img.layers[3].format == "tar"
    with img.open("/model.gguf") as f:
        f.seek(-100, 2)
        assert f.read() == gguf_file[-100:]
    assert img.read_bytes("/model.gguf") == gguf_file
    walked = list(img.walk("/"))
    assert walked[0] == ("/", ["extra", "tokenizer"], ["README.md", "model.gguf"])
    img.build_index()  # nothing to index for the file layers; the tar layers index as usual
    assert img.layers[0].index_status == "direct"
    assert img.exists("/model.gguf") and not img.exists("/model.gguf/x")
    # a platform asked for: the config names none, so none says otherwise (API.md)
    pinned = seekoci.open_image(oras_artifact, platform="linux/amd64")
    assert pinned.digest == img.digest and pinned.platform == "unknown/unknown"
    assert pinned.read_bytes("/README.md") == README


def test_docker_model_artifact_and_modelpack(model_artifacts: dict[str, str], gguf_file) -> None:
    docker = seekoci.open_image(model_artifacts["docker"])
    assert docker.config["config"]["format"] == "gguf"
    assert docker.listdir("/") == ["model.gguf"]
    assert gguf_metadata(docker, "/model.gguf")["metadata"]["general.name"] == "tiny"
    pack = seekoci.open_image(model_artifacts["modelpack"])
    assert pack.config == {}
    readme_name = sha256_digest(README)
    assert pack.listdir("/") == [readme_name, "weights"]
    assert pack.read_bytes("/" + readme_name) == README
    assert pack.listdir("/weights") == ["model.safetensors"]
    np.testing.assert_array_equal(read_tensor(pack, "/weights/model.safetensors", "bf"), BF)


def test_gguf_header_from_an_artifact_fetches_only_the_header(
    oras_artifact: str, registry, counting_proxy, gguf_file: bytes
) -> None:
    proxy = counting_proxy(registry)
    img = seekoci.open_image(proxy.ref("artifacts/oras", "v1"))
    proxy.reset()
    meta = gguf_metadata(img, "/model.gguf")
    assert [t["name"] for t in meta["tensors"]] == ["tok_embd.weight", "output.weight"]
    out = meta["tensors"][1]
    want = np.frombuffer(gguf_file[out["offset"] : out["offset"] + 64], dtype="<f4")
    assert want.size == 16
    # the tar layers above it are indexed (they might hide it); of the 5 MB GGUF only the
    # first 64 KiB travelled
    gguf_digest = sha256_digest(gguf_file)
    from_gguf = sum(r.body_bytes for r in proxy.records if r.path.endswith(gguf_digest))
    assert from_gguf == 64 << 10, proxy.summary()
    assert len(gguf_file) > 5 << 20


def test_read_tensor_from_an_artifact_fetches_header_and_that_tensor(
    model_artifacts: dict[str, str], registry, counting_proxy
) -> None:
    proxy = counting_proxy(registry)
    img = seekoci.open_image(proxy.ref("artifacts/modelpack", "v1"))
    proxy.reset()
    got = read_tensor(img, "/weights/model.safetensors", "small")
    np.testing.assert_array_equal(got, SMALL)
    header_len = 8 + int.from_bytes(SAFETENSORS[:8], "little")
    assert proxy.bytes("blob") == header_len + SMALL.nbytes, proxy.summary()
    proxy.reset()
    np.testing.assert_array_equal(read_tensor(img, "/weights/model.safetensors", "f"), F32)
    assert proxy.bytes("blob") == header_len + F32.nbytes, proxy.summary()


def test_tensors_from_a_tar_layer_fetch_spans_not_weights(
    registry, counting_proxy, tmp_path: Path, gguf_file: bytes
) -> None:
    shard2 = safetensors_bytes({"extra": ("F32", F32)})
    index = {
        "metadata": {"total_size": 0},
        "weight_map": {
            **{k: "model-00001-of-00002.safetensors" for k in ("small", "bf", "f", "weights")},
            "extra": "model-00002-of-00002.safetensors",
        },
    }
    lay = layer(
        file("models/m/model-00001-of-00002.safetensors", SAFETENSORS),
        file("models/m/filler.bin", random_bytes("models-filler", 4 << 20)),
        file("models/m/model-00002-of-00002.safetensors", shard2),
        file("models/m/model.safetensors.index.json", json.dumps(index).encode()),
        file("models/q/model.gguf", gguf_file),
    )
    registry.push("models/tar", "v1", image(lay))
    cache = tmp_path / "cache"
    seekoci.open_image(registry.ref("models/tar", "v1"), cache_dir=cache).build_index()
    proxy = counting_proxy(registry)
    img = seekoci.open_image(proxy.ref("models/tar", "v1"), cache_dir=cache)
    proxy.reset()
    got = read_tensor(img, "/models/m/model.safetensors.index.json", "bf")
    np.testing.assert_array_equal(got, BF)
    # about a span (1 MiB) around the header and tensor, not the 4 MiB of weights
    assert proxy.bytes("blob") < 2 << 20, proxy.summary()
    np.testing.assert_array_equal(
        read_tensor(img, "/models/m/model.safetensors.index.json", "extra"), F32
    )
    assert safetensors_metadata(img, "/models/m/model-00001-of-00002.safetensors")["f"]["shape"]
    proxy.reset()
    meta = gguf_metadata(img, "/models/q/model.gguf")  # 5 MB of GGUF in the same layer
    assert meta["metadata"]["general.name"] == "tiny" and len(meta["tensors"]) == 2
    assert proxy.bytes("blob") < 2 << 20, proxy.summary()


def test_a_tampered_file_blob_is_an_integrity_error(registry) -> None:
    data = b"exactly these bytes\n" * 10
    big = random_bytes("tamper-big", 2 << 20)
    ref = push_artifact(
        registry,
        "artifacts/tampered",
        "v1",
        [(data, "text/plain", {TITLE: "small.txt"}), (big, "application/octet-stream", {})],
    )
    registry.tamper_blob(sha256_digest(data), 0, b"E")
    registry.tamper_blob(sha256_digest(big), 100, b"\0\0")
    img = seekoci.open_image(ref, cache_dir=False)
    with pytest.raises(seekoci.IntegrityError, match=r"small\.txt"):
        img.read_bytes("/small.txt")
    name = "/" + sha256_digest(big)
    with pytest.raises(seekoci.IntegrityError):
        img.read_bytes(name)  # a whole read is checked against the digest
    with img.open(name) as f:  # a part of a large blob cannot be checked on its own
        f.seek(1 << 20)
        assert f.read(10) == big[1 << 20 : (1 << 20) + 10]
    with img.open(name) as f, pytest.raises(seekoci.IntegrityError):  # read in pieces
        while f.read(300_000):
            pass
    with img.open(name) as f:  # once seeking, reads are ranges, not a check of the whole
        f.seek(5)
        assert len(f.read()) == len(big) - 5


def test_models_cli_on_an_artifact_reads_only_headers(
    oras_artifact: str, model_artifacts: dict[str, str], registry, counting_proxy, gguf_file
) -> None:
    import io

    from seekoci import cli

    proxy = counting_proxy(registry)
    out = io.StringIO()
    assert cli.main(["models", proxy.ref("artifacts/modelpack", "v1"), "--json"], out=out) == 0
    (found,) = json.loads(out.getvalue())
    assert found["path"] == "/weights/model.safetensors" and found["format"] == "safetensors"
    assert found["tensors"] == 4 and found["dtypes"] == {"BF16": 1, "F16": 1, "F32": 2}
    assert found["parameters"] == SMALL.size + BF.size + F32.size + WEIGHTS.size
    assert found["bytes"] == len(SAFETENSORS)
    header_len = 8 + int.from_bytes(SAFETENSORS[:8], "little")
    weights = sha256_digest(SAFETENSORS)
    from_weights = sum(r.body_bytes for r in proxy.records if r.path.endswith(weights))
    assert from_weights == header_len, proxy.summary()
    out = io.StringIO()
    assert cli.main(["models", oras_artifact], out=out) == 0
    assert out.getvalue().startswith("/model.gguf\n  gguf: 2 tensors")
