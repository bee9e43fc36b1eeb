"""seekoci's index file: round trip, the documented layout, and hostile files (every one a
FormatError, never another exception, never an index that reads outside the layer)."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import struct
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import zstandard

from seekoci.errors import FormatError
from seekoci.formats.base import Span, WindowPacker
from seekoci.formats.entries import DENSE, SPARSE
from seekoci.formats.index import (
    INDEX_VERSION,
    LayerIndex,
    parse,
    parse_header,
    serialize,
)
from seekoci.formats.pages import walk_key
from seekoci.formats.tar import TarEntry

# The layout as the module docstring documents it (written out here, not imported).
HEADER = struct.Struct("<8sHHIQQQQQQ")
SPAN = struct.Struct("<QQQQB7xQII32s32s")
DIGEST = "sha256:" + "ab" * 32
# The TarEntry fields the index keeps (raw_name comes back as the name).
STORED_FIELDS = ("name", "type", "size", "mode", "uid", "gid", "mtime", "linkname", "uname",
                 "gname", "devmajor", "devminor", "xattrs", "header_offset", "data_offset",
                 "pax", "unsafe")  # fmt: skip


def sample_index() -> tuple[LayerIndex, list[bytes], list[bytes]]:
    """An index of three spans over a 3000-byte layer, with the windows it carries."""
    entries = [
        TarEntry("etc", "dir", 0, 0o755, 0, 0, 1.5, header_offset=0, data_offset=512),
        TarEntry(
            "etc/caf\udce9",  # a name that was not UTF-8 in the tar
            "file",
            500,
            0o4755,
            1000,
            100,
            1_700_000_000.25,
            uname="me",
            gname="us",
            xattrs={"user.bin": b"\x00\xff\x80", "security.selinux": b"ctx\x00"},
            header_offset=512,
            data_offset=1024,
            pax={"comment": "hello"},
        ),
        TarEntry(
            "dev/null",
            "char",
            0,
            0o666,
            0,
            0,
            0.0,
            devmajor=1,
            devminor=3,
            header_offset=1536,
            data_offset=2048,
        ),
        TarEntry(
            "abs",
            "symlink",
            0,
            0o777,
            0,
            0,
            0.0,
            linkname="/etc",
            header_offset=2048,
            data_offset=2560,
            unsafe=True,
        ),
    ]
    windows = [b"", b"w" * 32768, bytes(range(256)) * 10]
    packer = WindowPacker()
    packed = [packer.pack(w) for w in windows]
    spans = [
        Span(0, 10, 400, 0, 1000, hashlib.sha256(b"0").hexdigest(), 0),
        Span(1, 399, 800, 1000, 2000, hashlib.sha256(b"1").hexdigest(), 3),
        Span(2, 800, 1200, 2000, 3000, hashlib.sha256(b"2").hexdigest(), 0),
    ]
    index = LayerIndex(
        layer_digest=DIGEST,
        media_type="application/vnd.oci.image.layer.v1.tar+gzip",
        compression="gzip",
        blob_size=1300,
        uncompressed_size=3000,
        span_size=1000,
        spans=spans,
        entries=entries,
        tool="tests",
    )
    return index, windows, packed


def load(data: bytes, **kwargs: Any) -> LayerIndex:
    header = parse_header(data)
    return parse(
        data[: header.metadata_end],
        read_windows=lambda off, n: data[off : off + n],
        **kwargs,
    )


def test_round_trip() -> None:
    index, windows, packed = sample_index()
    data = serialize(index, packed)
    back = load(data, expected_digest=DIGEST)
    for field in ("layer_digest", "media_type", "compression", "blob_size", "tool"):
        assert getattr(back, field) == getattr(index, field)
    assert (back.uncompressed_size, back.span_size) == (3000, 1000)
    assert back.spans == index.spans
    keep = [*DENSE, *SPARSE]
    assert sorted(keep) == sorted(STORED_FIELDS)
    assert len(back.entries) == len(index.entries)
    assert [[getattr(e, f) for f in keep] for e in back.entries] == [
        [getattr(e, f) for f in keep] for e in index.entries
    ]
    assert [back.window(i) or b"" for i in range(3)] == windows
    assert serialize(back, packed) == data  # a parsed index writes back the same bytes


def test_the_documented_layout() -> None:
    index, _, packed = sample_index()
    data = serialize(index, packed)
    magic, version, flags, count, toc_off, toc_len, span_off, win_off, win_len, dir_len = (
        HEADER.unpack_from(data)
    )
    assert (magic, version, flags, count) == (b"SEEKOCIX", INDEX_VERSION, 0, 3)
    assert (toc_off, span_off) == (64, 64 + toc_len)
    assert 0 < dir_len < toc_len
    assert win_off == span_off + 3 * 120
    assert win_len == sum(map(len, packed)) and len(data) == win_off + win_len
    dctx = zstandard.ZstdDecompressor()
    directory_text = dctx.decompressobj().decompress(data[64 : 64 + dir_len])
    assert directory_text.isascii()
    directory = json.loads(directory_text)
    assert directory["layer_digest"] == DIGEST and directory["page_entries"] == 512
    page = data[64 + dir_len : span_off]  # four entries: one page
    assert directory["pages"] == {
        "count": [4],
        "low": ["abs"],
        "high": ["etc/caf\udce9"],
        "length": [len(page)],
        "sha256": [hashlib.sha256(page).hexdigest()],
        "start": [0],  # tar offset of the page's first header
        "digests_length": [0],  # format 6: its files' sha256s (unknown here: none stored)
        "digests_sha256": [""],
    }
    page_text = dctx.decompressobj().decompress(page)
    assert page_text.isascii()  # ASCII JSON: the non-UTF-8 name travels as a \udcXX escape
    assert json.loads(page_text) == DOCUMENTED_ENTRIES
    assert directory["span_pages"] == {
        "start": [0],
        "sha256": [hashlib.sha256(data[span_off:win_off]).hexdigest()],
    }
    offset = 0
    for i, span in enumerate(index.spans):
        cs, ce, us, ue, bits, woff, rlen, wlen, digest, wdigest = SPAN.unpack_from(
            data, span_off + 120 * i
        )
        assert rlen == wlen  # not chunked: a record is its packed window
        assert (cs, ce, us, ue, bits) == (
            span.compressed_start,
            span.compressed_end,
            span.uncompressed_start,
            span.uncompressed_end,
            span.bits,
        )
        assert (woff, wlen, digest.hex()) == (offset, len(packed[i]), span.digest)
        assert data[win_off + woff : win_off + woff + wlen] == packed[i]
        assert wdigest == (hashlib.sha256(packed[i]).digest() if packed[i] else bytes(32))
        offset += wlen


# The sample's entries, column by column as the entries module docstring documents them.
DOCUMENTED_ENTRIES = {
    "count": 4,
    "offsets": "gaps",
    "dense": {
        "name": ["etc", "etc/caf\udce9", "dev/null", "abs"],
        "type": ["dir", "file", "char", "symlink"],
        "size": [0, 500, 0, 0],
        "mode": [0o755, 0o4755, 0o666, 0o777],
        "uid": [0, 1000, 0, 0],
        "gid": [0, 100, 0, 0],
        "mtime": [1.5, 1_700_000_000.25, 0.0, 0.0],
        "header_offset": [0, 0, 0, 0],  # gaps: each where the tar format puts it
        "data_offset": [0, 0, 0, 0],
    },
    "sparse": {
        "linkname": [[3, "/etc"]],
        "uname": [[1, "me"]],
        "gname": [[1, "us"]],
        "devmajor": [[2, 1]],
        "devminor": [[2, 3]],
        "xattrs": [
            [
                1,
                {
                    "user.bin": base64.b64encode(b"\x00\xff\x80").decode(),
                    "security.selinux": base64.b64encode(b"ctx\x00").decode(),
                },
            ]
        ],
        "pax": [[1, {"comment": "hello"}]],
        "unsafe": [[3, True]],
    },
}


def test_an_index_of_another_layer_is_refused() -> None:
    index, _, packed = sample_index()
    with pytest.raises(FormatError, match="sha256:"):
        load(serialize(index, packed), expected_digest="sha256:" + "cd" * 32)


def test_every_truncation_is_a_format_error() -> None:
    index, _, packed = sample_index()
    data = serialize(index, packed)
    end = parse_header(data).metadata_end
    for n in range(end):
        with pytest.raises(FormatError):
            parse(data[:n], read_windows=None)


def test_damaged_bytes_give_a_format_error_or_a_consistent_index() -> None:
    index, _, packed = sample_index()
    data = serialize(index, packed)
    end = parse_header(data).metadata_end
    for at in range(end):
        for mask in (0x01, 0x80, 0xFF):
            damaged = bytearray(data)
            damaged[at] ^= mask
            try:
                back = load(bytes(damaged))
            except FormatError:
                continue
            assert_consistent(back)


def assert_consistent(index: LayerIndex) -> None:
    """What a reader relies on: spans tile [0, uncompressed_size), stay inside the blob, and
    every entry's data lies inside the layer."""
    assert index.spans and index.spans[0].uncompressed_start == 0
    assert index.spans[-1].uncompressed_end == index.uncompressed_size
    for a, b in zip(index.spans, index.spans[1:]):  # noqa: B905
        assert a.uncompressed_end == b.uncompressed_start
    for s in index.spans:
        assert 0 <= s.compressed_start <= s.compressed_end <= index.blob_size
        assert 0 <= s.bits <= 7
    for e in index.entries:
        assert e.data_offset >= 0 and e.data_offset + e.size <= index.uncompressed_size


# --------------------------------------------------------------------------- hostile files


def raw_index(
    toc: object,
    spans: list[tuple[int, int, int, int, int, int, int]],
    windows: bytes = b"",
    *,
    toc_bytes: bytes | None = None,
    version: int = INDEX_VERSION,
    magic: bytes = b"SEEKOCIX",
) -> bytes:
    """An index file with any table of contents and span records (cs, ce, us, ue, bits,
    woff, wlen) of spans that are not chunked (a record is the packed window).

    ``toc`` is the layer's identity plus ``entries``, the column-wise entries: they become
    the one entry page, the rest the directory (``toc_bytes``: the directory's bytes)."""
    records = [
        SPAN.pack(*s, s[6], bytes(32), hashlib.sha256(windows[s[5] : s[5] + s[6]]).digest())
        for s in spans
    ]
    pages = b""
    directory: object = toc
    if isinstance(toc, dict) and "entries" in toc:
        entries = toc["entries"]
        pages = zstandard.ZstdCompressor().compress(json.dumps(entries).encode("ascii"))
        count = entries.get("count") if isinstance(entries, dict) else 0
        try:
            names = entries["dense"]["name"]
            low = min(names, key=walk_key)
            high = max(names, key=walk_key)
        except Exception:
            low = high = ""
        directory = {k: v for k, v in toc.items() if k != "entries"}
        directory["page_entries"] = 512
        directory["pages"] = {
            "count": [count if type(count) is int and count >= 0 else 0],
            "low": [low],
            "high": [high],
            "length": [len(pages)],
            "sha256": [hashlib.sha256(pages).hexdigest()],
        }
        directory["span_pages"] = {
            "start": [spans[i][2] for i in range(0, len(spans), 64)],
            "sha256": [
                hashlib.sha256(b"".join(records[i : i + 64])).hexdigest()
                for i in range(0, len(spans), 64)
            ],
        }
    if toc_bytes is None:
        text = json.dumps(directory)  # ASCII JSON, \\udcXX for names that were not UTF-8
        toc_bytes = zstandard.ZstdCompressor().compress(text.encode("ascii"))
    toc_len = len(toc_bytes) + len(pages)
    span_off = 64 + toc_len
    win_off = span_off + 120 * len(spans)
    header = HEADER.pack(
        magic, version, 0, len(spans), 64, toc_len, span_off, win_off, len(windows),
        len(toc_bytes),
    )  # fmt: skip
    return header + toc_bytes + pages + b"".join(records) + windows


def good_toc() -> dict[str, Any]:
    """The sample's directory with its one entry page as ``entries``."""
    index, _, packed = sample_index()
    data = serialize(index, packed)
    header = parse_header(data)
    directory = json.loads(
        zstandard.ZstdDecompressor().decompressobj().decompress(data[64 : header.head_end])
    )
    page = (
        zstandard.ZstdDecompressor()
        .decompressobj()
        .decompress(data[header.head_end : header.span_offset])
    )
    toc = {k: v for k, v in directory.items() if k not in ("pages", "span_pages", "page_entries")}
    toc["entries"] = json.loads(page.decode("ascii"))
    return toc


GOOD_SPANS = [(10, 400, 0, 1000, 0, 0, 0), (400, 800, 1000, 2000, 0, 0, 0),
              (800, 1200, 2000, 3000, 0, 0, 0)]  # fmt: skip


def test_the_raw_writer_writes_what_parse_accepts() -> None:
    assert_consistent(load(raw_index(good_toc(), GOOD_SPANS)))


def toc_with(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    toc = copy.deepcopy(good_toc())
    change(toc)
    return toc


def entries_with(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    """The good TOC with ``change`` applied to its column-wise entries object."""
    return toc_with(lambda t: change(t["entries"]))


def set_dense(column: str, value: object, i: int = 1) -> dict[str, Any]:
    """The good TOC with entry ``i`` (the file, by default) given ``value`` in a dense column."""
    return entries_with(lambda e: e["dense"][column].__setitem__(i, value))


def set_sparse(column: str, pairs: object) -> dict[str, Any]:
    """The good TOC with a sparse column replaced by ``pairs``."""
    return entries_with(lambda e: e["sparse"].__setitem__(column, pairs))


def old_row_form(toc: dict[str, Any]) -> None:
    """The entries as version 1 wrote them: a field list and one row per entry."""
    fields = [*DENSE, *SPARSE]
    toc["entries"] = {"fields": fields, "entries": [[0] * len(fields)] * 4}


# Refused while the index is parsed: the whole TOC, the entries object, the shape of the
# columns, and every column a reader needs before it makes an entry (names, types, offsets).
HOSTILE_TOCS: dict[str, object] = {
    "a list": [1, 2],
    "null": None,
    "a number": 7,
    "no entries key": toc_with(lambda t: t.pop("entries")),
    "entries a string": toc_with(lambda t: t.update(entries="name,type")),
    "entries a list": toc_with(lambda t: t.update(entries=[["etc", "dir", 0]])),
    "entries an object": toc_with(lambda t: t.update(entries={"a": 1})),
    "entries null": toc_with(lambda t: t.update(entries=None)),
    "entries in the old row form": toc_with(old_row_form),
    "no count": entries_with(lambda e: e.pop("count")),
    "count as text": entries_with(lambda e: e.update(count="4")),
    "count a float": entries_with(lambda e: e.update(count=4.0)),
    "count null": entries_with(lambda e: e.update(count=None)),
    "a negative count": entries_with(lambda e: e.update(count=-1)),
    "count one short": entries_with(lambda e: e.update(count=3)),
    "count one over": entries_with(lambda e: e.update(count=5)),
    "no dense columns": entries_with(lambda e: e.pop("dense")),
    "dense a list": entries_with(lambda e: e.update(dense=list(e["dense"].values()))),
    "no sparse columns": entries_with(lambda e: e.pop("sparse")),
    "sparse a list": entries_with(lambda e: e.update(sparse=list(e["sparse"].values()))),
    "a dense column missing": entries_with(lambda e: e["dense"].pop("size")),
    "a dense column renamed": entries_with(
        lambda e: e["dense"].update(sizes=e["dense"].pop("size"))
    ),
    "a column too short": entries_with(lambda e: e["dense"]["mtime"].pop()),
    "a column too long": entries_with(lambda e: e["dense"]["name"].append("extra")),
    "a column empty": entries_with(lambda e: e["dense"]["uid"].clear()),
    "a column an object": entries_with(  # of the right length
        lambda e: e["dense"].update(uid={"0": 0, "1": 1, "2": 2, "3": 3})
    ),
    "a column a string": entries_with(lambda e: e["dense"].update(type="dirs")),
    "a column null": entries_with(lambda e: e["dense"].update(size=None)),
    "a column a number": entries_with(lambda e: e["dense"].update(data_offset=4)),
    "an unknown type": set_dense("type", "socket"),
    "a type null": set_dense("type", None),
    "a type a number": set_dense("type", 1),
    "a type a list": set_dense("type", ["file"]),
    "a name not a string": set_dense("name", 12),
    "a name null": set_dense("name", None),
    "a negative size": set_dense("size", -1),
    "a size as text": set_dense("size", "10"),
    "a float size": set_dense("size", 1000.0),
    "a size a bool": set_dense("size", True),
    "a negative header offset": set_dense("header_offset", -1),
    "a float header offset": set_dense("header_offset", 512.5),
    "a header offset a bool": set_dense("header_offset", False),
    "a negative data offset": set_dense("data_offset", -1024),
    "a float data offset": set_dense("data_offset", 1024.5),
    "a data offset a bool": set_dense("data_offset", True),
    "a data offset as text": set_dense("data_offset", "1024"),
    "a sparse index past the entries": set_sparse("linkname", [[3, "/etc"], [4, "/x"]]),
    "a sparse index far past the entries": set_sparse("uname", [[2**40, "me"]]),
    "a negative sparse index": set_sparse("unsafe", [[-1, True]]),
    "a sparse index as text": set_sparse("gname", [["one", "us"]]),
    "a sparse index null": set_sparse("gname", [[None, "us"]]),
    "a sparse pair too short": set_sparse("devmajor", [[2]]),
    "a sparse pair too long": set_sparse("devmajor", [[2, 1, 0]]),
    "a sparse pair a number": set_sparse("devminor", [2]),
    "a sparse column a number": set_sparse("pax", 1),
    "a sparse column null": set_sparse("xattrs", None),
    "a negative layer size": toc_with(lambda t: t.update(uncompressed_size=-5)),
    "a blob size as text": toc_with(lambda t: t.update(blob_size="1300")),
    "no layer digest": toc_with(lambda t: t.pop("layer_digest")),
    "an entry past the end": set_dense("size", 5000),
    "an entry starting past the end": set_dense("data_offset", 3001, i=0),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TOCS))
def test_a_hostile_table_of_contents(case: str) -> None:
    with pytest.raises(FormatError):
        load(raw_index(HOSTILE_TOCS[case], GOOD_SPANS))


# Columns read only when an entry is made: the index may parse, but making that entry is a
# FormatError (never another exception), and the other entries stay readable.
HOSTILE_ENTRIES: dict[str, object] = {
    "a mode as text": set_dense("mode", "rwx"),
    "a mode of infinity": set_dense("mode", 1e400),
    "a mode of NaN": set_dense("mode", float("nan")),
    "a mode null": set_dense("mode", None),
    "a uid as text": set_dense("uid", "root"),
    "a gid a list": set_dense("gid", [100]),
    "an mtime as text": set_dense("mtime", "yesterday"),
    "an mtime an object": set_dense("mtime", {"s": 1}),
    "a devmajor as text": set_sparse("devmajor", [[1, "eight"]]),
    "a devminor of infinity": set_sparse("devminor", [[1, 1e400]]),
    "xattrs a list": set_sparse("xattrs", [[1, [1, 2]]]),
    "xattrs as text": set_sparse("xattrs", [[1, "user.a=b"]]),
    "xattrs not base64": set_sparse("xattrs", [[1, {"user.a": "abc"}]]),
    "xattr values not text": set_sparse("xattrs", [[1, {"user.a": 5}]]),
    "pax a list": set_sparse("pax", [[1, [1]]]),
    "pax a number": set_sparse("pax", [[1, 7]]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ENTRIES))
def test_a_hostile_entry(case: str) -> None:
    try:
        index = load(raw_index(HOSTILE_ENTRIES[case], GOOD_SPANS))
    except FormatError:
        return  # refused even earlier: as good
    with pytest.raises(FormatError, match="entry 1"):
        index.entries[1]
    with pytest.raises(FormatError):
        list(index.entries)
    assert [index.entries[i].name for i in (0, 2, 3)] == ["etc", "dev/null", "abs"]


@pytest.mark.parametrize(
    "toc_bytes",
    [
        b"",
        b"not zstd",
        zstandard.ZstdCompressor().compress(b"{not json"),
        zstandard.ZstdCompressor().compress(b"\xff\xfe"),
        zstandard.ZstdCompressor().compress(b'{"a": 1}')[:-3],
        zlib.compress(b"{}"),
        zstandard.ZstdCompressor().compress(b"[" * 100_000),
    ],
    ids=["empty", "not zstd", "not json", "not utf-8", "cut zstd", "zlib (version 1)", "deep"],
)
def test_a_garbled_table_of_contents(toc_bytes: bytes) -> None:
    with pytest.raises(FormatError):
        load(raw_index(None, GOOD_SPANS, toc_bytes=toc_bytes))


def span_change(i: int, **fields: int) -> list[tuple[int, int, int, int, int, int, int]]:
    names = ("cs", "ce", "us", "ue", "bits", "woff", "wlen")
    spans = [dict(zip(names, s, strict=True)) for s in GOOD_SPANS]
    spans[i].update(fields)
    return [tuple(s[n] for n in names) for s in spans]  # type: ignore[misc]


HOSTILE_SPANS = {
    "no spans": [],
    "not starting at 0": span_change(0, us=1),
    "a gap": span_change(1, us=1001),
    "an overlap": span_change(1, us=999),
    "short of the end": span_change(2, ue=2999),
    "past the end": span_change(2, ue=3001),
    "past the blob": span_change(2, ce=1301),
    "compressed backwards": span_change(1, cs=900),
    "uncompressed backwards": span_change(1, ue=900),
    "eight bits": span_change(1, bits=8),
    "a window outside the index": span_change(1, woff=0, wlen=10),
    "a window offset past the area": span_change(1, woff=2**40, wlen=1),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_SPANS))
def test_hostile_span_records(case: str) -> None:
    with pytest.raises(FormatError):
        load(raw_index(good_toc(), HOSTILE_SPANS[case]))


@pytest.mark.parametrize(
    ("magic", "version"),
    [(b"SEEKOCIY", INDEX_VERSION), (b"SEEKOCIX", INDEX_VERSION + 1), (b"SEEKOCIX", 0)],
)
def test_another_magic_or_version(magic: bytes, version: int) -> None:
    with pytest.raises(FormatError):
        load(raw_index(good_toc(), GOOD_SPANS, magic=magic, version=version))


def test_inconsistent_section_offsets() -> None:
    data = bytearray(raw_index(good_toc(), GOOD_SPANS))
    struct.pack_into("<Q", data, 16, 65)  # TOC offset
    with pytest.raises(FormatError):
        parse_header(bytes(data))
    data = bytearray(raw_index(good_toc(), GOOD_SPANS))
    struct.pack_into("<Q", data, 32, 2**63)  # span table offset
    with pytest.raises(FormatError):
        parse_header(bytes(data))


BIG_WINDOWS = {
    # zstd frames of 40000 bytes: more than a 32 KiB window
    "big": zstandard.ZstdCompressor().compress(bytes(40_000)),
    "big, size not in the frame": zstandard.ZstdCompressor(write_content_size=False).compress(
        bytes(40_000)
    ),
}


@pytest.mark.parametrize("big_case", sorted(BIG_WINDOWS))
def test_windows_that_are_cut_corrupt_or_too_big(big_case: str) -> None:
    good = WindowPacker().pack(b"w" * 100)
    big = BIG_WINDOWS[big_case]
    spans = span_change(1, woff=0, wlen=len(good))
    spans = [*spans[:2], (800, 1200, 2000, 3000, 0, len(good), len(big))]
    data = raw_index(good_toc(), spans, good + big)
    index = load(data)
    assert index.window(0) is None
    assert index.window(1) == b"w" * 100
    with pytest.raises(FormatError):
        index.window(2)  # decompresses past 32 KiB
    header = parse_header(data)
    metadata = data[: header.metadata_end]
    cut = parse(metadata, read_windows=lambda off, n: data[off : off + n - 1])
    with pytest.raises(FormatError):
        cut.window(1)
    corrupt = parse(metadata, read_windows=lambda off, n: b"\x00" * n)
    with pytest.raises(FormatError):
        corrupt.window(1)
    # a window of the same length that is not zstd: zlib, as version 1 packed windows
    old = zlib.compress(b"w" * 100)[: len(good)].ljust(len(good), b"\x00")
    not_zstd = parse(metadata, read_windows=lambda off, n: old)
    with pytest.raises(FormatError):
        not_zstd.window(1)
    unavailable = parse(metadata, read_windows=None)
    with pytest.raises(FormatError):
        unavailable.window(1)


def claims_content_size(frame: bytes, size: int) -> bytes:
    """``frame`` (a single-segment zstd frame) with its header claiming ``size`` bytes."""
    descriptor = frame[4]
    assert descriptor & 0x20 and not descriptor & 0x03  # single segment, no dictionary id
    fcs_bytes = {0: 1, 1: 2, 2: 4, 3: 8}[descriptor >> 6]
    return (
        frame[:4]
        + bytes([descriptor | 0xC0])  # an 8-byte frame content size field
        + struct.pack("<Q", size)
        + frame[5 + fcs_bytes :]
    )


def test_a_window_that_claims_a_huge_size() -> None:
    """A hostile window whose frame header claims far more than 32 KiB is a FormatError,
    found before anything that size is allocated."""
    frame = claims_content_size(WindowPacker().pack(b"w" * 100), 2**62)
    assert zstandard.get_frame_parameters(frame).content_size == 2**62
    spans = span_change(1, woff=0, wlen=len(frame))
    index = load(raw_index(good_toc(), spans, frame))
    with pytest.raises(FormatError):
        index.window(1)


def test_kept_records_shared_by_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many threads fetch records of one index while old ones are evicted: each gets its
    own record, and no more than the bound are kept (this used to evict without a lock)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import seekoci.formats.index as index_module

    monkeypatch.setattr(index_module, "_RECORDS_KEPT", 3)
    count = 40
    records = [bytes([i]) * (100 + i) for i in range(count)]
    spans = [
        Span(i, i * 10, i * 10 + 10, i * 100, i * 100 + 100, "00" * 32, 0) for i in range(count)
    ]
    index = LayerIndex(
        layer_digest=DIGEST,
        media_type="application/vnd.oci.image.layer.v1.tar",
        compression="none",
        blob_size=count * 10,
        uncompressed_size=count * 100,
        span_size=100,
        spans=spans,
        entries=[],
        window_locations=[(i, len(records[i])) for i in range(count)],
        read_windows=lambda i, n: records[i],
    )
    start = threading.Barrier(8)

    def reader(seed: int) -> bool:
        start.wait(timeout=30)
        ok = True
        for k in range(400):
            i = (seed * 7 + k * 13) % count
            ok &= index.record(i) == records[i]
            ok &= len(index._records) <= 3
        return ok

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(reader, range(8)))
