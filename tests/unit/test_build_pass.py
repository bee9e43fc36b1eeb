"""The index build pass runs on three threads (reader, inflater, tar scanner): the same index
as one thread feeding the indexer, errors of a worker raised on the calling thread, bounded
read-ahead, and no thread left behind by a pass that stops or is dropped."""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator

import pytest
from layers import (
    build_tar,
    compress_layer,
    file,
    first_big_last,
    sha256_digest,
    text_bytes,
)

import seekoci
import seekoci.build
from seekoci.build import CHUNK_SIZE
from seekoci.cache import MemoryCache
from seekoci.errors import RegistryError
from seekoci.formats.gzip import GzipIndexer
from seekoci.source import BytesSource

SPAN = 65536
MIB = 1 << 20


def parts() -> tuple[bytes, bytes]:
    return first_big_last(12)


class CountingStream(BytesSource):
    """Counts the blob bytes handed out by its stream; can fail once at an offset."""

    def __init__(self, data: bytes, fail_at: int | None = None) -> None:
        super().__init__(data, name="counting")
        self.streamed = 0
        self.fail_at = fail_at

    def iter_from(self, offset: int = 0, chunk_size: int = MIB) -> Iterator[bytes]:
        for chunk in super().iter_from(offset, chunk_size):
            if self.fail_at is not None and self.streamed + len(chunk) > self.fail_at:
                self.fail_at = None
                raise RegistryError("counting: connection reset mid-blob")
            self.streamed += len(chunk)
            yield chunk


def open_layer(source: BytesSource, digest: str | None = None) -> seekoci.Layer:
    return seekoci.Layer(source, cache=MemoryCache(), digest=digest, span_size=SPAN)


def build_threads(layer: seekoci.Layer) -> list[threading.Thread]:
    build = layer._build
    assert build is not None and build._workers is not None
    return list(build._workers._threads)


def test_the_threaded_pass_gives_the_index_of_a_plain_one() -> None:
    tar, blob = parts()
    index = open_layer(BytesSource(blob), sha256_digest(blob)).index()
    plain = GzipIndexer(SPAN, name="plain", elide_windows=True, chunk_size=CHUNK_SIZE)
    out = b"".join(
        piece for i in range(0, len(blob), MIB) for piece in plain.feed(blob[i : i + MIB])
    )
    plain.finish()
    assert out == tar
    assert index.spans == plain.spans
    assert [index.chunk_table(i) for i in range(len(index.spans))] == [
        plain.chunk_table(i) for i in range(len(plain.spans))
    ]
    assert [index.window(i) for i in range(len(index.spans))] == [
        plain.window(i) for i in range(len(plain.spans))
    ]


def test_a_lookup_near_the_start_reads_only_a_little_ahead() -> None:
    _, blob = parts()
    source = CountingStream(blob)
    layer = open_layer(source)
    assert layer.find("first") is not None
    assert layer.index_status == "partial"
    # the queues bound what the reader and inflater run ahead: a few MiB, not the blob
    ahead = (seekoci.build._READ_AHEAD + 2) * MIB
    assert source.streamed <= ahead < len(blob)
    assert layer.open("last").read() == b"late\n"
    layer.index()
    assert layer.index_status == "built"
    assert source.streamed == len(blob)  # the pass resumed: one read of the blob in all


def test_a_stream_error_in_the_reader_is_raised_by_the_caller_and_the_next_pass_works() -> None:
    tar, blob = parts()
    source = CountingStream(blob, fail_at=len(blob) // 2)
    layer = open_layer(source, sha256_digest(blob))
    with pytest.raises(RegistryError, match="connection reset mid-blob"):
        layer.index()
    assert layer.index_status == "none"  # the broken pass was dropped
    assert not [t for t in threading.enumerate() if t.name.startswith("seekoci-build")]
    assert layer.index().uncompressed_size == len(tar)
    assert layer.index_status == "built"


def test_a_corrupt_blob_fails_on_the_calling_thread() -> None:
    _, blob = parts()
    bad = bytearray(blob)
    bad[len(bad) // 3] ^= 0xFF
    layer = open_layer(BytesSource(bytes(bad)))
    with pytest.raises(seekoci.SeekociError):
        layer.index()
    assert not [t for t in threading.enumerate() if t.name.startswith("seekoci-build")]


def test_a_dropped_partial_pass_stops_its_threads() -> None:
    _, blob = parts()
    layer = open_layer(CountingStream(blob))
    assert layer.find("first") is not None
    threads = build_threads(layer)
    assert any(t.is_alive() for t in threads)  # blocked on a full queue, not finished
    del layer
    gc.collect()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)


def test_a_pass_inherited_through_fork_is_refused_then_restarted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A forked child inherits the pass but not its threads: it must not wait for them."""
    tar, blob = parts()
    layer = open_layer(BytesSource(blob))
    assert layer.find("first") is not None
    assert layer._build is not None and layer._build._workers is not None
    inherited = layer._build._workers  # in a real child these threads would not exist
    pid = os.getpid()
    monkeypatch.setattr(seekoci.build.os, "getpid", lambda: pid + 1)
    with pytest.raises(seekoci.FormatError, match="another process"):
        layer.find("last")
    assert layer.index_status == "none"
    assert layer.find("last") is not None  # a new pass, in "this" process
    assert layer.index().uncompressed_size == len(tar)
    inherited.close()


def test_a_lookup_whose_pass_has_read_the_whole_blob_checks_the_digest() -> None:
    """No more bytes to fetch: the pass finishes, so a blob that does not match its digest
    fails the lookup instead of serving bytes nothing verified."""
    tar = build_tar([file("first", b"early\n"), file("second", text_bytes(1, 50_000))])
    blob = compress_layer(tar, "python")
    assert len(blob) < MIB  # one chunk of the stream
    good = open_layer(BytesSource(blob), sha256_digest(blob))
    assert good.find("first") is not None
    assert good.index_status == "built"  # finished, not partial
    wrong = "sha256:" + "0" * 64
    with pytest.raises(seekoci.IntegrityError, match="blob digest"):
        open_layer(BytesSource(blob), wrong).find("first")


class CountingRanges(CountingStream):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.ranges = 0

    def read_range(self, offset: int, length: int) -> bytes:
        self.ranges += 1
        return super().read_range(offset, length)


def test_spans_decoded_by_a_lookup_serve_the_reads_after_it() -> None:
    tar, blob = parts()
    source = CountingRanges(blob)
    layer = open_layer(source)
    found = {}
    for name in ("text3", "text5"):  # spans of both are in the LRU, whole and exact
        entry = layer.find(name)
        assert entry is not None
        found[name] = entry
    assert layer.index_status == "partial"
    before = source.ranges
    for name, entry in found.items():
        data = layer.read_range(entry.data_offset, entry.size)
        assert data == text_bytes(int(name[4:]), 300_000)
        assert data == tar[entry.data_offset : entry.data_offset + entry.size]
    assert source.ranges == before  # no range request: the pass's spans were kept
