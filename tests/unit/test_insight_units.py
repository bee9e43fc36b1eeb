"""Pieces of image insight that need no registry: ELF section tables (32/64-bit, either byte
order, extended numbering, hostile headers) and the treemap layout."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seekoci.formats import elf
from seekoci.insight.render import squarify

SECTIONS = [("", 0, 0), (".text", 1, 400), (".debug_info", 1, 1234), (".debug_line", 1, 99),
            (".zdebug_str", 1, 7), (".debug_nobits", 8, 5000), (".bss", 8, 64)]  # fmt: skip


def make_elf(is64: bool, endian: str, *, extended: bool = False) -> bytes:
    """A minimal ELF: header, section bodies (zeros), .shstrtab, then the section table."""
    names = b"\x00"
    sections = []
    for name, kind, size in [*SECTIONS, (".shstrtab", 3, 0)]:
        at = len(names) if name else 0
        if name:
            names += name.encode() + b"\x00"
        sections.append((at, kind, size))
    header_size = 64 if is64 else 52
    body_at = header_size
    offsets = []
    pos = body_at
    for _, kind, size in sections[:-1]:
        offsets.append(pos)
        pos += size if kind != 8 else 0
    strtab_at = pos
    offsets.append(strtab_at)
    sections[-1] = (sections[-1][0], 3, len(names))
    shoff = strtab_at + len(names)
    shentsize = 64 if is64 else 40
    count = len(sections)
    table = b""
    for i, ((name_at, kind, size), offset) in enumerate(zip(sections, offsets, strict=True)):
        link = 0
        if extended and i == 0:  # real count in sh_size, real strndx in sh_link
            size, link = count, count - 1
        if is64:
            table += struct.pack(
                endian + "IIQQQQIIQQ", name_at, kind, 0, 0, offset, size, link, 0, 1, 0
            )
        else:
            table += struct.pack(
                endian + "IIIIIIIIII", name_at, kind, 0, 0, offset, size, link, 0, 1, 0
            )
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1 if endian == "<" else 2, 1]) + bytes(9)
    shnum, shstrndx = (0, 0xFFFF) if extended else (count, count - 1)
    if is64:
        rest = struct.pack(
            endian + "HHIQQQIHHHHHH",
            2,
            62,
            1,
            0,
            0,
            shoff,
            0,
            64,
            56,
            0,
            shentsize,
            shnum,
            shstrndx,
        )
    else:
        rest = struct.pack(
            endian + "HHIIIIIHHHHHH", 2, 3, 1, 0, 0, shoff, 0, 52, 32, 0, shentsize, shnum, shstrndx
        )
    head = ident + rest
    assert len(head) == header_size
    body = bytearray(strtab_at - body_at)
    return head + bytes(body) + names + table


@pytest.mark.parametrize("is64", [True, False])
@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("extended", [False, True])
def test_debug_bytes_from_the_section_table(is64: bool, endian: str, extended: bool) -> None:
    data = make_elf(is64, endian, extended=extended)
    reads: list[tuple[int, int]] = []

    def read_at(offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return data[offset : offset + length]

    found = elf.sections(data[: elf.HEADER_SIZE], read_at, len(data))
    assert found is not None
    assert [s.name for s in found] == [name for name, _, _ in SECTIONS] + [".shstrtab"]
    assert elf.debug_bytes(found) == 1234 + 99 + 7  # NOBITS occupies nothing
    assert sum(length for _, length in reads) < 1024  # the tables only


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"\x7fELF",
        b"MZ" + bytes(100),
        b"\x7fELF\x03\x01" + bytes(58),
        b"\x7fELF\x02\x01" + bytes(58),
    ],
)
def test_not_elf_or_no_section_table_is_none(head: bytes) -> None:
    assert elf.sections(head, lambda o, n: b"", 1 << 20) is None


def test_tables_past_the_end_of_the_file_are_not_believed() -> None:
    data = make_elf(True, "<")
    assert elf.sections(data[:64], lambda o, n: data[o : o + n], 200) is None
    hostile = bytearray(data)
    struct.pack_into("<H", hostile, 0x3C, 0xFF00)  # more sections than the file holds
    assert (
        elf.sections(bytes(hostile[:64]), lambda o, n: bytes(hostile[o : o + n]), len(data)) is None
    )


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=10**9), min_size=1, max_size=40))
def test_squarify_tiles_the_box(sizes: list[int]) -> None:
    sizes = sorted(sizes, reverse=True)
    rects = squarify(sizes, 0, 0, 640, 360)
    assert len(rects) == len(sizes)
    area = sum(w * h for _, _, w, h in rects)
    assert area == pytest.approx(640 * 360, rel=1e-6)
    for (x, y, w, h), size in zip(rects, sizes, strict=True):
        assert x >= -1e-6 and x + w <= 640 + 1e-6 and y >= -1e-6 and y + h <= 360 + 1e-6
        assert w * h == pytest.approx(640 * 360 * size / sum(sizes), rel=1e-6, abs=1e-6)


def test_squarify_takes_empty_boxes_and_zero_sizes() -> None:
    assert squarify([0, 0], 0, 0, 10, 10) == [(0, 0, 0.0, 0.0), (0, 0, 0.0, 0.0)]
    rects = squarify([5, 0, 0], 0, 0, 10, 10)
    assert rects[0] == pytest.approx((0, 0, 10, 10))
    assert all(w * h == 0 for _, _, w, h in rects[1:])
