"""The lazy zTOC reader (what a SOCI-only read uses) against the eager one: the same
index, the same lookups and the same entries for every zTOC the eager reader accepts; for
every one it refuses (the hostile zTOCs of test_soci_ztoc, each damaged byte, each
truncation) a FormatError -- when it is loaded, or, for a damaged file table behind
lookups by name (:class:`ZtocLookup`), as soon as that table or the whole TOC is used."""

from __future__ import annotations

import dataclasses
import io
import json
import time
import tracemalloc
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from layers import CI, build_tar, compress_layer, dir, file, in_threads, symlink, text_bytes
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
from seekoci.formats.ztoc import (
    ZtocEntries,
    ZtocLookup,
    decode_ztoc,
    encode_ztoc,
    lazy_layer_index,
    without_prefetch_list,
)

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
        if isinstance(lazy, FormatError):
            return
        # loaded for lookups: every table is checked when it is used, the whole TOC when
        # anything needs all of it -- so using all of it fails, and no entry is made of a
        # table the eager reader would refuse
        entries = lazy.entries
        assert isinstance(entries, ZtocLookup), "the lazy reader accepted a zTOC the eager refused"
        for i in range(len(entries)):
            try:
                entries[i]
            except FormatError:
                pass
        with pytest.raises(FormatError):
            list(entries)
        with pytest.raises(FormatError):
            entries.names  # noqa: B018
        return
    assert not isinstance(lazy, FormatError), f"the lazy reader refused a good zTOC: {lazy}"
    entries = lazy.entries
    assert isinstance(entries, ZtocEntries | ZtocLookup)
    expected = _name_map(eager.entries)
    if isinstance(entries, ZtocLookup):  # lookups before anything reads the TOC whole
        for name, i in expected.items():
            if name:  # the root ("./") is looked up in the whole TOC
                assert entries.lookup(name) == eager.entries[i], name
        for name in ("no/such/name", *(n + "x" for n in expected)):
            if name not in expected:
                assert entries.lookup(name) is None, name
        # lookups read no other table, unless the zTOC is one they cannot take (odd
        # spellings, tables out of order): then the first one read it whole
        assert (entries._whole is None) == (entries._columns is not None), "read whole"
        assert entries.data_end() == max((e.data_offset + e.size for e in eager.entries), default=0)
        assert [entries[i] for i in range(len(entries))] == list(eager.entries)
    assert entries.names == [e.name for e in eager.entries]
    assert entries.name_map() == expected
    assert list(entries) == list(eager.entries)
    assert entries.data_end() == max((e.data_offset + e.size for e in eager.entries), default=0)
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


SEPARATOR = b"---SOCI-PREFETCH---"


def test_a_prefetch_list_is_cut_from_the_end_only() -> None:
    # the separator's bytes inside the flatbuffer (here a name; as well a checkpoint's
    # window of file data) are not where a prefetch list starts
    inside = _ztoc_of(["a", "a/---SOCI-PREFETCH---[]", "b"])
    assert SEPARATOR in inside
    listed = json.dumps(["a/---SOCI-PREFETCH---[]", "b---SOCI-PREFETCH---"]).encode()
    for data in (
        inside,
        inside + SEPARATOR + b"[]",
        inside + SEPARATOR + listed + b"\n",  # the list's own separators are not its start
    ):
        assert without_prefetch_list(data) == inside
        assert_same(data)
        ztoc = decode_ztoc(data)
        assert [f.name for f in ztoc.files] == ["a", "a/---SOCI-PREFETCH---[]", "b"]
        entries = _lazy(data)
        found = entries.lookup("a/---SOCI-PREFETCH---[]")
        assert found is not None and found.data_offset == 1024 + 512
    # no list after the last separator: the zTOC is taken as it is (and read the same)
    for tail in (SEPARATOR + b"[1, 2", SEPARATOR + b"junk]", b"]", SEPARATOR + b'{"a": []}'):
        assert without_prefetch_list(inside + tail) == inside + tail
        assert_same(inside + tail)


def test_a_long_prefetch_list_is_not_parsed() -> None:
    # a 30 MB list of empty objects took 750 MB to parse, only to be dropped
    inside = _ztoc_of(["a", "b"])
    data = inside + SEPARATOR + b"[" + b"{}," * (10 << 20) + b"{}]"
    tracemalloc.start()
    try:
        assert without_prefetch_list(data) == inside
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak:,} B to cut a {len(data):,} B zTOC"


def test_a_ztoc_without_a_list_is_not_searched(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    class Spy(bytes):
        def rfind(self, *args: Any) -> int:
            calls.append(args)
            return super().rfind(*args)

    data = _ztoc_of(["a", "a/---SOCI-PREFETCH---[]"])
    assert without_prefetch_list(Spy(data)) == data and calls == []
    assert without_prefetch_list(Spy(data + SEPARATOR + b"[]")) == data and len(calls) == 1


def _ztoc_of(names: list[str], *, kinds: list[str] | None = None) -> bytes:
    """small_ztoc's first entry under each of ``names`` (directories unless ``kinds``
    says), in that order, 1 KiB apart in the tar."""
    ztoc = decode_ztoc(small_ztoc())
    first = ztoc.files[0]
    ztoc.files = [
        dataclasses.replace(first, name=n, type=(kinds or ["dir"] * len(names))[i],
                            uncompressed_size=0, uncompressed_offset=512 + 1024 * i)
        for i, n in enumerate(names)
    ]  # fmt: skip
    ztoc.uncompressed_size = max(ztoc.uncompressed_size, 512 + 1024 * len(names))
    return encode_ztoc(ztoc)


def _lazy(data: bytes) -> Any:
    size = _claimed_size(data)
    return lazy_layer_index(data, layer_digest=DIGEST, media_type="m", blob_size=size).entries


def test_a_lookup_reads_the_tables_it_finds() -> None:
    tar = build_tar([dir("a"), *(file(f"a/f{i}", b"x" * i) for i in range(50)), symlink("l", "a")])
    entries = _lazy(soci.build_ztoc(io.BytesIO(compress_layer(tar, "python")), span_size=4096))
    assert isinstance(entries, ZtocLookup)
    found = entries.lookup("a/f7")
    assert found is not None and found.size == 7 and found.type == "file"
    assert len(entries._made) == 1
    assert len(entries._files) == 2  # its table and the one before (where its header is)
    assert entries.lookup("a") is not None and entries.lookup("a").type == "dir"
    assert entries.lookup("a/f") is None and entries.lookup("f7") is None
    assert entries._whole is None
    assert entries.names[:2] == ["a", "a/f0"]  # a listing reads it whole: every table
    assert entries._whole is not None and entries.lookup("l").type == "symlink"


def test_a_ztoc_lookups_cannot_take_is_read_whole_by_the_first() -> None:
    entries = _lazy(_ztoc_of(["a//b", "c"]))  # a spelling lookups by name would miss
    assert isinstance(entries, ZtocLookup) and entries._whole is None
    assert entries.lookup("a/b").raw_name == "a//b"
    whole = entries._whole
    assert isinstance(whole, ZtocEntries)
    assert whole._made.count(None) == len(whole) - 1  # entries still made on demand


def test_a_listing_first_reads_every_table_without_the_lookup_columns() -> None:
    entries = _lazy(_ztoc_of(["a", "b", "c"]))
    assert entries.names == ["a", "b", "c"]
    assert entries._whole is not None and not entries._columns_tried
    assert entries.lookup("b").name == "b"
    assert not entries._columns_tried


@pytest.mark.parametrize(
    ("names", "wanted", "position"),
    [
        (["x", "y", "x"], "x", 2),  # the last of a name
        (["x/", "./x", "y"], "x", 1),
        (["x", "/x"], "x", 0),  # an unsafe one is never the answer
        (["./", "./d/", "./d/e"], "d/e", 2),  # tar -C DIR .
        (["d/", "d/e/", "e/"], "d/e", 1),
        (["d", "dd", "xd"], "d", 0),  # names that end alike
    ],
)
def test_every_spelling_of_a_name(names: list[str], wanted: str, position: int) -> None:
    entries = _lazy(_ztoc_of(names))
    assert isinstance(entries, ZtocLookup)
    found = entries.lookup(wanted)
    assert found is not None and found.data_offset == 512 + 1024 * position
    assert entries._whole is None


def test_a_damaged_table_fails_when_it_is_used() -> None:
    entries = _lazy(_ztoc_of(["a", "b", "c"], kinds=["dir", "sparse", "dir"]))
    assert isinstance(entries, ZtocLookup)
    assert entries.lookup("a").name == "a"
    with pytest.raises(FormatError, match="unknown type"):
        entries.lookup("b")
    with pytest.raises(FormatError, match="unknown type"):
        entries.names  # noqa: B018


def test_a_hard_link_reads_the_entry_before_it_after_a_lookup() -> None:
    # lookups make entries before anything reads the zTOC whole; the hard link's target is
    # then found by identity among all entries: they must be the same objects
    from layers import hardlink

    from seekoci import Layer
    from seekoci.cache import MemoryCache
    from seekoci.source import BytesSource

    blob = compress_layer(
        build_tar([file("a", b"OLD"), hardlink("l", "a"), file("a", b"NEW")]), "python"
    )
    data = soci.build_ztoc(io.BytesIO(blob), span_size=4096)
    index = lazy_layer_index(data, layer_digest=DIGEST, media_type="m", blob_size=len(blob))
    layer = Layer(BytesSource(blob, name="blob"), cache=MemoryCache(), digest=None)
    layer._set_index(index, "soci")
    assert isinstance(index.entries, ZtocLookup)
    assert layer.open("l").read() == b"OLD"
    assert layer.open("a").read() == b"NEW"


def test_a_time_no_clock_holds_is_no_time() -> None:
    ztoc = decode_ztoc(small_ztoc())
    ztoc.files[1] = dataclasses.replace(ztoc.files[1], mod_time="9" * 400 + "-01-01T00:00:00Z")
    assert_same(encode_ztoc(ztoc))
    entries = _lazy(encode_ztoc(ztoc))
    assert entries.lookup(entries.names[1]).mtime == 0.0  # as Go reads it: the zero time


def test_names_no_stored_name_decodes_to() -> None:
    entries = _lazy(_ztoc_of(["\u00e9", "\udcff", "b"]))  # b"\xc3\xa9", b"\xff", b"b"
    assert isinstance(entries, ZtocLookup)
    assert entries.lookup("\udcc3\udca9") is None  # what surrogateescape makes of "é"
    assert entries.lookup("\ud800") is None  # no bytes decode to it
    assert entries.lookup("\u00e9").name == "\u00e9"
    assert entries.lookup("\udcff").raw_name == "\udcff"  # a name that is not UTF-8
    assert entries._whole is None


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


def _twenty_files() -> Any:
    tar = build_tar([dir("d"), *(file(f"d/f{i}", b"x" * i) for i in range(20))])
    return _lazy(soci.build_ztoc(io.BytesIO(compress_layer(tar, "python")), span_size=4096))


def _each_of_two_threads_makes_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on (until ``monkeypatch.undo()``) an entry made from a zTOC table waits,
    once made, for a second thread to have made its own object too: what either keeps is
    then up to how they publish them."""
    import threading

    import seekoci.formats.ztoc as ztoc

    both_made = threading.Barrier(2, timeout=10)
    real = ztoc._tar_entry

    def made_together(*args: Any) -> Any:
        entry = real(*args)
        both_made.wait()
        return entry

    monkeypatch.setattr(ztoc, "_tar_entry", made_together)


def test_threads_making_one_entry_get_one_object(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = _twenty_files()
    _each_of_two_threads_makes_its_own(monkeypatch)
    got = in_threads(lambda: entries.lookup("d/f15"))
    monkeypatch.undo()
    assert len(got) == 2 and got[0] is got[1]
    assert entries.names[16] == "d/f15" and entries[16] is got[0]  # and once read whole


def test_threads_making_one_entry_of_a_whole_ztoc_get_one_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whole = _twenty_files().whole()
    _each_of_two_threads_makes_its_own(monkeypatch)
    got = in_threads(lambda: whole[12])
    monkeypatch.undo()
    assert len(got) == 2 and got[0] is got[1] is list(whole)[12]


def test_a_ztoc_whose_int64s_are_not_8_byte_aligned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every position moved by 4 bytes (a builder that aligns 8-byte scalars to 4 only):
    lookups read the data offsets one at a time instead of in one gather -- and give the
    same answers as for the aligned zTOC and as the eager reader."""
    import struct

    import seekoci.formats.ztoc as ztoc

    formats: list[str] = []
    real_gather = ztoc._gather

    def gather(source: Any, indexes: Any) -> tuple[Any, ...]:
        formats.append(getattr(source, "format", type(source).__name__))
        return real_gather(source, indexes)

    monkeypatch.setattr(ztoc, "_gather", gather)
    data = small_ztoc()
    (root,) = struct.unpack_from("<I", data)
    shifted = struct.pack("<I", root + 4) + bytes(4) + data[4:]
    assert_same(data)
    assert "q" in formats, "the aligned zTOC's offsets were not gathered"
    formats.clear()
    assert_same(shifted)
    assert formats and "q" not in formats, "the shifted zTOC's lookups did not run"
    eager, lazy = both(shifted)
    target = eager.entries[-1]
    assert lazy.entries.lookup(target.name) == target


def _ztoc_root(b: Any, files: int, digests: list[int], size: int) -> bytes:
    """The rest of a hand-built zTOC around its file tables' vector ``files``: the TOC
    table, a compression info of ``digests`` (span digest strings) and no checkpoints (a
    plain layer of ``size`` bytes), and the root; the finished buffer."""
    from seekoci.formats.ztoc import _offsets_vector, tar_zinfo_blob

    b.StartObject(1)
    b.PrependUOffsetTRelativeSlot(0, files, 0)
    toc = b.EndObject()
    checkpoints = b.CreateByteVector(tar_zinfo_blob(size, size))
    span_digests = _offsets_vector(b, digests)
    b.StartObject(4)
    b.PrependInt8Slot(0, 2, 1)
    b.PrependUOffsetTRelativeSlot(2, span_digests, 0)
    b.PrependUOffsetTRelativeSlot(3, checkpoints, 0)
    info = b.EndObject()
    version = b.CreateString(b"0.9")
    b.StartObject(6)
    b.PrependUOffsetTRelativeSlot(0, version, 0)
    b.PrependUOffsetTRelativeSlot(1, version, 0)
    b.PrependInt64Slot(2, size, 0)
    b.PrependInt64Slot(3, size, 0)
    b.PrependUOffsetTRelativeSlot(4, toc, 0)
    b.PrependUOffsetTRelativeSlot(5, info, 0)
    b.Finish(b.EndObject())
    return bytes(b.Output())


def _shared_string_ztoc(tables: int, length: int, *, distinct: bool, digests: int = 1) -> bytes:
    """A zTOC of ``tables`` file tables (one table named ``tables`` times, or as many
    distinct ones) whose names are all one string of ``length`` bytes, and ``digests``
    span digests that are all one string."""
    import flatbuffers

    from seekoci.formats.ztoc import _offsets_vector

    size = 1 << 20
    b = flatbuffers.Builder(length + tables * 64 + 4096)
    name, kind = b.CreateString(b"a" * length), b.CreateString(b"reg")
    made = []
    for i in range(tables if distinct else 1):
        b.StartObject(14)
        b.PrependUOffsetTRelativeSlot(0, name, 0)
        b.PrependUOffsetTRelativeSlot(1, kind, 0)
        b.PrependInt64Slot(2, 512 * (2 * i + 1), 0)
        b.PrependInt64Slot(3, 1, 0)
        made.append(b.EndObject())
    files = _offsets_vector(b, made if distinct else made * tables)
    digest = b.CreateString(b"sha256:" + b"0" * 64 + b"0" * (length if digests > 1 else 0))
    return _ztoc_root(b, files, [digest] * digests, size)


@pytest.mark.parametrize(
    ("tables", "length", "distinct", "digests"),
    [(20_000, 40_000, False, 1), (20_000, 40_000, True, 1), (1, 10, True, 20_000)],
    ids=["one-table-many-times", "tables-sharing-a-name", "span-digests"],
)
def test_strings_shared_by_many_tables_are_refused_before_they_are_copied(
    tables: int, length: int, distinct: bool, digests: int
) -> None:
    # a ~100-800 KB zTOC whose tables all name one 40 KB string: each name sliced or
    # decoded was a copy (0.8-2.3 GB, a MemoryError under a 3 GB cap)
    data = _shared_string_ztoc(tables, length, distinct=distinct, digests=digests)
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="shared by many tables"):
            decode_ztoc(data)
        with pytest.raises(FormatError, match="shared by many tables"):
            entries = lazy_layer_index(data, layer_digest=DIGEST, media_type="m", blob_size=1 << 20)
            entries.entries.lookup("a" * length)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * len(data) + (16 << 20), f"{peak:,} B for a zTOC of {len(data):,} B"


def _ztoc_sharing(tables: int, *, link: int = 0, value: int = 0, references: int = 1) -> bytes:
    """A zTOC of ``tables`` distinct tables (names ``f0``.., offsets growing) that share
    one linkname of ``link`` bytes, or one xattrs vector naming ``references`` times one
    Xattr table whose value is ``value`` bytes."""
    import flatbuffers

    from seekoci.formats.ztoc import _offsets_vector

    size = 512 * (2 * tables + 2)
    b = flatbuffers.Builder(link + value + 64 * tables + 4 * references + 4096)
    xattrs = linkname = 0
    if value:
        key, data = b.CreateString(b"SCHILY.xattr.user.k"), b.CreateString(b"v" * value)
        b.StartObject(2)
        b.PrependUOffsetTRelativeSlot(0, key, 0)
        b.PrependUOffsetTRelativeSlot(1, data, 0)
        xattrs = _offsets_vector(b, [b.EndObject()] * references)
    if link:
        linkname = b.CreateString(b"l" * link)
    kind = b.CreateString(b"symlink" if link else b"reg")
    made = []
    for i in reversed(range(tables)):
        name = b.CreateString(b"f%d" % i)
        b.StartObject(14)
        b.PrependUOffsetTRelativeSlot(0, name, 0)
        b.PrependUOffsetTRelativeSlot(1, kind, 0)
        b.PrependInt64Slot(2, 512 * (2 * i + 1), 0)
        b.PrependInt64Slot(3, 0 if link else 1, 0)
        if link:
            b.PrependUOffsetTRelativeSlot(4, linkname, 0)
        if value:
            b.PrependUOffsetTRelativeSlot(13, xattrs, 0)
        made.append(b.EndObject())
    files = _offsets_vector(b, made[::-1])
    return _ztoc_root(b, files, [b.CreateString(b"sha256:" + b"0" * 64)], size)


@pytest.mark.parametrize(
    "kwargs",
    [{"value": 100_000}, {"value": 10, "references": 50_000}],
    ids=["one-value-in-every-entry", "one-xattr-named-50k-times"],
)
def test_xattrs_shared_by_many_tables_are_refused_before_they_are_read(kwargs: dict) -> None:
    # 5,000 tables sharing one 100 KB xattr value: 517 MB once every entry was made; 100
    # tables sharing a vector that names one Xattr table 50k times: 11 s of CPU
    data = _ztoc_sharing(5_000 if "references" not in kwargs else 100, **kwargs)
    size = _claimed_size(data)
    started = time.perf_counter()
    with pytest.raises(FormatError, match="shared by many tables"):
        decode_ztoc(data)
    with pytest.raises(FormatError, match="shared by many tables"):
        list(lazy_layer_index(data, layer_digest=DIGEST, media_type="m", blob_size=size).entries)
    assert time.perf_counter() - started < 5


def test_lookups_count_the_strings_of_the_tables_they_make() -> None:
    # distinct names sharing one 200 KB linkname: each lookup's entry held a copy of it
    data = _ztoc_sharing(2_000, link=200_000)
    size = _claimed_size(data)
    entries = lazy_layer_index(data, layer_digest=DIGEST, media_type="m", blob_size=size).entries
    assert isinstance(entries, ZtocLookup)
    with pytest.raises(FormatError, match="shared by many tables"):
        for i in range(2_000):
            entries.lookup(f"f{i}")
    assert len(entries._files) < 10
