"""Index repositories: `seekoci index REF --push --to REGISTRY/REPO` for images you cannot
push to, and readers with index_repo= / $SEEKOCI_INDEX_REPO finding the indexes there."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from imagebuilder import file, image, layer, random_bytes, text_bytes, write_oci_layout

import seekoci
from seekoci.publish import publish_layer_index, publish_native

pytestmark = pytest.mark.integration

NEEDLE = b"read through an index repository\n" * 8
NATIVE = "application/vnd.seekoci.index.v1"


def big_layer() -> Any:
    # ~6 MB of gzip with the needle in the middle: streaming it whole is easy to tell from
    # reading the one span around the needle
    return layer(
        file("filler/random.bin", random_bytes("index-repo-random", 3 << 20)),
        file("needle/needle.txt", NEEDLE),
        file("filler/text.txt", text_bytes("index-repo-text", 3 << 20)),
    )


def upstream_image() -> Any:
    return image(layer(file("etc/base.txt", b"a small base layer\n")), big_layer())


def tag_of(digest: str) -> str:
    return digest.replace(":", "-") + ".seekoci"


def docker_config(directory: Path, server: Any) -> Path:
    """A Docker client config holding ``server``'s credentials (for the index repository)."""
    directory.mkdir(parents=True, exist_ok=True)
    token = base64.b64encode(f"{server.username}:{server.password}".encode()).decode()
    (directory / "config.json").write_text(json.dumps({"auths": {server.host: {"auth": token}}}))
    return directory


def seekoci_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seekoci", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def layer_blob_requests(proxy: Any, digest: str) -> list[Any]:
    return [r for r in proxy.records if r.kind == "blob" and digest in r.path]


@pytest.fixture(scope="module")
def upstream(registry: Any) -> Any:
    img = upstream_image()
    registry.push("upstream/base", "1.0", img)
    return img


def test_cli_publishes_to_a_repository_and_a_fresh_process_reads_through_it(
    upstream: Any, registry: Any, basic_registry: Any, counting_proxy: Any, tmp_path: Path
) -> None:
    # the index repository is on another registry, behind a login kept in the Docker config
    config = docker_config(tmp_path / "docker", basic_registry)
    repo = f"{basic_registry.host}/indexes/team"
    env = {"DOCKER_CONFIG": str(config)}
    ref = registry.ref("upstream/base", "1.0")
    pushed = seekoci_cli(
        "index", ref, "--push", "--to", repo, "--cache-dir", str(tmp_path / "pub"), env=env
    )
    assert pushed.returncode == 0, pushed.stderr
    assert f"published 2 layer index(es) to {repo}" in pushed.stdout

    # one artifact per layer, under the layer digest's tag, no subject
    client = basic_registry.client()
    for lay in upstream.layers:
        body, _, _ = client.get_manifest("indexes/team", tag_of(lay.digest))
        doc = json.loads(body)
        assert doc["artifactType"] == NATIVE
        assert "subject" not in doc
        [blob] = doc["layers"]
        assert blob["annotations"]["dev.seekoci.layer.digest"] == lay.digest
    # the image's own repository got nothing: no referrers tag there
    assert (
        registry.client()
        .request("GET", f"/v2/upstream/base/manifests/sha256-{upstream.digest.split(':')[1]}")
        .status_code
        == 404
    )

    # inspect names where each index comes from
    shown = seekoci_cli(
        "inspect", ref, "--json", "--index-repo", repo, "--cache-dir", str(tmp_path / "i"), env=env
    )
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert [lay["index"] for lay in doc["layers"]] == ["native", "native"]
    assert all(lay["published_indexes"] == ["native"] for lay in doc["layers"])

    # a fresh process, empty cache, the index repository from the environment
    proxy = counting_proxy(registry)
    read = seekoci_cli(
        "cat",
        proxy.ref("upstream/base", "1.0"),
        "/needle/needle.txt",
        "--cache-dir",
        str(tmp_path / "empty"),
        env={**env, "SEEKOCI_INDEX_REPO": repo},
    )
    assert read.returncode == 0, read.stderr
    assert read.stdout == NEEDLE.decode()
    big = upstream.layers[1]
    fetched = layer_blob_requests(proxy, big.digest)
    assert fetched, proxy.summary()
    assert all(r.range for r in fetched), proxy.summary()  # never the whole blob: no build
    assert sum(r.body_bytes for r in fetched) < big.size / 4, proxy.summary()

    # publishing again finds every layer there: nothing read, nothing pushed
    proxy.reset()
    again = seekoci_cli(
        "index",
        proxy.ref("upstream/base", "1.0"),
        "--to",
        repo,
        "--cache-dir",
        str(tmp_path / "empty2"),
        env=env,
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already in") == 2
    for lay in upstream.layers:
        assert not layer_blob_requests(proxy, lay.digest), proxy.summary()


def test_api_index_repo_keyword_and_publish_layer_index(
    registry: Any, counting_proxy: Any, tmp_path: Path
) -> None:
    img_def = image(layer(file("etc/base.txt", b"base\n")), big_layer())
    registry.push("upstream/api", "1.0", img_def)
    repo = f"{registry.host}/indexes/api"
    img = seekoci.open_image(registry.ref("upstream/api", "1.0"), cache_dir=tmp_path / "pub")
    top = img.layers[1]
    artifact = publish_layer_index(top, repo)
    assert artifact.startswith("sha256:")
    # asked again: already there, same artifact, nothing built
    assert publish_layer_index(top, repo) == artifact

    proxy = counting_proxy(registry)
    via_proxy = f"{proxy.host}/indexes/api"  # the same repository, its requests counted
    reader = seekoci.open_image(
        proxy.ref("upstream/api", "1.0"), cache_dir=tmp_path / "empty", index_repo=via_proxy
    )
    assert reader.layers[1].index_status == "native"
    assert reader.layers[1].published_indexes() == ["native"]
    assert reader.layers[0].published_indexes() == []  # only the top layer was published
    assert [r for r in proxy.records if ".seekoci" in r.path], proxy.summary()
    proxy.reset()
    assert reader.read_bytes("/needle/needle.txt") == NEEDLE
    fetched = layer_blob_requests(proxy, img_def.layers[1].digest)
    assert fetched and all(r.range for r in fetched), proxy.summary()
    # the reader's cache remembers where the index was: a second reader goes straight there
    proxy.reset()
    second = seekoci.open_image(
        proxy.ref("upstream/api", "1.0"), cache_dir=tmp_path / "empty", index_repo=via_proxy
    )
    assert second.read_bytes("/needle/needle.txt") == NEEDLE
    assert not [r for r in proxy.records if ".seekoci" in r.path], proxy.summary()


def test_the_images_own_referrers_come_first(
    registry: Any, counting_proxy: Any, tmp_path: Path
) -> None:
    img_def = image(big_layer())
    registry.push("upstream/own", "1.0", img_def)
    repo = f"{registry.host}/indexes/own"
    img = seekoci.open_image(registry.ref("upstream/own", "1.0"), cache_dir=tmp_path / "pub")
    publish_native(img)
    publish_layer_index(img.layers[0], repo)
    proxy = counting_proxy(registry)
    reader = seekoci.open_image(
        proxy.ref("upstream/own", "1.0"),
        cache_dir=tmp_path / "empty",
        index_repo=f"{proxy.host}/indexes/own",
    )
    assert reader.read_bytes("/needle/needle.txt") == NEEDLE
    assert reader.layers[0].index_status == "native"
    assert not [r for r in proxy.records if "indexes/own" in r.path], proxy.summary()
    # without the image's own artifact the index repository is asked
    alone = image(big_layer(), layer(file("extra.txt", b"another top layer\n")))
    registry.push("upstream/own2", "1.0", alone)
    proxy.reset()
    other = seekoci.open_image(
        proxy.ref("upstream/own2", "1.0"),
        cache_dir=tmp_path / "empty",
        index_repo=f"{proxy.host}/indexes/own",
    )
    assert other.layers[0].digest == img.layers[0].digest
    assert other.read_bytes("/needle/needle.txt") == NEEDLE
    assert other.layers[0].index_status == "native"
    assert [r for r in proxy.records if "indexes/own" in r.path], proxy.summary()


def test_layout_image_reads_through_an_index_repository(registry: Any, tmp_path: Path) -> None:
    img_def = upstream_image()
    registry.push("upstream/layout", "1.0", img_def)
    repo = f"{registry.host}/indexes/layout"
    published = seekoci.open_image(registry.ref("upstream/layout", "1.0"), cache_dir=False)
    publish_layer_index(published.layers[1], repo)
    write_oci_layout(tmp_path / "layout", img_def, "1.0")
    img = seekoci.open_image(
        f"oci:{tmp_path / 'layout'}:1.0", cache_dir=tmp_path / "empty", index_repo=repo
    )
    assert img.layers[1].index_status == "native"
    assert img.read_bytes("/needle/needle.txt") == NEEDLE


def test_an_unusable_index_repository_costs_a_build_not_a_failure(
    upstream: Any, registry: Any, tmp_path: Path
) -> None:
    # nothing published there (the repository does not even exist): built as usual
    img = seekoci.open_image(
        registry.ref("upstream/base", "1.0"),
        cache_dir=tmp_path / "c",
        index_repo=f"{registry.host}/indexes/nothing-here",
    )
    assert img.read_bytes("/needle/needle.txt") == NEEDLE
    assert img.layers[1].index_status in ("built", "partial")


def test_an_unreachable_index_repository_is_asked_once(
    upstream: Any, registry: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from integration.servers import free_port

    closed = f"127.0.0.1:{free_port()}/indexes/gone"  # nothing listens there
    img = seekoci.open_image(
        registry.ref("upstream/base", "1.0"), cache_dir=tmp_path / "c", index_repo=closed
    )
    with caplog.at_level("WARNING", logger="seekoci"):
        img.build_index()
    assert img.read_bytes("/needle/needle.txt") == NEEDLE
    assert [lay.index_status for lay in img.layers] == ["built", "built"]
    warnings = [r for r in caplog.records if "index repository" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once, not per layer


@pytest.mark.parametrize("bad", ["127.0.0.1:1/indexes:tag", "127.0.0.1:1/x@sha256:" + "0" * 64])
def test_index_repo_is_registry_and_repository_only(upstream: Any, registry: Any, bad: str) -> None:
    with pytest.raises(seekoci.InvalidReferenceError, match="REGISTRY/REPO"):
        seekoci.open_image(registry.ref("upstream/base", "1.0"), cache_dir=False, index_repo=bad)


def test_cli_to_refuses_soci(upstream: Any, registry: Any) -> None:
    run = seekoci_cli(
        "index",
        registry.ref("upstream/base", "1.0"),
        "--push",
        "--format",
        "soci",
        "--to",
        f"{registry.host}/indexes/x",
        env={},
    )
    assert run.returncode == 2
    assert "--to" in run.stderr


def test_token_registry_index_repo_push_with_docker_config_read_anonymously(
    upstream: Any,
    registry: Any,
    token_registry: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = f"{token_registry.host}/indexes/tokens"
    # the publisher's Docker config has a login for the token registry (push needs one)
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config(tmp_path / "docker", token_registry)))
    img = seekoci.open_image(registry.ref("upstream/base", "1.0"), cache_dir=tmp_path / "pub")
    publish_layer_index(img.layers[1], repo)
    # a reader with no login at all: anonymous pull tokens
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nobody"))
    issued = token_registry.tokens_issued
    reader = seekoci.open_image(
        registry.ref("upstream/base", "1.0"), cache_dir=tmp_path / "empty", index_repo=repo
    )
    assert reader.layers[1].index_status == "native"
    assert reader.read_bytes("/needle/needle.txt") == NEEDLE
    assert token_registry.tokens_issued > issued
