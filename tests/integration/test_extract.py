"""Whole trees out of an image (the parallel-pull mode): ``Image.extract`` with indexes in
the cache, and with no index anywhere (each layer streamed once, indexed on the way, its
files staged and moved into place), against a model of the merged view the test keeps
itself from its own layer declarations."""

from __future__ import annotations

import itertools
import os
import stat
from pathlib import Path

import pytest
from imagebuilder import (
    dir,
    file,
    hardlink,
    image,
    layer,
    opaque,
    random_bytes,
    symlink,
    text_bytes,
    whiteout,
)

import seekoci

pytestmark = pytest.mark.integration

MTIME = 1_600_000_000
BIG = text_bytes("extract-big", 3_000_000) + random_bytes("extract-big", 1_000_000)
BASE = layer(
    dir("usr", mtime=MTIME),
    dir("usr/lib", mtime=MTIME),
    file("usr/lib/libbig.so", BIG, mode=0o755, mtime=MTIME),
    file("usr/lib/gone.txt", b"deleted by the upper layer\n", mtime=MTIME),
    file("usr/lib/replaced.txt", b"the base version\n" * 1000, mtime=MTIME),
    dir("var", mtime=MTIME),
    dir("var/cache", mtime=MTIME),
    file("var/cache/old.bin", random_bytes("cache", 400_000), mtime=MTIME),
    hardlink("usr/lib/libbig-link.so", "usr/lib/libbig.so", mtime=MTIME),
    *[
        file(f"etc/conf.d/{i:03}.conf", text_bytes(f"conf{i}", 300 + i), mtime=MTIME)
        for i in range(60)
    ],
    file("empty", b"", mtime=MTIME),
)
UPPER = layer(
    whiteout("usr/lib/gone.txt"),
    file("usr/lib/replaced.txt", b"the upper version\n", mtime=MTIME),
    opaque("var/cache"),
    file("var/cache/new.txt", b"fresh\n", mtime=MTIME),
    symlink("usr/lib/current", "libbig.so", mtime=MTIME),
    file("opt/tool", text_bytes("tool", 200_000), mode=0o4755, mtime=MTIME),
    producer="pigz",
)
#: What a container sees: path -> bytes (regular files) or "-> target" (symlinks).
EXPECTED: dict[str, bytes | str] = {
    "usr/lib/libbig.so": BIG,
    "usr/lib/libbig-link.so": BIG,
    "usr/lib/replaced.txt": b"the upper version\n",
    "usr/lib/current": "-> libbig.so",
    "var/cache/new.txt": b"fresh\n",
    "opt/tool": text_bytes("tool", 200_000),
    "empty": b"",
    **{f"etc/conf.d/{i:03}.conf": text_bytes(f"conf{i}", 300 + i) for i in range(60)},
}


def _tree(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                out[rel] = path.read_bytes()
    return out


def _opened(ref: str, tmp_path: Path, indexed: bool) -> seekoci.Image:
    """The image with an empty cache directory, or with every layer's index in it."""
    cache = tmp_path / "cache"
    if indexed:
        seekoci.open_image(ref, cache_dir=cache, span_size=64 << 10).build_index()
    return seekoci.open_image(ref, cache_dir=cache, span_size=64 << 10)


@pytest.fixture(scope="module")
def ref(registry) -> str:
    registry.push("extract/tree", "v1", image(BASE, UPPER))
    return registry.ref("extract/tree", "v1")


@pytest.mark.parametrize("indexed", [False, True], ids=["no-index", "indexed"])
def test_the_whole_image_comes_out_as_a_container_sees_it(
    ref: str, tmp_path: Path, indexed: bool
) -> None:
    img = _opened(ref, tmp_path, indexed)
    before = [layer.index_status for layer in img.layers]
    assert before == (["cached", "cached"] if indexed else ["none", "none"])
    dest = tmp_path / "rootfs"
    warnings = img.extract("/", dest)
    assert warnings == []
    assert _tree(dest) == EXPECTED  # nothing hidden, nothing left from the staging
    assert stat.S_IMODE((dest / "usr/lib/libbig.so").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "opt/tool").stat().st_mode) == 0o755  # setuid dropped
    assert int((dest / "usr/lib/replaced.txt").stat().st_mtime) == MTIME
    assert int((dest / "usr").stat().st_mtime) == MTIME
    for rel, content in EXPECTED.items():  # every file's time, staged or streamed
        if isinstance(content, bytes):
            assert int((dest / rel).stat().st_mtime) == MTIME, rel
    # the index is a by-product of the pull: a new reader finds it in the cache
    again = seekoci.open_image(ref, cache_dir=tmp_path / "cache", span_size=64 << 10)
    assert [layer.index_status for layer in again.layers] == ["cached", "cached"]
    assert again.read_bytes("/usr/lib/libbig.so") == BIG


def test_hidden_files_are_never_read_with_indexes(ref: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    seekoci.open_image(ref, cache_dir=cache, span_size=64 << 10).build_index()
    img = seekoci.open_image(ref, cache_dir=cache, span_size=64 << 10)
    img.extract("/var", tmp_path / "var")
    assert _tree(tmp_path / "var") == {"cache/new.txt": b"fresh\n"}
    base = img.layers[0]
    # only the spans under the upper layer's file were read: the base layer, whose only
    # file under /var is hidden by the opaque directory, gave no bytes at all
    assert base.source.bytes_read == 0  # type: ignore[attr-defined]


def test_a_subtree_without_an_index_and_progress(ref: str, tmp_path: Path) -> None:
    img = seekoci.open_image(ref, cache_dir=tmp_path / "cache", span_size=64 << 10)
    seen: list[tuple[int, int]] = []
    img.extract(
        "/usr/lib", tmp_path / "lib", progress=lambda done, total: seen.append((done, total))
    )
    assert _tree(tmp_path / "lib") == {
        k.removeprefix("usr/lib/"): v for k, v in EXPECTED.items() if k.startswith("usr/lib/")
    }
    total = 2 * len(BIG) + len(b"the upper version\n")
    assert seen and seen[-1] == (total, total)
    assert all(a <= b for (a, _), (b, _) in itertools.pairwise(seen))
    # the copy is never shown complete before it is (the total grows during the walk)
    assert all(done < shown for done, shown in seen[:-1])


@pytest.mark.parametrize("indexed", [False, True], ids=["no-index", "indexed"])
def test_progress_of_the_whole_image(ref: str, tmp_path: Path, indexed: bool) -> None:
    img = _opened(ref, tmp_path, indexed)
    seen: list[tuple[int, int]] = []
    img.extract("/", tmp_path / "out", progress=lambda done, total: seen.append((done, total)))
    total = sum(len(v) for v in EXPECTED.values() if isinstance(v, bytes))
    assert seen[-1] == (total, total)
    assert all(done < shown for done, shown in seen[:-1])
    assert all(a <= b for (a, _), (b, _) in itertools.pairwise(seen))


@pytest.mark.parametrize("indexed", [False, True], ids=["no-index", "indexed"])
def test_special_bits_are_kept_when_asked(ref: str, tmp_path: Path, indexed: bool) -> None:
    img = _opened(ref, tmp_path, indexed)
    dest = tmp_path / "rootfs"
    assert img.extract("/", dest, keep_special_bits=True) == []
    assert stat.S_IMODE((dest / "opt/tool").stat().st_mode) == 0o4755
    assert stat.S_IMODE((dest / "usr/lib/libbig.so").stat().st_mode) == 0o755
