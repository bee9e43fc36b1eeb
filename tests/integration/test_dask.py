"""Dask: a process cluster indexes the layers of several images once each, shares the
indexes through an index repository, and reads files across the images in parallel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import distributed  # the test extra installs dask[distributed]
import pytest
from imagebuilder import file, image, layer, random_bytes, text_bytes

import seekoci
from seekoci.publish import publish_layer_index

pytestmark = pytest.mark.integration

IMAGES = 4


def base_layer() -> Any:
    # shared by every image: indexed once for all of them
    return layer(
        file("usr/share/base.bin", random_bytes("dask-base", 1 << 20)),
        file("etc/os-release", b"ID=dasktest\n"),
        file("usr/share/base.txt", text_bytes("dask-base-text", 1 << 20)),
    )


def app_layer(i: int) -> Any:
    return layer(
        file(f"app/{i}/weights.bin", random_bytes(f"dask-app-{i}", 1 << 20)),
        file(f"app/{i}/config.json", f'{{"image": {i}}}\n'.encode()),
        file(f"app/{i}/notes.txt", text_bytes(f"dask-notes-{i}", 512 << 10)),
    )


def full_blob_gets(proxy: Any, digests: set[str]) -> dict[str, int]:
    """GETs of a layer blob without a Range: the whole blob streamed, i.e. an index build."""
    counts = dict.fromkeys(digests, 0)
    for r in proxy.records:
        if r.kind == "blob" and r.method == "GET" and r.range is None:
            for d in digests:
                if r.path.endswith(d):
                    counts[d] += 1
    return counts


def test_cluster_indexes_each_layer_once_and_reads_across_images(
    registry: Any, counting_proxy: Any, tmp_path: Path
) -> None:
    defs = [image(base_layer(), app_layer(i)) for i in range(IMAGES)]
    for i, img_def in enumerate(defs):
        registry.push(f"dask/app{i}", "1.0", img_def)
    proxy = counting_proxy(registry)
    repo = f"{proxy.host}/indexes/dask"
    # no cache directory anywhere: what one worker indexed reaches the others only through
    # the index repository
    images = [
        seekoci.open_image(proxy.ref(f"dask/app{i}", "1.0"), cache_dir=False, index_repo=repo)
        for i in range(IMAGES)
    ]
    layers = {lay.digest: lay for img in images for lay in img.layers}
    assert len(layers) == IMAGES + 1  # the base layer is one layer, whatever image has it

    with (
        distributed.LocalCluster(
            processes=True,
            n_workers=2,
            threads_per_worker=1,
            dashboard_address=None,
            local_directory=str(tmp_path / "dask"),
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        # 1. every distinct layer indexed and published by some worker, once
        artifacts = client.gather(client.map(publish_layer_index, list(layers.values())))
        assert len(set(artifacts)) == len(layers)
        assert full_blob_gets(proxy, set(layers)) == dict.fromkeys(layers, 1), proxy.summary()

        # 2. every image fully indexed on the workers, and one file read from each: the
        # indexes come from the repository, no layer is streamed whole again
        proxy.reset()
        client.gather(client.map(seekoci.Image.build_index, images))
        paths = [f"/app/{i}/config.json" for i in range(IMAGES)]
        got = client.gather(client.map(seekoci.Image.read_bytes, images, paths))
        assert got == [f'{{"image": {i}}}\n'.encode() for i in range(IMAGES)]
        assert client.gather(client.submit(seekoci.Image.read_bytes, images[0], "/etc/os-release"))
        assert full_blob_gets(proxy, set(layers)) == dict.fromkeys(layers, 0), proxy.summary()
        # ... while the reads did go to the layers, by range
        ranged = [r for r in proxy.records if r.kind == "blob" and r.range is not None]
        assert ranged, proxy.summary()
