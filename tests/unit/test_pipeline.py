"""The read pipeline: coalesced requests, parallel inflate, bytes in order, readahead.

Each test builds a layer of many small spans over a range source that counts (and, where a
test wants it, misbehaves), so that runs, windows and readahead are exercised at sizes a
unit test can afford.
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from layers import CI, build_tar, compress_layer, file, random_bytes, sha256_digest, text_bytes

import seekoci
import seekoci.cache
from seekoci import fileobj, pipeline
from seekoci.errors import IntegrityError, RegistryError

SPAN = 16 << 10  # uncompressed bytes between checkpoints
BIG = "opt/big.bin"


@functools.cache
def _blob() -> tuple[bytes, bytes, dict[str, bytes]]:
    files = {
        "etc/a.txt": text_bytes("a", 3_000),
        BIG: text_bytes("big", 700_000) + random_bytes("big", 300_000),
        "usr/lib/z.txt": text_bytes("z", 50_000),
    }
    tar = build_tar([file(name, data) for name, data in files.items()])
    return tar, compress_layer(tar, "python"), files


class Source:
    """A range source over bytes that counts requests (thread-safe) and can be told to fail
    or damage reads that start at or after ``fail_after`` bytes of the blob."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls: list[tuple[int, int]] = []
        self.fail_after: int | None = None
        self.damage = False
        self.delay = 0.0
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def name(self) -> str:
        return "pipeline-blob"

    @property
    def requests(self) -> int:
        with self._lock:
            return len(self.calls)

    def read_range(self, offset: int, length: int) -> bytes:
        with self._lock:
            self.calls.append((offset, length))
        if self.delay:
            time.sleep(self.delay)
        data = self.data[offset : offset + length]
        if self.fail_after is not None and offset + length > self.fail_after:
            if not self.damage:
                raise RegistryError("registry answered 503 for the blob (test)", status=503)
            damaged = bytearray(data)
            damaged[-1] ^= 0xFF
            return bytes(damaged)
        return data

    def iter_from(self, offset: int = 0, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        for pos in range(offset, len(self.data), chunk_size):
            yield self.data[pos : pos + chunk_size]


@pytest.fixture
def small_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs of a few spans, windows of a few runs, readahead after a few KiB."""
    monkeypatch.setattr(pipeline, "MIN_REQUEST", 32 << 10)
    monkeypatch.setattr(pipeline, "MAX_REQUEST", 160 << 10)
    monkeypatch.setattr(fileobj, "READAHEAD_AFTER", 4 << 10)
    monkeypatch.setattr(fileobj, "READAHEAD_MAX", 128 << 10)


def _layer(tmp_path: Path) -> tuple[seekoci.Layer, Source]:
    """A layer over a counting source whose index is in the cache directory already (built
    over a plain file, so the counting source sees only the reads)."""
    _, blob, _ = _blob()
    digest = sha256_digest(blob)
    cache = tmp_path / "index"
    built = seekoci.open_layer(
        _write(tmp_path, blob), digest=digest, cache_dir=cache, span_size=SPAN
    )
    built.index()
    source = Source(blob)
    layer = seekoci.open_layer(source, digest=digest, cache_dir=cache, span_size=SPAN)
    assert layer.index_status == "cached"
    return layer, source


def _write(tmp_path: Path, blob: bytes) -> Path:
    path = tmp_path / "layer.blob"
    path.write_bytes(blob)
    return path


def test_a_long_read_is_few_large_requests_in_order(tmp_path: Path, small_pipeline: None) -> None:
    layer, source = _layer(tmp_path)
    tar = _blob()[0]
    spans = layer.index().spans
    assert len(spans) > 20
    assert layer.read_range(0, len(tar)) == tar
    compressed = spans[-1].compressed_end
    # every byte once, in runs of at most MAX_REQUEST (plus the span that crossed it)
    assert sum(n for _, n in source.calls) <= compressed + len(spans)
    biggest = max(s.compressed_size for s in spans)
    assert source.requests <= compressed // (pipeline.MAX_REQUEST - biggest) + 2
    assert source.requests <= len(spans) // 3


def test_ranges_are_taken_in_the_sources_buffer_when_it_offers_one(
    tmp_path: Path, small_pipeline: None
) -> None:
    """A source with ``read_buffer`` (the registry's) hands the pipeline the buffer it
    received into; the spans are cut out of it and decoded, the bytes the same."""
    layer, source = _layer(tmp_path)
    buffers: list[int] = []

    def read_buffer(offset: int, length: int) -> bytearray:
        buffers.append(length)
        return bytearray(source.read_range(offset, length))

    source.read_buffer = read_buffer  # type: ignore[attr-defined]
    tar = _blob()[0]
    with layer.open(BIG) as f:
        assert f.read() == _blob()[2][BIG]
    assert layer.read_range(0, len(tar)) == tar
    assert len(buffers) > 2 and len(buffers) == source.requests


@pytest.mark.parametrize("read_size", [1, 777, 4096, 65536, 1 << 20])
def test_sequential_reads_with_readahead(
    tmp_path: Path, small_pipeline: None, read_size: int
) -> None:
    layer, source = _layer(tmp_path)
    want = _blob()[2][BIG]
    got = io.BytesIO()
    with layer.open("/" + BIG) as f:
        while chunk := f.read(read_size):
            got.write(chunk)
        assert f.read(10) == b""
    assert got.getvalue() == want
    if read_size < 65536:
        assert source.requests < len(want) // SPAN  # readahead: fewer requests than spans


def test_seeks_in_the_middle_of_readahead(tmp_path: Path, small_pipeline: None) -> None:
    layer, _ = _layer(tmp_path)
    want = _blob()[2][BIG]
    rnd = random.Random(7)
    with layer.open("/" + BIG) as f:
        pos = 0
        for _ in range(60):
            n = rnd.choice([100, 5000, 20000, 70000])
            assert f.read(n) == want[pos : pos + n]
            pos = min(len(want), pos + n)
            if rnd.random() < 0.3:  # a seek, maybe into what the readahead has in flight
                pos = rnd.randrange(len(want))
                f.seek(pos)
            assert f.tell() == pos


@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["read", "seek"]), st.integers(0, 1_100_000)),
        min_size=1,
        max_size=30,
    )
)
@CI
def test_reads_and_seeks_equal_bytesio(ops: list[tuple[str, int]]) -> None:
    _, blob, files = _blob()
    want = files[BIG]
    layer = seekoci.open_layer(seekoci.source.BytesSource(blob), cache_dir=False, span_size=SPAN)
    saved = fileobj.READAHEAD_AFTER, pipeline.MIN_REQUEST
    fileobj.READAHEAD_AFTER, pipeline.MIN_REQUEST = 2048, 8 << 10
    try:
        ref = io.BytesIO(want)
        with layer.open("/" + BIG) as f:
            for op, n in ops:
                if op == "seek":
                    assert f.seek(n) == ref.seek(n)
                else:
                    assert f.read(n % 200_000) == ref.read(n % 200_000)
                assert f.tell() == ref.tell()
    finally:
        fileobj.READAHEAD_AFTER, pipeline.MIN_REQUEST = saved


def test_an_error_in_a_worker_is_raised_on_the_reading_thread(
    tmp_path: Path, small_pipeline: None
) -> None:
    layer, source = _layer(tmp_path)
    tar = _blob()[0]
    source.fail_after = len(source.data) // 2
    with pytest.raises(RegistryError, match="503"):
        layer.read_range(0, len(tar))
    source.damage = True  # now damaged bytes, every time: a refetch cannot help
    with pytest.raises(IntegrityError, match="does not match its digest"):
        layer.read_range(0, len(tar))
    source.fail_after = None  # and the layer still reads once the source behaves
    assert layer.read_range(0, len(tar)) == tar


def test_one_damaged_run_is_refetched_span_by_span(tmp_path: Path, small_pipeline: None) -> None:
    layer, source = _layer(tmp_path)
    tar = _blob()[0]
    original = source.read_range
    damaged_once = threading.Event()

    def flip_first_long_read(offset: int, length: int) -> bytes:
        data = original(offset, length)
        if length > 2 * SPAN and not damaged_once.is_set():
            damaged_once.set()
            return data[:100] + bytes([data[100] ^ 1]) + data[101:]
        return data

    source.read_range = flip_first_long_read  # type: ignore[method-assign]
    assert layer.read_range(0, len(tar)) == tar
    assert damaged_once.is_set()


def test_closing_a_stream_cancels_what_has_not_started(
    tmp_path: Path, small_pipeline: None
) -> None:
    layer, source = _layer(tmp_path)
    source.delay = 0.05
    tar = _blob()[0]
    stream = layer.stream_range(0, len(tar), window=64 << 10)
    first = next(stream)
    assert tar.startswith(first)
    stream.close()
    time.sleep(0.3)  # whatever was running has finished
    settled = source.requests
    time.sleep(0.3)
    assert source.requests == settled  # nothing more was started after close
    assert settled * pipeline.MIN_REQUEST < len(source.data)  # not the whole blob
    with pytest.raises(StopIteration):
        next(stream)


def test_the_window_bounds_what_is_fetched_ahead(tmp_path: Path, small_pipeline: None) -> None:
    layer, source = _layer(tmp_path)
    tar = _blob()[0]
    window = 96 << 10
    with layer.stream_range(0, len(tar), window=window) as stream:
        got = next(stream)
        time.sleep(0.2)
        fetched = sum(n for _, n in source.calls)
        # what is fetched is the window ahead of the reader (compressed <= uncompressed for
        # this text-heavy start), plus the run under way
        assert fetched <= window + pipeline.MAX_REQUEST + len(got)


def test_small_random_reads_cost_one_request_and_at_most_their_spans(
    tmp_path: Path, small_pipeline: None
) -> None:
    layer, source = _layer(tmp_path)
    spans = layer.index().spans
    tar = _blob()[0]
    rnd = random.Random(3)
    for _ in range(100):
        offset = rnd.randrange(len(tar) - 4096)
        touched = [
            s for s in spans if s.uncompressed_start < offset + 4096 and offset < s.uncompressed_end
        ]
        before_calls, before_bytes = source.requests, sum(n for _, n in source.calls)
        layer.spans.lru.clear()
        assert layer.read_range(offset, 4096) == tar[offset : offset + 4096]
        assert source.requests - before_calls <= 1
        fetched = sum(n for _, n in source.calls) - before_bytes
        # the spans before the last whole, the last only up to the chunk covering the read
        last = touched[-1]
        table = layer.index().chunk_table(last.index)
        assert table is not None
        need = offset + 4096 - last.uncompressed_start
        last_bytes = min(last.compressed_size, table.chunks_for(need) * last.chunk_size)
        assert fetched <= sum(s.compressed_size for s in touched[:-1]) + last_bytes


def test_streaming_reads_do_not_fill_the_cache_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "STREAMING_BYTES", 200 << 10)
    layer, _ = _layer(tmp_path)
    spans_dir = tmp_path / "index" / "spans"
    want = _blob()[2]
    assert layer.read_range(0, 100 << 10)  # a small read: its spans are kept
    seekoci.cache.flush_all()  # span writes are queued to a writer thread
    kept = list(spans_dir.rglob("*")) if spans_dir.exists() else []
    assert kept
    with layer.open("/" + BIG) as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(want[BIG]).digest()
    seekoci.cache.flush_all()
    after = [p for p in spans_dir.rglob("*") if p.is_file()]
    assert len(after) <= len([p for p in kept if p.is_file()]) + 2


def test_a_read_across_a_span_boundary_fetches_only_the_start_of_the_second(
    tmp_path: Path, small_pipeline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The end of one span and the start of the next, in one request: the second cut to the
    chunks that cover the read (its chunk table is local), not fetched whole."""
    import seekoci.build

    monkeypatch.setattr(seekoci.build, "CHUNK_SIZE", 1024)
    layer, source = _layer(tmp_path)
    tar = _blob()[0]
    spans = layer.index().spans
    cut_reads = 0
    for first, second in itertools.pairwise(spans):
        if second.compressed_size < 4 * 1024:
            continue
        offset = second.uncompressed_start - 100  # 100 bytes of the first, the rest after
        layer.spans.lru.clear()
        before_calls, before_bytes = source.requests, sum(n for _, n in source.calls)
        assert layer.read_range(offset, 4096) == tar[offset : offset + 4096]
        assert source.requests - before_calls <= 1
        fetched = sum(n for _, n in source.calls) - before_bytes
        table = layer.index().chunk_table(second.index)
        assert table is not None
        chunks = table.chunks_for(offset + 4096 - second.uncompressed_start)
        assert fetched <= first.compressed_size + chunks * 1024
        cut_reads += fetched < first.compressed_size + second.compressed_size
    assert cut_reads >= 3  # the case this test is about happened
