"""Reads of many files of an eStargz or zstd:chunked layer (``get /``, a tar-stream range):
neighbouring chunks come in one range request each run (seekoci/pipeline.py), each chunk
decoded and checked against its own digest; a chunk whose bytes in a run are damaged is
fetched again by itself, and one damaged in the blob is an IntegrityError."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from layers import FlakySource, build_tar, file, random_bytes, text_bytes
from tocwriter import Made, estargz, zstd_chunked

import seekoci
import seekoci.formats.estargz as estargz_format
from seekoci.cache import MemoryCache

FILES = [(f"d/f{i:03}", text_bytes(f"f{i}", 300 + 37 * i)) for i in range(300)]
WRITERS: dict[str, Any] = {
    "estargz": lambda tar: estargz(tar, chunk_size=16 << 10),
    "estargz-packed": lambda tar: estargz(tar, chunk_size=16 << 10, pack_below=4096),
    "stargz-legacy": lambda tar: estargz(tar, legacy=True),
    "zstd:chunked": lambda tar: zstd_chunked(tar, chunk_size=16 << 10),
}


def layer_over(made: Made, *, annotated: bool = True) -> tuple[seekoci.Layer, FlakySource]:
    """A layer over the blob whose index (the TOC) is read already; the source counts the
    reads after that, and damages the next ``bad_reads`` of them."""
    source = FlakySource(made.blob, bad_reads=0)
    kind = "gzip" if made.blob[:2] == b"\x1f\x8b" else "zstd"
    layer = seekoci.Layer(
        source,
        cache=MemoryCache(),
        media_type="application/vnd.oci.image.layer.v1.tar+" + kind,
        size=len(made.blob),
        annotations=made.annotations if annotated else None,
    )
    layer.index()
    source.calls.clear()
    return layer, source


def payloads(layer: seekoci.Layer) -> tuple[bytes, dict[str, bytes]]:
    """The layer's file payloads end to end (its index's payload space), and the files."""
    files = dict(FILES)
    every = [e for e in layer.entries() if e.type == "file" and e.name in files]
    assert [e.name for e in every] == [name for name, _ in FILES]
    return b"".join(files[e.name] for e in every), files


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_many_small_files_come_in_one_request(writer: str) -> None:
    made = WRITERS[writer](build_tar([file(name, data) for name, data in FILES]))
    layer, source = layer_over(made, annotated=writer != "stargz-legacy")
    expected, _ = payloads(layer)
    assert layer.index().tar_offsets is False  # the payload space
    assert layer.read_entry_range(0, len(expected)) == expected
    # 300 chunks, ~150 KB: one run (it was one request per chunk)
    assert len(source.calls) == 1, source.calls


@pytest.mark.parametrize("writer", ["estargz", "zstd:chunked"])
def test_a_chunk_damaged_in_a_run_is_fetched_again_by_itself(writer: str) -> None:
    made = WRITERS[writer](build_tar([file(name, data) for name, data in FILES]))
    layer, source = layer_over(made)
    expected, _ = payloads(layer)
    source.bad_reads = 1  # the run's bytes: one byte flipped half way
    assert layer.read_entry_range(0, len(expected)) == expected
    assert len(source.calls) == 2  # the run, then the damaged chunk alone
    run, again = source.calls
    assert run[0] <= again[0] and again[0] + again[1] <= run[0] + run[1]
    assert again[1] < run[1] // 50


@pytest.mark.parametrize("writer", ["estargz", "zstd:chunked"])
def test_a_chunk_damaged_in_the_blob_fails_a_read_across_it(writer: str) -> None:
    made = WRITERS[writer](build_tar([file(name, data) for name, data in FILES]))
    good, _ = layer_over(made)
    expected, _ = payloads(good)
    entry = good.find("d/f150")
    assert entry is not None
    span = good.index().spans[good.index().spans.locate(entry.data_offset)]  # type: ignore[attr-defined]
    bad = bytearray(made.blob)
    bad[(span.compressed_start + span.compressed_end) // 2] ^= 0x40
    layer, _ = layer_over(Made(bytes(bad), made.toc, made.annotations, made.tar))
    with pytest.raises(seekoci.IntegrityError, match="chunk digest"):
        layer.read_entry_range(0, len(expected))
    assert layer.open("d/f149").read() == dict(FILES)["d/f149"]  # its neighbours read


@pytest.mark.parametrize("writer", ["estargz", "zstd:chunked"])
def test_a_stream_gives_every_byte_before_a_chunk_damaged_in_the_blob(writer: str) -> None:
    """Small chunks are decoded several to a task (seekoci/pipeline.py, DECODE_BATCH): the
    error of one of them is raised when the reader reaches it, after the bytes before it,
    never before them."""
    made = WRITERS[writer](build_tar([file(name, data) for name, data in FILES]))
    good, _ = layer_over(made)
    expected, _ = payloads(good)
    entry = good.find("d/f150")
    assert entry is not None
    index = good.index()
    k = index.spans.locate(entry.data_offset)  # type: ignore[attr-defined]
    span = index.spans[k]
    assert span.uncompressed_start == entry.data_offset  # (its file's first chunk)
    bad = bytearray(made.blob)
    bad[(span.compressed_start + span.compressed_end) // 2] ^= 0x40
    layer, source = layer_over(Made(bytes(bad), made.toc, made.annotations, made.tar))
    got = bytearray()
    stream = layer.stream_entry_range(0, len(expected))
    with pytest.raises(seekoci.IntegrityError, match="chunk digest"):
        for piece in stream:
            got += piece
    assert bytes(got) == expected[: entry.data_offset]
    assert len(source.calls) <= 2  # the run, and the damaged chunk once more by itself


def test_a_short_run_is_decoded_by_two_tasks_each_one_piece_let_go_once_taken() -> None:
    """A run's chunks are decoded in batches, at least two (both cores); a batch of chunks
    decoded together is one piece of the stream, and the batch does not hold it once the
    reader has taken it (seekoci/pipeline.py)."""
    some = FILES[:100]  # ~200 KB: one batch of up to DECODE_BATCH (1 MiB) would hold all
    made = WRITERS["zstd:chunked"](build_tar([file(name, data) for name, data in some]))
    layer, source = layer_over(made)
    expected = b"".join(data for _, data in some)
    stream = layer.stream_entry_range(0, len(expected))
    stream._plan()  # type: ignore[attr-defined]
    steps = list(stream._pending)  # type: ignore[attr-defined]
    batches = list(dict.fromkeys(step.batch for step in steps))
    assert len(batches) == 2  # two tasks
    first = next(iter(stream))
    assert len(source.calls) == 1  # one run
    head = batches[0].result()
    assert head.joined == sum(step.batch is batches[0] for step in steps) > 1
    assert first == expected[: len(first)]
    assert len(first) == sum(s.span.uncompressed_size for s in steps if s.batch is batches[0])
    assert head.pieces == [None]  # taken: let go
    assert first + b"".join(stream) == expected


def test_zero_chunks_inside_a_run_are_not_fetched() -> None:
    files = [
        file("a", random_bytes("a", 40_000)),
        file("zeros", bytes(300_000)),
        file("b", random_bytes("b", 40_000)),
    ]
    made = zstd_chunked(build_tar(files), chunk_size=16 << 10)
    layer, source = layer_over(made)
    wanted = random_bytes("a", 40_000) + bytes(300_000) + random_bytes("b", 40_000)
    assert layer.read_entry_range(0, len(wanted)) == wanted
    assert source.bytes_read < 150_000  # a and b (and the frames between): not the zeros


def test_a_tar_stream_read_of_a_zstd_chunked_layer_comes_in_one_request() -> None:
    tar = build_tar([file(name, data) for name, data in FILES])
    made = zstd_chunked(tar, chunk_size=16 << 10)
    layer, source = layer_over(made)
    assert layer.read_range(0, len(made.tar)) == made.tar  # the tar-split's index
    assert len(source.calls) == 1, source.calls  # header frames and chunks: one run


@pytest.mark.parametrize("writer", ["estargz", "zstd:chunked"])
@pytest.mark.parametrize("kept", [256 << 20, 0], ids=["spans-kept", "no-span-kept"])
def test_a_file_read_in_small_pieces_fetches_each_chunk_once(writer: str, kept: int) -> None:
    data = random_bytes("big", 400_000)
    made = WRITERS[writer](build_tar([file("big", data)]))
    source = FlakySource(made.blob, bad_reads=0)
    kind = "gzip" if made.blob[:2] == b"\x1f\x8b" else "zstd"
    layer = seekoci.Layer(
        source,
        cache=MemoryCache(max_span_bytes=kept),
        media_type="application/vnd.oci.image.layer.v1.tar+" + kind,
        size=len(made.blob),
        annotations=made.annotations,
    )
    layer.index()
    source.calls.clear()
    with layer.open("big") as f:
        pieces = list(iter(lambda: f.read(10_000), b""))
    assert b"".join(pieces) == data
    # a chunk two reads share is decoded once and kept (not fetched a second time)
    assert source.bytes_read < len(data) * 1.01, source.bytes_read


@pytest.mark.parametrize("writer", ["zstd:chunked", "estargz", "estargz-packed"])
def test_chunks_decoded_together_are_each_checked_against_their_digest(writer: str) -> None:
    """A run's chunks decoded by one call of the codec (SpanReader.decoded_run) are each
    checked against their own digest: one that does not match is left to the one-by-one
    way (None), the others are delivered. (eStargz: gzip members back to back, some shared
    by several small files.)"""
    made = WRITERS[writer](build_tar([file(name, data) for name, data in FILES]))
    layer, source = layer_over(made)
    expected, _ = payloads(layer)
    spans = [s for s in layer.index().spans if s.fetched][3:13]
    base = max(0, spans[0].compressed_start - 5)
    blob = made.blob[base : spans[-1].compressed_end]
    got = layer.spans.decoded_run(spans, blob, base, keep=False)
    assert [bytes(g) if g is not None else None for g in got] == [
        expected[s.uncompressed_start : s.uncompressed_end] for s in spans
    ]
    wrong = dataclasses.replace(spans[4], digest="0" * 64)
    got = layer.spans.decoded_run([*spans[:4], wrong, *spans[5:]], blob, base, keep=False)
    assert [k for k, g in enumerate(got) if g is None] == [4]
    assert source.calls == []  # nothing fetched: the buffer is the run's


def _estargz_run(**kwargs: Any) -> tuple[seekoci.Layer, list[Any], bytes, int, bytes]:
    """An eStargz layer, ten of its chunks from the fourth, their blob bytes (from five
    bytes before the first) and where those start, and the layer's payloads."""
    made = estargz(build_tar([file(name, data) for name, data in FILES]), **kwargs)
    layer, _ = layer_over(made)
    expected, _ = payloads(layer)
    spans = [s for s in layer.index().spans if s.fetched][3:13]
    base = max(0, spans[0].compressed_start - 5)
    return layer, spans, made.blob[base : spans[-1].compressed_end], base, expected


def _members_asked(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the buffers eStargz's runs ask stretches of members to be decoded into,
    from now on (each still decoded)."""
    asked: list[int] = []
    decode = estargz_format.gunzip_members
    monkeypatch.setattr(
        estargz_format, "gunzip_members", lambda data, n: asked.append(n) or decode(data, n)
    )
    return asked


def _with_trailer(blob: bytes, end: int, size: int) -> bytes:
    """``blob`` with the member ending at ``end`` saying it decodes to ``size`` (ISIZE)."""
    return blob[: end - 4] + size.to_bytes(4, "little") + blob[end:]


def test_gzip_members_with_a_gap_between_them_are_decoded_by_stretch() -> None:
    """Chunks not back to back (a file left out of the run: its member lies between) are
    decoded a stretch of members at a time, each chunk found where it is."""
    layer, spans, blob, base, expected = _estargz_run(chunk_size=16 << 10)
    picked = spans[:3] + spans[5:]
    views = layer.spans.codec().decode_run(picked, blob, base)
    assert views is not None
    assert [bytes(v) for v in views] == [
        expected[s.uncompressed_start : s.uncompressed_end] for s in picked
    ]


@pytest.mark.parametrize("lie", ["less", "more", "4 GiB"])
def test_a_member_whose_trailer_lies_about_its_length(
    lie: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member's trailer (ISIZE) says where the next chunk starts in a stretch's output.
    One that says less than its chunk holds, or more than deflate can make of the member
    (4 GiB): that range is decoded by itself, up to its chunk (as decode_span does: the
    trailer is never reached), and every chunk is right, with no 4 GiB buffer made. One
    that says a little more: the decoder finds the lie, and the run is left to the
    one-by-one way."""
    layer, spans, blob, base, expected = _estargz_run(chunk_size=16 << 10)
    end = spans[4].compressed_end - base
    true_size = int.from_bytes(blob[end - 4 : end], "little")
    size = {"less": 7, "more": true_size + 100, "4 GiB": 0xFFFFFFFF}[lie]
    damaged = _with_trailer(blob, end, size)
    asked = _members_asked(monkeypatch)
    views = layer.spans.codec().decode_run(spans, damaged, base)
    assert max(asked, default=0) < 1 << 20
    right = [expected[s.uncompressed_start : s.uncompressed_end] for s in spans]
    if lie in ("less", "4 GiB"):
        assert views is not None
        assert [bytes(v) for v in views] == right
    else:
        assert views is None
        assert layer.spans.decoded_run(spans, damaged, base, keep=False) == [None] * len(spans)


def test_a_member_damaged_inside_fails_its_stretch_and_is_found_by_itself() -> None:
    """A flipped byte in one member's deflate data: the stretch's one call fails (CRC-32 or
    a corrupt stream), so the run is left to the one-by-one way, which finds the member
    (that chunk: no bytes, the others: theirs)."""
    layer, spans, blob, base, expected = _estargz_run(chunk_size=16 << 10)
    at = (spans[6].compressed_start + spans[6].compressed_end) // 2 - base
    damaged = blob[:at] + bytes([blob[at] ^ 0x55]) + blob[at + 1 :]
    assert layer.spans.codec().decode_run(spans, damaged, base) is None
    for k, span in enumerate(spans):
        piece = damaged[span.compressed_start - base : span.compressed_end - base]
        decoded, _ = layer.spans._decode_checked(span, piece)
        right = expected[span.uncompressed_start : span.uncompressed_end]
        assert decoded == (None if k == 6 else right)


def test_a_whole_estargz_layer_reads_the_same_through_runs_of_members() -> None:
    """The whole payload space of layers with shared members and chunked files, read
    through the pipeline's runs, is the files' bytes (each chunk checked)."""
    for kwargs in ({"chunk_size": 4 << 10}, {"chunk_size": 16 << 10, "pack_below": 4096}):
        made = estargz(build_tar([file(name, data) for name, data in FILES]), **kwargs)
        layer, source = layer_over(made)
        expected, _ = payloads(layer)
        assert layer.read_entry_range(0, len(expected)) == expected
        assert len(source.calls) == 1


def test_without_isals_member_reader_each_chunk_is_decoded_by_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An isal without its reader of members back to back (or no isal): the run is left to
    the chunk-by-chunk way, and the layer reads the same."""
    import seekoci.formats._inflate as inflate

    monkeypatch.setattr(inflate, "_members_reader", None)
    layer, spans, blob, base, expected = _estargz_run(chunk_size=16 << 10)
    assert layer.spans.codec().decode_run(spans, blob, base) is None
    assert layer.read_entry_range(0, len(expected)) == expected


def test_a_huge_inner_offset_with_a_trailer_to_match_makes_no_huge_buffer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A chunk's skip (``innerOffset``) is the TOC's word, and a member's trailer the blob's:
    a hostile pair (skip 1 GiB, a trailer saying 1 GiB more) must not size a stretch's
    buffer (a member of a few KiB cannot decode to more than ~1,032x its bytes), and the
    chunk still fails its check rather than come out wrong."""
    layer, spans, blob, base, expected = _estargz_run(chunk_size=16 << 10)
    k = 4
    end = spans[k].compressed_end - base
    lie = (1 << 30) + spans[k].uncompressed_size
    damaged = _with_trailer(blob, end, lie)
    hostile = [*spans[:k], dataclasses.replace(spans[k], skip=1 << 30), *spans[k + 1 :]]
    asked = _members_asked(monkeypatch)
    got = layer.spans.decoded_run(hostile, damaged, base, keep=False)
    assert max(asked, default=0) < 1 << 20
    assert got[k] is None
    right = [expected[s.uncompressed_start : s.uncompressed_end] for s in spans]
    assert all(g is None or bytes(g) == right[j] for j, g in enumerate(got))


def test_trailers_and_inner_offsets_that_lie_together_stay_within_the_chunks_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every member of a run claiming ~1,000x its bytes (what deflate could make of it), each
    chunk's skip set to match: the stretch's buffer is bounded by the chunks' own sizes,
    not by the skips the TOC gives."""
    made = estargz(build_tar([file(name, data) for name, data in FILES]), chunk_size=16 << 10)
    layer, _ = layer_over(made)
    spans = [s for s in layer.index().spans if s.fetched][:-1]  # the files' (not the TOC's)
    base = spans[0].compressed_start
    damaged = bytearray(made.blob[base : spans[-1].compressed_end])
    hostile = []
    for span in spans:
        claim = 1000 * (span.compressed_end - span.compressed_start)
        end = span.compressed_end - base
        damaged[end - 4 : end] = claim.to_bytes(4, "little")
        hostile.append(dataclasses.replace(span, skip=claim - span.uncompressed_size))
    asked = _members_asked(monkeypatch)
    assert sum(s.skip for s in hostile) > 16 << 20  # what a budget counting skips would allow
    layer.spans.codec().decode_run(hostile, bytes(damaged), base)
    assert max(asked, default=0) <= 4 * sum(s.uncompressed_size for s in spans) + (4 << 20)
