"""The cache directory: layout, atomic content-addressed files, damage on disk, the memory
cache, default locations, and what a Layer does with what it finds there."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard
from layers import build_tar, compress_layer, file, random_bytes, sha256_digest, text_bytes

import seekoci
import seekoci.cache
from seekoci.cache import DiskCache, MemoryCache, default_cache_dir, open_cache
from seekoci.formats.index import INDEX_VERSION, parse_header

HEX = "ab" * 32
DIGEST = f"sha256:{HEX}"


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_the_documented_layout(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    cache.save_index(DIGEST, b"index bytes")
    data = b"span bytes"
    cache.save_span(hashlib.sha256(data).hexdigest(), data)
    assert files_under(tmp_path) == sorted(
        [
            tmp_path / "indexes" / "sha256" / f"{HEX}.v{INDEX_VERSION}",
            tmp_path / "spans" / "sha256" / hashlib.sha256(data).hexdigest(),
        ]
    )
    assert cache.index_path(DIGEST) == tmp_path / "indexes" / "sha256" / f"{HEX}.v{INDEX_VERSION}"
    assert cache.load_index(DIGEST) == b"index bytes"
    assert cache.load_span(hashlib.sha256(data).hexdigest()) == data
    assert cache.load_index("sha256:" + "cd" * 32) is None
    assert cache.load_span("ef" * 32) is None


def test_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    for i in range(5):
        cache.save_index(DIGEST, b"version %d" % i)
    assert cache.load_index(DIGEST) == b"version 4"
    assert [p.name for p in files_under(tmp_path)] == [f"{HEX}.v{INDEX_VERSION}"]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_are_readable_as_the_umask_allows(umask: int, tmp_path: Path) -> None:
    # a cache directory shared by users in a group needs more than a private 0600
    old = os.umask(umask)
    try:
        DiskCache(tmp_path).save_index(DIGEST, b"index bytes")
    finally:
        os.umask(old)
    (path,) = files_under(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_damaged_span_file_is_not_returned(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    data = b"the real bytes"
    name = hashlib.sha256(data).hexdigest()
    cache.save_span(name, data)
    (tmp_path / "spans" / "sha256" / name).write_bytes(b"the fake bytes")
    assert cache.load_span(name) is None
    cache.save_span(name, data)  # the refetched bytes take the damaged file's place
    assert cache.load_span(name) == data


@pytest.mark.parametrize(
    "digest",
    ["nocolon", "sha256:", "sha256:../../etc", "sha256:ABCDEF", "../x:ab", "sha 256:ab", ":ab"],
)
def test_digests_that_are_not_digests_never_become_paths(digest: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DiskCache(tmp_path).index_path(digest)
    assert not tmp_path.joinpath("indexes").exists()


def test_an_unwritable_cache_does_not_fail_span_saves(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    cache = DiskCache(blocker)
    cache.save_span(hashlib.sha256(b"x").hexdigest(), b"x")  # no exception
    assert cache.load_span(hashlib.sha256(b"x").hexdigest()) is None


def test_the_memory_cache_is_bounded_least_recently_used_first() -> None:
    cache = MemoryCache(max_span_bytes=30)
    for name in ("a", "b", "c"):
        cache.save_span(name, name.encode() * 10)
    assert cache.load_span("a") == b"a" * 10  # now the most recent
    cache.save_span("d", b"d" * 10)
    assert cache.load_span("b") is None
    assert [cache.load_span(n) for n in ("a", "c", "d")] == [b"a" * 10, b"c" * 10, b"d" * 10]
    cache.save_span("huge", b"h" * 31)
    assert cache.load_span("huge") is None
    cache.save_index(DIGEST, b"idx")
    assert cache.load_index(DIGEST) == b"idx" and cache.index_path(DIGEST) is None


def test_open_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_cache(False), MemoryCache)
    disk = open_cache(tmp_path / "c")
    assert isinstance(disk, DiskCache) and disk.root == tmp_path / "c"
    monkeypatch.setenv("SEEKOCI_CACHE_DIR", str(tmp_path / "env"))
    default = open_cache(None)
    assert isinstance(default, DiskCache) and default.root == tmp_path / "env"


def test_default_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SEEKOCI_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("SEEKOCI_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "seekoci"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "seekoci"


# --------------------------------------------------------------------------- with a layer


@functools.cache
def sample() -> tuple[bytes, bytes]:
    tar = build_tar(
        [file(f"f{i}", random_bytes(i, 30_000)) for i in range(5)]
        + [file("text", text_bytes("t", 50_000))]
    )
    return tar, compress_layer(tar, "python")


def build_cached(tmp_path: Path) -> tuple[Path, Path, str]:
    _, blob = sample()
    path = tmp_path / "blob"
    path.write_bytes(blob)
    digest = sha256_digest(blob)
    seekoci.open_layer(path, digest=digest, cache_dir=tmp_path / "cache", span_size=8192).index()
    return path, tmp_path / "cache", digest


def test_spans_read_once_are_served_from_the_cache(tmp_path: Path) -> None:
    path, cache, digest = build_cached(tmp_path)
    first = seekoci.open_layer(path, digest=digest, cache_dir=cache, span_size=8192)
    assert first.open("f2").read(100) == random_bytes(2, 30_000)[:100]
    assert first.source.bytes_read > 0  # type: ignore[attr-defined]
    seekoci.cache.flush_all()  # span files are written in the background
    assert files_under(cache / "spans")
    second = seekoci.open_layer(path, digest=digest, cache_dir=cache, span_size=8192)
    assert second.open("f2").read(100) == random_bytes(2, 30_000)[:100]
    assert second.source.bytes_read == 0  # type: ignore[attr-defined]


def test_a_damaged_cached_span_is_fetched_again(tmp_path: Path) -> None:
    path, cache, digest = build_cached(tmp_path)
    seekoci.open_layer(path, digest=digest, cache_dir=cache).open("f1").read(10)
    seekoci.cache.flush_all()  # on disk, then damaged there
    for span_file in files_under(cache / "spans"):
        span_file.write_bytes(b"garbage")
    layer = seekoci.open_layer(path, digest=digest, cache_dir=cache)
    assert layer.open("f1").read(10) == random_bytes(1, 30_000)[:10]
    assert layer.source.bytes_read > 0  # type: ignore[attr-defined]
    # ... and the damaged file was replaced by the refetched bytes: no refetch next time
    third = seekoci.open_layer(path, digest=digest, cache_dir=cache)
    assert third.open("f1").read(10) == random_bytes(1, 30_000)[:10]
    assert third.source.bytes_read == 0  # type: ignore[attr-defined]
    seekoci.cache.flush_all()  # the rewrite is in the background too: a temporary file meanwhile
    assert b"garbage" not in [f.read_bytes() for f in files_under(cache / "spans")]


def toc_of(index_bytes: bytes) -> dict[str, Any]:
    """The index's directory with its one entry page as ``entries``."""
    header = parse_header(index_bytes)
    dctx = zstandard.ZstdDecompressor()
    toc = json.loads(dctx.decompressobj().decompress(index_bytes[64 : header.head_end]))
    assert len(toc["pages"]["count"]) == 1
    page = dctx.decompressobj().decompress(index_bytes[header.head_end : header.span_offset])
    toc["entries"] = json.loads(page.decode("ascii"))
    return dict(toc)


def hostile_copy(good: bytes, toc_change: dict[str, object]) -> bytes:
    """``good`` with its directory or entries changed (keys replaced), digests and offsets
    fixed up: damage a writer made, not the disk."""
    header = parse_header(good)
    toc = toc_of(good)
    toc.update(toc_change)
    entries = toc.pop("entries", None)
    page = zstandard.ZstdCompressor().compress(json.dumps(entries).encode("ascii"))
    if isinstance(toc.get("pages"), dict):
        toc["pages"]["length"] = [len(page)]
        toc["pages"]["sha256"] = [hashlib.sha256(page).hexdigest()]
    directory = zstandard.ZstdCompressor().compress(json.dumps(toc).encode("ascii"))
    toc_length = len(directory) + len(page)
    delta = toc_length - header.toc_length
    head = bytearray(good[:64])
    struct.pack_into("<QQQ", head, 24, toc_length, header.span_offset + delta,
                     header.windows_offset + delta)  # fmt: skip
    struct.pack_into("<Q", head, 56, len(directory))
    return bytes(head) + directory + page + good[header.span_offset :]


def entries_changed(good: bytes, change: Callable[[dict[str, Any]], object]) -> bytes:
    """``good`` with ``change`` applied to its column-wise entries."""
    entries = toc_of(good)["entries"]
    change(entries)
    return hostile_copy(good, {"entries": entries})


@pytest.mark.parametrize(
    "damage",
    [
        "garbage",
        "truncated",
        "empty",
        "other layer",
        "other blob size",
        "entries null",
        "entries in rows",
        "a column cut short",
        "an offset negative",
        "a sparse index past the end",
    ],
)
def test_a_bad_cached_index_is_rebuilt_and_replaced(damage: str, tmp_path: Path) -> None:
    tar, _ = sample()
    path, cache, digest = build_cached(tmp_path)
    (index_file,) = files_under(cache / "indexes")
    good = index_file.read_bytes()
    bad = {
        "garbage": b"SEEKOCIX" + os.urandom(200),
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "other layer": hostile_copy(good, {"layer_digest": "sha256:" + "00" * 32}),
        "other blob size": hostile_copy(good, {"blob_size": 12345}),
        "entries null": hostile_copy(good, {"entries": None}),
        # the entries as index version 1 wrote them, inside a version 2 file
        "entries in rows": hostile_copy(good, {"entries": {"fields": ["name"], "entries": []}}),
        "a column cut short": entries_changed(good, lambda e: e["dense"]["size"].pop()),
        "an offset negative": entries_changed(
            good, lambda e: e["dense"]["data_offset"].__setitem__(0, -1)
        ),
        "a sparse index past the end": entries_changed(
            good, lambda e: e["sparse"]["uname"].append([e["count"], "root"])
        ),
    }[damage]
    index_file.write_bytes(bad)
    layer = seekoci.open_layer(path, digest=digest, cache_dir=cache, span_size=8192)
    # a damaged file is refused at load; a malformed entry page whose digest matches (a
    # writer's fault) when a lookup or listing first reads it: either way, a build
    names = [e.name for e in layer.entries()]
    assert layer.read_range(0, len(tar)) == tar
    assert layer.index_status == "built"
    assert index_file.read_bytes() == good
    assert names == [e.name for e in seekoci.open_layer(path, cache_dir=False).entries()]
    again = seekoci.open_layer(path, digest=digest, cache_dir=cache, span_size=8192)
    assert again.find(names[-1]) is not None and again.index_status == "cached"
    # the same through a lookup alone
    index_file.write_bytes(bad)
    lookup = seekoci.open_layer(path, digest=digest, cache_dir=cache, span_size=8192)
    found = lookup.find(names[-1])
    assert found is not None and found.name == names[-1]
    assert lookup.index_status in ("built", "partial")
    lookup.index()
    assert index_file.read_bytes() == good
