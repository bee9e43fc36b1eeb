"""A layer's tar entries stored column by column, made into TarEntry objects on demand.

A cold read needs one entry out of tens of thousands: parsing ~58k JSON rows into objects
took 400 ms of a 520 ms cold read in the benchmark. Columns parse in a few milliseconds
(JSON lists of strings and numbers), a name -> position map is one comprehension, and only
the entries actually touched become objects.

Encoding (inside the index's JSON table of contents)::

    {"count": N, "offsets": "gaps",
     "dense":  {"name": [...], "type": [...], "size": [...], "mode": [...], "uid": [...],
                "gid": [...], "mtime": [...], "header_offset": [...], "data_offset": [...]},
     "sparse": {"linkname": [[i, v], ...], "uname": ..., "gname": ..., "devmajor": ...,
                "devminor": ..., "xattrs": [[i, {k: base64}], ...], "pax": [[i, {k: v}]],
                "unsafe": [[i, true], ...]}}

The content digests of the regular files (index format 6) are not in this JSON: they are
raw bytes beside it (:func:`encode_digests`, :meth:`EntryTable.set_digests`), so that a
lookup does not download 32 bytes per file it does not need.

Sparse columns list only entries whose value is not the default ("", 0, {}, false), or
name a default of their own (``{"default": v, "pairs": [...]}``). Repetitive dense
columns (types, modes, owners, times, offset gaps) may be ``{"runs": [[value, n], ...]}``.
Offsets are stored as gaps from where the tar format puts things: ``header_offset`` minus
the end of the previous entry's data (rounded up to 512), ``data_offset`` minus
``header_offset + 512`` -- zero except after PAX or GNU long-name headers.
"""

from __future__ import annotations

import base64
import collections
import itertools
import operator
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, cast

from ..errors import FormatError
from .base import IndexedSequence
from .tar import _NO_PAX, _NO_XATTRS, TarEntry

DENSE = ("name", "type", "size", "mode", "uid", "gid", "mtime", "header_offset", "data_offset")
SPARSE = ("linkname", "uname", "gname", "devmajor", "devminor", "xattrs", "pax", "unsafe")
#: dense columns that may be stored as runs (not names or sizes: those vary)
_RUNNABLE = frozenset({"type", "mode", "uid", "gid", "mtime", "header_offset", "data_offset"})
#: columns that may name their own default (plain values; never ``unsafe``, whose keys
#: name_map reads as the set of unsafe entries)
_DEFAULTABLE = frozenset({"linkname", "uname", "gname", "devmajor", "devminor"})
_DEFAULTS: dict[str, Any] = {
    "linkname": "",
    "uname": "",
    "gname": "",
    "devmajor": 0,
    "devminor": 0,
    "xattrs": {},
    "pax": {},
    "unsafe": False,
}
ENTRY_TYPES = frozenset({"file", "dir", "symlink", "hardlink", "char", "block", "fifo"})


def encode(entries: Sequence[TarEntry]) -> dict[str, Any]:
    if isinstance(entries, EntryTable):
        return entries.encoded()
    dense: dict[str, list[Any]] = {name: [] for name in DENSE}
    next_header = 0
    sparse: dict[str, list[list[Any]]] = {name: [] for name in SPARSE}
    for i, e in enumerate(entries):
        dense["name"].append(e.name)
        dense["type"].append(e.type)
        dense["size"].append(e.size)
        dense["mode"].append(e.mode)
        dense["uid"].append(e.uid)
        dense["gid"].append(e.gid)
        # whole seconds as ints: JSON floats parse four times slower (11 of 35 ms at 58k)
        dense["mtime"].append(int(e.mtime) if float(e.mtime).is_integer() else e.mtime)
        # offsets as gaps from where the tar format puts the next header and its data:
        # zero for almost every entry, so a table of 50k entries compresses to nothing
        dense["header_offset"].append(e.header_offset - next_header)
        dense["data_offset"].append(e.data_offset - e.header_offset - 512)
        next_header = e.data_offset + -(-e.size // 512) * 512
        for key, value in (
            ("linkname", e.linkname),
            ("uname", e.uname),
            ("gname", e.gname),
            ("devmajor", e.devmajor),
            ("devminor", e.devminor),
            ("pax", e.pax),
            ("unsafe", e.unsafe),
        ):
            if value:
                sparse[key].append([i, value])
        if e.xattrs:
            sparse["xattrs"].append(
                [i, {k: base64.b64encode(v).decode("ascii") for k, v in e.xattrs.items()}]
            )
    return {
        "count": len(entries),
        "offsets": "gaps",
        "dense": {
            name: _runs(values) if name in _RUNNABLE else values for name, values in dense.items()
        },
        "sparse": {
            name: _with_default(pairs, len(entries)) if name in _DEFAULTABLE else pairs
            for name, pairs in sparse.items()
        },
    }


def encode_digests(entries: Sequence[TarEntry]) -> bytes:
    """The sha256 of each regular file's content, 32 raw bytes each, concatenated in entry
    order; b"" when any of them is unknown (an index made from a SOCI zTOC or read from
    format 5) or there are no files."""
    digests = [e.sha256 for e in entries if e.type == "file"]
    if not digests or not all(d is not None and len(d) == 32 for d in digests):
        return b""
    return b"".join(digests)  # type: ignore[arg-type]


def _runs(values: list[Any]) -> list[Any] | dict[str, Any]:
    """A dense column that is mostly the same value over and over (types, modes, owners,
    times, offset gaps) as ``{"runs": [[value, count], ...]}``: parsing 160k JSON numbers
    costs ~10 ms a column, a few hundred runs nothing."""
    runs = [[value, sum(1 for _ in group)] for value, group in itertools.groupby(values)]
    return {"runs": runs} if len(runs) * 4 < len(values) else values


def _expand(column: Any, count: int, name: str, where: str) -> list[Any]:
    if not isinstance(column, dict):
        return column  # type: ignore[no-any-return]
    if name not in _RUNNABLE or set(column) != {"runs"}:
        raise FormatError(f"{where}: column {name} is not a list")
    runs = column["runs"]
    lengths = [n for _, n in runs]
    if lengths and (set(map(type, lengths)) != {int} or min(lengths) < 0):
        raise FormatError(f"{where}: column {name} has bad run lengths")
    if sum(lengths) != count:
        raise FormatError(f"{where}: column {name} runs do not add up to the entries")
    return list(itertools.chain.from_iterable(itertools.repeat(v, n) for v, n in runs))


def _with_default(pairs: list[list[Any]], count: int) -> list[list[Any]] | dict[str, Any]:
    """A sparse column whose most common value is not the usual default ("root" as the
    owner of every file) is stored as ``{"default": v, "pairs": [...]}``: the pairs list only
    the entries that differ, so a 160k-entry layer does not carry 160k ``[i, "root"]``."""
    if len(pairs) * 2 <= count:
        return pairs
    try:
        counts = collections.Counter(value for _, value in pairs)
    except TypeError:  # dict values (pax, xattrs): leave as they are
        return pairs
    value, times = counts.most_common(1)[0]
    if times * 2 <= count:
        return pairs
    listed = {i for i, _ in pairs}
    others: list[list[Any]] = [[i, v] for i, v in pairs if v != value]
    others += [[i, None] for i in range(count) if i not in listed]  # entries at the default
    others.sort()
    return {"default": value, "pairs": others}


def _check_ints(values: list[Any], what: str, where: str) -> None:
    # type() per element costs ~3 ms per 20k entries on a cold read; map/set run in C
    if values and (set(map(type, values)) != {int} or min(values) < 0):
        raise FormatError(f"{where}: column {what} holds something other than offsets")


def _absolute(
    header_gaps: list[int], data_gaps: list[int], sizes: list[int]
) -> tuple[list[int], list[int]]:
    """Offsets from the gaps ``encode`` stores (already checked: non-negative ints).

    header[i] = header[i-1] + 512 + data_gap[i-1] + padded(size[i-1]) + header_gap[i]:
    a prefix sum, done with map/accumulate so the loop runs in C (a Python loop was a
    third of a cold index load).
    """
    padded = [(size + 511) & -512 for size in sizes]
    steps = map(operator.add, map(operator.add, data_gaps, padded), itertools.repeat(512))
    increments = map(operator.add, itertools.chain((0,), steps), header_gaps)
    headers = list(itertools.accumulate(increments))
    datas = list(map(operator.add, map(operator.add, headers, data_gaps), itertools.repeat(512)))
    return headers, datas


class NameLookup(IndexedSequence[TarEntry]):
    """Entries that answer a lookup by name without being read whole (the pages of a
    published native index, the tables of a zTOC); ``names`` and ``name_map`` read them
    whole."""

    @property
    def names(self) -> list[str]:
        raise NotImplementedError

    def name_map(self, start: int = 0) -> dict[str, int]:
        raise NotImplementedError

    def lookup(self, name: str) -> TarEntry | None:
        """The entry stored under ``name`` (normalised): the last one whose name is safe."""
        raise NotImplementedError


def _xattrs_of(stored: Any) -> dict[str, bytes]:
    """An entry's xattrs from its sparse value (name -> base64; None: it has none, and
    shares the scanner's empty dict)."""
    if stored is None:
        return _NO_XATTRS
    return {k: base64.b64decode(v) for k, v in stored.items()}


def _pax_of(stored: Any) -> dict[str, str]:
    """An entry's PAX records from its sparse value (None: it has none)."""
    if stored is None:
        return _NO_PAX
    return {str(k): str(v) for k, v in dict(stored).items()}


class EntryTable(IndexedSequence[TarEntry]):
    """Entries of one layer, column-wise; ``table[i]`` builds (and keeps) a TarEntry."""

    def __init__(self, doc: dict[str, Any], *, where: str = "index") -> None:
        try:
            count = doc["count"]
            sparse = doc["sparse"]
            if type(count) is not int or count < 0:
                raise FormatError(f"{where}: bad entry count")
            # the count checked against the names first (a list, never runs): runs expand to
            # the count, and a count of 10**8 in a 360-byte page was gigabytes of them
            names = doc["dense"]["name"]
            if not isinstance(names, list):
                raise FormatError(f"{where}: column name is not a list")
            if len(names) != count:
                raise FormatError(f"{where}: entry columns of different lengths")
            dense = {name: _expand(doc["dense"][name], count, name, where) for name in DENSE}
            columns = [dense[name] for name in DENSE]
            if not all(isinstance(c, list) and len(c) == count for c in columns):
                raise FormatError(f"{where}: entry columns of different lengths")
            self._sparse: dict[str, dict[int, Any]] = {}
            self._defaults: dict[str, Any] = dict(_DEFAULTS)
            for name in SPARSE:
                column = sparse.get(name, [])
                if isinstance(column, dict):  # {"default": v, "pairs": [[i, v or null]]}
                    if name not in _DEFAULTABLE:
                        raise FormatError(f"{where}: column {name} cannot have a default")
                    self._defaults[name] = column["default"]
                    column = column["pairs"]
                table = {int(i): (_DEFAULTS[name] if v is None else v) for i, v in column}
                if table and (min(table) < 0 or max(table) >= count):
                    raise FormatError(f"{where}: column {name} names entries that do not exist")
                self._sparse[name] = table
            names = dense["name"]
            if names and set(map(type, names)) != {str}:
                raise FormatError(f"{where}: entry names must be strings")
            kinds = dense["type"]
            if kinds and (set(map(type, kinds)) != {str} or not set(kinds) <= ENTRY_TYPES):
                raise FormatError(f"{where}: unknown entry type")
            _check_ints(dense["size"], "size", where)
            if doc.get("offsets") != "gaps":
                raise FormatError(f"{where}: unknown offset encoding")
            # non-negative gaps: entries in order, none overlapping the one before
            _check_ints(dense["header_offset"], "header_offset", where)
            _check_ints(dense["data_offset"], "data_offset", where)
            headers, datas = _absolute(dense["header_offset"], dense["data_offset"], dense["size"])
        except FormatError:
            raise
        except Exception as exc:  # any other shape: a corrupt index, never a crash
            raise FormatError(f"{where}: entry table is malformed ({exc!r})") from None
        self._doc = doc
        self._dense = {**dense, "header_offset": headers, "data_offset": datas}
        self._count = count
        self._made: list[TarEntry | None] = [None] * count
        self.names: list[str] = names
        self._where = where
        self._digests: bytes | None = None
        self._digest_rank: list[int] | None = None
        #: guards ``_made`` and the digests: a lookup on one thread may make the entry a
        #: walk on another makes (one object per entry: hard links are found by identity)
        self._lock = threading.Lock()
        self._all_made = False

    @classmethod
    def from_entries(cls, entries: Sequence[TarEntry]) -> EntryTable:
        table = cls(encode(entries))
        table._made = list(entries)
        table._all_made = True
        return table

    def encoded(self) -> dict[str, Any]:
        return self._doc

    def __len__(self) -> int:
        return self._count

    def data_end(self) -> int:
        """The largest ``data_offset + size`` (0 when empty): the last entry's, as gaps are
        never negative (each entry starts after the one before has ended)."""
        if not self._count:
            return 0
        d = self._dense
        return int(d["data_offset"][-1] + d["size"][-1])

    def _get(self, column: str, i: int) -> Any:
        return self._sparse[column].get(i, self._defaults[column])

    def unsafe_positions(self) -> list[int]:
        """Positions of the entries whose names are unsafe (absolute, ``..``)."""
        return sorted(i for i, v in self._sparse["unsafe"].items() if v)

    def unsafe(self, i: int) -> bool:
        return bool(self._sparse["unsafe"].get(i, False))

    def name_map(self, start: int = 0) -> dict[str, int]:
        """name -> position of the last entry of that name, unsafe names left out."""
        names = self.names
        positions = dict(zip(names[start:], range(start, len(names)), strict=True))
        for i in sorted(self._sparse["unsafe"], reverse=True):
            name = names[i]
            if i >= start and positions.get(name) == i:  # the last of that name is unsafe
                del positions[name]
                for j in range(i - 1, start - 1, -1):  # fall back to an earlier safe one
                    if names[j] == name and not self.unsafe(j):
                        positions[name] = j
                        break
        return positions

    def file_count(self) -> int:
        return self._dense["type"].count("file")

    def has_digests(self) -> bool:
        """Whether the table holds the content digests of its regular files."""
        return self._digests is not None or not self.file_count()

    def set_digests(self, raw: bytes) -> None:
        """Give the table its files' digests (:func:`encode_digests`); entries already made
        get theirs too."""
        if len(raw) != 32 * self.file_count():
            raise FormatError(f"{self._where}: file digests do not number one per file")
        with self._lock:
            self._digests = raw
            for i, made in enumerate(self._made):
                if made is not None and made.type == "file":
                    made.sha256 = self._digest(i)

    def digests(self) -> bytes:
        """The files' digests as :func:`encode_digests` gives them (b"" when unknown)."""
        if self._digests is not None:
            return self._digests
        return (
            encode_digests([e for e in self._made if e is not None])
            if all(e is not None for e in self._made)
            else b""
        )

    def _digest(self, i: int) -> bytes | None:
        if self._digests is None or self._dense["type"][i] != "file":
            return None
        if self._digest_rank is None:  # position of each file among the table's files
            rank = 0
            ranks = []
            for kind in self._dense["type"]:
                ranks.append(rank)
                rank += kind == "file"
            self._digest_rank = ranks
        at = 32 * self._digest_rank[i]
        return self._digests[at : at + 32]

    def _make(self, i: int) -> TarEntry:
        d, s = self._dense, self._sparse
        with self._lock:
            made = self._made[i]
            if made is not None:  # another thread made it first
                return made
            try:
                entry = TarEntry(
                    name=d["name"][i],
                    type=d["type"][i],
                    size=d["size"][i],
                    mode=int(d["mode"][i]),
                    uid=int(d["uid"][i]),
                    gid=int(d["gid"][i]),
                    mtime=float(d["mtime"][i]),
                    linkname=str(self._get("linkname", i)),
                    uname=str(self._get("uname", i)),
                    gname=str(self._get("gname", i)),
                    devmajor=int(self._get("devmajor", i)),
                    devminor=int(self._get("devminor", i)),
                    xattrs=_xattrs_of(s["xattrs"].get(i)),
                    header_offset=d["header_offset"][i],
                    data_offset=d["data_offset"][i],
                    pax=_pax_of(s["pax"].get(i)),
                    raw_name=d["name"][i],
                    unsafe=bool(self._get("unsafe", i)),
                    sha256=self._digest(i),
                )
            except Exception as exc:
                raise FormatError(f"{self._where}: entry {i} is malformed ({exc!r})") from None
            self._made[i] = entry
            return entry

    def _column(self, name: str, convert: Callable[[Any], Any]) -> list[Any]:
        """Sparse column ``name`` of every entry, each value passed through ``convert``."""
        values = [convert(self._defaults[name])] * self._count
        for i, value in self._sparse[name].items():
            values[i] = convert(value)
        return values

    def _make_all(self) -> bool:
        """Make every entry not made yet, column by column: the objects ``_make`` gives
        (empty xattrs and PAX records shared, as the tar scanner shares them) in a fifth
        of the time -- 0.56 -> 0.1 s for a whole layer's 54k entries, at the start of
        every ``get /``. False when a value fails its conversion: nothing is made then,
        and ``_make``, entry by entry, names the one that is malformed."""
        with self._lock:
            if self._all_made:
                return True
            made = self._columns_made()
            if made is None:
                return False
            if any(map(operator.is_not, self._made, itertools.repeat(None))):
                for i, entry in enumerate(self._made):
                    if entry is not None:  # made by a lookup: the same object
                        made[i] = entry
            self._made = made
            self._all_made = True
            return True

    def _columns_made(self) -> list[TarEntry | None] | None:
        d, s = self._dense, self._sparse
        digests: Iterable[bytes | None] = itertools.repeat(None)
        try:
            if self._digests is not None:
                raw = self._digests
                each = iter([raw[at : at + 32] for at in range(0, len(raw), 32)])
                digests = [next(each) if kind == "file" else None for kind in d["type"]]
            xattrs = [_NO_XATTRS] * self._count
            for i, pairs in s["xattrs"].items():
                xattrs[i] = _xattrs_of(pairs)
            paxes = [_NO_PAX] * self._count
            for i, pairs in s["pax"].items():
                paxes[i] = _pax_of(pairs)
            # positional, in the fields' order (keywords cost a third more a call)
            made: list[TarEntry | None] = list(
                map(
                    TarEntry,
                    d["name"],
                    d["type"],
                    d["size"],
                    map(int, d["mode"]),
                    map(int, d["uid"]),
                    map(int, d["gid"]),
                    map(float, d["mtime"]),
                    self._column("linkname", str),
                    self._column("uname", str),
                    self._column("gname", str),
                    self._column("devmajor", int),
                    self._column("devminor", int),
                    xattrs,
                    d["header_offset"],
                    d["data_offset"],
                    paxes,
                    d["name"],  # raw_name
                    self._column("unsafe", bool),
                    itertools.repeat(None),  # mtime_ns
                    itertools.repeat(None),  # pax_records
                    digests,
                )
            )
        except Exception:
            return None
        return made if len(made) == self._count else None

    def _at(self, i: int) -> TarEntry:
        made = self._made[i]
        return made if made is not None else self._make(i)

    def __iter__(self) -> Iterator[TarEntry]:
        if self._all_made or self._make_all():
            yield from cast("list[TarEntry]", self._made)
            return
        for i in range(self._count):  # a malformed value: the entries before it first
            yield self._at(i)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
