"""The lazy zTOC reader (what a SOCI-only read uses) against the eager one: the same
index for every zTOC the eager reader accepts, a FormatError for every one it refuses
(the hostile zTOCs of test_soci_ztoc, each damaged byte, each truncation)."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from layers import CI, build_tar, compress_layer, dir, file, symlink, text_bytes
from test_soci_ztoc import (
    full_ztoc,
    mutated,
    shift,
    small_ztoc,
    structurally_damaged,
    trees,
)

from seekoci import soci
from seekoci.errors import FormatError
from seekoci.formats.ztoc import ZtocEntries, decode_ztoc, encode_ztoc, lazy_layer_index

DIGEST = "sha256:" + "ab" * 32


def both(data: bytes) -> tuple[Any, Any]:
    """(eager index or the FormatError, lazy index or the FormatError)."""
    out: list[Any] = []
    try:
        ztoc = decode_ztoc(data)
        out.append(
            soci.ztoc_to_layer_index(
                ztoc, layer_digest=DIGEST, media_type="m", blob_size=ztoc.compressed_size
            )
        )
        size = ztoc.compressed_size
    except FormatError as exc:
        out.append(exc)
        size = None
    try:
        if size is None:  # the eager reader refused it before looking at the blob size
            size = _claimed_size(data)
        out.append(lazy_layer_index(data, layer_digest=DIGEST, media_type="m", blob_size=size))
    except FormatError as exc:
        out.append(exc)
    return out[0], out[1]


def _claimed_size(data: bytes) -> int:
    from seekoci.formats.ztoc import _I64, _Buffer

    try:
        buf = _Buffer(data, "size")
        return buf.table(buf.u32(0), "Ztoc").scalar(2, _I64, 0)
    except Exception:
        return 0


def assert_same(data: bytes) -> None:
    eager, lazy = both(data)
    if isinstance(eager, FormatError):
        assert isinstance(lazy, FormatError), "the lazy reader accepted a zTOC the eager refused"
        return
    assert not isinstance(lazy, FormatError), f"the lazy reader refused a good zTOC: {lazy}"
    assert isinstance(lazy.entries, ZtocEntries)
    assert lazy.entries.names == [e.name for e in eager.entries]
    assert lazy.entries.name_map() == _name_map(eager.entries)
    assert list(lazy.entries) == list(eager.entries)
    assert lazy.entries.data_end() == max(
        (e.data_offset + e.size for e in eager.entries), default=0
    )
    assert list(lazy.spans) == list(eager.spans)
    assert list(lazy.window_locations) == list(eager.window_locations)
    assert lazy.uncompressed_size == eager.uncompressed_size
    assert lazy.tool == eager.tool and lazy.compression == eager.compression
    for i in range(len(eager.spans)):
        assert lazy.window(i) == eager.window(i)


def _name_map(entries: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for i, e in enumerate(entries):
        if not e.unsafe:
            out[e.name] = i
    return out


def test_the_same_index_for_good_ztocs() -> None:
    assert_same(small_ztoc())
    assert_same(small_ztoc("none"))
    assert_same(encode_ztoc(full_ztoc()))
    assert_same(encode_ztoc(full_ztoc()) + b"---SOCI-PREFETCH---[]")


def test_entries_are_made_only_when_touched() -> None:
    tar = build_tar([dir("a"), *(file(f"a/f{i}", b"x" * i) for i in range(50)), symlink("l", "a")])
    data = soci.build_ztoc(io.BytesIO(compress_layer(tar, "python")), span_size=4096)
    size = decode_ztoc(data).compressed_size
    index = lazy_layer_index(data, layer_digest=DIGEST, media_type="m", blob_size=size)
    entries = index.entries
    assert isinstance(entries, ZtocEntries)
    position = entries.name_map()["a/f7"]
    assert entries._made.count(None) == len(entries)
    assert entries[position].size == 7 and entries[position].type == "file"
    assert entries._made.count(None) == len(entries) - 1


def test_a_wrong_blob_size_is_refused() -> None:
    data = small_ztoc()
    size = decode_ztoc(data).compressed_size
    with pytest.raises(FormatError, match="blob"):
        lazy_layer_index(data, layer_digest=DIGEST, media_type="m", blob_size=size + 1)


def test_unsafe_and_odd_names() -> None:
    ztoc = decode_ztoc(small_ztoc())
    first = ztoc.files[0]
    names = ["/abs/x", "./dot/y", "a//b", "up/../z", "t/", "n\nl", "..", "ok/.."]
    ztoc.files = [
        dataclasses.replace(first, name=n, uncompressed_offset=512 + 1024 * i)
        for i, n in enumerate(names)
    ]
    ztoc.files = [dataclasses.replace(f, type="dir", uncompressed_size=0) for f in ztoc.files]
    ztoc.uncompressed_size = max(ztoc.uncompressed_size, 512 + 1024 * len(names))
    assert_same(encode_ztoc(ztoc))


@pytest.mark.parametrize(
    "names",
    [
        ["dir/", "dir/f", "dir/sub/", "dir/sub/g"],  # directories as Go's and GNU tar name them
        ["./lead/", "./lead/x", "./y"],  # tar -C DIR .
        ["a..b", "x/..y", "..z/w", "w/z.."],  # dots that are not a ".." component
        ["ok/", "up/../z", "t/..", "../top"],  # ".." components among the fast path's
        ["./", "./a//b/", "././c", "d/./"],  # what the names' own loop must still mend
    ],
)
def test_names_the_joined_fast_path_takes(names: list[str]) -> None:
    ztoc = decode_ztoc(small_ztoc())
    first = ztoc.files[0]
    ztoc.files = [
        dataclasses.replace(first, name=n, type="dir", uncompressed_size=0,
                            uncompressed_offset=512 + 1024 * i)
        for i, n in enumerate(names)
    ]  # fmt: skip
    ztoc.uncompressed_size = max(ztoc.uncompressed_size, 512 + 1024 * len(names))
    assert_same(encode_ztoc(ztoc))


@pytest.mark.parametrize("producer", ["small-blocks", "none"])
def test_truncated_ztocs(producer: str) -> None:
    data = small_ztoc(producer)
    for n in range(0, len(data), 7):
        assert_same(data[:n])


@pytest.mark.parametrize("producer", ["small-blocks", "none"])
def test_every_structural_byte_damaged(producer: str) -> None:
    for damaged in structurally_damaged(producer):
        assert_same(damaged)


@pytest.mark.parametrize(
    "bad",
    [
        lambda z: {"max_span_id": z.max_span_id + 1},
        lambda z: {"span_digests": z.span_digests[:-1]},
        lambda z: {"checkpoints": z.checkpoints[:-1]},
        lambda z: {"compressed_size": 5},
        lambda z: {"uncompressed_size": 1000},
        lambda z: {"compressed_size": -1},
        lambda z: {"compression_algorithm": "uncompressed"},
        lambda z: {"files": lambda f: shift(f, 1, -512)},
        lambda z: {"files": lambda f: shift(f, 1, 100)},
        lambda z: {"files": lambda f: shift(f, 2, 10**9)},
        lambda z: {"files": lambda f: shift(f, 0, -(10**6))},
        lambda z: {"files": lambda f: [*f, f[1]]},
        lambda z: {"files": lambda f: [dataclasses.replace(f[0], type="sparse"), *f[1:]]},
        lambda z: {"files": lambda f: list(reversed(f))},  # out of order: still fine
    ],
)
def test_inconsistent_ztocs(bad: Any) -> None:
    assert_same(mutated(**bad(decode_ztoc(small_ztoc()))))


@CI
@given(trees(), st.sampled_from(["python", "none"]))
def test_random_tars(entries: Any, producer: str) -> None:
    blob = compress_layer(build_tar(entries), producer)
    assert_same(soci.build_ztoc(io.BytesIO(blob), span_size=3000))


@CI
@given(st.binary(max_size=300))
def test_garbage(data: bytes) -> None:
    assert_same(data)


def test_a_text_layer() -> None:
    tar = build_tar([file(f"d/{i}.txt", text_bytes(str(i), 700)) for i in range(200)])
    assert_same(soci.build_ztoc(io.BytesIO(compress_layer(tar, "python")), span_size=8192))
