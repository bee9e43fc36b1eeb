"""ELF section headers: how many bytes of a binary are debug information.

Only three small pieces of a binary are needed, so a reader that ranges into a file pays a
few KB for a binary of any size: the ELF header (64 bytes), the section header table
(``e_shnum * e_shentsize`` bytes, usually 1-3 KB) and the section-name string table
(``.shstrtab``, a few hundred bytes).

ELF header fields used (offsets for ELFCLASS32 / ELFCLASS64)::

    0  e_ident[16]: b"\\x7fELF", EI_CLASS (1: 32-bit, 2: 64-bit), EI_DATA (1: LE, 2: BE)
    0x20 / 0x28  e_shoff      (u32 / u64)  file offset of the section header table
    0x2E / 0x3A  e_shentsize  (u16)        bytes per section header (40 / 64)
    0x30 / 0x3C  e_shnum      (u16)        section count (0: in section 0's sh_size)
    0x32 / 0x3E  e_shstrndx   (u16)        index of .shstrtab (0xFFFF: in section 0's sh_link)

Section header fields used: ``sh_name`` (u32 at 0: offset in .shstrtab), ``sh_type`` (u32 at
4; SHT_NOBITS = 8 occupies no file bytes), ``sh_offset`` and ``sh_size`` (u32 at 16 / 20, or
u64 at 24 / 32), ``sh_link`` (u32 at 24 / 40).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

ELF_MAGIC = b"\x7fELF"
#: What :func:`parse_header` needs of the file's start.
HEADER_SIZE = 64
SHT_NOBITS = 8
SHN_XINDEX = 0xFFFF
#: Section tables or name tables larger than this are not believed (a hostile binary).
MAX_TABLE = 4 << 20
#: Section names that hold debug information (DWARF, compressed DWARF).
DEBUG_PREFIXES = (".debug", ".zdebug")


@dataclass(frozen=True)
class ElfHeader:
    is64: bool
    endian: str  # "<" or ">"
    shoff: int
    shentsize: int
    shnum: int
    shstrndx: int

    @property
    def table_size(self) -> int:
        return self.shnum * self.shentsize


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    offset: int
    size: int


def parse_header(head: bytes) -> ElfHeader | None:
    """The section table's location from a file's first bytes; None if not ELF (or no
    section table)."""
    if len(head) < 52 or head[:4] != ELF_MAGIC or head[4] not in (1, 2) or head[5] not in (1, 2):
        return None
    is64 = head[4] == 2
    endian = "<" if head[5] == 1 else ">"
    if is64:
        if len(head) < 64:
            return None
        (shoff,) = struct.unpack_from(endian + "Q", head, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", head, 0x3A)
        minimum = 64
    else:
        (shoff,) = struct.unpack_from(endian + "I", head, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", head, 0x2E)
        minimum = 40
    if not shoff or shentsize < minimum:
        return None
    return ElfHeader(is64, endian, shoff, shentsize, shnum, shstrndx)


def _raw_sections(header: ElfHeader, table: bytes) -> list[tuple[int, int, int, int, int]]:
    """(sh_name, sh_type, sh_offset, sh_size, sh_link) of every section in ``table``."""
    e = header.endian
    out = []
    for i in range(len(table) // header.shentsize):
        at = i * header.shentsize
        if header.is64:
            name, kind = struct.unpack_from(e + "II", table, at)
            offset, size = struct.unpack_from(e + "QQ", table, at + 24)
            (link,) = struct.unpack_from(e + "I", table, at + 40)
        else:
            name, kind = struct.unpack_from(e + "II", table, at)
            offset, size, link = struct.unpack_from(e + "III", table, at + 16)
        out.append((name, kind, offset, size, link))
    return out


def sections(
    head: bytes, read_at: Callable[[int, int], bytes], file_size: int
) -> list[Section] | None:
    """Every section of an ELF file (names resolved), reading only its section table and
    name table through ``read_at(offset, length)`` (offsets in the file); None when the file
    is not ELF or its tables do not fit in it."""
    header = parse_header(head)
    if header is None:
        return None
    shnum, shstrndx = header.shnum, header.shstrndx
    if shnum == 0 or shstrndx == SHN_XINDEX:  # more than 0xFF00 sections: counts in section 0
        first = _raw_sections(header, read_at(header.shoff, header.shentsize))
        if not first:
            return None
        if shnum == 0:
            shnum = first[0][3]
        if shstrndx == SHN_XINDEX:
            shstrndx = first[0][4]
    size = shnum * header.shentsize
    if not shnum or size > MAX_TABLE or header.shoff + size > file_size:
        return None
    table = read_at(header.shoff, size)
    if len(table) != size:
        return None
    raw = _raw_sections(header, table)
    if shstrndx >= len(raw):
        return None
    _, _, str_offset, str_size, _ = raw[shstrndx]
    if str_size > MAX_TABLE or str_offset + str_size > file_size:
        return None
    names = read_at(str_offset, str_size)
    out = []
    for name_at, kind, offset, length, _ in raw:
        end = names.find(b"\x00", name_at)
        name = names[name_at : end if end >= 0 else len(names)].decode("utf-8", "replace")
        out.append(Section(name, kind, offset, length))
    return out


def debug_bytes(found: list[Section]) -> int:
    """Bytes of the file that debug sections occupy."""
    return sum(s.size for s in found if s.type != SHT_NOBITS and s.name.startswith(DEBUG_PREFIXES))
