"""Building a layer's index, against plain decompression of the same blob, and its peak RSS;
the first touch of a file deep in a lower layer when nothing is indexed, against streaming
that layer."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import imagebuilder
import pytest
from benchkit import (
    INDEX_RSS_SCRIPT,
    REPO,
    PushedImage,
    SizedLayer,
    run_script,
    sha256,
    stream_extract,
)
from layergen import FileRecord, GeneratedLayer, generate_layer
from report import Report

import seekoci

ROUNDS = 3
#: Each round of the first-touch pair streams 1.25x the bench layer; three rounds each, for
#: a median: one round moved by 10% between runs, and the target sits within that of 0.5x.
FIRST_TOUCH_ROUNDS = 3
SIZE_MB = int(os.environ.get("SEEKOCI_BENCH_SIZE_MB", "1024"))  # as conftest.py reads it

pytestmark = pytest.mark.benchmark(group="index build vs decompression")


def _cpu(who: int) -> float:
    """CPU seconds (user + system) used so far by this process or its waited-for children:
    on a shared machine the wall times vary with the load, the CPU a job needs much less."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


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
        cpu = _cpu(resource.RUSAGE_SELF)
        started = time.perf_counter()
        index = layer.index()
        m.add(
            time.perf_counter() - started,
            layer.source.bytes_read,
            layer.source.requests,
            spans=len(index.spans),
            cpu_s=_cpu(resource.RUSAGE_SELF) - cpu,
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
        cpu = _cpu(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(
            [tool, "-dc", str(bench_layer.blob_path)], stdout=subprocess.DEVNULL, check=True
        )
        m.add(time.perf_counter() - started, cpu_s=_cpu(resource.RUSAGE_CHILDREN) - cpu)

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


# -- first touch: a file near the end of a big lower layer, nothing indexed anywhere ----------

LAYERED_TAG = "layered"


@pytest.fixture(scope="module")
def layered(pushed: PushedImage, workdir: Path, report: Report) -> tuple[str, FileRecord]:
    """The bench layer under an upper layer a quarter its size (another seed): the image
    reference, and the last small text file of the lower layer (absent from the upper)."""
    (workdir / "upper").mkdir()
    upper = generate_layer(workdir / "upper", max(32, SIZE_MB // 4), seed=7)
    client = pushed.registry.client()
    blob = upper.blob_path.read_bytes()
    client.push_blob(REPO, blob, chunk_size=len(blob) + 1)
    del blob
    img = imagebuilder.image(
        SizedLayer(pushed.layer.digest, pushed.layer.diff_id, pushed.layer.size),
        SizedLayer(upper.digest, upper.diff_id, upper.size),
    )
    client.push_blob(REPO, img.config_bytes)
    client.push_manifest(REPO, LAYERED_TAG, img.manifest_bytes, img.media_type)
    above = {f.path for f in upper.text_files}
    target = max(
        (f for f in pushed.layer.text_files if f.path not in above and f.size >= 1024),
        key=lambda f: f.offset,
    )
    report.facts["first touch: upper layer / file read"] = (
        f"{upper.size:,} B gzip ({upper.tar_size:,} B tar); `{target.path}` at tar offset "
        f"{target.offset:,} of {pushed.layer.tar_size:,}"
    )
    return pushed.registry.ref(REPO, LAYERED_TAG), target


def test_first_touch_of_a_lower_layer_file(
    benchmark: Any, pushed: PushedImage, layered: tuple[str, FileRecord], report: Report
) -> None:
    ref, target = layered
    m = report.measurement(
        "first_touch",
        "first touch: a file near the end of the lower of 2 layers, nothing indexed",
    )
    made: list[float] = []

    def run() -> None:
        started = time.perf_counter()
        img = seekoci.open_image(ref, cache_dir=False)
        data = img.read_bytes(target.path)
        elapsed = time.perf_counter() - started
        sources = [layer.source for layer in img.layers]
        m.add(
            elapsed,
            sum(getattr(s, "bytes_read", 0) for s in sources),
            sum(getattr(s, "requests", 0) for s in sources),
        )
        assert sha256(data) == target.sha256
        assert img.layers[1].complete()  # the upper layer had to be indexed whole
        # the indexes made behind the scans: waited for before anything else is timed
        assert img.flush(600)
        indexed = time.perf_counter() - started
        assert all(layer.index_status == "built" for layer in img.layers)
        made.append(indexed)
        report.facts["first touch: both layers' indexes made (each round)"] = " / ".join(
            f"{t:.2f} s" for t in made
        )

    benchmark.pedantic(run, rounds=FIRST_TOUCH_ROUNDS, iterations=1)


def test_first_touch_baseline(
    benchmark: Any, pushed: PushedImage, layered: tuple[str, FileRecord], report: Report
) -> None:
    _, target = layered
    m = report.measurement(
        "first_touch_baseline", "first touch baseline: stream that lower layer into `tar -xzO`"
    )

    def run() -> None:
        started = time.perf_counter()
        data, received, requests = stream_extract(pushed, target.path)
        m.add(time.perf_counter() - started, received, requests)
        assert sha256(data) == target.sha256

    benchmark.pedantic(run, rounds=FIRST_TOUCH_ROUNDS, iterations=1)
