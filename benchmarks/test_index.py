"""Building a layer's index, against plain decompression of the same blob, and its peak RSS."""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any

import pytest
from benchkit import INDEX_RSS_SCRIPT, PushedImage, run_script
from layergen import GeneratedLayer
from report import Report

import seekoci

ROUNDS = 3

pytestmark = pytest.mark.benchmark(group="index build vs decompression")


def _check_index(index: Any, layer: GeneratedLayer) -> None:
    assert index.uncompressed_size == layer.tar_size
    assert len(index.entries) == layer.files + layer.directories


def test_index_build(benchmark: Any, pushed: PushedImage, report: Report) -> None:
    m = report.measurement(
        "index_build", "index build: `Layer.index()` over the registry blob, cache_dir=False"
    )

    def setup() -> tuple[tuple[seekoci.Layer], dict[str, Any]]:
        img = seekoci.open_image(pushed.ref, cache_dir=False)
        return (img.layers[0],), {}

    def run(layer: seekoci.Layer) -> None:
        started = time.perf_counter()
        index = layer.index()
        m.add(
            time.perf_counter() - started,
            layer.source.bytes_read,
            layer.source.requests,
            spans=len(index.spans),
        )
        _check_index(index, pushed.layer)

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)


@pytest.mark.parametrize("tool", ["gzip", "pigz"])
def test_decompress_blob(
    benchmark: Any, bench_layer: GeneratedLayer, report: Report, tool: str
) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    m = report.measurement(f"{tool}_dc", f"`{tool} -dc BLOB > /dev/null` (blob on local disk)")

    def run() -> None:
        started = time.perf_counter()
        subprocess.run(
            [tool, "-dc", str(bench_layer.blob_path)], stdout=subprocess.DEVNULL, check=True
        )
        m.add(time.perf_counter() - started)

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)


def test_index_build_peak_rss(pushed: PushedImage, report: Report) -> None:
    m = report.measurement(
        "index_rss", "index build in a fresh process (peak RSS; time of one run)"
    )
    doc, wall = run_script(INDEX_RSS_SCRIPT, pushed.ref)
    assert doc["uncompressed_size"] == pushed.layer.tar_size
    m.add(
        doc["elapsed_s"],
        doc["bytes_read"],
        doc["requests"],
        peak_rss_mib=doc["peak_rss_kib"] / 1024,
        rss_before_build_mib=doc["peak_rss_before_kib"] / 1024,
        wall_s=wall,
    )
