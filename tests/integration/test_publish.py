"""Publishing indexes (`seekoci index --push`) and reading through them with an empty cache."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from imagebuilder import file, image, layer, random_bytes, text_bytes

import seekoci
from seekoci import soci

from .faults import Fault, FaultProxy

pytestmark = pytest.mark.integration

NEEDLE = b"found through a published index\n" * 10
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SOCI_V1 = "application/vnd.amazon.soci.index.v1+json"
NATIVE = "application/vnd.seekoci.index.v1"


def big_layer() -> Any:
    # 16 MB of incompressible bytes, the needle, 16 MB of text: about 20 MB of gzip, over
    # SOCI's 10 MiB minimum, with the needle far from both ends of the compressed stream.
    return layer(
        file("filler/random.bin", random_bytes("publish-random", 16 << 20)),
        file("needle/needle.txt", NEEDLE),
        file("filler/text.txt", text_bytes("publish-text", 16 << 20)),
        producer="python",
    )


@pytest.fixture(scope="module")
def published_image(registry: Any) -> Any:
    img = image(layer(file("base.txt", b"small base layer\n")), big_layer())
    registry.push("publish/native", "v1", img)
    registry.push("publish/soci", "v1", img)
    registry.push("publish/both", "v1", img)
    return img


def seekoci_cli(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seekoci", *args, "--cache-dir", str(cache)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def referrers(registry: Any, repo: str, digest: str) -> list[dict[str, Any]]:
    tag = "sha256-" + digest.split(":", 1)[1]
    response = requests.get(
        f"{registry.url}/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_INDEX}, timeout=10
    )
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["mediaType"] == OCI_INDEX
    return list(doc["manifests"])


def manifest(registry: Any, repo: str, digest: str) -> tuple[dict[str, Any], bytes]:
    response = requests.get(
        f"{registry.url}/v2/{repo}/manifests/{digest}", headers={"Accept": OCI_MANIFEST}, timeout=10
    )
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == digest.split(":", 1)[1]
    return response.json(), response.content


def blob(registry: Any, repo: str, digest: str) -> bytes:
    response = requests.get(f"{registry.url}/v2/{repo}/blobs/{digest}", timeout=30)
    assert response.status_code == 200
    return response.content


def test_native_index_serves_an_empty_cache_by_range(
    published_image: Any, registry: Any, counting_proxy: Any, tmp_path: Path
) -> None:
    ref = registry.ref("publish/native", "v1")
    pushed = seekoci_cli("index", ref, "--push", cache=tmp_path / "publisher")
    assert pushed.returncode == 0, pushed.stderr
    assert "pushed native index artifact" in pushed.stdout

    proxy = counting_proxy(registry)
    reader = seekoci.open_image(proxy.ref("publish/native", "v1"), cache_dir=tmp_path / "empty")
    assert reader.read_bytes("/needle/needle.txt") == NEEDLE
    big = published_image.layers[1]
    assert reader.layers[1].index_status == "native"
    # from the index: its header and directory, the entry pages that may hold the path, a
    # span page and the span's record; from the layer: its span up to the needle, no more
    layer_digest = reader.layers[1].digest
    layer_bytes = sum(
        r.body_bytes for r in proxy.records if r.kind == "blob" and layer_digest in r.path
    )
    index_bytes = proxy.bytes("blob") - layer_bytes
    assert index_bytes < 64 << 10, proxy.summary()
    assert 0 < layer_bytes <= (1 << 20) + (64 << 10), proxy.summary()
    assert proxy.bytes("blob") < big.size / 20, proxy.summary()
    # nothing of the published index was written to the reader's cache as if it were built
    assert not (tmp_path / "empty" / "indexes").exists()


def test_native_artifact_structure(published_image: Any, registry: Any, tmp_path: Path) -> None:
    ref = registry.ref("publish/native", "v1")
    assert seekoci_cli("index", ref, "--push", cache=tmp_path / "c").returncode == 0
    subject = published_image.digest
    entries = [
        m for m in referrers(registry, "publish/native", subject) if m.get("artifactType") == NATIVE
    ]
    assert entries, "no native artifact in the referrers tag"
    doc, _ = manifest(registry, "publish/native", entries[-1]["digest"])
    assert doc["artifactType"] == NATIVE
    assert doc["subject"]["digest"] == subject
    assert doc["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    layer_digests = [lay.digest for lay in published_image.layers]
    assert [b["annotations"]["dev.seekoci.layer.digest"] for b in doc["layers"]] == layer_digests
    for desc in doc["layers"]:
        data = blob(registry, "publish/native", desc["digest"])
        size = int(desc["annotations"]["dev.seekoci.index.metadata-size"])
        meta_digest = "sha256:" + hashlib.sha256(data[:size]).hexdigest()
        assert meta_digest == desc["annotations"]["dev.seekoci.index.metadata-digest"]
        assert data[:8] == b"SEEKOCIX"


def test_soci_index_is_what_the_soci_cli_pushes(
    published_image: Any, registry: Any, tmp_path: Path
) -> None:
    ref = registry.ref("publish/soci", "v1")
    pushed = seekoci_cli(
        "index", ref, "--push", "--format", "soci", "--span-size", str(1 << 20), cache=tmp_path
    )
    assert pushed.returncode == 0, pushed.stderr
    subject = published_image.digest
    listed = [
        m for m in referrers(registry, "publish/soci", subject) if m.get("artifactType") == SOCI_V1
    ]
    assert len(listed) == 1
    doc, raw = manifest(registry, "publish/soci", listed[0]["digest"])
    assert raw == json.dumps(doc, separators=(",", ":")).encode()  # compact, as the CLI writes
    assert "artifactType" not in doc
    assert doc["config"] == {
        "mediaType": SOCI_V1,
        "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest(),
        "size": 2,
    }
    assert blob(registry, "publish/soci", doc["config"]["digest"]) == b"{}"
    assert doc["subject"]["digest"] == subject
    assert "com.amazon.soci.build-tool-identifier" in doc["annotations"]
    # the small base layer is under SOCI's 10 MiB minimum and gets no zTOC
    big = published_image.layers[1]
    assert len(doc["layers"]) == 1
    ztoc_desc = doc["layers"][0]
    assert ztoc_desc["mediaType"] == "application/octet-stream"
    assert ztoc_desc["annotations"] == {
        "com.amazon.soci.image-layer-digest": big.digest,
        "com.amazon.soci.image-layer-mediaType": big.media_type,
        "com.amazon.soci.span-size": str(1 << 20),
    }
    ztoc = soci.read_ztoc(blob(registry, "publish/soci", ztoc_desc["digest"]))
    assert ztoc.compressed_size == big.size
    # as SOCI counts it: up to the end-of-archive marker, without the record padding after it
    assert ztoc.uncompressed_size % 512 == 0
    assert len(big.tar) - 10240 < ztoc.uncompressed_size <= len(big.tar)
    assert ztoc.max_span_id + 1 == len(ztoc.span_digests)
    # the same checkpoints as building the zTOC locally from the blob
    import io

    local = soci.read_ztoc(soci.build_ztoc(io.BytesIO(big.blob), span_size=1 << 20))
    assert ztoc.checkpoints == local.checkpoints
    assert ztoc.span_digests == local.span_digests
    names = [f.name for f in ztoc.files]
    assert "needle/needle.txt" in names


def test_soci_index_serves_an_empty_cache(
    published_image: Any, registry: Any, counting_proxy: Any, tmp_path: Path
) -> None:
    ref = registry.ref("publish/soci", "v1")
    pushed = seekoci_cli("index", ref, "--push", "--format", "soci", cache=tmp_path / "p")
    assert pushed.returncode == 0, pushed.stderr
    proxy = counting_proxy(registry)
    reader = seekoci.open_image(proxy.ref("publish/soci", "v1"), cache_dir=tmp_path / "empty")
    assert reader.layers[1].index_status == "soci"
    assert reader.read_bytes("/needle/needle.txt") == NEEDLE
    big = published_image.layers[1]
    assert proxy.bytes("blob") < big.size / 2, proxy.summary()


def test_a_soci_read_reads_the_ztoc_while_its_digest_is_checked(
    published_image: Any, registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The zTOC is fetched ahead in a worker, which reads it (lazy_layer_index) while
    another thread hashes it: the read uses that index, and reads the zTOC no second time."""
    import threading

    from seekoci.formats import ztoc

    ref = registry.ref("publish/soci", "v1")
    pushed = seekoci_cli("index", ref, "--push", "--format", "soci", cache=tmp_path / "p")
    assert pushed.returncode == 0, pushed.stderr
    calls: list[tuple[str, str]] = []
    real = ztoc.lazy_layer_index

    def lazy_layer_index(data: bytes, **kwargs: Any) -> Any:
        calls.append((threading.current_thread().name, kwargs["layer_digest"]))
        return real(data, **kwargs)

    monkeypatch.setattr(ztoc, "lazy_layer_index", lazy_layer_index)
    reader = seekoci.open_image(ref, cache_dir=tmp_path / "empty")
    assert reader.read_bytes("/needle/needle.txt") == NEEDLE
    assert reader.layers[1].index_status == "soci"
    big = published_image.layers[1]
    assert [digest for _, digest in calls] == [big.digest]
    assert calls[0][0] != threading.current_thread().name, "not read in the fetching worker"


def test_a_ztoc_that_is_not_its_digest_is_not_used(
    published_image: Any, registry: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every copy of the zTOC arrives with one byte changed: whatever reading it made of it
    is dropped, the layer is indexed another way, and the bytes are still right."""
    ref = registry.ref("publish/soci", "v1")
    pushed = seekoci_cli("index", ref, "--push", "--format", "soci", cache=tmp_path / "p")
    assert pushed.returncode == 0, pushed.stderr
    subject = published_image.digest
    listed = [
        m for m in referrers(registry, "publish/soci", subject) if m.get("artifactType") == SOCI_V1
    ]
    ztocs = [manifest(registry, "publish/soci", m["digest"])[0]["layers"][0] for m in listed]
    proxy = FaultProxy(registry.url)
    try:
        proxy.faults = [Fault("flip", None, match=z["digest"]) for z in ztocs]
        reader = seekoci.open_image(proxy.ref("publish/soci", "v1"), cache_dir=tmp_path / "e")
        with caplog.at_level("WARNING", logger="seekoci"):
            assert reader.read_bytes("/needle/needle.txt") == NEEDLE
        # each zTOC tried (earlier tests published several): fetched and refetched, and no
        # more -- a second mismatch is final
        assert max(f.hits for f in proxy.faults) == 2
        assert reader.layers[1].index_status != "soci"
        assert "content has digest" in caplog.text, caplog.text
    finally:
        proxy.stop()


def test_a_soci_span_is_inflated_as_it_arrives(
    published_image: Any, registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SOCI span fetched for a read is fed to the inflater piece by piece as the body
    arrives; a span damaged on the way is fetched again and decoded from the right bytes;
    one damaged every time is an IntegrityError naming it."""
    from seekoci.errors import IntegrityError
    from seekoci.formats import gzip as gzip_format

    ref = registry.ref("publish/soci", "v1")
    pushed = seekoci_cli("index", ref, "--push", "--format", "soci", cache=tmp_path / "p")
    assert pushed.returncode == 0, pushed.stderr
    pieces: list[int] = []
    real_feed = gzip_format.SpanDecoder.feed

    def feed(self: Any, data: Any) -> None:
        pieces.append(len(data))
        real_feed(self, data)

    monkeypatch.setattr(gzip_format.SpanDecoder, "feed", feed)
    reader = seekoci.open_image(ref, cache_dir=tmp_path / "empty")
    assert reader.read_bytes("/needle/needle.txt") == NEEDLE
    assert reader.layers[1].index_status == "soci"
    assert len(pieces) > 1, "the span was not fed as it arrived"

    big = published_image.layers[1]
    proxy = FaultProxy(registry.url)
    try:
        proxy.faults = [Fault("flip", 1, match=big.digest)]
        reader = seekoci.open_image(proxy.ref("publish/soci", "v1"), cache_dir=tmp_path / "f1")
        assert reader.read_bytes("/needle/needle.txt") == NEEDLE
        assert proxy.faults[0].hits == 1
        proxy.faults = [Fault("flip", None, match=big.digest)]
        reader = seekoci.open_image(proxy.ref("publish/soci", "v1"), cache_dir=tmp_path / "f2")
        with pytest.raises(IntegrityError, match="does not match its digest"):
            reader.read_bytes("/needle/needle.txt")
        assert proxy.faults[0].hits == 2  # the span and one refetch, as fetch() does
    finally:
        proxy.stop()


def test_both_kinds_coexist_and_other_referrers_survive(
    published_image: Any, registry: Any, tmp_path: Path
) -> None:
    ref = registry.ref("publish/both", "v1")
    assert seekoci_cli("index", ref, "--push", cache=tmp_path).returncode == 0
    assert seekoci_cli("index", ref, "--push", "--format", "soci", cache=tmp_path).returncode == 0
    kinds = {
        m.get("artifactType") for m in referrers(registry, "publish/both", published_image.digest)
    }
    assert {NATIVE, SOCI_V1} <= kinds
    inspected = seekoci_cli("inspect", ref, "--json", cache=tmp_path / "fresh")
    assert inspected.returncode == 0, inspected.stderr
    layers = json.loads(inspected.stdout)["layers"]
    assert set(layers[1]["published_indexes"]) == {"native", "soci"}
    assert layers[1]["index"] == "native"  # seekoci's own is preferred over SOCI's


def test_local_cache_comes_before_published_indexes(
    published_image: Any, registry: Any, counting_proxy: Any, tmp_path: Path
) -> None:
    # build the cache from a repository with nothing published (same layers, same digests)
    registry.push("publish/local", "v1", published_image)
    cache = tmp_path / "cache"
    built = seekoci_cli("index", registry.ref("publish/local", "v1"), cache=cache)
    assert built.returncode == 0 and "built" in built.stdout, built.stdout + built.stderr
    pushed = seekoci_cli("index", registry.ref("publish/native", "v1"), "--push", cache=cache)
    assert pushed.returncode == 0, pushed.stderr
    proxy = counting_proxy(registry)
    reader = seekoci.open_image(proxy.ref("publish/native", "v1"), cache_dir=cache)
    assert reader.read_bytes("/needle/needle.txt") == NEEDLE
    assert reader.layers[1].index_status == "cached"
    assert not any("sha256-" in r.path for r in proxy.records), "looked for referrers anyway"


def test_soci_push_refuses_an_image_without_qualifying_layers(
    registry: Any, tmp_path: Path
) -> None:
    registry.push("publish/small", "v1", image(layer(file("a.txt", b"tiny\n"))))
    pushed = seekoci_cli(
        "index", registry.ref("publish/small", "v1"), "--push", "--format", "soci", cache=tmp_path
    )
    assert pushed.returncode == 1
    assert "no layer qualifies" in pushed.stderr and "Traceback" not in pushed.stderr


def test_a_second_reader_remembers_where_the_published_index_is(
    published_image: Any, registry: Any, counting_proxy: Any, tmp_path: Path
) -> None:
    ref = registry.ref("publish/native", "v1")
    assert seekoci_cli("index", ref, "--push", cache=tmp_path / "publisher").returncode == 0
    cache = tmp_path / "reader"
    proxy = counting_proxy(registry)  # one registry address for both readers
    first = seekoci.open_image(proxy.ref("publish/native", "v1"), cache_dir=cache)
    assert first.read_bytes("/needle/needle.txt") == NEEDLE
    assert first.layers[1].index_status == "native"
    assert any("sha256-" in r.path for r in proxy.records)  # the first one had to look

    proxy.reset()
    second = seekoci.open_image(proxy.ref("publish/native", "v1"), cache_dir=cache)
    assert second.read_bytes("/needle/needle.txt") == NEEDLE
    assert second.layers[1].index_status == "native"
    paths = [r.path for r in proxy.records]
    assert not any("sha256-" in p or "/referrers/" in p for p in paths), paths  # no discovery
    # no metadata re-read either: the needle's span is in the span cache, so only the
    # manifest and config travel (and a window, if the index could not be read locally)
    assert proxy.bytes("blob") < 64 << 10, proxy.summary()
