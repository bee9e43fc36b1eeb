"""Edge cases of layer reads: empty layers and files, files across many checkpoints, a file
that starts exactly on a checkpoint, the last byte, reads past the end, misuse of file
objects."""

from __future__ import annotations

import io
import itertools

import pytest
from layers import (
    PRODUCERS,
    build_tar,
    compress_layer,
    deflate_with_boundaries,
    dir,
    file,
    gzip_member,
    random_bytes,
    tar_members,
    text_bytes,
)

import seekoci
from seekoci.source import BytesSource


def open_blob(blob: bytes, span_size: int = 4096) -> seekoci.Layer:
    return seekoci.open_layer(BytesSource(blob, name="edge"), cache_dir=False, span_size=span_size)


@pytest.mark.parametrize("producer", PRODUCERS)
def test_an_empty_layer(producer: str) -> None:
    tar = build_tar([])
    layer = open_blob(compress_layer(tar, producer))
    assert layer.listdir("/") == []
    assert list(layer.walk("/")) == [("/", [], [])]
    assert layer.uncompressed_size == len(tar)
    assert layer.read_range(0, 100) == tar[:100]
    assert layer.read_range(len(tar), 1) == b""
    with pytest.raises(FileNotFoundError):
        layer.open("/anything")


@pytest.mark.parametrize("producer", PRODUCERS)
def test_empty_files(producer: str) -> None:
    entries = [file("a", b""), file("d/b", b""), file("c", b"after")]
    layer = open_blob(compress_layer(build_tar(entries), producer))
    for name in ("a", "d/b"):
        with layer.open(name) as f:
            assert f.size == 0
            assert f.read() == b""
            assert f.read(10) == b""
            assert f.readinto(bytearray(4)) == 0
            assert f.seek(0, io.SEEK_END) == 0
    assert layer.open("c").read() == b"after"


@pytest.mark.parametrize("producer", PRODUCERS)
def test_a_file_across_many_checkpoints(producer: str) -> None:
    data = text_bytes("many", 300_000) + random_bytes("many", 100_000)
    tar = build_tar([file("small", b"x" * 100), file("big", data), file("tail", b"end")])
    layer = open_blob(compress_layer(tar, producer), span_size=4096)
    offsets = {name: data_offset for name, _, data_offset in tar_members(tar)}
    start, end = offsets["big"], offsets["big"] + len(data)
    inside = [s for s in layer.index().spans if start < s.uncompressed_start < end]
    if producer in ("python", "gzip", "pigz", "fname", "multi-member"):
        # zlib level 6 ends a block every 16 Ki symbols or so: a handful of checkpoints
        assert len(inside) >= 3
    elif producer in ("small-blocks", "none", "zstd-frames"):
        assert len(inside) >= 40
    else:  # one zstd frame is one span
        assert producer == "zstd" and inside == []
    with layer.open("big") as f:
        assert f.read() == data
        # every checkpoint inside the file: read across it from its left
        for span in inside:
            pos = span.uncompressed_start - start
            f.seek(pos - 3)
            assert f.read(7) == data[pos - 3 : pos + 4]
            f.seek(pos)
            assert f.read(1) == data[pos : pos + 1]


def test_a_file_starting_exactly_on_a_gzip_checkpoint() -> None:
    first = text_bytes("first", 9000)
    second = text_bytes("second", 50_000)
    tar = build_tar([file("first", first), file("second", second), file("third", b"3")])
    offsets = {name: data_offset for name, _, data_offset in tar_members(tar)}
    # a full flush right where "second"'s data begins makes a block boundary there; the
    # bytes before it are one block (less than zlib's 16 Ki symbol buffer), so the first
    # checkpoint after 4096 bytes falls exactly there
    cut = offsets["second"]
    blob = gzip_member(deflate_with_boundaries(tar, [cut]), tar)
    layer = open_blob(blob, span_size=4096)
    spans = layer.index().spans
    assert [s.uncompressed_start for s in spans].count(cut) == 1
    with layer.open("second") as f:
        assert f.read(1) == second[:1]
        assert f.read() == second[1:]
        f.seek(0)
        assert f.read(10) == second[:10]
    assert layer.read_range(cut - 1, 2) == tar[cut - 1 : cut + 1]
    assert layer.open("first").read() == first


def test_a_file_starting_exactly_on_a_plain_span() -> None:
    span = 4096
    # header at 0, data at 512: 3072 bytes of data put the next header at 3584, its data
    # at 4096 = the second span's start
    tar = build_tar([file("a", b"a" * 3072), file("b", b"b" * 5000)])
    assert dict((n, d) for n, _, d in tar_members(tar))["b"] == span
    layer = open_blob(tar, span_size=span)
    assert layer.index().spans[1].uncompressed_start == span
    with layer.open("b") as f:
        assert f.read(1) == b"b"
        f.seek(-1, io.SEEK_END)
        assert f.read() == b"b"


@pytest.mark.parametrize("producer", PRODUCERS)
def test_the_last_byte_of_the_layer_and_of_its_last_file(producer: str) -> None:
    last = random_bytes("last", 4097)
    tar = build_tar([dir("d"), file("d/first", b"1"), file("d/last", last)])
    layer = open_blob(compress_layer(tar, producer))
    size = layer.uncompressed_size
    assert size == len(tar)
    assert layer.read_range(size - 1, 1) == tar[-1:]
    assert layer.read_range(size - 1, 10) == tar[-1:]
    assert layer.read_range(size, 1) == b""
    assert layer.read_range(size + 10**9, 10) == b""
    with layer.open("d/last") as f:
        f.seek(-1, io.SEEK_END)
        assert f.read() == last[-1:]
        assert f.read() == b""


def test_reads_past_the_end_return_nothing() -> None:
    layer = open_blob(compress_layer(build_tar([file("f", b"0123456789")]), "python"))
    with layer.open("f") as f:
        assert f.seek(100) == 100
        assert f.read() == b""
        assert f.read(5) == b""
        assert f.read1(5) == b""
        assert f.readinto(bytearray(5)) == 0
        assert f.tell() == 100
        f.seek(8)
        assert f.read(100) == b"89"
        assert f.tell() == 10


def test_seek_to_a_negative_position_is_a_value_error() -> None:
    layer = open_blob(compress_layer(build_tar([file("f", b"0123456789")]), "python"))
    with layer.open("f") as f:
        f.seek(4)
        for offset, whence in [(-1, io.SEEK_SET), (-5, io.SEEK_CUR), (-11, io.SEEK_END)]:
            with pytest.raises(ValueError):
                f.seek(offset, whence)
            assert f.tell() == 4  # a refused seek moves nothing
        with pytest.raises(ValueError):
            f.seek(0, 3)
        assert f.seek(-10, io.SEEK_END) == 0


def test_a_closed_file_is_a_value_error() -> None:
    layer = open_blob(compress_layer(build_tar([file("f", b"data")]), "python"))
    with layer.open("f") as f:
        pass
    assert f.closed
    calls = [
        f.read,
        lambda: f.read(1),
        f.read1,
        lambda: f.readinto(bytearray(1)),
        lambda: f.seek(0),
        f.tell,
        f.readable,
        f.seekable,
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()


def test_open_refuses_directories_links_and_missing_paths() -> None:
    from layers import char, fifo, symlink

    tar = build_tar([dir("d"), file("d/f", b"x"), symlink("s", "d/f"), fifo("p"), char("c", 1, 3)])
    layer = open_blob(tar)
    with pytest.raises(IsADirectoryError):
        layer.open("d")
    with pytest.raises(IsADirectoryError):
        layer.open("/")
    with pytest.raises(FileNotFoundError):
        layer.open("d/missing")
    for name in ("p", "c"):
        with pytest.raises(OSError):
            layer.open(name)


def test_a_hard_link_in_one_layer_reads_its_target() -> None:
    from layers import hardlink

    tar = build_tar([file("a", b"payload"), hardlink("b", "a"), hardlink("c", "b")])
    layer = open_blob(compress_layer(tar, "python"))
    assert layer.stat("b").type == "hardlink"
    assert layer.open("b").read() == b"payload"


@pytest.mark.parametrize("chunks", [1, 2, 7])
def test_read_range_over_every_span_boundary(chunks: int) -> None:
    tar = build_tar([file(f"f{i}", text_bytes(i, 20_000)) for i in range(10)])
    layer = open_blob(compress_layer(tar, "small-blocks"), span_size=2048)
    spans = layer.index().spans
    assert len(spans) > 50
    for a, b in itertools.pairwise(spans):
        edge = b.uncompressed_start
        assert a.uncompressed_end == edge
        assert layer.read_range(edge - chunks, 2 * chunks) == tar[edge - chunks : edge + chunks]
    assert spans[-1].uncompressed_end == len(tar)


def test_a_span_too_large_to_hold_is_streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    import seekoci.spans

    monkeypatch.setattr(seekoci.spans, "LARGE_SPAN", 1000)
    data = text_bytes("stream", 50_000)
    tar = build_tar([file("a", b"first"), file("b", data), file("c", b"last")])
    layer = open_blob(compress_layer(tar, "zstd"), span_size=4096)
    layer.index()
    assert len(layer.index().spans) == 1
    assert layer.read_range(0, len(tar) + 5) == tar
    with layer.open("b") as f:
        f.seek(30_000)
        assert f.read(100) == data[30_000:30_100]
    assert layer.open("c").read() == b"last"


def test_a_single_layer_lists_whiteouts_under_their_raw_names() -> None:
    from layers import opaque, whiteout

    tar = build_tar([dir("d"), file("d/kept", b"k"), whiteout("d/gone"), opaque("d")])
    layer = open_blob(compress_layer(tar, "python"))
    assert layer.listdir("/d") == [".wh..wh..opq", ".wh.gone", "kept"]
    assert layer.stat("/d/.wh.gone").type == "file"
    assert layer.open("/d/kept").read() == b"k"
