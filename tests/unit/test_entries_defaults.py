"""Sparse entry columns with a default of their own ("root" owning every file)."""

from __future__ import annotations

import json

import pytest

from seekoci.errors import FormatError
from seekoci.formats.entries import EntryTable, encode
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
