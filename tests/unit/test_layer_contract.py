"""The random-access contract, run over every producer x source x span size.

Whatever compressed a layer and wherever its bytes come from, a :class:`seekoci.Layer` must
give back each file's bytes and any range of the uncompressed tar stream exactly. Producers
are the compressions (:data:`layers.PRODUCERS`, indexed by a pass) and the formats that carry
their own TOC (:data:`TOC_PRODUCERS`, tests/tocwriter.py: read through that TOC when opened
from a path or bytes, through a verified pass-built index when a digest is given).
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import random
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from layers import (
    CI,
    PRODUCERS,
    Entry,
    build_tar,
    compress_layer,
    file,
    file_entries,
    random_tree,
    sha256_digest,
    text_bytes,
)
from tocwriter import estargz, seekable_zstd, zstd_chunked

import seekoci
import seekoci.fileobj
import seekoci.pipeline
from seekoci import formats
from seekoci.formats.base import span_matches
from seekoci.source import BytesSource

SOURCES = ("path", "bytes", "cached")
SPAN_SIZES = (4096, 65536)
#: Spans of 64 KiB are verified (and fetched) in chunks this small, so that reads of a part
#: of a span go through chunk tables; 4 KiB spans keep the default (one chunk per span).
SMALL_CHUNK = 1024


TOC_PRODUCERS = ("estargz", "estargz-packed", "zstd:chunked")
ALL_PRODUCERS = (*PRODUCERS, *TOC_PRODUCERS, "zstd-seekable")


def make_layer(tar: bytes, producer: str) -> tuple[bytes, bytes, dict[str, bytes]]:
    """(blob, the tar stream it decodes to, files the format adds) for any producer."""
    if producer in ("estargz", "estargz-packed"):
        made = estargz(tar, chunk_size=16 << 10, pack_below=2048 if "packed" in producer else 0)
        return made.blob, made.tar, {"stargz.index.json": made.toc}
    if producer == "zstd:chunked":
        made = zstd_chunked(tar, chunk_size=16 << 10)
        return made.blob, made.tar, {}
    if producer == "zstd-seekable":
        return seekable_zstd(tar), tar, {}
    return compress_layer(tar, producer, seed=producer), tar, {}


@dataclass(frozen=True)
class Corpus:
    entries: tuple[Entry, ...]
    tar: bytes
    blob: bytes
    extra: tuple[tuple[str, bytes], ...] = ()

    @property
    def files(self) -> dict[str, bytes]:
        return {**file_entries(self.entries), **dict(self.extra)}


@functools.cache
def corpus(producer: str) -> Corpus:
    entries = [
        *random_tree("contract", files=25, max_size=30_000),
        file("usr/share/big.txt", text_bytes("big", 200_000)),
        file("empty", b""),
    ]
    blob, tar, extra = make_layer(build_tar(entries), producer)
    return Corpus(tuple(entries), tar, blob, tuple(extra.items()))


def open_case(
    blob: bytes, source: str, span_size: int, tmp_path: Path, *, name: str = "layer.blob"
) -> seekoci.Layer:
    """A layer over ``blob`` read the way ``source`` says."""
    if source == "bytes":
        return seekoci.open_layer(
            BytesSource(blob, name=name), cache_dir=False, span_size=span_size
        )
    path = tmp_path / name
    path.write_bytes(blob)
    if source == "path":
        return seekoci.open_layer(path, cache_dir=False, span_size=span_size)
    # "cached": a first layer builds and saves the index, the one returned loads it
    digest = sha256_digest(blob)
    cache = tmp_path / "cache"
    seekoci.open_layer(path, digest=digest, cache_dir=cache, span_size=span_size).index()
    layer = seekoci.open_layer(path, digest=digest, cache_dir=cache, span_size=span_size)
    assert layer.index_status == "cached"
    return layer


@dataclass
class Case:
    producer: str
    data: Corpus
    layer: seekoci.Layer
    span_size: int


@pytest.fixture(
    params=[(p, s, n) for p in ALL_PRODUCERS for s in SOURCES for n in SPAN_SIZES],
    ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}",
)
def case(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Case:
    producer, source, span_size = request.param
    # the read pipeline on at this size: runs of a few spans, readahead after a few KiB
    monkeypatch.setattr(seekoci.pipeline, "MIN_REQUEST", 2 * span_size)
    monkeypatch.setattr(seekoci.pipeline, "MAX_REQUEST", 8 * span_size)
    monkeypatch.setattr(seekoci.fileobj, "READAHEAD_AFTER", span_size // 2)
    if span_size == 65536:
        monkeypatch.setattr(seekoci.build, "CHUNK_SIZE", SMALL_CHUNK)
    data = corpus(producer)
    return Case(producer, data, open_case(data.blob, source, span_size, tmp_path), span_size)


def test_every_file_reads_back(case: Case) -> None:
    data, layer = case.data, case.layer
    for name, content in data.files.items():
        with layer.open("/" + name) as f:
            assert f.size == len(content)
            assert f.read() == content, name


def test_stat_and_listing_match_the_declaration(case: Case) -> None:
    data, layer = case.data, case.layer
    walked = {
        f"{top.rstrip('/')}/{name}".lstrip("/")
        for top, _, names in layer.walk("/")
        for name in names
    }
    assert walked == set(data.files)
    for name, content in data.files.items():
        info = layer.stat(name)
        assert (info.type, info.size) == ("file", len(content))


def test_read_range_equals_the_tar(case: Case) -> None:
    data, layer, span_size = case.data, case.layer, case.span_size
    total = len(data.tar)
    assert layer.uncompressed_size == total
    rnd = random.Random(span_size)
    ranges = [(rnd.randint(0, total), rnd.randint(0, 3 * span_size)) for _ in range(40)]
    ranges += [(0, total), (0, total + 1000), (total - 1, 1), (total - 3, 100), (0, 0)]
    ranges += [(total, 10), (total + 5000, 1), (total // 2, 0)]
    for offset, length in ranges:
        assert layer.read_range(offset, length) == data.tar[offset : offset + length], (
            offset,
            length,
        )


def test_an_embedded_toc_is_what_serves_the_reads(case: Case) -> None:
    if case.producer not in TOC_PRODUCERS:
        assert case.layer.index_status in ("built", "cached", "partial", "none")
        return
    layer = case.layer
    layer.open("usr/share/big.txt").read(10)
    assert layer.index_status == ("cached" if layer.digest else "embedded")
    assert layer.random_access


def test_spans_tile_the_blob_and_the_tar(case: Case) -> None:
    data, layer, span_size = case.data, case.layer, case.span_size
    if layer.index() and layer.index_status == "embedded":
        spans = layer.index().spans  # the TOC's pieces, in blob order (packed small files
        # share a member: the same compressed range, each span skipping to its own bytes)
        assert all(
            b.compressed_start >= a.compressed_end
            or (b.compressed_start, b.compressed_end) == (a.compressed_start, a.compressed_end)
            for a, b in itertools.pairwise(spans)
        )
        assert spans[-1].compressed_end <= len(data.blob)
        assert all(b.uncompressed_start == a.uncompressed_end for a, b in itertools.pairwise(spans))
        return
    spans = layer.index().spans
    assert spans[0].uncompressed_start == 0
    assert spans[-1].uncompressed_end == len(data.tar)
    assert spans[-1].compressed_end == len(data.blob)
    for prev, cur in itertools.pairwise(spans):
        assert cur.uncompressed_start == prev.uncompressed_end
        assert cur.compressed_start in (prev.compressed_end, prev.compressed_end - 1)
        # a checkpoint is taken once more than span_size bytes came out
        assert prev.uncompressed_size > span_size or case.producer == "none"
    index = layer.index()
    codec = formats.codec_for(layer.compression, where="test")
    for span in spans:
        compressed = data.blob[span.compressed_start : span.compressed_end]
        assert span_matches(span, compressed)
        table = index.chunk_table(span.index)
        if case.producer.startswith("zstd"):  # frames are decoded whole: never chunked
            assert span.chunk_size == 0 and table is None
            assert hashlib.sha256(compressed).hexdigest() == span.digest
            continue
        assert span.chunk_size == seekoci.build.CHUNK_SIZE and table is not None
        size = span.chunk_size
        assert table.digests == [
            hashlib.sha256(compressed[i : i + size]).digest()
            for i in range(0, max(1, len(compressed)), size)
        ]
        assert table.marks[-1] == span.uncompressed_size
        if len(table.marks) > 3:  # marks are measured, not just the floor
            assert table.marks[-3] > 0
        # the chunks up to each mark decode to at least that many bytes of the tar
        window = index.window(span.index)
        for k, mark in enumerate(table.marks):
            prefix = codec.decode_span(
                span, compressed[: (k + 1) * size], window, name="test", partial=True
            )
            assert len(prefix) >= mark
            start = span.uncompressed_start
            assert prefix == data.tar[start : start + len(prefix)]
    expected = "none" if case.producer == "none" else "gzip"
    assert layer.compression == ("zstd" if case.producer.startswith("zstd") else expected)
    if case.producer == "none":  # fixed slices
        assert [s.uncompressed_start for s in spans] == list(range(0, len(data.tar), span_size))
    elif case.producer == "zstd":  # one frame: one span
        assert len(spans) == 1
    else:  # the corpus is several blocks or frames long
        assert len(spans) >= 2


def test_a_read_before_the_index_is_complete(case: Case, tmp_path: Path) -> None:
    data, layer = case.data, case.layer
    # the case's layer may already be complete: open a fresh one over the same blob
    fresh = open_case(data.blob, "bytes", layer.span_size, tmp_path, name="fresh")
    middle = sorted(data.files)[len(data.files) // 2]
    assert fresh.open(middle).read() == data.files[middle]
    assert fresh.read_range(0, len(data.tar) + 1) == data.tar
    assert fresh.index_status == ("embedded" if case.producer in TOC_PRODUCERS else "built")


@pytest.mark.parametrize("producer", ALL_PRODUCERS)
def test_threads_read_different_files_at_once(producer: str, tmp_path: Path) -> None:
    data = corpus(producer)
    layer = open_case(data.blob, "path", 4096, tmp_path)
    names = sorted(data.files)
    errors: list[BaseException] = []
    results: dict[str, bytes] = {}

    def reader(name: str, seed: int) -> None:
        try:
            rnd = random.Random(seed)
            with layer.open(name) as f:
                parts = []
                while chunk := f.read(rnd.randint(1, 9000)):
                    parts.append(chunk)
                results[name] = b"".join(parts)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(n, i)) for i, n in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert results == data.files


# --------------------------------------------------------------------------- properties

names = st.sampled_from([f"d{i}/f{j}" for i in range(3) for j in range(4)])
contents = st.one_of(
    st.binary(max_size=3000),
    st.builds(text_bytes, st.integers(0, 10**6), st.integers(0, 60_000)),
    st.integers(0, 20_000).map(bytes),
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("seek"), st.integers(-200, 70_000), st.sampled_from([0, 1, 2])),
        st.tuples(st.sampled_from(["read", "read1", "readinto"]), st.integers(-1, 20_000)),
        st.tuples(st.just("tell")),
    ),
    max_size=25,
)


def check_step(f: io.BufferedIOBase, model: io.BytesIO, op: tuple[object, ...]) -> None:
    """Run one operation on both; results must agree.

    A seek to a negative position is a ValueError (``BytesIO`` clamps relative seeks to 0
    instead, so the model is left alone there).
    """
    kind = op[0]
    if kind == "seek":
        offset, whence = op[1], op[2]
        base = {0: 0, 1: model.tell(), 2: len(model.getbuffer())}[whence]
        if base + offset < 0:
            with pytest.raises(ValueError):
                f.seek(offset, whence)
            return
        assert f.seek(offset, whence) == model.seek(offset, whence)
    elif kind == "tell":
        assert f.tell() == model.tell()
    elif kind == "readinto":
        buf, expected = bytearray(max(op[1], 0)), bytearray(max(op[1], 0))
        assert f.readinto(buf) == model.readinto(expected)
        assert buf == expected
    else:
        assert getattr(f, kind)(op[1]) == getattr(model, kind)(op[1])
    assert f.tell() == model.tell()


@CI
@given(
    files=st.dictionaries(names, contents, min_size=1, max_size=6),
    producer=st.sampled_from(ALL_PRODUCERS),
    span_size=st.sampled_from([1024, 4096, 65536]),
    script=st.lists(st.tuples(st.integers(0, 10**6), ops), min_size=1, max_size=4),
)
def test_file_objects_behave_like_bytesio(
    files: dict[str, bytes],
    producer: str,
    span_size: int,
    script: list[tuple[int, list[tuple[object, ...]]]],
) -> None:
    blob, _, _ = make_layer(build_tar([file(n, d) for n, d in files.items()]), producer)
    layer = seekoci.open_layer(BytesSource(blob), cache_dir=False, span_size=span_size)
    ordered = sorted(files)
    for pick, steps in script:
        name = ordered[pick % len(ordered)]
        model = io.BytesIO(files[name])
        with layer.open(name) as f:
            for op in steps:
                check_step(f, model, op)
            assert f.read() == model.read()
