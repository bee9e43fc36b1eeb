"""Threads: many readers of one image at once, from a cold cache and through faults.

* 16 threads read random ranges of random files of one image (layers gzip, multi-member
  gzip, zstd and uncompressed) whose indexes nobody built yet, so the first reads of each
  layer race to build it; every byte is compared with what was pushed.
* The same through a fault proxy resetting some blob answers: retries in many threads.
* Images and layers used from a ThreadPoolExecutor: opening, listing, stat, walk and layer
  range reads interleaved.
"""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from imagebuilder import file, image, layer, random_bytes, text_bytes

import seekoci
from seekoci.registry import retry

from .faults import Fault, FaultProxy

pytestmark = pytest.mark.integration

REPO = "concurrency/app"
THREADS = 16


@pytest.fixture(scope="module")
def pushed(registry):
    files: dict[str, bytes] = {}
    layers = []
    for n, producer in enumerate(("python", "multi-member", "zstd", "none")):
        entries = []
        for i in range(4):
            path = f"{producer}/f{i}.bin"
            maker = random_bytes if i % 2 else text_bytes
            data = maker(f"conc-{producer}-{i}", 40_000 + 90_000 * i)
            files["/" + path] = data
            entries.append(file(path, data))
        layers.append(layer(*entries, producer=producer, seed=n))
    img = image(*layers)
    registry.push(REPO, "v1", img)
    return img, files


def hammer(img: seekoci.Image, files: dict[str, bytes], seed: int, rounds: int) -> list[str]:
    """Random reads; returns what went wrong (empty: every byte right)."""
    rnd = random.Random(seed)
    problems = []
    paths = sorted(files)
    for _ in range(rounds):
        path = rnd.choice(paths)
        data = files[path]
        offset = rnd.randrange(len(data))
        length = rnd.randrange(1, 150_000)
        how = rnd.choice(["open", "read_bytes", "stat"])
        if how == "open":
            with img.open(path) as f:
                f.seek(offset)
                got = f.read(length)
            if got != data[offset : offset + length]:
                problems.append(f"{path} [{offset}:+{length}]")
        elif how == "read_bytes":
            if img.read_bytes(path) != data:
                problems.append(f"{path} whole")
        elif img.stat(path).size != len(data):
            problems.append(f"{path} stat")
    return problems


def run_threads(img: seekoci.Image, files: dict[str, bytes], rounds: int) -> list[str]:
    start = threading.Barrier(THREADS)

    def worker(seed: int) -> list[str]:
        start.wait(timeout=60)
        return hammer(img, files, seed, rounds)

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return [p for problems in pool.map(worker, range(THREADS)) for p in problems]


def test_sixteen_threads_on_one_cold_image(registry, pushed, tmp_path: Path) -> None:
    _, files = pushed
    img = seekoci.open_image(registry.ref(REPO, "v1"), cache_dir=tmp_path / "cache")
    assert run_threads(img, files, rounds=12) == []
    # and again with every index in place: span reads only
    warm = seekoci.open_image(registry.ref(REPO, "v1"), cache_dir=tmp_path / "cache")
    assert run_threads(warm, files, rounds=12) == []


def test_sixteen_threads_through_resets(registry, pushed, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(retry, "BACKOFF_BASE_SECONDS", 0.005)
    _, files = pushed
    proxy = FaultProxy(registry.url)
    try:
        img = seekoci.open_image(proxy.ref(REPO, "v1"), cache_dir=tmp_path / "cache")
        # each blob: two resets after a few KB and two cut bodies, whoever asks first
        proxy.faults = [
            Fault("reset", 2, after=5000, per_path=True),
            Fault("truncate", 2, per_path=True),
        ]
        assert run_threads(img, files, rounds=6) == []
        assert all(f.hits >= 2 for f in proxy.faults)
    finally:
        proxy.stop()


def test_images_and_layers_from_a_thread_pool(registry, pushed, tmp_path: Path) -> None:
    img_def, files = pushed
    ref = registry.ref(REPO, "v1")
    cache = tmp_path / "cache"
    shared = seekoci.open_image(ref, cache_dir=cache)

    def task(i: int) -> bool:
        kind = i % 4
        if kind == 0:  # an image of its own, opened in the worker
            own = seekoci.open_image(ref, cache_dir=cache)
            path = sorted(files)[i % len(files)]
            return own.read_bytes(path) == files[path]
        if kind == 1:  # the shared image's tree
            walked = {d + "/" + f for d, _, fs in shared.walk("/") for f in fs}
            return {p.replace("//", "/") for p in walked} == set(files)
        if kind == 2:  # one layer, by offset in its tar stream
            n = (i // 4) % len(img_def.layers)
            lay, tar = shared.layers[n], img_def.layers[n].tar
            offset = (i * 7919) % len(tar)
            return lay.read_range(offset, 5000) == tar[offset : offset + 5000]
        n = (i // 4) % len(img_def.layers)
        names = shared.layers[n].listdir("/")
        return names == sorted({e.name.split("/")[0] for e in img_def.layers[n].entries})

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(task, range(48)))
    assert results == [True] * 48
