"""Image insight with an empty cache and a published index, against pulling the image.

``seekoci du`` / ``layers`` / ``bloat`` of the benchmark image run in a fresh process with an
empty cache directory, through a counting proxy in front of the registry that holds the
image and its native index (``bench/published``): time and every byte on the wire. The
baseline is what answers the same question today: ``skopeo copy`` the image to an OCI
layout, unpack its layer, ``du`` the tree. The totals of both must agree (checked every
round); times are reported, never asserted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from benchkit import REPO_ROOT, TAG, PublishedImages, TimingProxy
from report import Report

ROUNDS = 3

pytestmark = pytest.mark.benchmark(group="insight: du / layers / bloat, empty cache")

INSIGHT_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import seekoci
from seekoci import insight
img = seekoci.open_image(sys.argv[1], cache_dir=sys.argv[2])
what = sys.argv[3]
if what == "du":
    rows = insight.du(img, "/", depth=1)
    answer = {"total": rows[0].size, "files": rows[0].files, "rows": len(rows)}
elif what == "layers":
    rows = insight.layer_usage(img)
    answer = {"files": sum(r.files for r in rows), "hidden": sum(r.hidden_bytes for r in rows)}
else:
    answer = {f.category: [f.bytes, len(f.paths)] for f in insight.bloat(img)}
print(json.dumps({"elapsed_s": time.perf_counter() - t0, "answer": answer,
                  "index_status": [layer.index_status for layer in img.layers]}))
"""


def _run(*args: str) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", INSIGHT_SCRIPT, *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
    )
    wall = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


def _pull_and_du(ref: str, workdir: Path) -> tuple[int, int, float]:
    """skopeo copy + unpack + du -sb: (bytes of regular files, blob bytes pulled, seconds)."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    started = time.perf_counter()
    subprocess.run(
        ["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{workdir / 'oci'}:x"],
        check=True,
        capture_output=True,
    )
    rootfs = workdir / "rootfs"
    rootfs.mkdir()
    index = json.loads((workdir / "oci" / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((workdir / "oci" / "blobs" / "sha256" / manifest_digest).read_text())
    pulled = 0
    for desc in manifest["layers"]:
        blob = workdir / "oci" / "blobs" / "sha256" / desc["digest"].split(":")[1]
        pulled += blob.stat().st_size
        subprocess.run(["tar", "-xzf", str(blob), "-C", str(rootfs)], check=True)
    out = subprocess.run(
        ["find", str(rootfs), "-type", "f", "-printf", "%s\\n"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    subprocess.run(
        ["du", "-s", "--apparent-size", "-B1", str(rootfs)], check=True, capture_output=True
    )
    took = time.perf_counter() - started
    return sum(int(n) for n in out.split()), pulled, took


@pytest.fixture(scope="module")
def baseline(published: PublishedImages, workdir: Path, report: Report) -> dict[str, float]:
    registry = published.image.registry
    ref = registry.ref(published.native_repo, TAG)
    results = [_pull_and_du(ref, workdir / "pulled") for _ in range(ROUNDS)]
    total, pulled = results[0][0], results[0][1]
    seconds = sorted(r[2] for r in results)[len(results) // 2]
    report.published_facts["insight baseline: `skopeo copy` + unpack + `du` (median)"] = (
        f"{seconds:.2f} s, {pulled:,} B pulled; {total:,} B of regular files"
    )
    shutil.rmtree(workdir / "pulled", ignore_errors=True)
    return {"total": total, "pulled": pulled, "seconds": seconds}


@pytest.mark.parametrize("what", ["du", "layers", "bloat"])
def test_insight_empty_cache_published_index(
    benchmark: Any,
    what: str,
    published: PublishedImages,
    baseline: dict[str, float],
    workdir: Path,
    report: Report,
) -> None:
    registry = published.image.registry
    cache = workdir / f"insight-{what}-cache"
    proxy = TimingProxy(registry.url)
    seen: list[tuple[float, float, int, int]] = []

    def setup() -> None:
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir()
        proxy.reset()

    def run() -> None:
        doc, wall = _run(proxy.ref(published.native_repo, TAG), str(cache), what)
        assert doc["index_status"] == ["native"], "the published index was not used"
        if what == "du":
            assert doc["answer"]["total"] == baseline["total"], "du disagrees with the pulled tree"
        seen.append((doc["elapsed_s"], wall, proxy.bytes(), proxy.requests()))

    try:
        benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)
    finally:
        proxy.stop()
    seconds, wall, nbytes, requests = sorted(seen)[len(seen) // 2]
    share = nbytes / baseline["pulled"]
    speedup = baseline["seconds"] / seconds
    report.published_facts[f"insight `{what}`, empty cache, native index (median)"] = (
        f"{seconds:.2f} s ({wall:.2f} s with interpreter start), {nbytes:,} B in {requests} "
        f"requests ({share:.3%} of a pull; {speedup:.1f}x faster than pull + du)"
    )
