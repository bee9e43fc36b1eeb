"""Bounded memory: a file far larger than memory budgets, read front to back.

Issue 7's bound: reading a 10 GB file sequentially stays under 256 MiB of RSS. The layer
holds one regular file of ``SEEKOCI_BENCH_HUGE_GB`` GiB (default 10) of Python-like text.
Compressing 10 GiB with gzip would take minutes, so the blob is built the way pigz builds
one: gzip *members*, here the same compressed 64 MiB member of text repeated (a tar header
member first, the padding and end-of-archive member last). Every byte still goes through
the read pipeline: spans of 1 MiB of output fetched by range, checked, inflated, delivered
in order. The page is ``docs/performance-memory.md``; peak RSS is the reading process's
VmHWM (interpreter and imports included).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import imagebuilder
import pytest
from benchkit import REPO_ROOT, BlobLayer, run_script
from integration.servers import RegistryServer

HUGE_GB = int(os.environ.get("SEEKOCI_BENCH_HUGE_GB", "10"))
PAGE = Path(
    os.environ.get("SEEKOCI_BENCH_MEMORY_REPORT", REPO_ROOT / "docs" / "performance-memory.md")
)
PIECE = 64 << 20
REPO, TAG = "bench/huge-file", "v1"
PATH = "/data/huge.txt"

pytestmark = pytest.mark.benchmark(group="memory")

READ_SCRIPT = """
import hashlib, json, sys, time

def peak_rss_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0

import seekoci
ref, cache, path = sys.argv[1:4]
img = seekoci.open_image(ref, cache_dir=cache)
h = hashlib.sha256()
n = 0
t0 = time.perf_counter()
with img.open(path) as f:
    while chunk := f.read(1 << 20):
        n += len(chunk)
        h.update(chunk)
elapsed = time.perf_counter() - t0
source = img.layers[0].source
print(json.dumps({"elapsed_s": elapsed, "size": n, "sha256": h.hexdigest(),
                  "peak_rss_kib": peak_rss_kib(), "requests": source.requests,
                  "bytes_read": source.bytes_read}))
"""


def _piece() -> bytes:
    """64 MiB of Python-like text repeating every ~16 KiB (inside deflate's window, so a
    member compresses ~100:1 and the blob stays ~1% of the file)."""
    lines = [
        f"    def method_{i}(self, value: int = {i * 7919 % 4096}) -> str:  # {i:x}\n".encode()
        for i in range(256)
    ]
    block = b"".join(lines)
    return (block * (PIECE // len(block) + 1))[:PIECE]


def _huge_layer(size: int) -> tuple[bytes, str, str]:
    """(blob, diff_id, sha256 of the file) of a tar holding one file of ``size`` bytes."""
    piece = _piece()
    assert size % PIECE == 0
    count = size // PIECE
    info = tarfile.TarInfo(PATH.lstrip("/"))
    info.size, info.mode, info.mtime = size, 0o644, 1_700_000_000
    header = info.tobuf(format=tarfile.PAX_FORMAT)
    trailer = bytes(-size % 512) + bytes(1024)
    member = gzip.compress(piece, compresslevel=6, mtime=0)
    blob = io.BytesIO()
    blob.write(gzip.compress(header, mtime=0))
    for _ in range(count):
        blob.write(member)
    blob.write(gzip.compress(trailer, mtime=0))
    file_hash, tar_hash = hashlib.sha256(), hashlib.sha256(header)
    for _ in range(count):
        file_hash.update(piece)
        tar_hash.update(piece)
    tar_hash.update(trailer)
    return blob.getvalue(), "sha256:" + tar_hash.hexdigest(), file_hash.hexdigest()


def test_a_huge_file_read_front_to_back_in_bounded_memory(
    registry: RegistryServer, workdir: Path
) -> None:
    size = HUGE_GB << 30
    started = time.perf_counter()
    blob, diff_id, want = _huge_layer(size)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    registry.client().push_blob(REPO, blob, chunk_size=len(blob) + 1)
    registry.push(REPO, TAG, imagebuilder.image(BlobLayer(digest, diff_id, blob)))
    blob_size = len(blob)
    del blob
    ref = registry.ref(REPO, TAG)
    cache = workdir / "huge-cache"
    indexed = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "seekoci", "index", ref, "--cache-dir", str(cache)],
        capture_output=True, text=True, cwd=REPO_ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    index_s = time.perf_counter() - indexed
    out, wall = run_script(READ_SCRIPT, ref, str(cache), PATH)
    assert out["size"] == size and out["sha256"] == want
    result: dict[str, Any] = {
        "file_bytes": size,
        "blob_bytes": blob_size,
        "setup_s": indexed - started,
        "index_s": index_s,
        "read": out,
        "subprocess_wall_s": wall,
    }
    PAGE.write_text(_render(result))
    print(json.dumps(result, indent=1))


def _render(r: dict[str, Any]) -> str:
    read = r["read"]
    rss = read["peak_rss_kib"] / 1024
    gib = r["file_bytes"] / 2**30
    rate = r["file_bytes"] / read["elapsed_s"] / 1e6
    what = (
        f"one {gib:.0f} GiB file read front to back (`f.read(1 MiB)` until the end), "
        "index cached, no span cached"
    )
    measured = (
        f"{read['elapsed_s']:.1f} s ({rate:,.0f} MB/s), {read['requests']:,} range requests, "
        f"{read['bytes_read']:,} B of {r['blob_bytes']:,} B of blob"
    )
    met = "met" if rss < 256 else "**not met**"
    rss_what = "peak RSS of the reading process (VmHWM: interpreter, imports and the read)"
    return f"""# Performance: a huge file in bounded memory

Generated by `nox -s bench` (`benchmarks/test_memory.py`); do not edit by hand.

| what | measured | target |
|---|---|---|
| {what} | {measured} | - |
| {rss_what} | {rss:.0f} MiB | < 256 MiB: {met} |

The blob is gzip members (the same compressed 64 MiB of Python-like text repeated, a
tar header member first), built without compressing {gib:.0f} GiB; the index was built by
`seekoci index` in {r["index_s"]:.1f} s. Every byte read was checked against the file's
sha256.

```json
{json.dumps(r, indent=1)}
```
"""
