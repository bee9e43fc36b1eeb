"""Entry pages and span pages: a lookup in a lazily read index loads only what it needs,
finds what a full parse finds, and a page that does not match its directory is refused."""

from __future__ import annotations

import hashlib
import random
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from layers import CI, with_directory

from seekoci.errors import FormatError
from seekoci.formats.base import Span
from seekoci.formats.index import (
    INDEX_VERSION,
    LayerIndex,
    parse,
    parse_header,
    parse_lazy,
    serialize,
)
from seekoci.formats.pages import PAGE_ENTRIES, SPANS_PER_PAGE, PagedEntries, PagedSpans
from seekoci.formats.tar import TarEntry

DIGEST = "sha256:" + "ab" * 32


def walk_ordered_names(count: int) -> list[str]:
    """Directories with files, in walk order (parent first, siblings sorted)."""
    names: list[str] = []
    d = 0
    while len(names) < count:
        top = f"usr/lib/pkg{d:04d}"
        names.append(top)
        names.extend(f"{top}/mod{f:02d}.py" for f in range(40))
        d += 1
    return ["usr", "usr/lib", *names][:count]


def sample(names: list[str], spans: int = 150) -> tuple[LayerIndex, bytes]:
    entries = []
    offset = 0
    for name in names:
        kind = "dir" if "." not in name.rsplit("/", 1)[-1] else "file"
        size = 0 if kind == "dir" else 700
        entries.append(
            TarEntry(
                name,
                kind,
                size,
                0o644,
                0,
                0,
                0.0,
                header_offset=offset,
                data_offset=offset + 512,
                unsafe=name.startswith("/") or ".." in name.split("/"),
            )
        )
        offset += 512 + -(-size // 512) * 512
    total = offset + 1024
    cuts = [total * i // spans for i in range(spans + 1)]
    span_list = [
        Span(
            i,
            10 + cuts[i],
            10 + cuts[i + 1],
            cuts[i],
            cuts[i + 1],
            hashlib.sha256(bytes([i % 256])).hexdigest(),
        )
        for i in range(spans)
    ]
    index = LayerIndex(DIGEST, "application/vnd.oci.image.layer.v1.tar", "none",
                       total + 20, total, 4096, span_list, entries, tool="tests")  # fmt: skip
    return index, serialize(index, [b""] * spans)


class Reads:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.ranges: list[tuple[int, int]] = []

    def __call__(self, offset: int, length: int) -> bytes:
        self.ranges.append((offset, length))
        return self.data[offset : offset + length]

    @property
    def total(self) -> int:
        return sum(n for _, n in self.ranges)


def lazy(data: bytes) -> tuple[LayerIndex, Reads]:
    header = parse_header(data)
    reads = Reads(data)
    return parse_lazy(data[: header.head_end], reads, expected_digest=DIGEST), reads


def test_a_lookup_reads_a_few_pages_and_finds_what_a_full_parse_finds() -> None:
    names = walk_ordered_names(20_000)
    _, data = sample(names)
    full = parse(data[: parse_header(data).metadata_end], read_windows=None)
    paged, _ = lazy(data)
    entries = paged.entries
    assert isinstance(entries, PagedEntries) and len(entries) == len(names)
    pages = len(entries.page_infos)
    assert pages == -(-len(names) // PAGE_ENTRIES)
    rnd = random.Random(5)
    for name in rnd.sample(names, 30):
        fresh, _ = lazy(data)
        found = fresh.entries.lookup(name)  # type: ignore[attr-defined]
        assert found is not None and found == full.entries[names.index(name)]
        # its page, and its ancestors' (the first page): not the other ~40
        assert fresh.entries.loaded_pages() <= 3  # type: ignore[attr-defined]
    for name in rnd.sample(names, 30):
        assert entries.lookup(name) == full.entries[names.index(name)]
    assert 0 < entries.loaded_pages() < pages
    assert entries.lookup("usr/lib/nothing-here") is None
    assert entries.lookup("usr/lib/pkg0000/.wh.mod01.py") is None
    # everything, page by page, equals the full parse
    assert list(entries) == list(full.entries)


def test_spans_load_one_page_at_a_time() -> None:
    index, data = sample(walk_ordered_names(600), spans=300)
    paged, reads = lazy(data)
    spans = paged.spans
    assert isinstance(spans, PagedSpans) and len(spans) == 300
    before = len(reads.ranges)
    middle = index.spans[200]
    i = spans.locate(middle.uncompressed_start + 1)
    assert i == 200 and spans[i] == middle
    assert len(reads.ranges) == before + 1  # one span page
    assert reads.ranges[-1][1] == SPANS_PER_PAGE * 120
    assert list(spans) == list(index.spans)
    assert [spans.locate(s.uncompressed_start) for s in index.spans] == list(range(300))


def test_names_out_of_walk_order_are_still_found() -> None:
    names = walk_ordered_names(3000)
    shuffled = names[:]
    random.Random(1).shuffle(shuffled)
    _, data = sample(shuffled)
    paged, _ = lazy(data)
    for name in random.Random(2).sample(names, 40):
        found = paged.entries.lookup(name)  # type: ignore[attr-defined]
        assert found is not None and found.name == name


def test_the_last_of_a_name_stored_twice_wins_across_pages() -> None:
    names = walk_ordered_names(1500)
    names.append(names[10])  # stored again, in the last page
    _, data = sample(names)
    paged, _ = lazy(data)
    found = paged.entries.lookup(names[10])  # type: ignore[attr-defined]
    assert found is not None and found.header_offset == paged.entries[len(names) - 1].header_offset


def damaged(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x20
    return bytes(out)


def test_a_damaged_entry_page_or_span_page_is_a_format_error() -> None:
    names = walk_ordered_names(2000)
    _, data = sample(names, spans=130)
    header = parse_header(data)
    paged, _ = lazy(damaged(data, header.head_end + 5))  # inside the first page
    with pytest.raises(FormatError, match="page 0"):
        paged.entries.lookup("usr")  # type: ignore[attr-defined]
    paged, _ = lazy(damaged(data, header.span_offset + 70 * 120 + 3))  # span page 1
    assert paged.spans[3].index == 3
    with pytest.raises(FormatError, match="span page 1"):
        paged.spans[70]


def test_a_directory_that_lies_about_a_page_is_refused() -> None:
    """A page whose digest matches but whose names fall outside the directory's range
    (a writer's lie, not a damaged byte)."""

    names = walk_ordered_names(700)
    _, data = sample(names)

    def lie(directory: dict[str, Any]) -> None:
        directory["pages"]["low"][1] = "zzz"
        directory["pages"]["high"][1] = "zzzz"

    lying = with_directory(data, lie)
    paged, _ = lazy(lying)
    with pytest.raises(FormatError, match="outside the range"):
        paged.entries.lookup("zzz")  # type: ignore[attr-defined]
    # loaded whole, lookups come from every page's names: the lie cannot hide anything
    whole = parse(lying[: parse_header(lying).metadata_end], read_windows=None)
    name = names[PAGE_ENTRIES + 3]  # in page 1
    assert whole.entries.lookup(name).name == name  # type: ignore[attr-defined]


def test_a_malformed_page_of_a_published_index_falls_back_to_a_build(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A published index whose entry page matches its digest but does not parse (a writer's
    fault): the read builds the layer's own index instead, and says so in the log."""
    import json

    import zstandard
    from layers import build_tar, compress, file, sha256_digest

    import seekoci

    files = {f"data/{i:02d}.txt": b"content %d\n" % i * 50 for i in range(20)}
    blob = compress(build_tar([file(n, d) for n, d in files.items()]), "gzip")
    path = tmp_path / "layer.blob"
    path.write_bytes(blob)
    digest = sha256_digest(blob)
    seekoci.open_layer(path, digest=digest, cache_dir=tmp_path / "publisher").index()
    (good_file,) = (tmp_path / "publisher" / "indexes").rglob(f"*.v{INDEX_VERSION}")
    good = good_file.read_bytes()
    header = parse_header(good)
    dctx = zstandard.ZstdDecompressor()
    directory = json.loads(dctx.decompressobj().decompress(good[64 : header.head_end]))
    page_end = header.head_end + directory["pages"]["length"][0]
    digests = good[page_end : header.span_offset]  # format 6: the files' sha256s follow
    page = json.loads(dctx.decompressobj().decompress(good[header.head_end : page_end]))
    page["dense"]["size"].pop()  # a column one short: the page no longer parses
    new_page = zstandard.ZstdCompressor().compress(json.dumps(page).encode())
    directory["pages"]["length"] = [len(new_page)]
    directory["pages"]["sha256"] = [hashlib.sha256(new_page).hexdigest()]
    new_dir = zstandard.ZstdCompressor().compress(json.dumps(directory).encode())
    toc_length = len(new_dir) + len(new_page) + len(digests)
    delta = toc_length - header.toc_length
    head = bytearray(good[:64])
    struct.pack_into("<QQQ", head, 24, toc_length, header.span_offset + delta,
                     header.windows_offset + delta)  # fmt: skip
    struct.pack_into("<Q", head, 56, len(new_dir))
    bad = bytes(head) + new_dir + new_page + digests + good[header.span_offset :]
    bad_header = parse_header(bad)

    class Published:
        def load(self, layer_digest: str, **_: object) -> tuple[LayerIndex, str]:
            index = parse_lazy(
                bad[: bad_header.head_end],
                lambda off, n: bad[off : off + n],
                expected_digest=layer_digest,
            )
            return index, "native"

        def describe(self, layer_digest: str) -> list[str]:
            return ["native"]

    layer = seekoci.open_layer(path, digest=digest, cache_dir=tmp_path / "reader")
    layer.remote = Published()  # type: ignore[assignment]
    name = "data/07.txt"
    with caplog.at_level("WARNING", logger="seekoci"):
        assert layer.open(name).read() == files[name]
    assert layer.index_status in ("built", "partial")
    assert "published index" in caplog.text and "unusable" in caplog.text


def test_a_lookup_brings_the_span_page_of_what_it_found() -> None:
    """The entry pages a lookup fetches come with the span pages their data lie in (when a
    page's entries cover at most two), in the same fetch: the read that follows needs no
    round trip for its span record."""
    names = walk_ordered_names(20_000)
    _, data = sample(names, spans=1000)
    paged, reads = lazy(data)
    spans = paged.spans
    assert isinstance(spans, PagedSpans)
    name = names[12_345]
    found = paged.entries.lookup(name)  # type: ignore[attr-defined]
    assert found is not None
    before = len(reads.ranges)
    i = spans.locate(found.data_offset)
    assert spans[i].uncompressed_start <= found.data_offset < spans[i].uncompressed_end
    assert len(reads.ranges) == before  # no fetch: its span page came with the entry page


_NAME_PARTS = st.sampled_from(["a", "b", "a-b", "a.b", "ab", ".wh.a", "z", "b0", "a/"])


@CI
@given(
    st.lists(
        st.lists(_NAME_PARTS, min_size=1, max_size=4).map(lambda p: "/".join(p).strip("/")),
        min_size=1,
        max_size=1300,
    ),
    st.booleans(),
)
def test_every_lookup_in_pages_answers_like_the_whole_table(names: list[str], walk: bool) -> None:
    """Any names, in walk order or not, repeated or not, unsafe or not: a lookup through the
    pages finds what the whole table's name map finds."""
    names = [n or "root" for n in names]
    names += [f"pad/{i:04d}" for i in range(max(0, 700 - len(names)))]  # several pages
    if walk:
        names.sort(key=lambda n: tuple(n.split("/")))
    names += ["../escape", names[0], names[-1]]  # an unsafe name; names stored twice
    _, data = sample(names, spans=3)
    whole = parse(data[: parse_header(data).metadata_end], read_windows=None)
    expected = whole.entries.name_map()  # type: ignore[attr-defined]
    paged, _ = lazy(data)
    for name in {*names, "missing", "a/missing"}:
        found = paged.entries.lookup(name)  # type: ignore[attr-defined]
        want = expected.get(name)
        assert (found is None) == (want is None), name
        if found is not None:
            assert found.header_offset == whole.entries[want].header_offset, name
