"""RangeFile: an io.BufferedIOBase over a byte range, checked against io.BytesIO."""

from __future__ import annotations

import array
import io
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st
from layers import CI, random_bytes

from seekoci.fileobj import RangeFile

STREAM = random_bytes("stream", 10_000)


def make(
    base: int = 1000, size: int = 5000, calls: list[tuple[int, int]] | None = None
) -> RangeFile:
    def read_range(offset: int, length: int) -> bytes:
        if calls is not None:
            calls.append((offset, length))
        return STREAM[offset : offset + length]

    return RangeFile(read_range, base, size, "/some/file")


def expected(base: int = 1000, size: int = 5000) -> bytes:
    return STREAM[base : base + size]


def test_it_is_a_read_only_seekable_binary_file() -> None:
    f = make()
    assert isinstance(f, io.BufferedIOBase)
    assert f.readable() and f.seekable() and not f.writable()
    assert (f.name, f.size) == ("/some/file", 5000)
    with pytest.raises(io.UnsupportedOperation):
        f.write(b"x")
    with pytest.raises(io.UnsupportedOperation):
        f.fileno()
    with pytest.raises(io.UnsupportedOperation):
        f.truncate(0)


def test_reads_see_only_their_range() -> None:
    calls: list[tuple[int, int]] = []
    f = make(calls=calls)
    assert f.read(10) == expected()[:10]
    assert f.read() == expected()[10:]
    assert f.read() == b""
    assert all(off >= 1000 and off + n <= 6000 for off, n in calls)
    assert calls[-1] == (1010, 4990)


def test_read_none_and_negative_read_everything_left() -> None:
    f = make()
    f.seek(4000)
    assert f.read(None) == expected()[4000:]
    f.seek(4990)
    assert f.read(-7) == expected()[4990:]


@pytest.mark.parametrize("buffer_type", ["bytearray", "memoryview", "array"])
def test_readinto_any_writable_buffer(buffer_type: str) -> None:
    f = make()
    f.seek(4992)
    if buffer_type == "array":
        buf: object = array.array("i", [0] * 4)  # 16 bytes, only 8 left in the file
    elif buffer_type == "memoryview":
        buf = memoryview(bytearray(16))
    else:
        buf = bytearray(16)
    n = f.readinto(buf)  # type: ignore[arg-type]
    assert n == 8
    assert bytes(memoryview(buf).cast("B"))[:8] == expected()[4992:]  # type: ignore[arg-type]
    assert f.readinto(bytearray(4)) == 0


def test_lines_and_iteration_work() -> None:
    text = b"one\ntwo\n\nthree"
    f = RangeFile(lambda o, n: text[o : o + n], 0, len(text), "t")
    assert f.readline() == b"one\n"
    assert list(f) == [b"two\n", b"\n", b"three"]
    f.seek(0)
    assert f.readlines() == text.splitlines(keepends=True)


def test_wrapping_in_text_and_buffered_readers() -> None:
    text = "naïve\nlines\n".encode()
    f = RangeFile(lambda o, n: text[o : o + n], 0, len(text), "t")
    assert io.TextIOWrapper(f, encoding="utf-8").read() == "naïve\nlines\n"
    g = RangeFile(lambda o, n: text[o : o + n], 0, len(text), "t")
    assert io.BufferedReader(g).read() == text  # type: ignore[arg-type]


def test_seek_whence_and_bounds() -> None:
    f = make()
    assert f.seek(10) == 10
    assert f.seek(5, io.SEEK_CUR) == 15
    assert f.seek(-5, io.SEEK_END) == 4995
    assert f.read() == expected()[-5:]
    assert f.seek(10**12) == 10**12 and f.read(1) == b""
    for offset, whence in [(-1, io.SEEK_SET), (-(10**12) - 1, io.SEEK_CUR), (-5001, io.SEEK_END)]:
        with pytest.raises(ValueError):
            f.seek(offset, whence)
    with pytest.raises(ValueError):
        f.seek(0, 7)
    assert f.tell() == 10**12


def test_a_closed_file() -> None:
    with make() as f:
        assert not f.closed
    assert f.closed
    assert "closed" in repr(f)
    for call in (f.read, f.tell, f.readable, f.seekable, f.writable, lambda: f.seek(0)):
        with pytest.raises(ValueError):
            call()
    with pytest.raises(ValueError):
        f.readinto(bytearray(1))
    f.close()  # closing twice is fine


def test_an_empty_file() -> None:
    f = make(size=0)
    assert f.read() == b"" and f.read(5) == b"" and f.seek(0, io.SEEK_END) == 0


def test_threads_sharing_one_file_object_never_tear_a_read() -> None:
    f = make(base=0, size=10_000)
    chunks: list[bytes] = []

    def worker() -> None:
        for _ in range(200):
            data = f.read(7)
            chunks.append(data)  # list.append is atomic

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # each read is a whole run of the file at the position it moved past: put in file order,
    # they tile the file with no gap and no overlap
    located = sorted((STREAM.index(c), c) for c in chunks if c)
    assert b"".join(c for _, c in located) == STREAM[: 800 * 7]
    assert f.tell() == 800 * 7


ops = st.lists(
    st.one_of(
        st.tuples(st.just("seek"), st.integers(-6000, 7000), st.sampled_from([0, 1, 2])),
        st.tuples(st.sampled_from(["read", "read1"]), st.integers(-1, 6000)),
        st.tuples(st.just("readinto"), st.integers(0, 6000)),
        st.tuples(st.just("tell")),
    ),
    max_size=30,
)


@CI
@given(base=st.integers(0, 5000), size=st.integers(0, 5000), steps=ops)
def test_like_bytesio(base: int, size: int, steps: list[tuple[object, ...]]) -> None:
    f = make(base, size)
    model = io.BytesIO(expected(base, size))
    for op in steps:
        if op[0] == "seek":
            offset, whence = op[1], op[2]
            assert isinstance(offset, int) and isinstance(whence, int)
            start = {0: 0, 1: model.tell(), 2: size}[whence]
            if start + offset < 0:  # BytesIO clamps relative seeks to 0; files refuse
                with pytest.raises(ValueError):
                    f.seek(offset, whence)
                continue
            assert f.seek(offset, whence) == model.seek(offset, whence)
        elif op[0] == "tell":
            assert f.tell() == model.tell()
        elif op[0] == "readinto":
            n = op[1]
            assert isinstance(n, int)
            a, b = bytearray(n), bytearray(n)
            assert f.readinto(a) == model.readinto(b)
            assert a == b
        else:
            assert getattr(f, str(op[0]))(op[1]) == getattr(model, str(op[0]))(op[1])
    assert f.read() == model.read()
