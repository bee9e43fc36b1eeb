"""One small file from the same layer stored as zstd:chunked, eStargz and plain zstd, with an
empty cache, against the full pull; forward reads of plain zstd against ``zstd -dc | tar -x``;
the whole tree of each TOC format (``get /``) against the blob streamed into ``tar -x``.

The session's benchmark layer (gzip, ``SEEKOCI_BENCH_SIZE_MB``) is decompressed and stored
again: ``zstd -3`` (one frame, what most tools write), skopeo's ``zstd:chunked`` (Debian's
skopeo 1.9: the older generation, no tar-split), and tests/tocwriter.py's eStargz (4 MiB
chunks, stargz's default) and current-generation zstd:chunked, each pushed as a one-layer
image with the annotations its producer writes. Every read goes through a counting proxy and
is checked against the file's sha256. The figures are written to
docs/performance-formats.md (``SEEKOCI_BENCH_FORMATS_REPORT`` names another file). The
test writer holds the whole tar in memory: keep ``SEEKOCI_BENCH_SIZE_MB`` small (64-256).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import imagebuilder
import pytest
import requests
from benchkit import REPO_ROOT, BlobLayer, TimingProxy, pick_files, run_script
from integration.servers import RegistryServer
from layergen import GeneratedLayer
from tocwriter import estargz, zstd_chunked

import seekoci

ROUNDS = 3
REPORT = Path(
    os.environ.get("SEEKOCI_BENCH_FORMATS_REPORT", REPO_ROOT / "docs" / "performance-formats.md")
)
KINDS = ("zstd:chunked (skopeo)", "zstd:chunked (current)", "estargz", "zstd (one frame)")
_rows: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def tar_path(bench_layer: GeneratedLayer, workdir: Path) -> Path:
    out = workdir / "formats-layer.tar"
    with out.open("wb") as f:
        subprocess.run(["gzip", "-dc", str(bench_layer.blob_path)], stdout=f, check=True)
    return out


def push_blob(
    registry: RegistryServer,
    repo: str,
    blob: bytes,
    tar_digest: str,
    media: str,
    annotations: dict[str, str],
) -> str:
    layer = BlobLayer(
        "sha256:" + hashlib.sha256(blob).hexdigest(), tar_digest, blob, media_type=media
    )

    class Annotated(BlobLayer):
        def descriptor(self) -> dict[str, object]:
            return {**super().descriptor(), "annotations": annotations}

    img = imagebuilder.image(
        Annotated(layer.digest, layer.diff_id, blob, media) if annotations else layer
    )
    client = registry.client()
    client.push_blob(repo, blob)
    client.push_blob(repo, img.config_bytes)
    client.push_manifest(repo, "v1", img.manifest_bytes, img.media_type)
    return registry.ref(repo, "v1")


@pytest.fixture(scope="module")
def images(
    registry: RegistryServer, bench_layer: GeneratedLayer, tar_path: Path, workdir: Path
) -> Iterator[dict[str, tuple[str, Path]]]:
    """kind -> (reference, blob on disk)."""
    tar = tar_path.read_bytes()
    diff_id = bench_layer.diff_id
    out: dict[str, tuple[str, Path]] = {}
    zst = workdir / "formats.tar.zst"
    subprocess.run(["zstd", "-3", "-q", "-f", "-o", str(zst), str(tar_path)], check=True)
    out["zstd (one frame)"] = (
        push_blob(
            registry,
            "formats/zstd",
            zst.read_bytes(),
            diff_id,
            imagebuilder.OCI_LAYER + "+zstd",
            {},
        ),
        zst,
    )
    for kind, made, media in (
        ("estargz", estargz(tar, chunk_size=4 << 20), "+gzip"),
        ("zstd:chunked (current)", zstd_chunked(tar, chunk_size=4 << 20), "+zstd"),
    ):
        path = workdir / f"formats-{len(out)}.blob"
        path.write_bytes(made.blob)
        repo = "formats/" + kind.split()[0].replace(":", "-")
        out[kind] = (
            push_blob(
                registry, repo, made.blob, diff_id, imagebuilder.OCI_LAYER + media, made.annotations
            ),
            path,
        )
    # skopeo compresses an uncompressed layer of an OCI layout
    layout = workdir / "formats-oci"
    src = imagebuilder.image(BlobLayer(diff_id, diff_id, tar, media_type=imagebuilder.OCI_LAYER))
    imagebuilder.write_oci_layout(layout, src, "v1")
    ref = registry.ref("formats/skopeo-chunked", "v1")
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-compress-format",
            "zstd:chunked",
            f"oci:{layout}:v1",
            f"docker://{ref}",
        ],
        check=True,
        timeout=1800,
    )
    out["zstd:chunked (skopeo)"] = (ref, Path())
    del tar
    yield out
    shutil.rmtree(layout, ignore_errors=True)


def full_pull(url: str, decompress: list[str], path: str) -> tuple[bytes, int]:
    """Stream the blob into ``decompress | tar -xO PATH``: the file and the bytes received."""
    received = 0
    with requests.get(url, stream=True, timeout=600) as resp:
        resp.raise_for_status()
        dec = subprocess.Popen(decompress, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        tar = subprocess.Popen(["tar", "-xOf", "-", path], stdin=dec.stdout, stdout=subprocess.PIPE)
        assert dec.stdin is not None and dec.stdout is not None
        dec.stdout.close()
        for chunk in resp.iter_content(1 << 20):
            received += len(chunk)
            try:
                dec.stdin.write(chunk)
            except BrokenPipeError:
                break
        dec.stdin.close()
        data, _ = tar.communicate()
        dec.wait()
    return data, received


@pytest.mark.parametrize("kind", KINDS)
def test_one_small_file_empty_cache(kind: str, images, registry, bench_layer, tmp_path) -> None:
    target, _ = pick_files(bench_layer)
    ref, _blob = images[kind]
    times, blob_bytes, requests_made = [], [], []
    for r in range(ROUNDS):
        proxy = TimingProxy(registry.url)
        try:
            started = time.perf_counter()
            img = seekoci.open_image(
                ref.replace(registry.host, proxy.host), cache_dir=tmp_path / f"c{r}"
            )
            data = img.read_bytes(target.path)
            times.append(time.perf_counter() - started)
            assert hashlib.sha256(data).hexdigest() == target.sha256
            blob_bytes.append(proxy.bytes("blob"))
            requests_made.append(proxy.requests())
            layer = img.layers[0]
        finally:
            proxy.stop()
    digest = layer.digest
    url = registry.blob_url(ref.split("/", 1)[1].split(":")[0], digest)
    decompress = ["gzip", "-dc"] if layer.compression == "gzip" else ["zstd", "-dcq"]
    started = time.perf_counter()
    pulled, received = full_pull(url, decompress, target.tar_name)
    pull_time = time.perf_counter() - started
    assert hashlib.sha256(pulled).hexdigest() == target.sha256
    _rows[kind] = {
        "blob": float(layer.size),
        "bytes": float(statistics.median(blob_bytes)),
        "requests": float(statistics.median(requests_made)),
        "time": statistics.median(times),
        "pull_bytes": float(received),
        "pull_time": pull_time,
        "status": 1.0 if layer.index_status == "embedded" else 0.0,
    }


def test_forward_reads_of_plain_zstd(images, bench_layer, tmp_path) -> None:
    """Plain zstd from disk: seekoci reading one file forward vs ``zstd -dc | tar -x``."""
    _, blob = images["zstd (one frame)"]
    target, _ = pick_files(bench_layer)
    last = max(bench_layer.text_files, key=lambda f: f.offset)
    for name, rec in (("middle", target), ("last", last)):
        runs, tool = [], []
        for _ in range(ROUNDS):
            started = time.perf_counter()
            layer = seekoci.open_layer(blob, cache_dir=False)
            data = layer.open(rec.path).read()
            runs.append(time.perf_counter() - started)
            assert hashlib.sha256(data).hexdigest() == rec.sha256
            started = time.perf_counter()
            dec = subprocess.Popen(["zstd", "-dcq", str(blob)], stdout=subprocess.PIPE)
            out = subprocess.run(
                ["tar", "-xOf", "-", rec.tar_name],
                stdin=dec.stdout,
                capture_output=True,
                check=True,
            ).stdout
            dec.wait()
            tool.append(time.perf_counter() - started)
            assert hashlib.sha256(out).hexdigest() == rec.sha256
        _rows[f"forward:{name}"] = {
            "time": statistics.median(runs),
            "tool": statistics.median(tool),
            "offset": float(rec.offset),
        }
    write_report(bench_layer)


TREE_KINDS = ("zstd:chunked (skopeo)", "zstd:chunked (current)", "estargz")
#: Rounds of each whole-tree comparison
TREE_ROUNDS = 2
#: Names a TOC format adds to the tar that are not part of the image's filesystem.
FORMAT_NAMES = {"stargz.index.json", ".prefetch.landmark", ".no.prefetch.landmark"}
TREE_SCRIPT = """
import json, os, sys, time
import seekoci
ref, cache, dest = sys.argv[1:4]
started = time.perf_counter()
img = seekoci.open_image(ref, cache_dir=cache)
img.extract("/", dest)
elapsed = time.perf_counter() - started
status = open("/proc/self/status").read().splitlines()
hwm = int(next(line for line in status if line.startswith("VmHWM")).split()[1])
print(json.dumps({"elapsed_s": elapsed, "hwm_kib": hwm}))
"""


def _tree_files(root: Path) -> dict[str, int]:
    """relative path -> size of every regular file under ``root``."""
    found: dict[str, int] = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath, name)
            if path.is_file() and not path.is_symlink():
                found[str(path.relative_to(root))] = path.stat().st_size
    return found


def pull_into(url: str, decompress: list[str], dest: Path) -> int:
    """Stream the blob into ``decompress | tar -x -C dest``; the bytes received."""
    dest.mkdir(parents=True)
    received = 0
    with requests.get(url, stream=True, timeout=1800) as resp:
        resp.raise_for_status()
        dec = subprocess.Popen(decompress, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        tar = subprocess.Popen(["tar", "-xf", "-", "-C", str(dest)], stdin=dec.stdout)
        assert dec.stdin is not None and dec.stdout is not None
        dec.stdout.close()
        for chunk in resp.iter_content(1 << 20):
            received += len(chunk)
            dec.stdin.write(chunk)
        dec.stdin.close()
        assert tar.wait() == 0 and dec.wait() == 0
    return received


@pytest.mark.parametrize("kind", TREE_KINDS)
def test_whole_tree_empty_cache(kind: str, images, registry, bench_layer, tree_root) -> None:
    """``get /`` of the image (a fresh process, an empty cache) against the standard pull:
    the blob streamed into ``decompress | tar -x``. Both go straight to the registry: the
    counting proxy relays every byte in Python on the same two vCPUs (measured: 0.2 s of a
    5 s ``get /``), so seekoci's bytes and requests are counted in one more run through it,
    not timed. Two rounds, the pull
    first in one and last in the other, the best of each side: creating 50k files on this
    disk swings by 2-5x for minutes at a time (see test_image_pipeline.py); nothing is
    removed until both rounds are done, and ``sync`` before each run, so none pays for the
    write-back of the tree before it (as test_image_pipeline.py does). The trees go where
    :func:`conftest.tree_root` says."""
    tmp_path = tree_root[0] / f"formats-{TREE_KINDS.index(kind)}"
    tmp_path.mkdir()
    ref, _blob = images[kind]
    layer = seekoci.open_image(ref, cache_dir=False).layers[0]
    url = registry.blob_url(ref.split("/", 1)[1].split(":")[0], layer.digest)
    decompress = ["gzip", "-dc"] if layer.compression == "gzip" else ["zstd", "-dcq"]
    ours: list[tuple[float, dict[str, Any]]] = []  # (s, doc)
    pulls: list[tuple[float, int]] = []

    def seekoci_get(r: int) -> None:
        out, _ = run_script(
            TREE_SCRIPT, ref, str(tmp_path / f"cache-{r}"), str(tmp_path / f"tree-{r}")
        )
        ours.append((out["elapsed_s"], out))

    def pull(r: int) -> None:
        started = time.perf_counter()
        received = pull_into(url, decompress, tmp_path / f"pulled-{r}")
        pulls.append((time.perf_counter() - started, received))

    for r in range(TREE_ROUNDS):
        for step in (pull, seekoci_get) if r % 2 == 0 else (seekoci_get, pull):
            os.sync()
            step(r)
    proxy = TimingProxy(registry.url)  # the bytes and requests: one more run, not timed
    try:
        run_script(
            TREE_SCRIPT,
            ref.replace(registry.host, proxy.host),
            str(tmp_path / "cache-counted"),
            str(tmp_path / "tree-counted"),
        )
        blob_bytes, requests_made = proxy.bytes("blob"), proxy.requests()
    finally:
        proxy.stop()
    pulled = {k: v for k, v in _tree_files(tmp_path / "pulled-0").items() if k not in FORMAT_NAMES}
    for name in [*(f"tree-{r}" for r in range(TREE_ROUNDS)), "tree-counted"]:
        assert _tree_files(tmp_path / name) == pulled  # the same files, the same sizes
    shutil.rmtree(tmp_path, ignore_errors=True)
    best_s, _ = min(ours, key=lambda o: o[0])
    pull_time, received = min(pulls)
    _rows[f"tree:{kind}"] = {
        "time": best_s,
        "rss": max(o[1]["hwm_kib"] for o in ours) / 1024,
        "bytes": float(blob_bytes),
        "requests": float(requests_made),
        "files": float(len(pulled)),
        "pull_time": pull_time,
        "pull_bytes": float(received),
        "rounds": [round(o[0], 1) for o in ours],
        "pull_rounds": [round(p[0], 1) for p in pulls],
        "tree_fs": tree_root[1],
    }
    write_report(bench_layer)


def write_report(bench_layer: GeneratedLayer) -> None:
    mb = bench_layer.tar_size / 1e6
    lines = [
        "# Formats: one small file with an empty cache",
        "",
        f"Written by `benchmarks/test_formats.py` (layer: {mb:.0f} MB uncompressed, "
        f"{bench_layer.files} files; median of {ROUNDS}; load average "
        f"{os.getloadavg()[0]:.1f}). Bytes are blob bytes through the proxy; requests are "
        "all requests (manifest, config, token-free local registry).",
        "",
        "| layer | blob | read: blob bytes | requests | time | full pull bytes "
        "| full pull time | ratio (time) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in KINDS:
        r = _rows.get(kind)
        if r is None:
            continue
        lines.append(
            f"| {kind} | {r['blob'] / 1e6:.1f} MB | {r['bytes'] / 1e3:.0f} KB | "
            f"{r['requests']:.0f} | {r['time'] * 1e3:.0f} ms | {r['pull_bytes'] / 1e6:.1f} MB | "
            f"{r['pull_time'] * 1e3:.0f} ms | {r['pull_time'] / r['time']:.1f}x |"
        )
    lines += [
        "",
        "## Plain zstd (one frame): reading forward",
        "",
        "seekoci decodes from the start and stops once the file is served; `zstd -dc | tar -xO`",
        "decodes the whole blob (tar stops reading only at the end). From a local file.",
        "",
        "| file | offset in the tar | seekoci | zstd -dc \\| tar -xO |",
        "|---|---:|---:|---:|",
    ]
    for name in ("middle", "last"):
        r = _rows.get(f"forward:{name}")
        if r is not None:
            lines.append(
                f"| {name} | {r['offset'] / 1e6:.0f} MB | {r['time'] * 1e3:.0f} ms | "
                f"{r['tool'] * 1e3:.0f} ms |"
            )
    trees = [kind for kind in TREE_KINDS if f"tree:{kind}" in _rows]
    if trees:
        lines += [
            "",
            "## Whole tree (`get /`), empty cache",
            "",
            "`Image.extract('/', DEST)` in a fresh process with an empty cache, straight to the",
            "registry (its bytes and requests counted in one more run through the proxy, not",
            "timed), against the standard pull: the blob streamed into `gzip -dc` or `zstd -dc`",
            "and `tar -x` (the trees compared: the same files, the same sizes). The best of "
            f"{TREE_ROUNDS} rounds each, the pull first in one and last in the other "
            "(every round in the last column). The trees were written into "
            f"{_rows[f'tree:{trees[0]}'].get('tree_fs', 'the work directory')}.",
            "",
            "| layer | files | seekoci | requests | blob bytes | peak RSS | pull + untar "
            "| ratio (time) | rounds: seekoci / pull |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for kind in trees:
            r = _rows[f"tree:{kind}"]
            lines.append(
                f"| {kind} | {r['files']:.0f} | {r['time']:.1f} s | {r['requests']:.0f} | "
                f"{r['bytes'] / 1e6:.1f} MB | {r['rss']:.0f} MiB | {r['pull_time']:.1f} s | "
                f"{r['pull_time'] / r['time']:.2f}x | "
                + ", ".join(f"{t:.1f}" for t in r["rounds"])
                + " / "
                + ", ".join(f"{t:.1f}" for t in r["pull_rounds"])
                + " s |"
            )
    text = "\n".join(lines) + "\n"
    REPORT.write_text(text)
    print(text)
