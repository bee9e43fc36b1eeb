"""Scan first: a lookup's pass over a big gzip layer answers from the fastest decode of the
blob (no checkpoints) and makes the checkpointed index behind it from a spooled copy.

The answer must be the bytes a pass of the old kind gives, checked against the layer digest
when the blob was read whole; the index made behind it must be the one a pass makes; no
blob byte is fetched twice; the index thread gives way to scans, survives nothing it should
not (dropped layers, a lost spool), and finishes a wholly read blob's index at exit.
"""

from __future__ import annotations

import gc
import gzip
import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from layers import (
    CountingSource,
    build_tar,
    compress_layer,
    file,
    first_big_last,
    hardlink,
    random_bytes,
    sha256_digest,
    text_bytes,
)

import seekoci
import seekoci.build
import seekoci.layer
from seekoci.build import SCAN_GATE, ScanGate
from seekoci.cache import DiskCache, MemoryCache
from seekoci.errors import FormatError, IntegrityError
from seekoci.formats.gzip import STREAM_PIECE, GzipIndexer, GzipStream
from seekoci.source import BytesSource

SPAN = 65536
MIB = 1 << 20


def parts() -> tuple[bytes, bytes]:
    return first_big_last(6)


@pytest.fixture(autouse=True)
def scan_small_blobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """These blobs are a few MiB: scan them first all the same."""
    monkeypatch.setattr(seekoci.build, "SCAN_FIRST_MIN", 0)
    monkeypatch.delenv("SEEKOCI_FIRST_TOUCH", raising=False)


def open_layer(
    source: BytesSource | CountingSource, digest: str | None, cache: DiskCache | None = None
) -> seekoci.Layer:
    return seekoci.Layer(source, cache=cache or MemoryCache(), digest=digest, span_size=SPAN)


def index_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "seekoci-build-index"]


def wait_gone(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)


# -- the decoder --------------------------------------------------------------------------


@given(st.lists(st.integers(1, 40_000), min_size=1, max_size=30), st.integers(1, 4))
def test_the_stream_decoder_gives_the_blob_whatever_the_cuts(cuts: list[int], members: int) -> None:
    data = b"".join(text_bytes(i, 30_000) + random_bytes(f"r{i}", 5_000) for i in range(6))
    step = len(data) // members + 1
    blob = b"".join(gzip.compress(data[i : i + step]) for i in range(0, len(data), step))
    decoder, out, pos = GzipStream(name="t"), [], 0
    for n in [*cuts, len(blob)]:
        out += list(decoder.feed(blob[pos : pos + n]))
        pos += n
    decoder.finish()
    assert b"".join(out) == data
    assert max(map(len, out)) <= STREAM_PIECE
    assert decoder.uncompressed_size == len(data)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b + b"junk", "garbage after the end"),
        (lambda b: b + b"\x1f", "truncated gzip stream"),
        (lambda b: b[:-5], "truncated gzip stream"),
        (lambda b: b[:-8] + bytes([b[-8] ^ 1]) + b[-7:], "gzip member 1 is corrupt"),
        (lambda b: b"", "no gzip member"),
    ],
)
def test_the_stream_decoder_refuses_what_the_indexer_refuses(damage, message) -> None:  # type: ignore[no-untyped-def]
    blob = damage(gzip.compress(text_bytes(3, 200_000)))
    with pytest.raises(FormatError, match=message):
        decoder = GzipStream(name="layer x")
        for i in range(0, max(len(blob), 1), 4096):
            list(decoder.feed(blob[i : i + 4096]))
        decoder.finish()
    indexer = GzipIndexer(SPAN, name="layer x")
    with pytest.raises(FormatError):
        list(indexer.feed(blob))
        indexer.finish()


# -- the lookup and the index behind it ---------------------------------------------------


def test_a_lookup_answers_and_the_index_behind_it_is_a_pass_index() -> None:
    tar, blob = parts()
    source = CountingSource(blob)
    layer = open_layer(source, sha256_digest(blob))
    entry = layer.find("last")
    assert entry is not None
    build = layer._build
    assert build is not None and build.scan is not None  # it scanned first
    assert layer.open("last").read() == b"late\n"
    assert layer.complete()  # every entry known and checked
    index = layer.index()  # waits for the index behind the scan
    assert layer.index_status == "built"
    assert source.streamed == len(blob)  # the index came from the spool
    plain = GzipIndexer(SPAN, name="p", elide_windows=True, chunk_size=seekoci.build.CHUNK_SIZE)
    out = b"".join(p for i in range(0, len(blob), MIB) for p in plain.feed(blob[i : i + MIB]))
    plain.finish()
    assert out == tar
    assert index.spans == plain.spans
    assert [index.window(i) for i in range(len(index.spans))] == [
        plain.window(i) for i in range(len(plain.spans))
    ]
    assert [index.chunk_table(i) for i in range(len(index.spans))] == [
        plain.chunk_table(i) for i in range(len(plain.spans))
    ]
    assert layer.open("big").read() == random_bytes("big", 6 * MIB)
    # the entries, files' digests included (the scan skips them, the index behind it not)
    os.environ["SEEKOCI_FIRST_TOUCH"] = "pass"
    try:
        passed = open_layer(BytesSource(blob), sha256_digest(blob)).index()
    finally:
        del os.environ["SEEKOCI_FIRST_TOUCH"]
    assert list(index.entries) == list(passed.entries)
    assert all(e.sha256 is not None for e in index.entries if e.type == "file")
    wait_gone(index_threads())


def test_reads_behind_the_scans_window_wait_for_the_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seekoci.build, "FORWARD_WINDOW", MIB)
    monkeypatch.setattr(seekoci.layer, "FORWARD_WINDOW", MIB)
    _, blob = parts()
    layer = open_layer(CountingSource(blob), sha256_digest(blob))
    assert layer.find("last") is not None
    assert layer.open("text0").read() == text_bytes(0, 300_000)  # long gone from the window
    assert layer.open("big").read() == random_bytes("big", 6 * MIB)


def test_a_lookup_near_the_start_stops_early_and_a_big_read_after_it_is_right(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(seekoci.build, "FORWARD_WINDOW", MIB)
    monkeypatch.setattr(seekoci.layer, "FORWARD_WINDOW", MIB)
    _, blob = parts()
    source = CountingSource(blob)
    layer = open_layer(source, sha256_digest(blob))
    assert layer.find("first") is not None
    assert source.streamed < len(blob)
    assert not layer.complete()
    assert layer.open("first").read() == b"early\n"
    # 6 MiB: more than the window holds, so the read needs the index's spans
    assert layer.find("big") is not None
    assert layer.open("big").read() == random_bytes("big", 6 * MIB)
    assert layer.open("last").read() == b"late\n"
    layer.index()
    assert source.streamed == len(blob)


def test_a_blob_that_does_not_match_its_digest_serves_nothing() -> None:
    _, blob = parts()
    layer = open_layer(BytesSource(blob), "sha256:" + "0" * 64)
    with pytest.raises(IntegrityError, match="blob digest"):
        layer.find("last")
    wait_gone(index_threads())


def test_a_corrupt_blob_fails_the_lookup_and_leaves_no_thread() -> None:
    _, blob = parts()
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0xFF
    layer = open_layer(BytesSource(bytes(bad)), sha256_digest(blob))
    with pytest.raises(seekoci.SeekociError):
        layer.find("last")
    wait_gone(index_threads())
    assert not [t for t in threading.enumerate() if t.name.startswith("seekoci-build")]


def test_a_dropped_scan_stops_its_index_thread() -> None:
    _, blob = parts()
    layer = open_layer(CountingSource(blob), sha256_digest(blob))
    assert layer.find("first") is not None  # paused early: the index thread waits for bytes
    threads = index_threads()
    assert threads
    del layer
    gc.collect()
    wait_gone(threads)


def test_a_lost_spool_makes_the_index_by_a_pass_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(self: object, chunk: bytes) -> None:
        with self._cond:  # type: ignore[attr-defined]
            self._lost = OSError(28, "No space left on device")  # type: ignore[attr-defined]
            self._cond.notify_all()  # type: ignore[attr-defined]

    monkeypatch.setattr(seekoci.build._Spool, "append", full_disk)
    tar, blob = parts()
    source = CountingSource(blob)
    layer = open_layer(source, sha256_digest(blob))
    assert layer.open("last").read() == b"late\n"  # the scan answers all the same
    index = layer.index()
    assert index.uncompressed_size == len(tar)
    assert source.streamed == 2 * len(blob)  # the blob once more, for the index
    assert layer.open("text5").read() == text_bytes(5, 300_000)


def test_the_index_thread_gives_way_while_a_scan_runs() -> None:
    gate = ScanGate()
    stop = threading.Event()
    waited = threading.Event()

    def background() -> None:
        gate.wait_idle(stop)
        waited.set()

    with gate.scanning():
        thread = threading.Thread(target=background)
        thread.start()
        assert not waited.wait(0.3)  # held back while the scan runs
    assert waited.wait(10)
    thread.join(10)
    assert not SCAN_GATE._scans  # the process's gate: no scan left counted


def test_the_index_behind_a_scan_is_saved_in_the_cache_directory(tmp_path: Path) -> None:
    _, blob = parts()
    digest = sha256_digest(blob)
    layer = open_layer(BytesSource(blob), digest, DiskCache(tmp_path))
    assert layer.open("last").read() == b"late\n"
    assert layer.flush(60)
    assert layer.index_status == "built"
    again = open_layer(CountingSource(blob), digest, DiskCache(tmp_path))
    assert again.index_status == "cached"
    assert again.open("text2").read() == text_bytes(2, 300_000)


def test_a_process_that_exits_after_its_lookup_leaves_the_index_saved(tmp_path: Path) -> None:
    _, blob = parts()
    (tmp_path / "blob").write_bytes(blob)
    digest = sha256_digest(blob)
    script = f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
import seekoci, seekoci.build
from seekoci.cache import DiskCache
from seekoci.source import BytesSource
seekoci.build.SCAN_FIRST_MIN = 0
blob = open({str(tmp_path / "blob")!r}, "rb").read()
layer = seekoci.Layer(BytesSource(blob), cache=DiskCache({str(tmp_path / "c")!r}),
                      digest={digest!r}, span_size={SPAN})
assert layer.open("last").read() == b"late\\n"
assert layer._build is not None and layer._build.scan is not None
print(layer.index_status)
"""
    env = dict(os.environ, SEEKOCI_FIRST_TOUCH="scan")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in ("partial", "built")
    again = open_layer(CountingSource(blob), digest, DiskCache(tmp_path / "c"))
    assert again.index_status == "cached"


def test_first_touch_pass_turns_scanning_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEEKOCI_FIRST_TOUCH", "pass")
    _, blob = parts()
    layer = open_layer(BytesSource(blob), sha256_digest(blob))
    assert layer.find("last") is not None
    assert layer.index_status == "built"  # indexed as it went: nothing behind it
    assert not index_threads()


def test_concurrent_readers_of_a_scanned_layer_get_the_right_bytes() -> None:
    _, blob = parts()
    layer = open_layer(BytesSource(blob), sha256_digest(blob))
    want = {f"text{i}": text_bytes(i, 300_000) for i in range(6)}
    want["last"] = b"late\n"
    got: dict[str, str] = {}

    def read(name: str) -> None:
        got[name] = hashlib.sha256(layer.open(name).read()).hexdigest()

    threads = [threading.Thread(target=read, args=(n,)) for n in want]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert time.monotonic() - started < 120
    assert got == {n: hashlib.sha256(d).hexdigest() for n, d in want.items()}
    layer.index()


def test_a_hard_link_found_before_the_index_was_made_resolves_after_it() -> None:
    """The scan's entries stay the layer's entries once the index is made (they take its
    files' digests): a link entry handed out before then still finds its own target, not
    a later file of the same name."""
    tar = build_tar(
        [
            file("a", b"the first a\n"),
            hardlink("b", "a"),
            file("pad", random_bytes("pad", 2 * MIB)),
            file("a", b"a later a\n"),
            file("last", b"late\n"),
        ]
    )
    blob = compress_layer(tar, "python")
    layer = open_layer(BytesSource(blob), sha256_digest(blob))
    link = layer.find("b")
    assert link is not None and link.type == "hardlink"
    assert layer.find("last") is not None
    assert layer.flush(60)
    assert layer.index_status == "built"
    assert layer.open_entry(link).read() == b"the first a\n"
    assert layer.open("b").read() == b"the first a\n"
    found = layer.find("a")
    assert found is not None and found.sha256 == hashlib.sha256(b"a later a\n").digest()


def test_no_temporary_file_means_indexing_as_the_pass_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: object) -> None:
        raise PermissionError(13, "Permission denied", "/tmp")

    monkeypatch.setattr(seekoci.build._Spool, "__init__", refuse)
    _, blob = parts()
    layer = open_layer(BytesSource(blob), sha256_digest(blob))
    assert layer.open("last").read() == b"late\n"
    assert layer.index_status == "built"  # indexed as it went
    assert not index_threads()


def test_an_index_left_behind_by_a_fork_is_refused_then_made_anew(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A forked child inherits the scan but not its index thread: a read that needs the
    index fails clearly once, instead of waiting for ever, and the next read starts anew."""
    monkeypatch.setattr(seekoci.build, "FORWARD_WINDOW", MIB)
    monkeypatch.setattr(seekoci.layer, "FORWARD_WINDOW", MIB)
    _, blob = parts()
    layer = open_layer(CountingSource(blob), sha256_digest(blob))
    assert layer.find("big") is not None
    build = layer._build
    assert build is not None and build._background is not None
    build._background.stop.set()  # in a real child that thread would not exist
    build._background.pid = -1
    with pytest.raises(FormatError, match="another process"):
        layer.open("big").read()
    assert layer.open("big").read() == random_bytes("big", 6 * MIB)


def test_finishing_waits_for_indexes_to_be_saved_and_not_for_scans_that_stopped(
    tmp_path: Path,
) -> None:
    _, blob = parts()
    digest = sha256_digest(blob)
    early = open_layer(CountingSource(blob), digest, DiskCache(tmp_path / "a"))
    assert early.find("first") is not None  # stopped early: its index waits for bytes
    whole = open_layer(BytesSource(blob), digest, DiskCache(tmp_path / "b"))
    assert whole.open("last").read() == b"late\n"
    calls: list[tuple[str, int, int]] = []
    seekoci.build.finish_background(lambda *a: calls.append(a))  # returns: early not awaited
    assert not seekoci.build.running_background()
    assert calls and all(total == len(blob) for _, _, total in calls)
    again = open_layer(BytesSource(blob), digest, DiskCache(tmp_path / "b"))
    assert again.index_status == "cached"
    assert early.index_status == "partial"


def test_an_interrupt_while_finishing_calls_the_indexes_off(tmp_path: Path) -> None:
    _, blob = parts()
    digest = sha256_digest(blob)
    layer = open_layer(BytesSource(blob), digest, DiskCache(tmp_path))
    build = layer._build
    SCAN_GATE_HELD = SCAN_GATE.scanning()
    SCAN_GATE_HELD.__enter__()  # keep the index thread waiting, as behind another scan
    try:
        assert layer.open("last").read() == b"late\n"
        build = layer._build
        assert build is not None and build._background is not None
        background = build._background

        def interrupt(*_: object) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            seekoci.build.finish_background(interrupt)
        assert background.stop.is_set()
    finally:
        SCAN_GATE_HELD.__exit__(None, None, None)
    assert background.finished.wait(30)
    assert background.error is not None  # called off: nothing saved
    assert open_layer(BytesSource(blob), digest, DiskCache(tmp_path)).index_status == "none"


def test_indexing_every_layer_waits_for_the_index_behind_a_scan() -> None:
    import seekoci.image

    _, blob = parts()
    layer = open_layer(BytesSource(blob), sha256_digest(blob))
    with SCAN_GATE.scanning():  # the index thread waits, as behind another scan
        assert layer.open("last").read() == b"late\n"
        assert layer.complete() and layer.index_status == "partial"
    seekoci.image.index_layers([layer])
    assert layer.index_status == "built"
