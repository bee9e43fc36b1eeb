"""Reads that fetch only the start of a span: chunk tables, prefixes, and damage.

A span of ~1 MiB is verified in 64 KiB chunks; a small file near a span's start costs its
record and the chunks up to it, not the whole span.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from layers import build_tar, compress, file, sha256_digest, text_bytes

import seekoci
import seekoci.cache
from seekoci.errors import IntegrityError
from seekoci.source import FileSource

SPAN = 1 << 20


def make_layer(tmp_path: Path, producer: str = "gzip") -> tuple[Path, str, dict[str, bytes]]:
    """~4 MB of text in 64 KB files: several spans, each many chunks long."""
    files = {f"data/{i:03d}.txt": text_bytes(f"chunks-{i}", 64_000) for i in range(64)}
    blob = compress(build_tar([file(name, data) for name, data in files.items()]), producer)
    path = tmp_path / "layer.blob"
    path.write_bytes(blob)
    return path, sha256_digest(blob), files


def reader(path: Path, digest: str, cache: Path) -> seekoci.Layer:
    return seekoci.open_layer(FileSource(path), digest=digest, cache_dir=cache, span_size=SPAN)


@pytest.mark.parametrize("producer", ["gzip", "none"])
def test_a_small_read_fetches_the_start_of_its_span_only(tmp_path: Path, producer: str) -> None:
    path, digest, files = make_layer(tmp_path, producer)
    cache = tmp_path / "cache"
    reader(path, digest, cache).index()
    layer = reader(path, digest, cache)
    index = layer.index()
    assert layer.index_status == "cached"
    # the file whose data starts closest after the start of a span (not the first span)
    entries = {e.name: e for e in index.entries}
    span = index.spans[2]
    name = min(
        (n for n in files if entries[n].data_offset >= span.uncompressed_start),
        key=lambda n: entries[n].data_offset,
    )
    assert layer.open(name).read() == files[name]
    source = layer.source
    assert isinstance(source, FileSource)
    first = source.bytes_read
    assert 0 < first < span.compressed_size / 2, (first, span.compressed_size)
    assert first % span.chunk_size == 0  # whole chunks

    # the rest of the span: only the chunks not fetched before
    last = max(
        (n for n in files if entries[n].data_offset + len(files[n]) <= span.uncompressed_end),
        key=lambda n: entries[n].data_offset,
    )
    assert layer.open(last).read() == files[last]
    assert source.bytes_read == span.compressed_size


def test_another_process_reuses_the_saved_start_of_a_span(tmp_path: Path) -> None:
    path, digest, files = make_layer(tmp_path)
    cache = tmp_path / "cache"
    reader(path, digest, cache).index()
    name = "data/020.txt"
    first = reader(path, digest, cache)
    assert first.open(name).read() == files[name]
    assert isinstance(first.source, FileSource) and first.source.bytes_read > 0
    again = reader(path, digest, cache)
    assert again.open(name).read() == files[name]
    assert isinstance(again.source, FileSource) and again.source.bytes_read == 0


class Tampering(FileSource):
    """A source that flips one byte of every read that covers ``at``."""

    def __init__(self, path: Path, at: int) -> None:
        super().__init__(path)
        self.at = at

    def read_range(self, offset: int, length: int) -> bytes:
        data = super().read_range(offset, length)
        if offset <= self.at < offset + len(data):
            damaged = bytearray(data)
            damaged[self.at - offset] ^= 0x40
            return bytes(damaged)
        return data


def test_a_damaged_chunk_is_an_integrity_error_not_wrong_bytes(tmp_path: Path) -> None:
    path, digest, files = make_layer(tmp_path)
    cache = tmp_path / "cache"
    index = reader(path, digest, cache).index()
    span = index.spans[1]
    layer = seekoci.open_layer(
        Tampering(path, span.compressed_start + 10), digest=digest, cache_dir=cache, span_size=SPAN
    )
    entry = next(e for e in index.entries if e.data_offset >= span.uncompressed_start)
    with pytest.raises(IntegrityError, match="chunks"):
        layer.open(entry.name).read()
    # a damaged prefix saved in the cache is not trusted either
    saved = cache / "spans" / "sha256" / (span.digest + ".prefix")
    assert not saved.exists()
    good = reader(path, digest, cache)
    assert good.open(entry.name).read() == files[entry.name]
    seekoci.cache.flush_all()  # written in the background: on disk, then damaged there
    data = bytearray(saved.read_bytes())
    data[5] ^= 1
    saved.write_bytes(bytes(data))
    fresh = reader(path, digest, cache)
    assert fresh.open(entry.name).read() == files[entry.name]
    assert isinstance(fresh.source, FileSource) and fresh.source.bytes_read > 0  # refetched


def test_a_short_guess_of_chunks_is_topped_up_without_fetching_twice(tmp_path: Path) -> None:
    """The first chunks are fetched alongside the record, guessed from the span's average
    compression ratio; a span whose start compresses worse than its average needs more:
    fetched after, from where the guess ended."""
    from layers import random_bytes

    noise = random_bytes("chunks-noise", 400_000)  # incompressible: the span's first 400 KB
    small = b"the file after the noise\n" * 40
    text = text_bytes("chunks-text", 2_000_000)
    entries = [file("a/noise.bin", noise), file("b/small.txt", small), file("c/text.txt", text)]
    blob = compress(build_tar(entries), "gzip")
    path = tmp_path / "layer.blob"
    path.write_bytes(blob)
    digest = sha256_digest(blob)
    cache = tmp_path / "cache"
    reader(path, digest, cache).index()
    layer = reader(path, digest, cache)
    index = layer.index()
    # guesses are made where a record costs a round trip (a published index): as if it did
    assert index.records_local
    index.records_local = False
    entry = next(e for e in index.entries if e.name == "b/small.txt")
    span = index.spans[
        index.spans.index(next(s for s in index.spans if s.uncompressed_end > entry.data_offset))
    ]
    assert span.uncompressed_start == 0  # the noise and the small file share the first span
    assert layer.open("b/small.txt").read() == small
    source = layer.source
    assert isinstance(source, FileSource)
    table = index.chunk_table(span.index)
    assert table is not None
    needed = table.chunks_for(entry.data_offset + len(small) - span.uncompressed_start)
    ratio = span.compressed_size / span.uncompressed_size
    spare = seekoci.spans._GUESS_SPARE
    guessed = int((entry.data_offset + len(small)) * ratio) // span.chunk_size + 1 + spare
    assert guessed < needed  # the case this test is about
    assert source.requests == 2  # the guess, then the rest
    assert source.bytes_read == needed * span.chunk_size  # nothing fetched twice


def test_a_cached_index_reads_the_chunk_table_first_and_fetches_once(tmp_path: Path) -> None:
    """With the index in the cache directory a record is a local read: no guess, one request
    of exactly the chunks the read needs."""
    text = text_bytes("chunks-local", 3_000_000)
    blob = compress(build_tar([file("t/text.txt", text)]), "gzip")
    path = tmp_path / "layer.blob"
    path.write_bytes(blob)
    digest = sha256_digest(blob)
    cache = tmp_path / "cache"
    reader(path, digest, cache).index()
    rnd = random.Random(11)
    for _ in range(20):
        layer = reader(path, digest, cache)  # a fresh layer: nothing decoded in memory
        index = layer.index()
        entry = next(e for e in index.entries if e.name == "t/text.txt")
        offset = rnd.randrange(len(text) - 4096)
        with layer.open(entry.name) as f:
            f.seek(offset)
            assert f.read(4096) == text[offset : offset + 4096]
        source = layer.source
        assert isinstance(source, FileSource)
        assert source.requests <= 1
