"""Helpers shared by the benchmark modules: the pushed image, subprocess scripts, the baseline.

Kept out of ``conftest.py`` so that benchmark modules import them as a plain module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import imagebuilder
import requests
from integration.servers import CountingProxy, RegistryServer
from layergen import FileRecord, GeneratedLayer

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
REPO, TAG = "bench/big-layer", "v1"
#: The same image in two more repositories of the same registry (the layer blob mounted, not
#: uploaded again), with indexes published next to it. Referrers are per repository, so
#: ``REPO`` keeps none: its cold and index-build benchmarks never find a published index.
NATIVE_REPO = "bench/published"  # a native index and a SOCI index: readers take the native
SOCI_REPO = "bench/soci-only"  # only a SOCI index: readers fall to it
#: Other small files read by the warm benchmark, each in a span of its own.
OTHER_FILES = 8
#: Keep the target and the other files at least this far apart in the tar stream, so that no
#: two share a span (spans are ~1 MiB of uncompressed data, ending at a deflate block).
SPAN_GAP = 3 << 20
STREAM_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class BlobLayer:
    """What ``imagebuilder.image`` and the push client need of a layer whose tar is not kept."""

    digest: str
    diff_id: str
    blob: bytes
    media_type: str = imagebuilder.OCI_LAYER + "+gzip"

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.blob)}


@dataclasses.dataclass(frozen=True)
class SizedLayer:
    """A layer for ``imagebuilder.image`` by digest and size alone: its blob is in the registry."""

    digest: str
    diff_id: str
    size: int
    media_type: str = imagebuilder.OCI_LAYER + "+gzip"

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclasses.dataclass(frozen=True)
class PushedImage:
    registry: RegistryServer
    layer: GeneratedLayer
    ref: str
    target: FileRecord  # the small file every read benchmark reads
    others: list[FileRecord]  # more small files, each in a span of its own

    @property
    def blob_url(self) -> str:
        return self.registry.blob_url(REPO, self.layer.digest)

    @property
    def manifest_url(self) -> str:
        return f"{self.registry.url}/v2/{REPO}/manifests/{TAG}"


@dataclasses.dataclass(frozen=True)
class PublishedImages:
    """The bench image in :data:`NATIVE_REPO` and :data:`SOCI_REPO`, indexes published."""

    image: PushedImage
    native_repo: str
    soci_repo: str
    native_digest: str  # the native index blob of the layer
    native_size: int
    native_metadata_size: int  # its header + directory (what a reader fetches first)
    native_spans: int
    ztoc_digest: str  # the SOCI zTOC of the layer
    ztoc_size: int
    ztoc_spans: int


def copy_image(registry: RegistryServer, layer: GeneratedLayer, repo: str) -> str:
    """Push the bench image as ``repo:TAG``, mounting its layer blob from :data:`REPO`.

    Returns the manifest digest: the same image as ``REPO:TAG``, so the same digest.
    """
    client = registry.client()
    mount = client.request("POST", f"/v2/{repo}/blobs/uploads/?mount={layer.digest}&from={REPO}")
    if mount.status_code != 201:
        raise RuntimeError(f"mounting the layer into {repo}: {mount.status_code} {mount.text}")
    img = imagebuilder.image(SizedLayer(layer.digest, layer.diff_id, layer.size))
    client.push_blob(repo, img.config_bytes)
    return client.push_manifest(repo, TAG, img.manifest_bytes, img.media_type)


class TimingProxy(CountingProxy):
    """A :class:`CountingProxy` fit for timing: TCP_NODELAY on the client side.

    ``BaseHTTPRequestHandler`` writes the headers and the body of a response in separate
    sends; with Nagle's algorithm on, the body waits for the client's delayed ACK of the
    headers, about 40 ms per request. Measured on the 64 MB layer, median of 5: an empty-cache
    read took 314 ms through a plain ``CountingProxy``, 177 ms through this one and 168-179 ms
    straight to the registry. A client closing an idle keep-alive connection is not an error.
    """

    def _handler_class(self) -> type[Any]:
        base = super()._handler_class()

        class Handler(base):  # type: ignore[misc,valid-type]
            disable_nagle_algorithm = True

            def handle(self) -> None:
                try:
                    super().handle()
                except ConnectionResetError:
                    pass

        return Handler


def pick_files(layer: GeneratedLayer) -> tuple[FileRecord, list[FileRecord]]:
    """The target: a 1-16 KB text file near the middle of the tar; then spread-out others."""
    small = [f for f in layer.text_files if 1024 <= f.size <= 16 * 1024]
    middle = layer.tar_size // 2
    target = min(small, key=lambda f: abs(f.offset - middle))
    chosen = [target]
    step = max(1, len(small) // (4 * OTHER_FILES))
    for f in small[::step]:
        if all(abs(f.offset - c.offset) >= SPAN_GAP for c in chosen):
            chosen.append(f)
    others = chosen[1:]
    if len(others) > OTHER_FILES:  # keep them spread over the whole layer
        others = [others[i * len(others) // OTHER_FILES] for i in range(OTHER_FILES)]
    return target, others


def seekoci_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seekoci", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
    )


def fresh_cache(index_cache: Path, dest: Path) -> Path:
    """``dest`` as a cache directory with the index and no spans."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(index_cache, dest)
    return dest


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def source_counters(layers: list[Any]) -> tuple[int, int]:
    """(bytes_read, requests) summed over the layers' range sources."""
    sources = [layer.source for layer in layers]
    return (
        sum(getattr(s, "bytes_read", 0) for s in sources),
        sum(getattr(s, "requests", 0) for s in sources),
    )


def stream_extract(image: PushedImage, path: str) -> tuple[bytes, int, int]:
    """What users do today: GET the manifest, stream the whole layer blob into ``tar -xzO``.

    Returns the file's bytes, the blob bytes received and the blob requests made (1).
    """
    received = 0
    with requests.Session() as http, tempfile.TemporaryFile() as out:
        manifest = http.get(
            image.manifest_url, headers={"Accept": imagebuilder.OCI_MANIFEST}, timeout=60
        )
        manifest.raise_for_status()
        digest = manifest.json()["layers"][0]["digest"]
        url = image.registry.blob_url(REPO, digest)
        tar = subprocess.Popen(
            ["tar", "-xzOf", "-", path.lstrip("/")], stdin=subprocess.PIPE, stdout=out
        )
        assert tar.stdin is not None
        try:
            with http.get(url, stream=True, timeout=60) as response:
                response.raise_for_status()
                for chunk in response.iter_content(STREAM_CHUNK):
                    received += len(chunk)
                    tar.stdin.write(chunk)
        finally:
            tar.stdin.close()
            status = tar.wait()
        if status != 0:
            raise RuntimeError(f"tar exited with status {status}")
        out.seek(0)
        return out.read(), received, 1


#: Runs in a fresh interpreter: argv = ref, cache_dir, path. Prints one JSON line. The index
#: is loaded (``Layer.complete()``) before the read only to time that step on its own: the
#: read would load it first thing anyway.
COLD_READ_SCRIPT = """
import hashlib, json, sys, time
t0 = time.perf_counter()
import seekoci
t1 = time.perf_counter()
img = seekoci.open_image(sys.argv[1], cache_dir=sys.argv[2])
t2 = time.perf_counter()
for layer in img.layers:
    layer.complete()
t3 = time.perf_counter()
data = img.read_bytes(sys.argv[3])
t4 = time.perf_counter()
sources = [layer.source for layer in img.layers]
print(json.dumps({
    "import_s": t1 - t0,
    "open_image_s": t2 - t1,
    "index_load_s": t3 - t2,
    "read_s": t4 - t3,
    "elapsed_s": t4 - t0,
    "bytes_read": sum(getattr(s, "bytes_read", 0) for s in sources),
    "requests": sum(getattr(s, "requests", 0) for s in sources),
    "size": len(data),
    "sha256": hashlib.sha256(data).hexdigest(),
    "index_status": [layer.index_status for layer in img.layers],
}))
"""

#: Runs in a fresh interpreter: argv = ref. Builds the index in memory, prints one JSON line.
#: Peak RSS is the kernel's VmHWM of this process. Not ``ru_maxrss``: Linux carries the
#: high-water mark of the pre-exec address space across ``execve``, so a child forked from
#: this 100+ MB pytest process would "peak" at the parent's RSS before running a line
#: (``RUSAGE_CHILDREN`` in the parent has the same flaw).
INDEX_RSS_SCRIPT = """
import json, resource, sys, time

def peak_rss_kib():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

import seekoci
img = seekoci.open_image(sys.argv[1], cache_dir=False)
layer = img.layers[0]
before = peak_rss_kib()
t0 = time.perf_counter()
index = layer.index()
elapsed = time.perf_counter() - t0
print(json.dumps({
    "elapsed_s": elapsed,
    "peak_rss_before_kib": before,
    "peak_rss_kib": peak_rss_kib(),
    "bytes_read": layer.source.bytes_read,
    "requests": layer.source.requests,
    "spans": len(index.spans),
    "entries": len(index.entries),
    "uncompressed_size": index.uncompressed_size,
}))
"""


def run_script(script: str, *args: str) -> tuple[dict[str, Any], float]:
    """Run ``script`` in a fresh interpreter; its JSON line and the subprocess wall time."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise AssertionError(f"subprocess failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall
