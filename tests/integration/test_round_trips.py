"""Round trips: what a read asks the registry, cold (empty cache) and warm (all cached).

Warm, a digest reference asks nothing and a tag reference only for the manifest the tag
names now; cold, with an index published next to the image, the requests that do not
depend on each other go out together (counted as a chain through a delaying proxy).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from imagebuilder import file, image, layer, random_bytes, text_bytes

import seekoci
import seekoci.cache

pytestmark = pytest.mark.integration

NEEDLE = b"read with few round trips\n" * 8
TOP = b"a file of the top layer\n"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def big_layer() -> Any:
    # ~7 MB of gzip, the needle far from both ends of the stream
    return layer(
        file("filler/random.bin", random_bytes("rtt-random", 6 << 20)),
        file("needle/needle.txt", NEEDLE),
        file("filler/text.txt", text_bytes("rtt-text", 8 << 20)),
        producer="python",
    )


@pytest.fixture(scope="module")
def published(registry: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two repositories of the same image: one with a native index, one with SOCI only."""
    img = image(layer(file("base.txt", b"base\n")), big_layer(), layer(file("top.txt", TOP)))
    publisher = tmp_path_factory.mktemp("publisher")
    digests = {}
    for repo, extra in (
        ("rtt/native", []),
        ("rtt/soci", ["--format", "soci", "--min-layer-size", "1000000"]),
        ("rtt/soci-all", ["--format", "soci", "--min-layer-size", "0"]),  # every layer
    ):
        digests[repo] = registry.push(repo, "v1", img)
        pushed = subprocess.run(
            [sys.executable, "-m", "seekoci", "index", registry.ref(repo, "v1"), "--push",
             *extra, "--cache-dir", str(publisher)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr
    registry.push("rtt/plain", "v1", img)  # nothing published here
    return digests


def read_needle(ref: str, cache: Path | bool) -> None:
    img = seekoci.open_image(ref, cache_dir=cache)
    assert img.read_bytes("/needle/needle.txt") == NEEDLE
    seekoci.cache.flush_all()  # what a process leaves behind when it exits


@pytest.mark.parametrize("repo", ["rtt/native", "rtt/soci"])
def test_a_warm_digest_reference_asks_nothing_and_a_tag_one_request(
    published: dict[str, str], repo: str, registry: Any, counting_proxy: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    proxy = counting_proxy(registry)
    cache = tmp_path / "cache"
    read_needle(proxy.ref(repo, "v1"), cache)  # cold: fills the cache
    assert proxy.requests() > 3

    proxy.reset()
    read_needle(proxy.ref(repo, published[repo]), cache)
    assert proxy.requests() == 0, proxy.summary()

    proxy.reset()
    read_needle(proxy.ref(repo, "v1"), cache)
    assert [(r.kind, r.path.rsplit("/", 1)[-1]) for r in proxy.records] == [("manifest", "v1")], (
        proxy.summary()
    )

    # the cached referrers listing has expired: the read stays within cached layers (the
    # base layer was never needed) and asks for nothing more
    monkeypatch.setenv("SEEKOCI_REFERRERS_TTL", "0")
    proxy.reset()
    read_needle(proxy.ref(repo, published[repo]), cache)
    assert proxy.requests() == 0, proxy.summary()


def test_a_warm_read_of_a_locally_built_index_asks_nothing(
    published: dict[str, str], registry: Any, counting_proxy: Any, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    digest = published["rtt/native"]
    built = seekoci.open_image(registry.ref("rtt/plain", digest), cache_dir=cache)
    built.build_index()  # built here: nothing is published in rtt/plain
    assert {lay.index_status for lay in built.layers} == {"built"}
    proxy = counting_proxy(registry)
    read_needle(proxy.ref("rtt/plain", digest), cache)
    read_needle(proxy.ref("rtt/plain", digest), cache)
    # the first read fetched the needle's span and nothing else
    assert all(r.kind == "blob" and r.range for r in proxy.records), proxy.summary()
    assert proxy.requests() == 1, proxy.summary()


def test_a_damaged_cached_manifest_is_fetched_again(
    published: dict[str, str], registry: Any, counting_proxy: Any, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    digest = published["rtt/native"]
    read_needle(registry.ref("rtt/native", digest), cache)
    kept = cache / "blobs" / "sha256" / digest.split(":")[1]
    kept.write_bytes(kept.read_bytes().replace(b"layers", b"LAYERS"))
    proxy = counting_proxy(registry)
    read_needle(proxy.ref("rtt/native", digest), cache)
    assert [r.path.rsplit("/", 1)[-1] for r in proxy.records] == [digest], proxy.summary()


@pytest.mark.parametrize("how", ["tag", "digest"])
def test_a_cold_read_through_a_published_index_waits_for_few_round_trips(
    published: dict[str, str], how: str, registry: Any, counting_proxy: Any, tmp_path: Path
) -> None:
    proxy = counting_proxy(registry, delay=0.05)
    tag = "v1" if how == "tag" else published["rtt/native"]
    read_needle(proxy.ref("rtt/native", tag), tmp_path / "empty")
    chain = proxy.sequential_round_trips()
    print(f"cold {how}: {chain} round trips, {proxy.requests()} requests")
    # manifest | config + referrers (API and tag at once; the listing names the index blobs
    # and carries their headers) | entry and span pages | the span's chunks and its record
    assert chain <= 4, f"{chain} round trips:\n{proxy.summary()}"
    assert proxy.requests() <= 8, proxy.summary()
    manifests = [r.path.rsplit("/", 1)[-1] for r in proxy.records if r.kind == "manifest"]
    assert manifests == [tag, "sha256-" + published["rtt/native"].split(":")[1]], manifests


def test_an_artifact_listed_without_its_layers_is_read_as_before(
    published: dict[str, str], registry: Any, counting_proxy: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import seekoci.remote

    monkeypatch.setattr(seekoci.remote, "ANN_LAYERS", "not.listed")  # an older publisher's
    proxy = counting_proxy(registry, delay=0.05)
    img = seekoci.open_image(proxy.ref("rtt/native", "v1"), cache_dir=tmp_path / "empty")
    assert img.read_bytes("/needle/needle.txt") == NEEDLE
    assert img.layers[1].index_status == "native"
    # + the artifact manifest | + the index header (of every layer at once)
    assert proxy.sequential_round_trips() <= 6, proxy.summary()


def test_a_cold_soci_read_decodes_lazily(
    published: dict[str, str], registry: Any, counting_proxy: Any, tmp_path: Path
) -> None:
    from seekoci.formats.ztoc import ZtocLookup

    proxy = counting_proxy(registry, delay=0.05)
    img = seekoci.open_image(proxy.ref("rtt/soci", "v1"), cache_dir=tmp_path / "empty")
    assert img.read_bytes("/needle/needle.txt") == NEEDLE
    assert img.layers[1].index_status == "soci"
    entries = img.layers[1].index().entries
    assert isinstance(entries, ZtocLookup)
    assert entries._whole is None  # no table read but those the lookups found
    assert len(entries._files) <= 4, len(entries._files)  # the needle, its directory, ...
    ztocs = [r for r in proxy.records if r.kind == "blob" and not r.range and r.body_bytes > 1000]
    assert len(ztocs) == 1, proxy.summary()  # one layer is big enough for a zTOC
    chain = proxy.sequential_round_trips()
    print(f"cold soci: {chain} round trips, {proxy.requests()} requests")
    # manifest | config + referrers | SOCI index manifest | zTOC | span
    assert chain <= 5, f"{chain} round trips:\n{proxy.summary()}"


def test_the_ztocs_of_several_layers_are_fetched_at_once(
    published: dict[str, str], registry: Any, counting_proxy: Any, tmp_path: Path
) -> None:
    proxy = counting_proxy(registry, delay=0.2)
    img = seekoci.open_image(proxy.ref("rtt/soci-all", "v1"), cache_dir=tmp_path / "empty")
    assert img.read_bytes("/needle/needle.txt") == NEEDLE
    assert [lay.index_status for lay in img.layers][1:] == ["soci", "soci"]
    ztocs = [r for r in proxy.records if r.kind == "blob" and not r.range and r.body_bytes > 1000]
    assert len(ztocs) == 3, proxy.summary()
    # all three in flight together: each started before any of them was answered
    assert max(r.start for r in ztocs) < min(r.end for r in ztocs), proxy.summary()
    assert proxy.sequential_round_trips() <= 5, proxy.summary()


def test_a_listed_header_that_does_not_match_its_digest_is_fetched_instead(
    published: dict[str, str], registry: Any, counting_proxy: Any, tmp_path: Path
) -> None:
    import base64
    import json

    import requests

    from .servers import FakeResponse

    tag = "sha256-" + published["rtt/native"].split(":")[1]
    path = f"/v2/rtt/native/manifests/{tag}"
    index = requests.get(
        registry.url + path, headers={"Accept": OCI_INDEX}, timeout=10
    ).json()  # fmt: skip
    damaged = 0
    for entry in index["manifests"]:
        listed = entry.get("annotations", {}).get("dev.seekoci.index.layers")
        if listed:
            layers = json.loads(listed)
            for item in layers:
                head = bytearray(base64.b64decode(item["dev.seekoci.head"]))
                head[-1] ^= 0xFF
                item["dev.seekoci.head"] = base64.b64encode(bytes(head)).decode()
                damaged += 1
            entry["annotations"]["dev.seekoci.index.layers"] = json.dumps(layers)
    assert damaged == 3
    proxy = counting_proxy(registry)
    proxy.fakes[path] = FakeResponse(
        200, json.dumps(index).encode(), {"Content-Type": OCI_INDEX}
    )  # fmt: skip
    img = seekoci.open_image(proxy.ref("rtt/native", "v1"), cache_dir=tmp_path / "empty")
    assert img.read_bytes("/needle/needle.txt") == NEEDLE
    assert img.layers[1].index_status == "native"
    heads = [
        r for r in proxy.records if r.kind == "blob" and (r.range or "").startswith("bytes=0-")
    ]
    assert heads, proxy.summary()  # the header and directory read from the index blob
