"""The cache directory's upkeep: background span writes, the size cap and its eviction
order, pruning from the command line, and the lock around an index build."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from seekoci import cli
from seekoci.cache import ContentStore, DiskCache, MemoryCache, _Writer, parse_size

LAYER = "sha256:" + "ab" * 32


def span(i: int, size: int = 1000) -> tuple[str, bytes]:
    data = hashlib.sha256(b"%d" % i).digest() * (size // 32)
    return hashlib.sha256(data).hexdigest(), data


def age(path: Path, seconds: float) -> None:
    when = time.time() - seconds
    os.utime(path, (when, when))


@pytest.mark.parametrize(
    ("text", "value"),
    [("123", 123), ("10K", 10 << 10), ("500M", 500 << 20), ("5G", 5 << 30), ("1.5G", 3 << 29),
     ("64KiB", 64 << 10), ("2 g", 2 << 30)],
)  # fmt: skip
def test_sizes(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "G", "5Q", "-1M", "five", "1MM"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_a_span_queued_for_the_background_is_read_back_before_it_is_on_disk(
    tmp_path: Path,
) -> None:
    cache = DiskCache(tmp_path, background=True)
    name, data = span(1)
    gate = threading.Event()
    assert cache._writer is not None
    cache._writer.submit_job(gate.wait)  # hold the writer back
    cache.save_span(name, data)
    assert not (tmp_path / "spans" / "sha256" / name).exists()
    assert cache.has_span(name) and cache.load_span(name) == data
    other = DiskCache(tmp_path, background=True)  # another object on the same directory
    assert other.load_span(name) == data
    gate.set()
    assert cache.flush(10)
    assert (tmp_path / "spans" / "sha256" / name).read_bytes() == data
    assert DiskCache(tmp_path).load_span(name) == data


def test_a_full_write_queue_drops_saves_instead_of_waiting() -> None:
    writer = _Writer(limit=1500)
    gate = threading.Event()
    writer.submit_job(gate.wait)
    assert writer.submit(Path("/nonexistent/a"), b"x" * 1000)
    assert not writer.submit(Path("/nonexistent/b"), b"x" * 1000)
    assert writer.dropped == 1
    gate.set()
    assert writer.flush(10)
    assert writer.submit(Path("/nonexistent/c"), b"x" * 5000)  # alone, even past the limit
    assert writer.flush(10)
    assert writer.get(Path("/nonexistent/a")) is None  # the write failed quietly; dequeued


def test_streamed_spans_are_kept_only_when_asked(tmp_path: Path) -> None:
    name, data = span(2)
    DiskCache(tmp_path).save_span(name, data, streamed=True)
    assert DiskCache(tmp_path).load_span(name) is None
    DiskCache(tmp_path, keep_streamed=True).save_span(name, data, streamed=True)
    assert DiskCache(tmp_path).load_span(name) == data
    memory = MemoryCache()
    memory.save_span(name, data, streamed=True)
    assert memory.load_span(name) is None


def test_the_cap_evicts_least_recently_used_spans_first_and_indexes_last(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=0)  # no automatic pruning while we set up
    cache.save_index(LAYER, b"i" * 3000)
    age(cache.index_path(LAYER), 5000)  # the oldest file of all, still the last to go
    names = []
    for i in range(6):
        name, data = span(i)
        cache.save_span(name, data)
        age(tmp_path / "spans" / "sha256" / name, 1000 - i * 100)
        names.append(name)
    blob = b'{"config": 1}'
    cache.save_blob("sha256:" + hashlib.sha256(blob).hexdigest(), blob)
    # loading a span makes it the most recently used
    age(tmp_path / "spans" / "sha256" / names[0], 2000)
    assert cache.load_span(names[0]) is not None
    result = cache.prune(3000 + len(blob) + 2000)
    left = {p.name for p in (tmp_path / "spans" / "sha256").iterdir()}
    assert left == {names[0], names[5]}, "the two most recently used spans stay"
    assert cache.load_index(LAYER) is not None and result.removed_files == 4
    cache.prune(1000)  # below the index's size: spans and blobs go, then the index
    assert not list((tmp_path / "spans" / "sha256").iterdir())
    assert not list((tmp_path / "blobs" / "sha256").iterdir())
    assert cache.load_index(LAYER) is None


def test_writing_past_the_cap_prunes_by_itself(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=20_000)
    for i in range(60):
        name, data = span(i)
        cache.save_span(name, data)
    total = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert total <= 20_000 + 20_000 // 16 + 1000


def test_ranges_are_checked_when_loaded(tmp_path: Path) -> None:
    blob = "sha256:" + "cd" * 32
    cache = DiskCache(tmp_path)
    cache.save_range(blob, 100, b"0123456789")
    assert DiskCache(tmp_path).load_range(blob, 102, 5) == b"23456"
    assert DiskCache(tmp_path).load_range(blob, 95, 10) is None  # not all of it kept
    (saved,) = (tmp_path / "ranges" / "sha256" / ("cd" * 32)).iterdir()
    saved.write_bytes(saved.read_bytes()[:-1] + b"X")
    assert DiskCache(tmp_path).load_range(blob, 102, 5) is None
    assert not saved.exists()  # dropped: fetched and written again next time


def test_referrers_listings_expire(tmp_path: Path) -> None:
    subject = "sha256:" + "ef" * 32
    cache = DiskCache(tmp_path)
    cache.save_referrers(subject, [{"digest": "x"}])
    assert cache.load_referrers(subject, 60) == [{"digest": "x"}]
    path = tmp_path / "referrers" / "sha256" / ("ef" * 32 + ".json")
    doc = json.loads(path.read_text())
    doc["saved"] -= 120
    path.write_text(json.dumps(doc))
    assert cache.load_referrers(subject, 60) is None


def test_a_damaged_blob_is_not_returned(tmp_path: Path) -> None:
    data = b"manifest bytes"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    cache = DiskCache(tmp_path)
    cache.save_blob(digest, data)
    cache.save_blob("sha256:" + "00" * 32, b"not those bytes")  # never kept
    assert cache.load_blob(digest) == data
    assert cache.load_blob("sha256:" + "00" * 32) is None
    (tmp_path / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(b"other")
    assert cache.load_blob(digest) is None


def test_a_blob_just_verified_is_not_hashed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import seekoci.cache
    from seekoci.registry.resolve import RegistryStore

    data = b"a zTOC's bytes" * 1000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    hashed: list[int] = []
    real = seekoci.cache._matches_digest
    monkeypatch.setattr(
        seekoci.cache, "_matches_digest", lambda d, g: hashed.append(len(d)) or real(d, g)
    )
    cache = DiskCache(tmp_path)
    store = RegistryStore(client=None, reference=None, blobs=ContentStore(cache))  # type: ignore[arg-type]
    store._keep(digest, data, verified=True)  # as fetch_blob does after its own check
    assert hashed == []
    assert cache.load_blob(digest) == data  # a load checks it, as always
    store._keep("sha256:" + "00" * 32, b"not those bytes")  # unverified: checked, not kept
    assert hashed[1:] == [15] and cache.load_blob("sha256:" + "00" * 32) is None


def test_the_build_lock_lets_one_holder_in_at_a_time(tmp_path: Path) -> None:
    held: list[int] = []
    overlap = []

    def build(i: int) -> None:
        with DiskCache(tmp_path).build_lock(LAYER):
            held.append(i)
            if len(held) > 1:
                overlap.append(i)
            time.sleep(0.02)
            held.remove(i)

    threads = [threading.Thread(target=build, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlap


def test_cache_info_and_prune_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = DiskCache(tmp_path, max_bytes=0)
    for i in range(3):
        cache.save_span(*span(i))
    cache.save_index(LAYER, b"index")
    assert cli.main(["cache", "info", "--cache-dir", str(tmp_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["location"] == str(tmp_path)
    assert doc["kinds"]["spans"] == {"files": 3, "bytes": 3 * 992}
    assert doc["kinds"]["indexes"] == {"files": 1, "bytes": 5}
    assert doc["bytes"] == 3 * 992 + 5 and doc["max_bytes"] > 0
    assert cli.main(["cache", "info", "--cache-dir", str(tmp_path)]) == 0
    assert "spans" in capsys.readouterr().out
    assert cli.main(["cache", "prune", "--cache-dir", str(tmp_path), "--max", "1000"]) == 0
    assert "removed 2 files" in capsys.readouterr().out
    assert cli.main(["cache", "prune", "--cache-dir", str(tmp_path), "--all"]) == 0
    capsys.readouterr()
    assert cache.usage()["indexes"].files == 0 and cache.usage()["spans"].files == 0
    assert cli.main(["cache", "prune", "--cache-dir", str(tmp_path), "--max", "lots"]) == 2


def _hammer(root: str, seed: int, start: Any) -> int:
    """Save and load spans in a small capped directory; count loads that came back. All
    start together (``start``: a barrier), or on a busy machine one process may be done
    before the next is spawned, and find nothing of the others' that the cap has left."""
    cache = DiskCache(root, background=True, max_bytes=40_000)
    start.wait(60)
    found = 0
    for round_ in range(150):
        name, data = span(seed * 1000 + round_ % 40)
        cache.save_span(name, data)
        for other in range(0, 40, 7):
            o_name, o_data = span(((seed + 1) % 4) * 1000 + other)
            loaded = cache.load_span(o_name)
            assert loaded is None or loaded == o_data  # never other bytes
            found += loaded is not None
    cache.flush(30)
    return found


def test_processes_sharing_a_capped_directory_never_see_damage(tmp_path: Path) -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(4) as pool:
        start = manager.Barrier(4)
        found = pool.starmap(_hammer, [(str(tmp_path), seed, start) for seed in range(4)])
    assert sum(found) > 0  # they did share
    cache = DiskCache(tmp_path, max_bytes=0)
    files = [p for p in (tmp_path / "spans" / "sha256").iterdir()]
    assert not [p for p in files if p.name.startswith(".tmp-")]
    for path in files:  # every file left is whole: its bytes match its name
        assert cache.load_span(path.name) is not None, path
    total = sum(p.stat().st_size for p in files)
    assert total <= 40_000 + 40_000 // 16 + 4 * 64 * 1000


def test_layer_flush_waits_for_its_queued_writes(tmp_path: Path) -> None:
    """``Layer.flush`` (and ``Image.flush``, run when a ``with`` block ends) returns only once
    the spans queued for the background writer are files: a caller that copies or prunes the
    directory right after a read sees them."""
    from layers import build_tar, compress_layer, file, random_bytes

    import seekoci

    tar = build_tar([file("data.bin", random_bytes("flush", 300_000))])
    blob = compress_layer(tar, "python")
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(blob)
    cache = tmp_path / "cache"
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()  # a layer known by digest is cached
    seekoci.open_layer(str(path), digest=digest, cache_dir=cache).build_index()
    layer = seekoci.open_layer(str(path), digest=digest, cache_dir=cache)  # index, no span
    assert layer.flush(10)
    assert not (cache / "spans").exists() or not any((cache / "spans").rglob("*"))
    writer = layer._cache._writer  # type: ignore[attr-defined]
    assert writer is not None
    gate = threading.Event()
    writer.submit_job(gate.wait)  # hold the writer back
    assert layer.read_range(0, 1000) == tar[:1000]
    assert not layer.flush(0.2)  # the writer is held: not on disk yet
    gate.set()
    assert layer.flush(10)
    assert any(p.is_file() for p in (cache / "spans").rglob("*"))


def test_no_span_file_is_looked_for_while_the_span_directory_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole TOC layer asks of each of its chunks whether it is kept: with no span
    directory one look at the directory answers them all, for SPAN_DIR_RECHECK seconds;
    this process's own saves are seen at once, another process's after that."""
    looks: list[str] = []
    real_isfile, real_isdir = os.path.isfile, os.path.isdir

    def isfile(path: Any) -> bool:
        looks.append(f"file {path}")
        return real_isfile(path)

    def isdir(path: Any) -> bool:
        looks.append(f"dir {path}")
        return real_isdir(path)

    clock = [1000.0]
    monkeypatch.setattr(os.path, "isfile", isfile)
    monkeypatch.setattr(os.path, "isdir", isdir)
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    for background in (False, True):
        root = tmp_path / f"cache-{background}"
        cache = DiskCache(root, background=background)
        names = [span(i)[0] for i in range(1000)]
        looks.clear()
        assert not any(cache.has_span(name) for name in names)
        assert looks == [f"dir {root / 'spans' / 'sha256'}"]

        # another process saves a span: this one takes the directory as missing a while
        name, data = span(5000)
        (root / "spans" / "sha256").mkdir(parents=True)
        (root / "spans" / "sha256" / name).write_bytes(data)
        assert not cache.has_span(name)  # believed missing for SPAN_DIR_RECHECK
        clock[0] += 1.5
        assert cache.has_span(name)
        (root / "spans" / "sha256" / name).unlink()
        (root / "spans" / "sha256").rmdir()
        clock[0] += 1.5
        assert not cache.has_span(name)

        # another object of this process saves one: seen at once, queued or written
        other = DiskCache(root, background=background)
        theirs, data = span(5500)
        other.save_span(theirs, data)
        assert cache.has_span(theirs)
        other.flush()
        assert cache.has_span(theirs)
        (root / "spans" / "sha256" / theirs).unlink()
        (root / "spans" / "sha256").rmdir()
        clock[0] += 1.5

        mine, data = span(6000)
        assert not cache.has_span(mine)  # the directory is gone again
        cache.save_span(mine, data)
        assert cache.has_span(mine)  # at once: queued, or written
        cache.flush()
        assert cache.has_span(mine)


def test_a_span_saved_while_another_thread_looks_at_the_directory_is_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A look at the missing span directory made while a save is under way (begun, its
    file not yet written) is not kept past the save: the saved span is there at once."""
    import seekoci.cache as cache_module

    cache = DiskCache(tmp_path, background=False)
    name, data = span(7000)
    begun, go = threading.Event(), threading.Event()
    real = cache_module._atomic_write

    def held(path: Any, what: Any) -> None:
        begun.set()
        go.wait(10)
        real(path, what)

    monkeypatch.setattr(cache_module, "_atomic_write", held)
    saver = threading.Thread(target=cache.save_span, args=(name, data))
    saver.start()
    assert begun.wait(10)
    assert not cache.has_span(span(7001)[0])  # looks while the write is held
    go.set()
    saver.join(10)
    assert (tmp_path / "spans" / "sha256" / name).is_file()
    assert cache.has_span(name)
