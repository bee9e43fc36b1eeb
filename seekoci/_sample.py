"""``seekoci demo``: a sample image made on the spot, read through the same engine.

The sample is an OCI image layout on disk (three gzip layers, about 40 MB uncompressed).
Reading from it goes through the same range source / index / span machinery as a registry
blob; the blobs' read counters show how few bytes a warm read needs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shlex
import shutil
import tarfile
import tempfile
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from .image import Image

SAMPLE_TAG = "sample"
CONFIG_TEXT = b"model: tiny\nthreads: 4\ncache: /var/cache/app\n"


def _tar(files: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _blob(root: str, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(root, "blobs", "sha256", digest)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def make_sample_image(root: str) -> str:
    """Write the sample image layout under ``root``; return its reference."""
    rnd = random.Random(20261128)
    base = [
        (
            f"usr/lib/python3/site-packages/pkg{i}/mod{j}.py",
            (f"# module {i}.{j}\n" + f"def f(x):\n    return x * {j}\n" * 40).encode(),
            0o644,
        )
        for i in range(60)
        for j in range(20)
    ]
    base.append(("usr/lib/libsample.so", rnd.randbytes(12 << 20), 0o755))
    base.append(("etc/os-release", b'NAME="seekoci sample"\nID=sample\n', 0o644))
    header = json.dumps(
        {"weight": {"dtype": "F32", "shape": [1024, 1024], "data_offsets": [0, 4 << 20]}}
    ).encode()
    model = len(header).to_bytes(8, "little") + header + rnd.randbytes(4 << 20)
    app = [("opt/app/model.safetensors", model, 0o644), ("etc/app/config.yaml", CONFIG_TEXT, 0o644)]
    top = [
        ("etc/app/.wh.old.yaml", b"", 0o644),
        ("usr/share/doc/README", b"sample\n" * 1000, 0o644),
    ]
    layers = []
    for files in (base, app, top):
        tar = _tar(files)
        blob = gzip.compress(tar, 6, mtime=0)
        layers.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                **_blob(root, blob),
                "diff_id": "sha256:" + hashlib.sha256(tar).hexdigest(),
            }
        )
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer.pop("diff_id") for layer in layers]},
        "config": {"Cmd": ["/bin/sh"]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **_blob(root, json.dumps(config).encode()),
        },
        "layers": layers,
    }
    mdesc = _blob(root, json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **mdesc,
                "platform": {"os": "linux", "architecture": "amd64"},
                "annotations": {"org.opencontainers.image.ref.name": SAMPLE_TAG},
            }
        ],
    }
    with open(os.path.join(root, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(root, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    return f"oci:{root}:{SAMPLE_TAG}"


def _bytes_read(img: Image) -> int:
    return sum(int(getattr(layer.source, "bytes_read", 0)) for layer in img.layers)


#: Marks a directory the demo wrote, so that a later run may replace what is in it.
DEMO_MARKER = ".seekoci-demo"


def _demo_root(workdir: str | None) -> tuple[str, bool]:
    """(directory, temporary?): ``workdir``, else demo/ under the cache directory, else (a
    read-only home) a temporary directory removed when the demo ends."""
    if workdir:
        return workdir, False
    from .cache import default_cache_dir

    root = os.path.join(default_cache_dir(), "demo")
    try:
        os.makedirs(root, exist_ok=True)
        return root, False
    except OSError:
        return tempfile.mkdtemp(prefix="seekoci-demo-"), True


def _prepare(root: str) -> None:
    """Empty what a previous run left (only in a directory the demo marked as its own)."""
    os.makedirs(root, exist_ok=True)
    marker = os.path.join(root, DEMO_MARKER)
    if os.path.exists(marker):
        for sub in ("image", "cache"):
            shutil.rmtree(os.path.join(root, sub), ignore_errors=True)
    with open(marker, "w") as f:
        f.write("written by `seekoci demo`; every run replaces image/ and cache/\n")


def run_demo(out: TextIO, *, workdir: str | None = None) -> int:
    root, temporary = _demo_root(workdir)
    try:
        return _run_demo(out, root, keep=not temporary)
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


def _run_demo(out: TextIO, root: str, *, keep: bool) -> int:
    from . import open_image

    _prepare(root)
    ref = make_sample_image(os.path.join(root, "image"))
    cache = os.path.join(root, "cache")
    out.write(f"sample image: {ref}\n")
    total = 0
    for label in ("first read (builds the index)", "second read (index from the cache)"):
        started = time.perf_counter()
        img = open_image(ref, cache_dir=cache, platform="linux/amd64")
        total = sum(layer.size for layer in img.layers)
        data = img.read_bytes("/etc/app/config.yaml")
        took = time.perf_counter() - started
        out.write(
            f"{label}: /etc/app/config.yaml = {len(data)} bytes in {took * 1000:.1f} ms, "
            f"{_bytes_read(img):,} of {total:,} blob bytes read\n"
        )
        if data != CONFIG_TEXT:
            out.write("error: the bytes read do not match the sample\n")
            return 1
    out.write(data.decode())
    out.write(f"layers: {', '.join(layer.digest or '' for layer in img.layers)}\n")
    out.write(f"files in the image: {sum(len(f) for _, _, f in img.walk('/'))}\n")
    if not keep:
        out.write(
            "\n(the sample was written to a temporary directory, now removed: "
            "`seekoci demo --dir DIR` keeps it)\n"
        )
        return 0
    r = shlex.quote(ref)
    out.write(
        f"\nnext, try (the sample stays in {root}; the next demo run replaces it):\n"
        f"  seekoci ls {r} /etc -l\n"
        f"  seekoci cat {r} /etc/os-release\n"
        f"  seekoci stat {r} /usr/lib/libsample.so --json\n"
        f"  seekoci inspect {r}\n"
        f"  seekoci models {r}\n"
        f"  seekoci get {r} /etc/app -o app-config\n"
        f"  python -c \"import seekoci; print(seekoci.open_image('{ref}').listdir('/'))\"\n"
        "and on a registry: seekoci ls python:3.12-slim /usr/lib -l\n"
    )
    return 0
