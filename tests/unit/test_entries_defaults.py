"""Sparse entry columns with a default of their own ("root" owning every file)."""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import time
import tracemalloc

import pytest
from layers import in_threads

from seekoci.errors import FormatError
from seekoci.formats.entries import EntryTable, encode, encode_digests
from seekoci.formats.tar import TarEntry


def entries(n: int) -> list[TarEntry]:
    out = []
    offset = 0
    for i in range(n):
        owner = "builder" if i % 7 == 3 else "root"
        link = "target" if i == 5 else ""
        out.append(
            TarEntry(
                f"f{i}",
                "symlink" if link else "file",
                0 if link else 10,
                0o644,
                0,
                0,
                1.0,
                linkname=link,
                uname=owner,
                gname="" if i == 2 else owner,
                header_offset=offset,
                data_offset=offset + 512,
            )
        )
        offset += 512 + (0 if link else 512)
    return out


def test_a_common_value_becomes_the_column_default_and_round_trips() -> None:
    original = entries(40)
    doc = json.loads(json.dumps(encode(original)))
    uname = doc["sparse"]["uname"]
    assert isinstance(uname, dict) and uname["default"] == "root"
    assert {i for i, _ in uname["pairs"]} == {i for i in range(40) if i % 7 == 3}
    gname = doc["sparse"]["gname"]
    assert [2, None] in gname["pairs"]  # the entry at the usual default ("") is listed
    assert isinstance(doc["sparse"]["linkname"], list)  # rare values stay plain pairs
    table = EntryTable(doc)
    fields = ("name", "type", "size", "uname", "gname", "linkname", "data_offset")
    for a, b in zip(original, table, strict=True):
        assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]


@pytest.mark.parametrize("column", ["unsafe", "xattrs", "pax"])
def test_columns_that_cannot_have_a_default_refuse_one(column: str) -> None:
    doc = json.loads(json.dumps(encode(entries(4))))
    doc["sparse"][column] = {"default": True, "pairs": []}
    with pytest.raises(FormatError, match="cannot have a default"):
        EntryTable(doc)


def test_repetitive_dense_columns_are_stored_as_runs_and_round_trip() -> None:
    original = entries(40)
    doc = json.loads(json.dumps(encode(original)))
    assert doc["dense"]["mode"] == {"runs": [[0o644, 40]]}
    assert isinstance(doc["dense"]["name"], list) and isinstance(doc["dense"]["size"], list)
    table = EntryTable(doc)
    fields = ("type", "mode", "uid", "gid", "mtime", "header_offset", "data_offset")
    for a, b in zip(original, table, strict=True):
        assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]


@pytest.mark.parametrize(
    ("column", "runs", "message"),
    [
        ("mode", [[0o644, 39]], "do not add up"),
        ("mode", [[0o644, 41]], "do not add up"),
        ("mode", [[0o644, -1], [0o644, 41]], "bad run lengths"),
        ("mode", [[0o644, 40.0]], "bad run lengths"),
        ("name", [["x", 40]], "not a list"),
        ("size", [[10, 40]], "not a list"),
    ],
)
def test_hostile_runs_are_refused(column: str, runs: list, message: str) -> None:
    doc = json.loads(json.dumps(encode(entries(40))))
    doc["dense"][column] = {"runs": runs}
    with pytest.raises(FormatError, match=message):
        EntryTable(doc)


@pytest.mark.parametrize("names", [[], None, "x", 0], ids=["empty", "null", "text", "zero"])
def test_a_count_the_names_do_not_have_is_refused_before_runs_expand(names: object) -> None:
    # a 360-byte page: every runnable column one run of 10**8, no names; expanding the runs
    # first took 5.4 GB and 6 s before the lengths were compared
    count = 10**8
    doc = json.loads(json.dumps(encode(entries(40))))
    doc["count"] = count
    doc["dense"] = {name: {"runs": [[0, count]]} for name in doc["dense"]}
    doc["dense"]["name"], doc["dense"]["size"] = names, []
    doc["dense"]["type"] = {"runs": [["file", count]]}
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match=r"different lengths|not a list"):
            EntryTable(doc)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 << 20, f"{peak:,} B allocated for a page of {len(json.dumps(doc))} B"


def varied(n: int) -> list[TarEntry]:
    """Entries with every sparse column in use somewhere, and file digests."""
    out = entries(n)
    for i, e in enumerate(out):
        if i % 5 == 1:
            e.xattrs = {"user.k": bytes([i % 256]) * 3}
        if i % 6 == 2:
            e.pax = {"comment": f"c{i}"}
        if i % 9 == 4:
            e.unsafe = True
        if i % 11 == 7:
            e.devmajor, e.devminor = i, i + 1
        e.mtime = i + 0.5 if i % 2 else float(i)
        e.raw_name = e.name  # as a scanner records it
        if e.type == "file":
            e.sha256 = hashlib.sha256(b"%d" % i).digest()
    return out


def table_of(original: list[TarEntry]) -> EntryTable:
    table = EntryTable(json.loads(json.dumps(encode(original))))
    table.set_digests(encode_digests(original))
    return table


def test_every_entry_made_at_once_is_the_entry_made_alone() -> None:
    original = varied(60)
    alone = table_of(original)
    at_once = table_of(original)
    assert list(at_once) == [alone[i] for i in range(60)] == original
    assert at_once[1].xattrs == {"user.k": b"\x01" * 3} and at_once[2].pax == {"comment": "c2"}
    assert all(e.sha256 is not None for e in at_once if e.type == "file")


def test_entries_made_before_the_whole_table_stay_the_same_objects() -> None:
    table = table_of(varied(30))
    first, later = table[3], table[17]
    made = list(table)
    assert made[3] is first and made[17] is later
    assert list(table)[5] is made[5]  # made once


def test_an_entry_two_threads_make_at_once_is_one_object() -> None:
    table = table_of(varied(50))
    digest = table._digest

    def slow_digest(i: int) -> bytes | None:  # both threads inside ``_make`` at once
        time.sleep(0.05)
        return digest(i)

    table._digest = slow_digest  # type: ignore[method-assign]
    got = in_threads(lambda: table[40], 2)
    assert got[0] is got[1] is list(table)[40]


def test_a_malformed_value_is_named_when_the_whole_table_is_made() -> None:
    doc = json.loads(json.dumps(encode(varied(10))))
    doc["dense"]["mode"] = [420] * 10
    doc["dense"]["mode"][6] = "rw-"
    table = EntryTable(doc)
    walked = iter(table)
    assert [next(walked).name for _ in range(6)] == [f"f{i}" for i in range(6)]  # first
    with pytest.raises(FormatError, match="entry 6 is malformed"):
        next(walked)
    with pytest.raises(FormatError, match="entry 6 is malformed"):
        list(table)
    assert table[2].mode == 420  # the others are still there


def test_a_table_pickles_and_copies_with_its_entries() -> None:
    table = table_of(varied(20))
    made = list(table)
    for copied in (pickle.loads(pickle.dumps(table)), copy.deepcopy(table)):
        assert list(copied) == made and copied[7] == made[7]
        assert in_threads(lambda c=copied: c[3], 2)[0] == made[3]  # with a lock of its own
