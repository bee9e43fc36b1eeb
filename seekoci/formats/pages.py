"""The index's table of contents and span table in pages, loaded only as far as needed.

A reader that ranges into a published index should not download a 160k-entry table of
contents to find one file. The index file keeps its entries in *pages* (runs of
:data:`PAGE_ENTRIES` entries in archive order, each an independent zstd frame) and its span
records in pages of :data:`SPANS_PER_PAGE`; a small *directory* lists each entry page's
first and last name in walk order (:func:`walk_key`), its length and sha256, and each span
page's first uncompressed offset and sha256.

Layers are written in walk order (parent before children, siblings by name: what
``filepath.Walk``, BuildKit and ``tar`` over a sorted tree produce), so a name falls inside
the range of one page, and a lookup loads that page -- plus the pages of the names a merged
view asks about next (its ancestors, their whiteouts and opaque markers), fetched together.
A layer in any other order still works: a name is looked for in every page whose range
holds it, which is more pages, never a wrong answer.
"""

from __future__ import annotations

import bisect
import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .. import _json
from ..errors import FormatError
from .base import IndexedSequence, Span, decompress_bounded
from .entries import EntryTable, NameLookup
from .tar import TarEntry

#: Entries per page of the table of contents (~5 KB compressed each).
PAGE_ENTRIES = 512
#: Span records per page of the span table.
SPANS_PER_PAGE = 64
#: A page that inflates past this is refused (hostile index).
MAX_PAGE_SIZE = 64 << 20

#: read_many([(offset, length), ...]) -> the bytes of each range, in order
ReadMany = Callable[[list[tuple[int, int]]], list[bytes]]


def walk_key(name: str) -> tuple[str, ...]:
    """The order a walk of the tree visits names in: component by component."""
    return tuple(name.split("/"))


def related_names(name: str) -> list[str]:
    """Names a merged view asks a layer about when it looks ``name`` up: the name, each
    ancestor, the whiteout of each of them and the opaque marker of each directory."""
    parts = name.split("/") if name else []
    out = [name, ".wh..wh..opq"]
    for i in range(len(parts)):
        parent = "/".join(parts[:i])
        prefix = parent + "/" if parent else ""
        out.append(prefix + parts[i])
        out.append(prefix + ".wh." + parts[i])
        if i < len(parts) - 1:
            out.append(prefix + parts[i] + "/.wh..wh..opq")
    return out


def coalesce(ranges: list[tuple[int, int]], gap: int = 32 << 10) -> list[tuple[int, int]]:
    """Sorted ranges merged where less than ``gap`` bytes lie between them."""
    merged: list[tuple[int, int]] = []
    for offset, length in sorted(ranges):
        if merged and offset <= merged[-1][0] + merged[-1][1] + gap:
            start, size = merged[-1]
            merged[-1] = (start, max(size, offset + length - start))
        else:
            merged.append((offset, length))
    return merged


def fetch_ranges(read_many: ReadMany, ranges: list[tuple[int, int]]) -> list[bytes]:
    """The bytes of each of ``ranges``, read as few, larger ranges."""
    merged = coalesce(ranges)
    blobs = read_many(merged)
    out = []
    for offset, length in ranges:
        i = bisect.bisect_right(merged, (offset, 1 << 62)) - 1
        start = merged[i][0]
        out.append(blobs[i][offset - start : offset - start + length])
    return out


def sequential(read_at: Callable[[int, int], bytes]) -> ReadMany:
    return lambda ranges: [read_at(offset, length) for offset, length in ranges]


def decompress_page(data: bytes, *, where: str) -> bytes:
    return decompress_bounded(data, MAX_PAGE_SIZE, what=where)


@dataclass(frozen=True)
class PageInfo:
    first: int  # index of the page's first entry
    count: int
    low: tuple[str, ...]  # smallest and largest walk_key of its names
    high: tuple[str, ...]
    offset: int  # in the index file
    length: int
    digest: bytes
    start: int = -1  # tar offset of its first entry's header (-1: not recorded)
    #: where the raw sha256 of each of its regular files lies in the index file (format 6:
    #: after all the entry pages, so fetches of neighbouring pages never carry them along)
    digests_offset: int = 0
    digests_length: int = 0  # 0: none
    digests_digest: bytes = b""  # sha256 of those bytes


#: extra(pages) -> ranges to fetch along with those entry pages, and what to do with them
Companion = Callable[[list[int]], tuple[list[tuple[int, int]], Callable[[list[bytes]], None]]]


class PagedEntries(NameLookup):
    """A layer's entries, page by page; pages load (and are checked) when first touched."""

    #: what :mod:`seekoci.layer` asks (``getattr(x, "paged", False)``) rather than import
    #: this module for an isinstance check: it loads only with a native index read by range
    paged = True

    def __init__(
        self,
        pages: list[PageInfo],
        read_many: ReadMany,
        *,
        uncompressed_size: int,
        where: str,
        docs: dict[int, dict[str, Any]] | None = None,
        check_ranges: bool = True,
        companion: Companion | None = None,
    ) -> None:
        self._pages = pages
        self._firsts = [p.first for p in pages]
        self._count = pages[-1].first + pages[-1].count if pages else 0
        self._read_many = read_many
        self._limit = uncompressed_size
        self._where = where
        self._tables: dict[int, EntryTable] = {}
        self._with_digests: set[int] = set()  # pages whose file digests are loaded
        #: load each page's file digests with it (an index on local disk: they cost nothing);
        #: else only when asked (``digests=True``)
        self.eager_digests = False
        self._lock = threading.Lock()
        self._names: list[str] | None = None
        self._map: dict[str, int] | None = None
        # page name ranges matter to page-by-page lookups only; an index loaded whole
        # answers from one name map (and skips the ~0.4 us a name this check costs)
        self.check_ranges = check_ranges
        #: other ranges worth fetching in the same round trip as some entry pages (the
        #: span pages their entries' data lie in)
        self.companion = companion
        for i, doc in (docs or {}).items():
            self._tables[i] = self._table(i, doc)

    # -- pages ------------------------------------------------------------------------------
    @property
    def page_infos(self) -> list[PageInfo]:
        return self._pages

    def loaded_pages(self) -> int:
        return len(self._tables)

    def _table(self, i: int, doc: dict[str, Any]) -> EntryTable:
        info = self._pages[i]
        where = f"{self._where}: page {i}"
        table = EntryTable(doc, where=where)
        if len(table) != info.count:
            raise FormatError(
                f"{where}: holds {len(table)} entries, the directory says {info.count}"
            )
        if table.data_end() > self._limit:
            raise FormatError(f"{where}: an entry lies past the end of the layer")
        if info.count and self.check_ranges:
            keys = [walk_key(n) for n in table.names]
            if min(keys) != info.low or max(keys) != info.high:
                raise FormatError(f"{where}: names outside the range the directory gives")
        return table

    def load(self, wanted: Sequence[int], *, digests: bool = False) -> None:
        """Make sure pages ``wanted`` are loaded (fetched together, checked) -- and, with
        ``digests``, their files' content digests too, in the same fetch."""
        digests = digests or self.eager_digests
        missing = sorted({i for i in wanted if i not in self._tables})
        need_digests = (
            sorted(
                {i for i in wanted if self._pages[i].digests_length and i not in self._with_digests}
            )
            if digests
            else []
        )
        if not missing and not need_digests:
            return
        ranges = [(self._pages[i].offset, self._pages[i].length) for i in missing]
        digest_ranges = [
            (self._pages[i].digests_offset, self._pages[i].digests_length) for i in need_digests
        ]
        extra: list[tuple[int, int]] = []
        take: Callable[[list[bytes]], None] | None = None
        if self.companion is not None and missing:
            extra, take = self.companion(missing)
        blobs = fetch_ranges(self._read_many, ranges + digest_ranges + extra)
        if take is not None and extra:
            take(blobs[len(ranges) + len(digest_ranges) :])
        raw_digests = blobs[len(ranges) : len(ranges) + len(digest_ranges)]
        blobs = blobs[: len(ranges)]
        tables = {}
        for i, data in zip(missing, blobs, strict=True):
            where = f"{self._where}: page {i}"
            if len(data) != self._pages[i].length:
                raise FormatError(f"{where}: cut short")
            if hashlib.sha256(data).digest() != self._pages[i].digest:
                raise FormatError(f"{where}: does not match its digest")
            try:
                doc = _json.loads(decompress_page(data, where=where), packed=len(data))
            except (UnicodeDecodeError, ValueError) as exc:
                raise FormatError(f"{where}: corrupt ({exc})") from None
            if not isinstance(doc, dict):
                raise FormatError(f"{where}: not an entry table")
            tables[i] = self._table(i, doc)
        with self._lock:
            self._tables.update(tables)
        for i, raw in zip(need_digests, raw_digests, strict=True):
            where = f"{self._where}: file digests of page {i}"
            info = self._pages[i]
            if len(raw) != info.digests_length:
                raise FormatError(f"{where}: cut short")
            if hashlib.sha256(raw).digest() != info.digests_digest:
                raise FormatError(f"{where}: do not match their digest")
            with self._lock:
                table = self._tables[i]
                table.set_digests(raw)
                self._with_digests.add(i)

    def load_all(self, *, digests: bool = False) -> None:
        self.load(range(len(self._pages)), digests=digests)

    def page_doc(self, i: int) -> dict[str, Any]:
        self.load([i])
        return self._tables[i].encoded()

    def page_digests(self, i: int) -> bytes:
        """Page ``i``'s file digests as stored (b"" for none)."""
        self.load([i], digests=True)
        return self._tables[i].digests() if i in self._with_digests else b""

    def load_digests_for(self, entry: TarEntry) -> None:
        """Load the file digests of the page that holds ``entry`` (found by its header
        offset); nothing when the index has none."""
        starts = [p.start for p in self._pages]
        if not self._pages or min(starts) < 0:
            self.load_all(digests=True)
            return
        p = max(0, bisect.bisect_right(starts, entry.header_offset) - 1)
        while p > 0 and self._pages[p].count == 0:
            p -= 1
        self.load([p], digests=True)

    def _candidates(self, name: str) -> list[int]:
        key = walk_key(name)
        return [i for i, p in enumerate(self._pages) if p.count and p.low <= key <= p.high]

    # -- lookups ----------------------------------------------------------------------------
    def lookup(self, name: str) -> TarEntry | None:
        """The entry a layer stores under ``name`` (the last safe one), loading only the
        pages that may hold it -- and, in the same fetch, those of its related names."""
        if self._map is not None or len(self._tables) == len(self._pages):
            i = self.name_map().get(name)
            return None if i is None else self[i]
        pages = self._candidates(name)
        self.load(sorted({p for n in related_names(name) for p in self._candidates(n)}))
        for p in reversed(pages):
            found = self._tables[p].name_map().get(name)
            if found is not None:
                return self._tables[p][found]
        return None

    # -- the Sequence and EntryTable interface ----------------------------------------------
    def __len__(self) -> int:
        return self._count

    def _locate(self, i: int) -> tuple[int, int]:
        i = self._index(i)
        p = bisect.bisect_right(self._firsts, i) - 1
        while self._pages[p].count == 0:  # empty pages share their first index
            p -= 1
        self.load([p])
        return p, i - self._pages[p].first

    def _at(self, i: int) -> TarEntry:
        p, j = self._locate(i)
        return self._tables[p][j]

    def __iter__(self) -> Iterator[TarEntry]:
        self.load_all()
        for p in range(len(self._pages)):
            yield from self._tables[p]

    @property
    def names(self) -> list[str]:
        if self._names is None:
            self.load_all()
            self._names = [n for p in range(len(self._pages)) for n in self._tables[p].names]
        return self._names

    def name_map(self, start: int = 0) -> dict[str, int]:
        """name -> position of the last safe entry of that name (as EntryTable's)."""
        if self._map is None:
            self.load_all()
            merged = dict(zip(self.names, range(self._count), strict=True))
            unsafe = [
                info.first + j
                for p, info in enumerate(self._pages)
                for j in self._tables[p].unsafe_positions()
            ]
            names = self.names
            for i in sorted(unsafe, reverse=True):  # as EntryTable.name_map
                if merged.get(names[i]) == i:
                    del merged[names[i]]
                    for k in range(i - 1, -1, -1):
                        if names[k] == names[i] and not self.unsafe(k):
                            merged[names[i]] = k
                            break
            self._map = merged
        if not start:
            return self._map
        return {n: i for n, i in self._map.items() if i >= start}

    def unsafe(self, i: int) -> bool:
        p, j = self._locate(i)
        return self._tables[p].unsafe(j)

    def data_end(self) -> int:
        self.load_all()
        return max((t.data_end() for t in self._tables.values()), default=0)


@dataclass(frozen=True)
class SpanPage:
    start: int  # uncompressed start of its first span
    digest: bytes


class PagedSpans(IndexedSequence[Span]):
    """Span records, page by page. ``parse_page(i, data)`` turns page ``i``'s bytes into its
    spans, their record locations and record digests (checking them)."""

    #: what :mod:`seekoci.layer` asks (``getattr(x, "paged", False)``) rather than import
    #: this module for an isinstance check: it loads only with a native index read by range
    paged = True

    def __init__(
        self,
        count: int,
        pages: list[SpanPage],
        offset: int,
        record_size: int,
        read_many: ReadMany,
        parse_page: Callable[[int, bytes], list[tuple[Span, tuple[int, int], bytes]]],
        *,
        where: str,
    ) -> None:
        self._count = count
        self._pages = pages
        self._starts = [p.start for p in pages]
        self._offset = offset
        self._record_size = record_size
        self._read_many = read_many
        self._parse_page = parse_page
        self._where = where
        self._loaded: dict[int, list[tuple[Span, tuple[int, int], bytes]]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._count

    @property
    def page_list(self) -> list[SpanPage]:
        return self._pages

    def _page(self, p: int) -> list[tuple[Span, tuple[int, int], bytes]]:
        loaded = self._loaded.get(p)
        if loaded is not None:
            return loaded
        first = p * SPANS_PER_PAGE
        n = min(SPANS_PER_PAGE, self._count - first)
        size = self._record_size
        (data,) = self._read_many([(self._offset + first * size, n * size)])
        return self._accept(p, data)

    def _accept(self, p: int, data: bytes) -> list[tuple[Span, tuple[int, int], bytes]]:
        n = min(SPANS_PER_PAGE, self._count - p * SPANS_PER_PAGE)
        where = f"{self._where}: span page {p}"
        if len(data) != n * self._record_size:
            raise FormatError(f"{where}: cut short")
        if hashlib.sha256(data).digest() != self._pages[p].digest:
            raise FormatError(f"{where}: does not match its digest")
        parsed = self._parse_page(p, data)
        if parsed and parsed[0][0].uncompressed_start != self._pages[p].start:
            raise FormatError(f"{where}: starts where the directory does not say")
        with self._lock:
            self._loaded[p] = parsed
        return parsed

    def pages_between(self, start: int, end: int) -> list[int]:
        """Span pages not loaded yet that hold uncompressed offsets ``[start, end)``."""
        first = max(0, bisect.bisect_right(self._starts, start) - 1)
        last = max(0, bisect.bisect_left(self._starts, end) - 1)
        return [p for p in range(first, last + 1) if p not in self._loaded]

    def page_range(self, p: int) -> tuple[int, int]:
        """(offset, length) of span page ``p`` in the index file."""
        first = p * SPANS_PER_PAGE
        n = min(SPANS_PER_PAGE, self._count - first)
        return self._offset + first * self._record_size, n * self._record_size

    def offer(self, p: int, data: bytes) -> None:
        """Span page ``p``'s bytes, fetched along with something else: kept if they check
        out (else the page is fetched again when needed, and fails there)."""
        if p not in self._loaded:
            try:
                self._accept(p, data)
            except FormatError:
                pass

    def preload(self, table: bytes) -> None:
        """Load (and check) every page from the whole span table's bytes."""
        step = SPANS_PER_PAGE * self._record_size
        for p in range(len(self._pages)):
            if p not in self._loaded:
                self._accept(p, table[p * step : (p + 1) * step])

    def _item(self, i: int) -> tuple[Span, tuple[int, int], bytes]:
        i = self._index(i)
        return self._page(i // SPANS_PER_PAGE)[i % SPANS_PER_PAGE]

    def _at(self, i: int) -> Span:
        return self._item(i)[0]

    def location(self, i: int) -> tuple[int, int]:
        return self._item(i)[1]

    def record_digest(self, i: int) -> bytes:
        return self._item(i)[2]

    def locate(self, offset: int) -> int:
        """Index of the span holding uncompressed ``offset`` (loads one page)."""
        p = max(0, bisect.bisect_right(self._starts, offset) - 1)
        page = self._page(p)
        starts = [s.uncompressed_start for s, _, _ in page]
        return p * SPANS_PER_PAGE + max(0, bisect.bisect_right(starts, offset) - 1)


class LazyColumn(IndexedSequence[Any]):
    """``index.window_locations`` / ``window_digests`` over paged spans."""

    def __init__(self, spans: PagedSpans, get: Callable[[int], Any]) -> None:
        self._spans = spans
        self._get = get

    def __len__(self) -> int:
        return len(self._spans)

    def _at(self, i: int) -> Any:
        return self._get(i)
