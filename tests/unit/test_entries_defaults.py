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
