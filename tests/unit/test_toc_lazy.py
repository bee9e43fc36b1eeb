"""The lazy TOC index (eStargz, zstd:chunked; seekoci/formats/toc_lookup.py) against the
whole read of the same TOC: every entry and every span the same, made one at a time in any
order; lookups of every spelling a tar gives a name; a malformed entry an error whenever it
is used (a read of it, a listing), never an answer; a read of one file makes only the
entries it looks up."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import random
import threading
import types
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from imagebuilder import hardlink
from layers import (
    CI,
    build_tar,
    dir,
    file,
    in_threads,
    random_bytes,
    random_tree,
    symlink,
    text_bytes,
)
from test_formats_toc import corpus, files_of, layer_of
from tocwriter import Made, estargz, zstd_chunked

import seekoci
from seekoci.formats import get
from seekoci.formats.index import LayerIndex
from seekoci.formats.toc_lookup import LazyToc, TocEntries, TocSpans

WRITERS: dict[str, Callable[..., Made]] = {
    "estargz": lambda tar, **kw: estargz(tar, chunk_size=8 << 10, **kw),
    "estargz-packed": lambda tar, **kw: estargz(tar, chunk_size=8 << 10, pack_below=3000, **kw),
    "zstd:chunked": lambda tar, **kw: zstd_chunked(tar, chunk_size=8 << 10, **kw),
}


def index_of(made: Made) -> LayerIndex:
    """The layer's embedded index, as a layer reads it (annotations vouching for it)."""
    fmt = get("zstd:chunked" if made.blob[:2] != b"\x1f\x8b" else "estargz")
    blob = made.blob
    index = fmt.embedded_index(
        lambda offset, length: blob[offset : offset + length],
        len(blob),
        made.annotations,
        name="t",
        require_verified=True,
    )
    assert index is not None
    return index


def lazy_parts(index: LayerIndex) -> tuple[TocEntries, TocSpans, LazyToc]:
    entries, spans = index.entries, index.spans
    assert isinstance(entries, TocEntries) and isinstance(spans, TocSpans)
    return entries, spans, entries._toc


def assert_same(made: Made, seed: int = 0) -> None:
    """Every entry and span of a lazy index, made one at a time in a random order, is the
    whole read's; so are the lookups of every name and locate of every offset."""
    whole = index_of(made)
    every = list(whole.entries)  # reads it whole
    every_span = list(whole.spans)
    lazy = index_of(made)
    entries, spans, toc = lazy_parts(lazy)
    assert len(entries) == len(every) and len(spans) == len(every_span)
    assert lazy.uncompressed_size == whole.uncompressed_size
    order = list(range(len(every)))
    random.Random(seed).shuffle(order)
    for k in order:
        assert dataclasses.astuple(entries[k]) == dataclasses.astuple(every[k]), k
    for j in reversed(range(len(every_span))):
        assert spans[j] == every_span[j], j
        s = every_span[j]
        for offset in {s.uncompressed_start, s.uncompressed_end - 1}:
            assert spans.locate(offset) == j, (j, offset)
    expected: dict[str, int] = {}
    for i, e in enumerate(every):
        if not e.unsafe:
            expected[e.name] = i
    for name, i in expected.items():
        if name:
            assert entries.lookup(name) is entries[i], name
    assert entries.lookup("no/such/name") is None
    assert toc.made_whole() is None, "lookups and reads of single entries read it whole"
    # then whole: the entries made are the ones it holds
    made_before = {k: entries[k] for k in order[:5]}
    assert entries.name_map() == expected
    assert all(entries[k] is e for k, e in made_before.items())
    assert [dataclasses.astuple(e) for e in entries] == [dataclasses.astuple(e) for e in every]
    assert list(spans) == every_span


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_the_same_index_as_the_whole_read(writer: str) -> None:
    tar = build_tar(
        [
            dir("d"),
            *random_tree("lazy", files=40, max_size=30_000),
            file("d/empty", b""),
            file("d/big", text_bytes("big", 100_000)),
            file("d/empty2", b""),
            file("d/small", b"s"),
            hardlink("d/link", "d/big"),
            symlink("d/sym", "big"),
            file("d/big", text_bytes("again", 20_000)),  # the same name twice: the last wins
            file("last-empty", b""),
        ]
    )
    assert_same(WRITERS[writer](tar))


def _tree(draw: st.DrawFn) -> list[Any]:
    out: list[Any] = []
    for i in range(draw(st.integers(0, 14))):
        kind = draw(st.sampled_from(["file", "file", "file", "dir", "symlink", "again"]))
        name = f"d{i % 3}/e{i}"
        if kind == "file":
            size = draw(st.sampled_from([0, 0, 1, 511, 8192, 8193, 20000]))
            out.append(file(name, random_bytes(f"{i}-{size}", size)))
        elif kind == "dir":
            out.append(dir(name))
        elif kind == "symlink":
            out.append(symlink(name, "x"))
        elif out:  # a name seen before, again
            out.append(file(out[draw(st.integers(0, len(out) - 1))].name, b"again" * i))
    return out


@CI
@given(st.composite(_tree)(), st.sampled_from(sorted(WRITERS)), st.integers(0, 9))
def test_random_tars(entries: list[Any], writer: str, seed: int) -> None:
    if not any(e.type == "file" for e in entries):
        entries = [*entries, file("only", b"o")]
    assert_same(WRITERS[writer](build_tar(entries)), seed)


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_read_makes_only_the_entries_it_looks_up(writer: str) -> None:
    tar = build_tar([file(f"a/b/f{i}", text_bytes(str(i), 500)) for i in range(300)])
    made = WRITERS[writer](tar)
    layer, _ = layer_of(made.blob, made.annotations)
    assert layer.open("a/b/f123").read() == text_bytes("123", 500)
    _, _, toc = lazy_parts(layer.index())
    assert toc.made_whole() is None
    assert len(toc._made) <= 3  # a, a/b (when the tar has them) and the file
    assert layer.listdir("/a/b")[:2] == ["f0", "f1"]  # a listing reads it whole
    assert toc.made_whole() is not None


def _spell(names: dict[str, str]) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        for e in doc["entries"]:
            e["name"] = names.get(e["name"], e["name"])

    return edit


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize(
    "spelling",
    [
        {"d": "./d/", "d/f": "./d/f"},
        {"d": "d/", "d/f": "d/f"},
        {"d": "./d", "d/f": "./d/f"},
        {"d": "d", "d/f": "d//f"},  # an odd spelling: lookups read the TOC whole
        {"d": "d/.", "d/f": "d/./f"},
    ],
    ids=["dot-slash", "slash", "dot", "double-slash", "dot-part"],
)
def test_every_spelling_of_a_name(writer: str, spelling: dict[str, str]) -> None:
    tar = build_tar([dir("d"), file("d/f", b"content"), file("d/g", b"g")])
    made = WRITERS[writer](tar, edit=_spell(spelling))
    layer, _ = layer_of(made.blob, made.annotations)
    assert layer.open("d/f").read() == b"content"
    assert layer.open("./d/g").read() == b"g"
    entries, _, toc = lazy_parts(layer.index())
    assert entries.lookup("d") is not None and entries.lookup("d").type == "dir"
    odd = "//" in spelling["d/f"] or "/./" in spelling["d/f"]
    assert (toc.made_whole() is not None) == odd


def _break(name: str, fields: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        next(e for e in doc["entries"] if e.get("name") == name).update(fields)

    return edit


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize(
    "damage",
    [
        {"uid": -1},
        {"modtime": "yesterday"},
        {"chunkDigest": "sha256:" + "g" * 64},
        {"chunkSize": 3},  # the chunks do not tile the file
        {"xattrs": {"user.a": "not base64!"}},
    ],
    ids=["uid", "modtime", "digest", "chunk-size", "xattr"],
)
def test_a_malformed_entry_is_an_error_whenever_it_is_used(
    writer: str, damage: dict[str, Any]
) -> None:
    tar = build_tar([file("good", b"fine"), file("bad", text_bytes("b", 20_000))])
    made = WRITERS[writer](tar, edit=_break("bad", damage))
    layer, _ = layer_of(made.blob, made.annotations)
    assert layer.open("good").read() == b"fine"  # a read that does not use it
    with pytest.raises(seekoci.FormatError):
        layer.open("bad").read()
    with pytest.raises(seekoci.FormatError):
        layer.listdir("/")
    with pytest.raises(seekoci.FormatError):  # and again: never an answer
        list(layer.entries())


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_name_that_is_no_string_is_refused_by_the_first_lookup(writer: str) -> None:
    tar = build_tar([file("good", b"fine"), file("bad", b"bad")])
    made = WRITERS[writer](tar, edit=_break("bad", {"name": 7}))
    layer, _ = layer_of(made.blob, made.annotations)
    with pytest.raises(seekoci.FormatError, match="name 7"):
        layer.open("good").read()  # lookups by name need every name: read whole


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_toc_not_of_the_shape_columns_take_is_read_whole_at_once(writer: str) -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["entries"][1]["size"] = "20000"  # a size that is no integer

    tar = build_tar([file("good", b"fine"), file("bad", text_bytes("b", 20_000))])
    made = WRITERS[writer](tar, edit=edit)
    layer, _ = layer_of(made.blob, made.annotations)
    with pytest.raises(seekoci.FormatError, match="size"):
        layer.open("good").read()


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_the_payload_space_read_across_files(writer: str) -> None:
    tar = corpus()
    made = WRITERS[writer](tar)
    layer, _ = layer_of(made.blob, made.annotations)
    contents = {**files_of(tar), "stargz.index.json": made.toc}  # eStargz lists its TOC last
    every = list(layer.entries())  # (read whole)
    payloads = b"".join(contents[e.name] for e in every if e.type == "file")
    assert every[-1].name == ("stargz.index.json" if writer.startswith("estargz") else "link")
    fresh, _ = layer_of(made.blob, made.annotations)
    assert fresh.read_entry_range(0, len(payloads) + 10) == payloads
    _, _, lazy = lazy_parts(fresh.index())
    assert lazy.made_whole() is None  # placed from the columns, made file by file


def test_threads_making_one_entry_get_one_object(monkeypatch: pytest.MonkeyPatch) -> None:
    import seekoci.formats.estargz_toc as estargz_toc

    made = WRITERS["estargz"](build_tar([file(f"f{i}", b"x" * (i + 1)) for i in range(20)]))
    entries, _, _ = lazy_parts(index_of(made))
    both_made = threading.Barrier(2, timeout=10)
    real = estargz_toc.file_at

    def made_together(*args: Any, **kwargs: Any) -> Any:  # each makes its own, then waits
        made = real(*args, **kwargs)
        both_made.wait()
        return made

    monkeypatch.setattr(estargz_toc, "file_at", made_together)
    entries, _, _ = lazy_parts(index_of(made))  # (file_at looked up when the index is made)
    got = in_threads(lambda: entries.lookup("f15"))
    assert len(got) == 2 and got[0] is got[1]
    monkeypatch.setattr(estargz_toc, "file_at", real)
    assert entries.names[15] == "f15" and entries[15] is got[0]  # and once read whole


def test_the_estargz_toc_entry_is_the_last_and_found() -> None:
    made = WRITERS["estargz"](corpus())
    entries, spans, _ = lazy_parts(index_of(made))
    found = entries.lookup("stargz.index.json")
    assert found is not None and found is entries[len(entries) - 1]
    assert found.size == len(made.toc)
    last = spans[len(spans) - 1]
    assert last.uncompressed_end - last.uncompressed_start == len(made.toc)
    assert json.loads(made.toc)["entries"]


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_hard_link_reads_the_file_before_it(writer: str) -> None:
    tar = build_tar(
        [
            file("d/f", b"first"),
            hardlink("d/h", "d/f"),
            file("d/f", b"second, replacing it"),
        ]
    )
    made = WRITERS[writer](tar)
    layer, _ = layer_of(made.blob, made.annotations)
    assert layer.open("d/h").read() == b"first"  # the d/f the link was made from
    assert layer.open("d/f").read() == b"second, replacing it"


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_an_empty_toc(writer: str) -> None:
    made = WRITERS[writer](build_tar([]))
    layer, _ = layer_of(made.blob, made.annotations)
    names = [e.name for e in layer.entries()]
    assert names == (["stargz.index.json"] if writer.startswith("estargz") else [])
    assert layer.listdir("/") == names  # (an image hides eStargz's TOC; its layer lists it)


def test_a_stray_chunk_without_digest_is_an_error_not_a_fallback() -> None:
    def edit(doc: dict[str, Any]) -> None:  # a chunk after a directory, with no digest
        at = next(i for i, e in enumerate(doc["entries"]) if e["type"] == "dir")
        doc["entries"].insert(at + 1, {"name": "d", "type": "chunk", "offset": 0})

    made = WRITERS["estargz"](build_tar([dir("d"), file("d/f", b"f")]), edit=edit)
    digest = "sha256:" + hashlib.sha256(made.blob).hexdigest()
    layer, source = layer_of(made.blob, made.annotations, digest=digest)
    with pytest.raises(seekoci.FormatError, match="follows no such file"):
        layer.open("d/f").read()
    assert source.streamed == 0  # no pass over the blob instead


#: the TOCs a test's spy saw parsed
_PARSED_TOCS: list[dict[str, Any]] = []


def _kept_values(doc: dict[str, Any]) -> dict[int, str]:
    """id -> key of the values of a parsed TOC's entries an index could keep: strings
    CPython does not share (all but the empty one and Latin-1 characters), integers it
    does not share."""
    found: dict[int, str] = {}
    for raw in doc["entries"]:
        for key, value in raw.items():
            if (type(value) is str and (len(value) > 1 or value > "\xff")) or (
                type(value) is int and not -5 <= value <= 256
            ):
                found[id(value)] = key
    return found


def _reachable(root: object) -> set[int]:
    """ids of every object reachable from ``root``, strings and integers included; not
    through classes, modules or a function's globals (the whole process is reachable
    from those)."""
    seen: set[int] = set()
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType)):
            continue
        seen.add(id(obj))
        if isinstance(obj, types.FunctionType):
            todo.extend(cell.cell_contents for cell in obj.__closure__ or ())
            todo.extend(obj.__defaults__ or ())
        else:
            todo.extend(gc.get_referents(obj))
    return seen


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_the_index_lets_go_of_the_parsed_toc(writer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the index is whole it holds none of the parsed TOC's strings and integers
    (names, user names, sizes, offsets, uids), nor the TOC itself: those would keep the
    document's memory from being given back (seekoci/formats/toc.py, ``own_int``). An entry
    made lazily before is handed over with copies too."""
    entries = [
        dir("srv", uid=100_000),
        *(
            dataclasses.replace(
                file(f"srv/data-{i}.bin", random_bytes(i, 300 + i * 5000), uid=70_000),
                uname="someone",
                gname="staff",
            )
            for i in range(12)
        ),
        symlink("srv/latest", "data-11.bin", uid=70_000),
        dataclasses.replace(file("\u4e2d", b"x" * 400), uname="\u4e2d", gname="\U0001f600"),
    ]
    made = WRITERS[writer](build_tar(entries))
    from seekoci.formats import toc as toc_module

    real = toc_module.load_json
    docs = _PARSED_TOCS
    docs.clear()

    def spy(data: bytes, *, packed: int, where: str) -> dict[str, Any]:
        # (kept where the index cannot reach it: a format may keep a reference to spy)
        doc = real(data, packed=packed, where=where)
        _PARSED_TOCS.append(doc)
        return doc

    monkeypatch.setattr(toc_module, "load_json", spy)
    index = index_of(made)
    found = index.entries.lookup("srv/data-3.bin")  # made lazily, then handed over
    assert found is not None and found.uname == "someone" and found.uid == 70_000
    whole = list(index.entries)
    assert [e.name for e in whole if e.name.startswith("srv/data-")][:2] == [
        "srv/data-0.bin",
        "srv/data-1.bin",
    ]
    assert docs, "the TOC was not parsed"
    kept = _kept_values(docs[0])
    assert len(kept) > 40  # names, sizes, offsets, uids: what could have been kept
    reachable = _reachable(index)
    assert id(docs[0]) not in reachable and id(docs[0]["entries"]) not in reachable
    held = sorted({key for value_id, key in kept.items() if value_id in reachable})
    assert held == [], f"the index keeps the parsed TOC's {held}"
    unames: dict[str, set[int]] = {}
    for e in whole:
        if e.uname:
            unames.setdefault(e.uname, set()).add(id(e.uname))
    # one object per user name, not one per entry
    assert {name: len(ids) for name, ids in unames.items()} == {"someone": 1, "\u4e2d": 1}
    docs.clear()
