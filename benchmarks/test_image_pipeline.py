"""Where many bytes flow: a realistic multi-layer image, read the three ways users read images.

``SEEKOCI_BENCH_IMAGE_MB`` (default 1200) sets the uncompressed size of a three-layer image in
the shape of an ML image (layergen, gzip -6): a base layer of small text files and a few
libraries (10%), a big framework layer with a ~45% shared library, many Python files and more
libraries (85%), and a small app layer with a weights file (5%). Measured side by side in one
run, each beside what users do today:

* a large file read front to back (index cached, no span cached) against streaming the layer
  into ``gzip -dc | tar -xO``, and its bytes per second against ``pigz -dc``'s output rate;
* the whole image to a directory (``seekoci get REF /``), with indexes cached and with no index
  anywhere, against ``skopeo copy`` + ``umoci unpack``, with peak RSS;
* the first touch of a file near the end of the big layer with nothing indexed, against
  streaming that layer into ``tar -xzO``;
* 1,000 random 4 KiB reads: requests and bytes per read.

The figures go to ``docs/performance-images.md`` (written when all four ran), and are printed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import imagebuilder
import pytest
import requests
from benchkit import REPO_ROOT, BlobLayer, run_script
from integration.servers import RegistryServer
from layergen import FileRecord, GeneratedLayer, generate_layer

import seekoci

IMAGE_MB = int(os.environ.get("SEEKOCI_BENCH_IMAGE_MB", "1200"))
REPO, TAG = "bench/ml-image", "v1"
PAGE = Path(
    os.environ.get("SEEKOCI_BENCH_IMAGE_REPORT", REPO_ROOT / "docs" / "performance-images.md")
)
ROUNDS = 2
#: Rounds of the whole-image benchmark (each writes four trees of the image)
WHOLE_ROUNDS = 2
MIB = 1 << 20

pytestmark = pytest.mark.benchmark(group="images")


@dataclasses.dataclass
class MLImage:
    registry: RegistryServer
    ref: str
    layers: list[GeneratedLayer]
    big: FileRecord  # the largest file, in the framework layer
    near_end: FileRecord  # a small file near the end of the framework layer
    workdir: Path
    index_cache: Path

    def blob_url(self, i: int) -> str:
        return self.registry.blob_url(REPO, self.layers[i].digest)


RESULTS: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def ml_image(registry: RegistryServer, workdir: Path) -> Iterator[MLImage]:
    root = workdir / "ml-image"
    sizes = [max(8, IMAGE_MB // 10), max(40, IMAGE_MB * 85 // 100), max(6, IMAGE_MB // 20)]
    big_mb = max(16, sizes[1] * 45 // 100)
    plans = [
        dict(seed=101, text_share=0.6, lib_mb=[max(1, sizes[0] // 8), max(1, sizes[0] // 10)]),
        dict(seed=202, text_share=0.25, lib_mb=[big_mb, sizes[1] // 25, sizes[1] // 30]),
        dict(seed=303, text_share=0.2, lib_mb=[1]),
    ]
    started = time.perf_counter()
    layers = []
    for n, (size, plan) in enumerate(zip(sizes, plans, strict=True)):
        (root / f"l{n}").mkdir(parents=True)
        layers.append(generate_layer(root / f"l{n}", size, **plan))  # type: ignore[arg-type]
    blobs = []
    for layer in layers:
        blob = layer.blob_path.read_bytes()
        registry.client().push_blob(REPO, blob, chunk_size=len(blob) + 1)
        blobs.append(BlobLayer(layer.digest, layer.diff_id, blob))
    registry.push(REPO, TAG, imagebuilder.image(*blobs))
    del blobs
    ref = registry.ref(REPO, TAG)
    framework = layers[1]
    big = max(framework.libraries, key=lambda f: f.size)
    near_end = max(framework.text_files, key=lambda f: f.offset)
    index_cache = root / "index-cache"
    done = subprocess.run(
        [sys.executable, "-m", "seekoci", "index", ref, "--cache-dir", str(index_cache)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr
    RESULTS["setup"] = {
        "layers": [
            {"tar": layer.tar_size, "blob": layer.size, "files": layer.files} for layer in layers
        ],
        "big": [big.path, big.size],
        "near_end": [near_end.path, near_end.size, near_end.offset, framework.tar_size],
        "setup_s": time.perf_counter() - started,
    }
    yield MLImage(registry, ref, layers, big, near_end, root, index_cache)
    if all(k in RESULTS for k in ("large_file", "whole_image", "first_touch", "random_4k")):
        page = _render()
        PAGE.write_text(page)
        print("\n" + page)


# --------------------------------------------------------------------------- helpers


def _stream_into(url: str, argv: list[str]) -> float:
    """Seconds to stream a blob over HTTP into a pipeline's stdin (its stdout discarded)."""
    started = time.perf_counter()
    with (
        requests.Session() as http,
        subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, shell=isinstance(argv, str)
        ) as proc,
    ):
        assert proc.stdin is not None
        with http.get(url, stream=True, timeout=120) as response:
            response.raise_for_status()
            try:
                for chunk in response.iter_content(MIB):
                    proc.stdin.write(chunk)
            except BrokenPipeError:  # tar -x may stop reading once it has its member
                pass
        proc.stdin.close()
        assert proc.wait() == 0
    return time.perf_counter() - started


def _timed(argv: list[str], **kwargs: Any) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB, from GNU time: the command's own, not pytest's)."""
    started = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "RSS %M", *argv],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        **kwargs,
    )
    wall = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    rss = [line for line in done.stderr.splitlines() if line.startswith("RSS ")]
    return wall, int(rss[-1].split()[1])


def _fresh_cache(img: MLImage, name: str, *, index: bool) -> Path:
    path = img.workdir / name
    shutil.rmtree(path, ignore_errors=True)
    if index:
        shutil.copytree(img.index_cache, path)
    else:
        path.mkdir()
    return path


def _tree_digest(root: Path) -> tuple[int, int, str]:
    """(regular files, bytes, digest of every path, type and content) of a directory tree."""
    files = size = 0
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            h.update(str(path.relative_to(root)).encode() + b"\0")
            if path.is_symlink():
                h.update(os.readlink(path).encode())
            elif path.is_file():
                files += 1
                with path.open("rb") as f:
                    while chunk := f.read(8 * MIB):
                        size += len(chunk)
                        h.update(chunk)
    return files, size, h.hexdigest()


READ_FILE_SCRIPT = """
import hashlib, json, sys, time
import seekoci
ref, cache, path, check = sys.argv[1:5]
t0 = time.perf_counter()
img = seekoci.open_image(ref, cache_dir=cache)
h = hashlib.sha256() if check == "1" else None
n = 0
with img.open(path) as f:
    while chunk := f.read(1 << 20):
        n += len(chunk)
        if h is not None:
            h.update(chunk)
elapsed = time.perf_counter() - t0
sources = [layer.source for layer in img.layers]
print(json.dumps({
    "elapsed_s": elapsed, "size": n, "sha256": h.hexdigest() if h else None,
    "requests": sum(s.requests for s in sources), "bytes_read": sum(s.bytes_read for s in sources),
}))
"""


# --------------------------------------------------------------------------- benchmarks


def test_large_file_sequential_read(ml_image: MLImage) -> None:
    big, framework = ml_image.big, ml_image.layers[1]
    check, _ = run_script(
        READ_FILE_SCRIPT, ml_image.ref, str(_fresh_cache(ml_image, "c-check", index=True)),
        big.path, "1",
    )  # fmt: skip
    assert check["sha256"] == big.sha256 and check["size"] == big.size
    seekoci_runs = []
    for r in range(ROUNDS + 1):
        cache = _fresh_cache(ml_image, f"c-read{r}", index=True)
        out, _ = run_script(READ_FILE_SCRIPT, ml_image.ref, str(cache), big.path, "0")
        seekoci_runs.append(out)
    baseline = [
        _stream_into(
            ml_image.blob_url(1), f"gzip -dc | tar -xOf - {big.path.lstrip('/')} > /dev/null"
        )  # type: ignore[arg-type]
        for _ in range(ROUNDS)
    ]
    pigz = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        subprocess.run(
            ["pigz", "-dc", str(framework.blob_path)], stdout=subprocess.DEVNULL, check=True
        )
        pigz.append(time.perf_counter() - started)
    seekoci_s = statistics.median(r["elapsed_s"] for r in seekoci_runs)
    RESULTS["large_file"] = {
        "seekoci_s": seekoci_s,
        "baseline_s": statistics.median(baseline),
        "pigz_s": statistics.median(pigz),
        "pigz_rate": framework.tar_size / statistics.median(pigz),
        "seekoci_rate": big.size / seekoci_s,
        "requests": seekoci_runs[-1]["requests"],
        "bytes_read": seekoci_runs[-1]["bytes_read"],
    }


def _tree_shape(root: Path) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, str]]]:
    """Directories, (file, size) and (symlink, target) of a tree, relative, in walk order."""
    dirs: list[str] = []
    files: list[tuple[str, int]] = []
    links: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            relpath = os.path.normpath(os.path.join(rel, name))
            if os.path.islink(path):
                links.append((relpath, os.readlink(path)))
            elif name in dirnames:
                dirs.append(relpath)
            else:
                files.append((relpath, os.path.getsize(path)))
    return dirs, files, links


WRITE_FLOOR_SCRIPT = """
import json, os, sys, time
shape, dest = json.load(open(sys.argv[1])), sys.argv[2]
buf = memoryview(bytes(range(256)) * 65536)  # 16 MiB
t0 = time.perf_counter()
os.makedirs(dest)
for d in shape["dirs"]:
    os.makedirs(os.path.join(dest, d), exist_ok=True)
for name, size in shape["files"]:
    fd = os.open(os.path.join(dest, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    while size:
        size -= os.write(fd, buf[: min(size, len(buf))])
    os.fchmod(fd, 0o644)
    os.utime(fd, (0, 0))
    os.close(fd)
for name, target in shape["links"]:
    os.symlink(target, os.path.join(dest, name))
print(json.dumps({"elapsed_s": time.perf_counter() - t0}))
"""


def test_whole_image_to_a_directory(ml_image: MLImage, tree_root: tuple[Path, str]) -> None:
    """Every tree is written into a new directory and none is removed until all the runs are
    done: ext4 makes a new inode look past every inode freed in the last minutes
    (``recently_deleted``), so creating 66k files just after removing 66k costs several
    times more kernel time, and would charge the removal of one run's tree to the next run.
    ``sync`` before each run, so none pays for the write-back of the one before.

    Two rounds, the baseline first in one and last in the other, and the best of each side:
    this disk's file creation slows by 2-5x for minutes at a time (``umoci unpack`` took
    28-76 s in one week's runs), and one run of each would charge whichever ran in such a
    spell with it. The trees go where :func:`conftest.tree_root` says (a journaled ext4 of
    the session's own when it can make one), the layouts and caches with them."""
    work = tree_root[0] / "image"
    work.mkdir()
    trees = {
        (mode, r): work / f"get-{mode}-{r}"
        for r in range(WHOLE_ROUNDS)
        for mode in ("indexed", "no-index")
    }
    layouts = [work / f"oci-{r}" for r in range(WHOLE_ROUNDS)]
    bundles = [work / f"bundle-{r}" for r in range(WHOLE_ROUNDS)]
    floor_dir = work / "write-floor"
    made = [*layouts, *bundles, floor_dir, *trees.values()]
    for path in made:
        shutil.rmtree(path, ignore_errors=True)
    baseline: list[tuple[float, float, int]] = []  # (skopeo s, umoci s, peak RSS KiB)
    runs: dict[str, list[tuple[float, int]]] = {"indexed": [], "no-index": []}

    def what_users_do(r: int) -> None:  # skopeo copy to an OCI layout, then umoci unpack
        source = f"docker://{ml_image.ref}"
        copy = ["skopeo", "copy", "--src-tls-verify=false", source, f"oci:{layouts[r]}:v1"]
        unpack = ["umoci", "unpack", "--image", f"{layouts[r]}:v1", str(bundles[r])]
        os.sync()
        copy_s, copy_rss = _timed(copy)
        os.sync()
        unpack_s, unpack_rss = _timed(unpack)
        baseline.append((copy_s, unpack_s, max(copy_rss, unpack_rss)))

    def seekoci_get(r: int) -> None:
        for mode in ("indexed", "no-index"):
            cache = _fresh_cache(ml_image, f"c-get-{mode}-{r}", index=mode == "indexed")
            argv = [sys.executable, "-m", "seekoci", "get", ml_image.ref, "/", "-o"]
            argv += [str(trees[mode, r]), "--cache-dir", str(cache)]
            os.sync()
            runs[mode].append(_timed(argv))

    for r in range(WHOLE_ROUNDS):
        steps = (what_users_do, seekoci_get) if r % 2 == 0 else (seekoci_get, what_users_do)
        for step in steps:
            step(r)
    # the disk alone: the same directories, files, sizes and links written from memory by
    # one thread doing nothing else (no network, no inflate, no checks)
    rootfs = bundles[0] / "rootfs"
    dirs, files, links = _tree_shape(rootfs)
    shape = work / "tree-shape.json"
    shape.write_text(json.dumps({"dirs": dirs, "files": files, "links": links}))
    os.sync()
    floor, _ = run_script(WRITE_FLOOR_SCRIPT, str(shape), str(floor_dir))
    want = _tree_digest(rootfs)
    for out in [*trees.values(), *(b / "rootfs" for b in bundles[1:])]:
        got = _tree_digest(out)
        assert got == want, (out, got, want)
    for path in made:
        shutil.rmtree(path, ignore_errors=True)
    best = min(baseline, key=lambda b: b[0] + b[1])
    indexed, noindex = (min(runs[mode]) for mode in ("indexed", "no-index"))
    RESULTS["whole_image"] = {
        "skopeo_s": best[0],
        "umoci_s": best[1],
        "baseline_s": best[0] + best[1],
        "baseline_rss_kib": max(b[2] for b in baseline),
        "indexed_s": indexed[0],
        "indexed_rss_kib": max(rss for _, rss in runs["indexed"]),
        "noindex_s": noindex[0],
        "noindex_rss_kib": max(rss for _, rss in runs["no-index"]),
        "write_floor_s": floor["elapsed_s"],
        "tree_fs": tree_root[1],
        "dirs": len(dirs),
        "files": want[0],
        "bytes": want[1],
        "rounds": {
            "skopeo + umoci": [[round(c, 1), round(u, 1)] for c, u, _ in baseline],
            "indexed": [round(s, 1) for s, _ in runs["indexed"]],
            "no-index": [round(s, 1) for s, _ in runs["no-index"]],
        },
    }


def test_first_touch_near_the_end_of_the_big_layer(ml_image: MLImage) -> None:
    target = ml_image.near_end
    COLD = """
import hashlib, json, sys, time
t0 = time.perf_counter()
import seekoci
img = seekoci.open_image(sys.argv[1], cache_dir=sys.argv[2])
data = img.read_bytes(sys.argv[3])
print(json.dumps({"elapsed_s": time.perf_counter() - t0, "sha256": hashlib.sha256(data).hexdigest(),
  "bytes_read": sum(l.source.bytes_read for l in img.layers)}))
"""
    runs, exits = [], []
    for r in range(ROUNDS):
        cache = _fresh_cache(ml_image, f"c-touch{r}", index=False)
        out, wall = run_script(COLD, ml_image.ref, str(cache), target.path)
        assert out["sha256"] == target.sha256
        runs.append(out)
        # the process ends once the index made behind the scan is saved (the next read's)
        exits.append(wall)
        assert list((cache / "indexes").rglob("*.v*")), "the index was not saved"
    baseline = [
        _stream_into(ml_image.blob_url(1), ["tar", "-xzOf", "-", target.path.lstrip("/")])
        for _ in range(ROUNDS)
    ]
    RESULTS["first_touch"] = {
        "seekoci_s": statistics.median(r["elapsed_s"] for r in runs),
        "index_saved_s": statistics.median(exits),
        "baseline_s": statistics.median(baseline),
        "bytes_read": runs[-1]["bytes_read"],
        "blob": ml_image.layers[1].size,
    }


def test_random_4k_reads(ml_image: MLImage) -> None:
    cache = _fresh_cache(ml_image, "c-random", index=True)
    img = seekoci.open_image(ml_image.ref, cache_dir=cache)
    layer = img.layers[1]
    spans = layer.index().spans
    biggest = max(s.compressed_size for s in spans)
    mean_span = statistics.mean(s.compressed_size for s in spans)
    rnd = random.Random(4096)
    big = ml_image.big
    per_request: list[int] = []
    per_bytes: list[int] = []
    started = time.perf_counter()
    with img.open(big.path) as f:
        for _ in range(1000):
            offset = rnd.randrange(big.size - 4096)
            before = layer.source.requests, layer.source.bytes_read  # type: ignore[attr-defined]
            f.seek(offset)
            assert len(f.read(4096)) == 4096
            per_request.append(layer.source.requests - before[0])  # type: ignore[attr-defined]
            per_bytes.append(layer.source.bytes_read - before[1])  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - started
    RESULTS["random_4k"] = {
        "reads": 1000,
        "elapsed_s": elapsed,
        "max_requests": max(per_request),
        "mean_requests": statistics.mean(per_request),
        "max_bytes": max(per_bytes),
        "mean_bytes": statistics.mean(per_bytes),
        "biggest_span": biggest,
        "mean_span": mean_span,
    }


# --------------------------------------------------------------------------- the page


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def _render() -> str:
    s, lf, wi, ft, rr = (
        RESULTS[k] for k in ("setup", "large_file", "whole_image", "first_touch", "random_4k")
    )
    tar = sum(layer["tar"] for layer in s["layers"])
    blob = sum(layer["blob"] for layer in s["layers"])
    ratio_read = lf["baseline_s"] / lf["seekoci_s"]
    ratio_rate = lf["seekoci_rate"] / lf["pigz_rate"]
    r_idx = wi["baseline_s"] / wi["indexed_s"]
    r_noidx = wi["baseline_s"] / wi["noindex_s"]
    r_touch = ft["seekoci_s"] / ft["baseline_s"]
    r_floor = wi["baseline_s"] / wi["write_floor_s"]

    def limit(target: float) -> str:
        if r_floor >= target:
            return ""
        return f" (the disk alone allows {r_floor:.1f}x: see the next row)"

    def ok(met: bool) -> str:
        return "met" if met else "**not met**"

    lines = [
        "# Performance: whole images and large files",
        "",
        "Generated by `nox -s bench` (`benchmarks/test_image_pipeline.py`); do not edit by hand.",
        f"Image: three gzip layers, {_mb(tar)} of tar in {_mb(blob)} of blobs, "
        f"{sum(layer['files'] for layer in s['layers']):,} files "
        f"(`SEEKOCI_BENCH_IMAGE_MB={IMAGE_MB}`); "
        f"machine: {os.cpu_count()} cores. Medians of {ROUNDS} rounds where rounds are repeated.",
        "",
        "| what | seekoci | baseline (what users do today) | ratio | target |",
        "|---|---|---|---|---|",
        f"| read `{s['big'][0]}` ({_mb(s['big'][1])}) front to back, index cached, no span cached "
        f"| {lf['seekoci_s']:.2f} s ({lf['seekoci_rate'] / 1e6:.0f} MB/s, "
        f"{lf['requests']} requests) "
        f"| stream + `gzip -dc` + `tar -xO`: {lf['baseline_s']:.2f} s | {ratio_read:.1f}x faster "
        f"| >= 5x: {ok(ratio_read >= 5)} |",
        f"| its bytes per second against `pigz -dc`'s output rate on that layer "
        f"| {lf['seekoci_rate'] / 1e6:.0f} MB/s | {lf['pigz_rate'] / 1e6:.0f} MB/s "
        f"| {ratio_rate:.2f}x | >= 1.5x: {ok(ratio_rate >= 1.5)} |",
        f"| `seekoci get REF /`, indexes cached | {wi['indexed_s']:.1f} s, peak RSS "
        f"{wi['indexed_rss_kib'] / 1024:.0f} MiB | `skopeo copy` + `umoci unpack`: "
        f"{wi['skopeo_s']:.1f} + {wi['umoci_s']:.1f} s, peak RSS "
        f"{wi['baseline_rss_kib'] / 1024:.0f} MiB | {r_idx:.1f}x faster "
        f"| >= 4x: {ok(r_idx >= 4)}{limit(4)} |",
        f"| `seekoci get REF /`, no index anywhere | {wi['noindex_s']:.1f} s, peak RSS "
        f"{wi['noindex_rss_kib'] / 1024:.0f} MiB | the same | {r_noidx:.1f}x faster "
        f"| >= 2x: {ok(r_noidx >= 2)}{limit(2)} |",
        f"| the disk alone: the same {wi['dirs']:,} directories and {wi['files']:,} files "
        f"written from memory, one thread, nothing else | {wi['write_floor_s']:.1f} s "
        f"| the same | {r_floor:.1f}x faster | (what writing the tree alone allows) |",
        f"| first touch of `{s['near_end'][0]}` (tar offset {s['near_end'][2]:,} of "
        f"{s['near_end'][3]:,}), nothing indexed | {ft['seekoci_s']:.2f} s, "
        f"{_mb(ft['bytes_read'])} read (process done, index saved: "
        f"{ft['index_saved_s']:.2f} s) | stream that layer into `tar -xzO`: "
        f"{ft['baseline_s']:.2f} s | {r_touch:.2f}x the time | <= 0.5x: {ok(r_touch <= 0.5)} |",
        f"| 1,000 random 4 KiB reads of that file, index cached | "
        f"{rr['elapsed_s']:.2f} s; requests per read: max {rr['max_requests']}, mean "
        f"{rr['mean_requests']:.2f}; bytes per read: max {rr['max_bytes']:,}, mean "
        f"{rr['mean_bytes']:,.0f} | a span: mean {rr['mean_span']:,.0f} B, largest "
        f"{rr['biggest_span']:,} B | | <= 1 request and <= 1 span a read: "
        f"{ok(rr['max_requests'] <= 1 and rr['max_bytes'] <= rr['biggest_span'])} |",
        "",
        f"The whole-image runs wrote {wi['files']:,} files ({_mb(wi['bytes'])}) into "
        f"{wi.get('tree_fs', 'the work directory')}; each tree was "
        "checked against umoci's, path by path and byte by byte. Its figures are the best of "
        f"{WHOLE_ROUNDS} rounds for each side (the baseline first in one round, last in the "
        f"other; all rounds in the JSON below): `skopeo copy` + `umoci unpack` "
        + ", ".join(f"{c:.1f} + {u:.1f} s" for c, u in wi["rounds"]["skopeo + umoci"])
        + "; with indexes "
        + ", ".join(f"{t:.1f} s" for t in wi["rounds"]["indexed"])
        + "; without "
        + ", ".join(f"{t:.1f} s" for t in wi["rounds"]["no-index"])
        + ".",
        "",
        "```json",
        json.dumps(RESULTS, indent=1, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)
