"""Reading one small file: the baseline, seekoci cold (fresh process) and warm (same Image).

Every round checks the bytes against the generated file's digest; times are only reported.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from benchkit import (
    COLD_READ_SCRIPT,
    REPO,
    TAG,
    PushedImage,
    fresh_cache,
    run_script,
    sha256,
    source_counters,
    stream_extract,
)
from integration.servers import CountingProxy
from layergen import FileRecord
from report import Report

import seekoci

BASELINE_ROUNDS = 3
COLD_ROUNDS = 5
WARM_ROUNDS = 30

pytestmark = pytest.mark.benchmark(group="read one small file")


def test_baseline_stream_layer_into_tar(
    benchmark: Any, pushed: PushedImage, report: Report
) -> None:
    m = report.measurement("baseline", "baseline: stream the layer blob into `tar -xzO`")
    target = pushed.target

    def run() -> None:
        started = time.perf_counter()
        data, nbytes, nrequests = stream_extract(pushed, target.path)
        m.add(time.perf_counter() - started, nbytes, nrequests)
        assert sha256(data) == target.sha256, "tar -xzO gave other bytes"
        assert nbytes == pushed.layer.size

    benchmark.pedantic(run, rounds=BASELINE_ROUNDS, iterations=1)


def test_seekoci_cold_fresh_process(
    benchmark: Any, pushed: PushedImage, index_dir: Path, workdir: Path, report: Report
) -> None:
    m = report.measurement("cold", "seekoci cold: fresh process, index cached, no span cached")
    cache = workdir / "cold-cache"
    target = pushed.target

    def read(ref: str) -> tuple[dict[str, Any], float]:
        doc, wall = run_script(COLD_READ_SCRIPT, ref, str(cache), target.path)
        assert doc["sha256"] == target.sha256, "seekoci gave other bytes"
        assert doc["index_status"] == ["cached"], "the index was not taken from the cache"
        return doc, wall

    def run() -> None:
        doc, wall = read(pushed.ref)
        steps = {k: doc[k] for k in ("import_s", "open_image_s", "index_load_s", "read_s")}
        m.add(doc["elapsed_s"], doc["bytes_read"], doc["requests"], wall_s=wall, **steps)

    def setup() -> None:
        fresh_cache(index_dir, cache)

    benchmark.pedantic(run, setup=setup, rounds=COLD_ROUNDS, iterations=1)

    # Once more through a counting proxy (untimed): every HTTP request, manifests included.
    proxy = CountingProxy(pushed.registry.url)
    try:
        fresh_cache(index_dir, cache)
        read(proxy.ref(REPO, TAG))
        kinds = ", ".join(
            f"{kind} {proxy.requests(kind)}"
            for kind in ("base", "manifest", "blob")
            if proxy.requests(kind)
        )
        report.facts["cold read, all HTTP (through a counting proxy)"] = (
            f"{proxy.requests()} requests ({kinds}), {proxy.bytes():,} B of response bodies"
        )
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def warm_image(
    pushed: PushedImage, index_dir: Path, workdir: Path, report: Report
) -> Iterator[seekoci.Image]:
    """An Image (index from the cache directory) that has read the target file once."""
    cache = fresh_cache(index_dir, workdir / "warm-cache")
    started = time.perf_counter()
    img = seekoci.open_image(pushed.ref, cache_dir=cache)
    data = img.read_bytes(pushed.target.path)
    took = time.perf_counter() - started
    assert sha256(data) == pushed.target.sha256
    nbytes, nrequests = source_counters(img.layers)
    report.facts["first read in the benchmark process (open_image + read_bytes)"] = (
        f"{took:.4f} s, {nbytes:,} B in {nrequests} requests"
    )
    yield img


def _read_counted(img: seekoci.Image, f: FileRecord) -> tuple[float, int, int]:
    bytes_before, requests_before = source_counters(img.layers)
    started = time.perf_counter()
    data = img.read_bytes(f.path)
    took = time.perf_counter() - started
    bytes_after, requests_after = source_counters(img.layers)
    assert sha256(data) == f.sha256, f"seekoci gave other bytes for {f.path}"
    return took, bytes_after - bytes_before, requests_after - requests_before


def test_seekoci_warm_same_file(
    benchmark: Any, warm_image: seekoci.Image, pushed: PushedImage, report: Report
) -> None:
    m = report.measurement("warm_same", "seekoci warm: the same file again (span in memory)")

    def run() -> None:
        m.add(*_read_counted(warm_image, pushed.target))

    benchmark.pedantic(run, rounds=WARM_ROUNDS, iterations=1)


def test_seekoci_warm_other_file(
    benchmark: Any, warm_image: seekoci.Image, pushed: PushedImage, report: Report
) -> None:
    m = report.measurement(
        "warm_other", "seekoci warm: another small file (a span not fetched before)"
    )
    queue = list(pushed.others)
    assert queue, "the layer is too small for files in spans of their own"

    def setup() -> tuple[tuple[FileRecord], dict[str, Any]]:
        return (queue.pop(0),), {}

    def run(f: FileRecord) -> None:
        m.add(*_read_counted(warm_image, f))

    benchmark.pedantic(run, setup=setup, rounds=len(queue), iterations=1)
