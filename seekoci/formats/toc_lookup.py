"""A TOC's index made as reads need it (eStargz, zstd:chunked).

Turning every entry of a TOC into a :class:`TarEntry` and its chunks into spans costs about
three times the TOC's own ``json.loads`` (a 54k-file layer: ~0.7 CPU-s against ~0.2), and a
read of one file needs one entry, its ancestors and its chunks. :func:`lazy_index` reads a
few columns of the parsed TOC at once -- each entry's type, every regular file's size, the
names -- which is what places every file and every span: a file's payload offset is the sum
of the sizes before it, its first span the count of chunks before it. An entry is made, and
checked as the whole read checks it (every field, its chunks' places, sizes, digests and
extents), when a lookup or a read first needs it; anything that needs every entry (a
listing, a walk, a whole-layer read) makes the whole index first, every entry checked, so a
malformed entry is an error whenever it is used and never an answer.

A TOC whose columns do not have the expected shape (an entry that is not an object, a type
not known, a size that is not a non-negative integer, a chunk before any file) is read whole
at once instead, which says what is wrong with it.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import operator
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import FormatError
from .base import IndexedSequence, Span
from .entries import NameLookup, encode
from .index import LayerIndex
from .tar import TarEntry
from .toc import _TYPES, TocFile, _chunk_span, check_chunks

#: the ``type`` of every TOC entry a layer can hold
_KINDS = frozenset({*_TYPES, "chunk"})

#: ``file_at(raw_entries, lo, hi)``: the file of entry ``lo`` and its chunks (entries up to
#: ``hi``), checked (what the format's whole read does for each file)
FileAt = Callable[[list[Any], int, int], TocFile]


class TocColumns:
    """What places every entry of a TOC and every span, read from the parsed entries
    without making them (:func:`toc_columns`)."""

    def __init__(
        self,
        raw_entries: list[Any],
        kinds: list[Any],
        rows: list[int],
        files: list[dict[str, Any]],
        sizes: list[int],
    ) -> None:
        self.raw_entries = raw_entries
        self.kinds = kinds
        #: position in the TOC's list of each entry that is not a chunk (a "file" here)
        self.rows = rows
        #: those entries
        self.files = files
        #: payload bytes of each file (0 for all but regular files)
        self.sizes = sizes
        #: where each file's chunk entries end in the TOC's list
        self.ends = ends = [*rows[1:], len(raw_entries)]
        # a regular file's first chunk is its own entry, the others follow it; other
        # entries have none
        pieces = map(operator.sub, map(operator.sub, ends, rows), map(operator.not_, sizes))
        #: payload offset of each file (payloads laid end to end), then the end
        self.starts: list[int] = list(itertools.accumulate(sizes, initial=0))
        #: position of each file's first span, then the number of spans
        self.firsts: list[int] = list(itertools.accumulate(pieces, initial=0))

    def every_chunk_has(self, key: str) -> bool:
        """Whether every TOC entry that stands for a chunk (a non-empty regular file's own
        entry, the ``chunk`` entries after it) has a value for ``key``."""
        values = list(map(dict.get, self.raw_entries, itertools.repeat(key)))
        return all(itertools.compress(values, map("chunk".__eq__, self.kinds))) and all(
            itertools.compress(map(values.__getitem__, self.rows), self.sizes)
        )


def toc_columns(raw_entries: list[Any]) -> TocColumns | None:
    """The columns of a TOC's entries, or None when they do not have the shape they
    should (the whole read says what is wrong)."""
    try:
        kinds = list(map(dict.get, raw_entries, itertools.repeat("type")))
        if not kinds or not _KINDS.issuperset(kinds) or kinds[0] == "chunk":
            return None
    except TypeError:  # an entry that is not an object, a type that is not hashable
        return None
    rows = list(itertools.compress(itertools.count(), map("chunk".__ne__, kinds)))
    files = list(map(raw_entries.__getitem__, rows))
    sizes = [
        (size or 0) if kind == "reg" else 0
        for size, kind in zip(
            map(dict.get, files, itertools.repeat("size")),
            map(kinds.__getitem__, rows),
            strict=True,
        )
    ]
    if set(map(type, sizes)) != {int} or min(sizes) < 0:  # (every file's size an integer)
        return None
    return TocColumns(raw_entries, kinds, rows, files, sizes)


class LazyToc:
    """The files of a TOC, each made (and checked) when first asked for; :meth:`whole`
    makes them all. Thread-safe: a file is made outside the lock, and the first one made
    is the one kept."""

    def __init__(
        self,
        columns: TocColumns,
        file_at: FileAt,
        every: Callable[[list[Any]], LayerIndex],
        *,
        extra: TocFile | None,
        stored: dict[str, int] | None,
        data_end: int,
        where: str,
    ) -> None:
        self._raw: list[Any] | None = columns.raw_entries
        self._stored = stored
        self._rows = columns.rows
        self._ends = columns.ends
        #: (what ``file_at`` keeps may be the parsed TOC's: dropped with it)
        self._file_at: FileAt | None = file_at
        self._every = every
        self._extra = extra
        self._data_end = data_end
        self._where = where
        self.count = len(columns.rows) + (extra is not None)
        starts, firsts = columns.starts, columns.firsts
        if extra is not None:  # after every other file (eStargz: the TOC itself)
            starts = [*starts, starts[-1] + extra.filled]
            firsts = [*firsts, firsts[-1] + len(extra.chunks)]
        #: payload offset and first span of each file, then the ends
        self.starts = starts
        self.firsts = firsts
        self._lock = threading.Lock()
        self._building = threading.Lock()  # held while the whole index is made
        self._made: dict[int, tuple[TocFile, list[Span]]] = {}
        self._whole: LayerIndex | None = None

    @property
    def size(self) -> int:
        return self.starts[-1]

    @property
    def span_count(self) -> int:
        return self.firsts[-1]

    def made_whole(self) -> LayerIndex | None:
        with self._lock:
            return self._whole

    def stored(self) -> dict[str, int] | None:
        """Each file's position by its name as stored, while the index is not whole (see
        :class:`TocEntries`)."""
        with self._lock:
            return self._stored

    def file(self, k: int) -> tuple[TocFile, list[Span]]:
        """File ``k`` (checked, its offsets set) and its spans."""
        with self._lock:
            found = self._made.get(k)
            raw, file_at, whole = self._raw, self._file_at, self._whole
        if whole is not None:  # made whole: its objects
            return self._from_whole(whole, k)
        if found is not None:
            return found
        if k == len(self._rows):
            assert self._extra is not None
            f = self._extra
        else:
            assert raw is not None and file_at is not None  # (dropped once made whole)
            f = file_at(raw, self._rows[k], self._ends[k])
        check_chunks((f,), self._data_end, where=self._where)
        v = self.starts[k]
        first = self.firsts[k]
        if len(f.chunks) != self.firsts[k + 1] - first or f.filled != self.starts[k + 1] - v:
            raise FormatError(f"{self._where}: {f.entry.name!r}: its chunks do not tile it")
        f.entry.header_offset = f.entry.data_offset = v
        spans: list[Span] = []
        for j, c in enumerate(f.chunks, first):
            spans.append(_chunk_span(j, c, v))
            v += c.size
        with self._lock:
            whole = self._whole
            if whole is None:
                return self._made.setdefault(k, (f, spans))
        return self._from_whole(whole, k)  # made whole meanwhile: its objects

    def _from_whole(self, whole: LayerIndex, k: int) -> tuple[TocFile, list[Span]]:
        entry = whole.entries[k]
        spans = list(whole.spans[self.firsts[k] : self.firsts[k + 1]])
        return TocFile(entry), spans

    def whole(self) -> LayerIndex:
        """Every file, every entry checked (once): the index the whole read makes. Entries
        made before are handed over (the same objects: a hard link is found by identity)."""
        with self._building:  # one build at a time (CPU only: no network under it)
            with self._lock:
                if self._whole is not None:
                    return self._whole
                raw = self._raw
            assert raw is not None
            index = self._every(raw)
            entries = list(index.entries)
            with self._lock:
                for k, (f, _) in self._made.items():
                    entries[k] = f.entry
                index.entries = entries
                self._whole = index
                # the parsed TOC, and what holds its objects, no longer needed
                self._raw = self._stored = self._file_at = None
                self._made.clear()
                return index


class TocEntries(NameLookup):
    """A TOC's entries for a read that looks a few names up (see the module's text). A
    name is found among the names as stored -- every spelling a tar gives it: ``name``,
    ``name/``, ``./name``, ``./name/`` -- and only that entry is made; a TOC with other
    spellings (``a//b``, ``a/./b``) is read whole for lookups."""

    def __init__(self, toc: LazyToc) -> None:
        self._toc = toc
        self._lock = threading.Lock()
        self._map: dict[str, int] | None = None
        self._names: list[str] | None = None

    def __len__(self) -> int:
        return self._toc.count

    def _at(self, i: int) -> TarEntry:
        whole = self._toc.made_whole()
        if whole is not None:
            return whole.entries[i]
        return self._toc.file(i)[0].entry

    def __iter__(self) -> Iterator[TarEntry]:
        return iter(self._toc.whole().entries)

    @property
    def names(self) -> list[str]:
        """Every entry's name (the TOC read whole; made once: a hard link's read asks)."""
        with self._lock:
            if self._names is not None:
                return self._names
        names = [e.name for e in self._toc.whole().entries]
        with self._lock:
            if self._names is None:
                self._names = names
            return self._names

    def name_map(self, start: int = 0) -> dict[str, int]:
        """name -> position of the last entry of that name, unsafe names left out."""
        if start:
            return self._name_map(start)
        with self._lock:
            if self._map is not None:
                return self._map
        made = self._name_map(0)
        with self._lock:
            if self._map is None:
                self._map = made
            return self._map

    def _name_map(self, start: int) -> dict[str, int]:
        entries = self._toc.whole().entries
        return {entries[i].name: i for i in range(start, len(entries)) if not entries[i].unsafe}

    def unsafe(self, i: int) -> bool:
        return self[i].unsafe

    def unsafe_positions(self) -> list[int]:
        return [i for i, e in enumerate(self._toc.whole().entries) if e.unsafe]

    def encoded(self) -> dict[str, Any]:
        return encode(self._toc.whole().entries)

    def data_end(self) -> int:
        return self._toc.size

    def lookup(self, name: str) -> TarEntry | None:
        """The last entry stored under ``name`` whose name is safe, or None. ``name`` is
        normalised (as :meth:`Layer.find` gives it)."""
        stored = self._toc.stored()
        if stored is None or not name:
            i = self.name_map().get(name)
            return None if i is None else self[i]
        if ".." in name.split("/"):
            return None  # never a safe name
        found = max(
            stored.get(name, -1),
            stored.get(name + "/", -1),
            stored.get("./" + name, -1),
            stored.get("./" + name + "/", -1),
        )
        return None if found < 0 else self[found]


class TocSpans(IndexedSequence[Span]):
    """A TOC's spans, made with their file's entry. :meth:`locate` finds the span that
    holds a payload offset from the files' offsets alone (what a paged index's spans
    answer, see :mod:`seekoci.layer`)."""

    paged = True

    def __init__(self, toc: LazyToc, *, where: str) -> None:
        self._toc = toc
        self._where = where

    def __len__(self) -> int:
        return self._toc.span_count

    def _at(self, i: int) -> Span:
        toc = self._toc
        whole = toc.made_whole()
        if whole is not None:
            return whole.spans[i]
        k = bisect.bisect_right(toc.firsts, i) - 1  # the last file starting at or before it
        return toc.file(k)[1][i - toc.firsts[k]]

    def __iter__(self) -> Iterator[Span]:
        return iter(self._toc.whole().spans)

    def locate(self, offset: int) -> int:
        """Index of the span holding payload ``offset`` (``0 <= offset < size``). The last
        file starting at or before it holds it: a file that starts where an empty one
        does comes after it."""
        toc = self._toc
        k = max(0, bisect.bisect_right(toc.starts, offset, hi=toc.count) - 1)
        spans = toc.file(k)[1]
        j = bisect.bisect_right(spans, offset, key=lambda s: s.uncompressed_start) - 1
        if j < 0 or not spans[j].uncompressed_start <= offset < spans[j].uncompressed_end:
            raise FormatError(f"{self._where}: no chunk holds payload offset {offset}")
        return spans[j].index


def stored_names(names: Sequence[Any]) -> dict[str, int] | None:
    """Each position by the name as stored, or None when lookups must read the TOC whole
    (a name that is not a string, or spelt with an empty or ``.`` part)."""
    try:
        joined = "\0".join(names)
    except TypeError:
        return None
    if "//" in joined or "/./" in joined or "/.\0" in joined or joined.endswith("/."):
        return None
    return dict(zip(names, range(len(names)), strict=True))


def lazy_index(
    columns: TocColumns,
    file_at: FileAt,
    every: Callable[[list[Any]], LayerIndex],
    *,
    like: LayerIndex,
    extra: TocFile | None,
    data_end: int,
    where: str,
) -> LayerIndex:
    """The index of a layer from its TOC's columns, entries and spans made as they are
    needed; ``every(raw_entries)`` is the index the whole read makes (the same entries,
    in the same order, and ``extra`` after them), ``like`` the one it makes of no entries
    (the layer's identity, what verifies it)."""
    names = list(map(dict.get, columns.files, itertools.repeat("name")))
    if extra is not None:
        names.append(extra.entry.raw_name)
    stored = stored_names(names)
    toc = LazyToc(
        columns, file_at, every, extra=extra, stored=stored, data_end=data_end, where=where
    )
    spans = TocSpans(toc, where=where)
    return dataclasses.replace(
        like,
        uncompressed_size=toc.size,
        spans=spans,
        entries=TocEntries(toc),
        window_locations=[(0, 0)] * len(spans),
    )


__all__ = ["LazyToc", "TocColumns", "TocEntries", "TocSpans", "lazy_index", "toc_columns"]
