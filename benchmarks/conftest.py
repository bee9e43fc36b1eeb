"""Session fixtures of the benchmarks: one big layer, a real registry, the report.

``SEEKOCI_BENCH_SIZE_MB`` (default 1024) sets the uncompressed size of the layer. The layer is
generated once per session (:mod:`layergen`) into a temporary directory that is removed at the
end, pushed as a single-layer OCI image to a ``docker-registry`` started for the session
(the integration tests' :class:`servers.RegistryServer`), and every benchmark reads it from
there. The ``report`` fixture collects what the benchmarks measured; when the session ends it
writes ``docs/performance.md`` (``SEEKOCI_BENCH_REPORT`` names another file) if every
measurement was made, and the terminal summary prints the same page.
"""

from __future__ import annotations

import compileall
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BENCH_DIR = Path(__file__).resolve().parent
# tests/ holds the shared harness (imagebuilder, pushclient, integration.servers); benchmarks/
# its own helpers (layergen, report): make both importable however pytest was started.
for _path in (BENCH_DIR.parent / "tests", BENCH_DIR):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import imagebuilder  # noqa: E402
from benchkit import (  # noqa: E402
    NATIVE_REPO,
    REPO,
    REPO_ROOT,
    SOCI_REPO,
    SPAN_GAP,
    TAG,
    BlobLayer,
    PublishedImages,
    PushedImage,
    copy_image,
    fresh_cache,
    pick_files,
    seekoci_cli,
)
from integration.servers import RegistryServer  # noqa: E402
from layergen import GeneratedLayer, generate_layer  # noqa: E402
from report import Report  # noqa: E402

SIZE_MB = int(os.environ.get("SEEKOCI_BENCH_SIZE_MB", "1024"))
REPORT_PATH = Path(os.environ.get("SEEKOCI_BENCH_REPORT", REPO_ROOT / "docs" / "performance.md"))

_rendered: list[str] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The session's first benchmark pays for generating and pushing the layer (~50 s at the
    # default size on 2 cores, more on a busy machine or with a larger SEEKOCI_BENCH_SIZE_MB):
    # pyproject's 300 s per test is meant for the test suite, not for this.
    for item in items:
        if BENCH_DIR in item.path.parents:
            item.add_marker(pytest.mark.timeout(3600))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for text in _rendered:
        terminalreporter.write_sep("=", "seekoci benchmark report")
        terminalreporter.write_line(text)


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    """Everything big (the blob, the registry's storage, caches), removed after the session."""
    with tempfile.TemporaryDirectory(prefix="seekoci-bench-") as tmp:
        yield Path(tmp)


#: Size of the file system the benchmarks write whole trees into (sparse: it takes on the
#: disk what the trees hold at most at once, ~9 GB).
TREE_FS_BYTES = 24 << 30


@pytest.fixture(scope="session")
def tree_root(workdir: Path) -> Iterator[tuple[Path, str]]:
    """Where the benchmarks write whole trees (``get /`` and the pulls they are measured
    against), and what file system that is.

    A journaled ext4 made for the session on a loop device, when the session can make one
    (root, ``mkfs.ext4``, ``mount``): this machine's root file system is an ext4 without a
    journal, where a new inode is looked for past every inode freed in the last minutes
    (``recently_deleted``), so creating a tree within minutes of removing one -- another
    benchmark's, or a round's -- costs 2-5x the kernel time, for seekoci and its baseline
    alike but not evenly (docs/performance.md, "The thirteenth session's changes"). A
    journaled ext4, what most machines write to, has no such state. Else the work
    directory, and the page says so."""
    image = workdir / "trees.ext4"
    mount = workdir / "trees"
    mount.mkdir()
    mounted = False
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mkfs.ext4"):
        with image.open("wb") as f:
            f.truncate(TREE_FS_BYTES)
        # inode tables and journal written now, not by a kernel thread during the runs
        init = "lazy_itable_init=0,lazy_journal_init=0"
        made = subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-E", init, str(image)], capture_output=True
        )
        if made.returncode == 0:
            mounted = (
                subprocess.run(
                    ["mount", "-o", "loop", str(image), str(mount)], capture_output=True
                ).returncode
                == 0
            )
    what = (
        "a journaled ext4 made for the session on a loop device (this machine's root is an "
        "ext4 without a journal)"
        if mounted
        else "the work directory on this machine's root file system"
    )
    try:
        yield mount, what
    finally:
        if mounted:
            os.sync()
            if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        image.unlink(missing_ok=True)


@pytest.fixture(scope="session", autouse=True)
def hermetic_env(workdir: Path) -> Iterator[None]:
    """No user caches, Docker credentials or insecure-registry settings, here or in children."""
    docker_config = workdir / "docker-config"
    docker_config.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOCKER_CONFIG", str(docker_config))
        mp.setenv("SEEKOCI_CACHE_DIR", str(workdir / "default-cache"))
        mp.delenv("SEEKOCI_INSECURE_REGISTRIES", raising=False)
        # ``python -m seekoci`` and ``python -c 'import seekoci'`` in subprocesses: this checkout.
        mp.setenv(
            "PYTHONPATH",
            os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        )
        # Byte-compile this checkout as installing a wheel does: a fresh process then imports
        # seekoci the way a user's does, not compiling every module from source (which an
        # editable install under PYTHONDONTWRITEBYTECODE would do on every import, ~35 ms).
        compileall.compile_dir(str(REPO_ROOT / "seekoci"), quiet=1)
        yield


@pytest.fixture(scope="session")
def report() -> Iterator[Report]:
    rep = Report(REPO_ROOT, SIZE_MB)
    yield rep
    text = rep.render()
    if rep.complete or "SEEKOCI_BENCH_REPORT" in os.environ:
        rep.write(REPORT_PATH)
        text += f"\n(written to {REPORT_PATH})"
    else:
        text += f"\n(some measurements are missing: {REPORT_PATH} was left as it was)"
    _rendered.append(text)


@pytest.fixture(scope="session")
def bench_layer(workdir: Path, report: Report) -> GeneratedLayer:
    started = time.perf_counter()
    (workdir / "layer").mkdir()
    layer = generate_layer(workdir / "layer", SIZE_MB)
    report.layer = layer
    report.facts["generating the layer (tar + `gzip -6`)"] = (
        f"{time.perf_counter() - started:.1f} s (not a benchmark)"
    )
    return layer


@pytest.fixture(scope="session")
def registry(workdir: Path) -> Iterator[RegistryServer]:
    server = RegistryServer(workdir / "registry")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pushed(registry: RegistryServer, bench_layer: GeneratedLayer, report: Report) -> PushedImage:
    started = time.perf_counter()
    blob = bench_layer.blob_path.read_bytes()
    # One monolithic PUT: the push client's chunked upload re-slices the rest of the blob for
    # every 8 MiB chunk, which is quadratic for a blob of hundreds of MB.
    registry.client().push_blob(REPO, blob, chunk_size=len(blob) + 1)
    img = imagebuilder.image(BlobLayer(bench_layer.digest, bench_layer.diff_id, blob))
    registry.push(REPO, TAG, img)  # config + manifest; the layer is there already
    del blob, img
    report.facts["pushing it to the local registry"] = (
        f"{time.perf_counter() - started:.1f} s (not a benchmark)"
    )
    target, others = pick_files(bench_layer)
    report.facts["file read by every read benchmark"] = (
        f"`{target.path}` ({target.size:,} B, at tar offset {target.offset:,})"
    )
    report.facts["other small files (warm benchmark)"] = (
        f"{len(others)}, at least {SPAN_GAP / (1 << 20):.0f} MiB apart in the tar"
    )
    return PushedImage(registry, bench_layer, registry.ref(REPO, TAG), target, others)


@pytest.fixture(scope="session")
def index_dir(pushed: PushedImage, workdir: Path, report: Report) -> Path:
    """A cache directory holding the layer's index, built by ``seekoci index`` in a subprocess."""
    cache = workdir / "index-cache"
    started = time.perf_counter()
    done = seekoci_cli("index", pushed.ref, "--cache-dir", str(cache))
    took = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    index_files = [p for p in (cache / "indexes").rglob("*") if p.is_file()]
    assert len(index_files) == 1, index_files
    assert not (cache / "spans").exists() or not any((cache / "spans").rglob("*")), (
        "building the index left spans in the cache: the cold benchmark would not be cold"
    )
    size = index_files[0].stat().st_size
    report.facts["`python -m seekoci index` (subprocess wall time)"] = f"{took:.2f} s"
    report.facts["index file in the cache"] = (
        f"{size:,} B ({size / pushed.layer.size:.2%} of the blob)"
    )
    return cache


def _artifact_blob(registry: RegistryServer, repo: str, digest: str) -> dict[str, Any]:
    """The one layer descriptor of the index artifact ``digest`` (one image layer: one blob)."""
    body, _, _ = registry.client().get_manifest(repo, digest)
    layers = json.loads(body)["layers"]
    assert len(layers) == 1, layers
    return dict(layers[0])


@pytest.fixture(scope="session")
def published(
    pushed: PushedImage, index_dir: Path, workdir: Path, report: Report
) -> PublishedImages:
    """The bench image in two more repositories: native + SOCI indexes, and SOCI only.

    The native index comes from (a copy of) the cache directory ``index_dir`` built, so
    publishing it is an upload; each SOCI index streams the whole layer blob once.
    """
    import seekoci
    from seekoci.formats.ztoc import decode_ztoc
    from seekoci.publish import publish_native, publish_soci

    registry, layer = pushed.registry, pushed.layer
    started = time.perf_counter()
    digests = {repo: copy_image(registry, layer, repo) for repo in (NATIVE_REPO, SOCI_REPO)}
    took = time.perf_counter() - started
    report.published_facts["copying the image to two more repositories (blob mounted)"] = (
        f"{took:.2f} s: `{NATIVE_REPO}` gets a native and a SOCI index, `{SOCI_REPO}` a SOCI "
        "index only"
    )

    cache = fresh_cache(index_dir, workdir / "publish-cache")
    img = seekoci.open_image(registry.ref(NATIVE_REPO, TAG), cache_dir=cache)
    assert img.digest == digests[NATIVE_REPO]
    started = time.perf_counter()
    native_digest = publish_native(img)
    native_s = time.perf_counter() - started
    assert img.layers[0].index_status == "cached", "publish_native did not use the cache dir"
    native = _artifact_blob(registry, NATIVE_REPO, native_digest)
    annotations = dict(native["annotations"])
    native_size = int(native["size"])
    metadata_size = int(annotations["dev.seekoci.index.metadata-size"])
    native_span_size = int(annotations["dev.seekoci.span-size"])
    native_spans = len(img.layers[0].index().spans)

    soci_s: dict[str, float] = {}
    soci: dict[str, dict[str, Any]] = {}
    for repo in (SOCI_REPO, NATIVE_REPO):
        img = seekoci.open_image(registry.ref(repo, TAG), cache_dir=False)
        started = time.perf_counter()
        digest = publish_soci(img)  # SOCI's defaults: 4 MiB spans, layers of 10 MiB and more
        soci_s[repo] = time.perf_counter() - started
        soci[repo] = _artifact_blob(registry, repo, digest)
    ztoc = soci[SOCI_REPO]
    assert ztoc["digest"] == soci[NATIVE_REPO]["digest"], "two zTOCs of one layer differ"
    ztoc_size = int(ztoc["size"])
    ztoc_spans = (
        decode_ztoc(registry.client().get_blob(SOCI_REPO, str(ztoc["digest"]))).max_span_id + 1
    )

    facts = report.published_facts
    facts["`publish_native` (index from the cache directory)"] = (
        f"{native_s:.2f} s (not a benchmark)"
    )
    facts["`publish_soci` (4 MiB spans: streams and inflates the whole blob)"] = (
        f"{soci_s[SOCI_REPO]:.2f} s; again for `{NATIVE_REPO}`: {soci_s[NATIVE_REPO]:.2f} s "
        "(not a benchmark)"
    )
    share = layer.size
    facts["native index blob (whole)"] = (
        f"{native_size:,} B ({native_size / share:.2%} of the layer blob), {native_spans} spans "
        f"of ~{native_span_size / (1 << 20):g} MiB"
    )
    facts["native index header + directory (read up front; pages and records follow by range)"] = (
        f"{metadata_size:,} B ({metadata_size / share:.4%} of the layer blob)"
    )
    facts["SOCI zTOC (fetched whole by a reader)"] = (
        f"{ztoc_size:,} B ({ztoc_size / share:.2%} of the layer blob), {ztoc_spans} spans of 4 MiB"
    )
    report.index_sizes.update(
        native=native_size, native_metadata=metadata_size, ztoc=ztoc_size, layer=layer.size
    )
    return PublishedImages(
        image=pushed,
        native_repo=NATIVE_REPO,
        soci_repo=SOCI_REPO,
        native_digest=str(native["digest"]),
        native_size=native_size,
        native_metadata_size=metadata_size,
        native_spans=native_spans,
        ztoc_digest=str(ztoc["digest"]),
        ztoc_size=ztoc_size,
        ztoc_spans=ztoc_spans,
    )
