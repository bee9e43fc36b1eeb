"""seekoci's index file: round trip, the documented layout, and hostile files (every one a
FormatError, never another exception, never an index that reads outside the layer)."""

from __future__ import annotations

import copy
import hashlib
import json
import struct
import zlib
from collections.abc import Callable
from typing import Any

import pytest

from seekoci.errors import FormatError
from seekoci.formats.base import Span
from seekoci.formats.index import (
    ENTRY_FIELDS,
    INDEX_VERSION,
    LayerIndex,
    parse,
    parse_header,
    serialize,
)
from seekoci.formats.tar import TarEntry

# The layout as the module docstring documents it (written out here, not imported).
HEADER = struct.Struct("<8sHHIQQQQQQ")
SPAN = struct.Struct("<QQQQB7xQI4x32s")
DIGEST = "sha256:" + "ab" * 32


def sample_index() -> tuple[LayerIndex, list[bytes], list[bytes]]:
    """An index of three spans over a 3000-byte layer, with the windows it carries."""
    entries = [
        TarEntry("etc", "dir", 0, 0o755, 0, 0, 1.5, header_offset=0, data_offset=512),
        TarEntry(
            "etc/caf\udce9",  # a name that was not UTF-8 in the tar
            "file",
            1000,
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
            header_offset=2048,
            data_offset=2560,
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
            header_offset=2560,
            data_offset=3000,
            unsafe=True,
        ),
    ]
    windows = [b"", b"w" * 32768, bytes(range(256)) * 10]
    packed = [zlib.compress(w) if w else b"" for w in windows]
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
    keep = [f for f in ENTRY_FIELDS]
    assert [[getattr(e, f) for f in keep] for e in back.entries] == [
        [getattr(e, f) for f in keep] for e in index.entries
    ]
    assert [back.window(i) or b"" for i in range(3)] == windows


def test_the_documented_layout() -> None:
    index, _, packed = sample_index()
    data = serialize(index, packed)
    magic, version, flags, count, toc_off, toc_len, span_off, win_off, win_len, reserved = (
        HEADER.unpack_from(data)
    )
    assert (magic, version, flags, count, reserved) == (b"SEEKOCIX", INDEX_VERSION, 0, 3, 0)
    assert (toc_off, span_off) == (64, 64 + toc_len)
    assert win_off == span_off + 3 * 88
    assert win_len == sum(map(len, packed)) and len(data) == win_off + win_len
    toc = json.loads(zlib.decompress(data[toc_off:span_off]).decode("utf-8", "surrogateescape"))
    assert toc["fields"] == list(ENTRY_FIELDS)
    assert toc["layer_digest"] == DIGEST
    offset = 0
    for i, span in enumerate(index.spans):
        cs, ce, us, ue, bits, woff, wlen, digest = SPAN.unpack_from(data, span_off + 88 * i)
        assert (cs, ce, us, ue, bits) == (
            span.compressed_start,
            span.compressed_end,
            span.uncompressed_start,
            span.uncompressed_end,
            span.bits,
        )
        assert (woff, wlen, digest.hex()) == (offset, len(packed[i]), span.digest)
        assert data[win_off + woff : win_off + woff + wlen] == packed[i]
        offset += wlen


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
    """An index file with any TOC and span records (cs, ce, us, ue, bits, woff, wlen)."""
    if toc_bytes is None:
        text = json.dumps(toc)  # the writer's encoding: ASCII JSON, \udcXX for non-UTF-8 names
        toc_bytes = zlib.compress(text.encode("ascii"))
    span_off = 64 + len(toc_bytes)
    win_off = span_off + 88 * len(spans)
    header = HEADER.pack(
        magic, version, 0, len(spans), 64, len(toc_bytes), span_off, win_off, len(windows), 0
    )
    records = b"".join(SPAN.pack(*s, bytes(32)) for s in spans)
    return header + toc_bytes + records + windows


def good_toc() -> dict[str, Any]:
    index, _, packed = sample_index()
    data = serialize(index, packed)
    header = parse_header(data)
    raw = zlib.decompress(data[header.toc_offset : header.span_offset])
    return json.loads(raw.decode("utf-8", "surrogateescape"))


GOOD_SPANS = [(10, 400, 0, 1000, 0, 0, 0), (400, 800, 1000, 2000, 0, 0, 0),
              (800, 1200, 2000, 3000, 0, 0, 0)]  # fmt: skip


def test_the_raw_writer_writes_what_parse_accepts() -> None:
    assert_consistent(load(raw_index(good_toc(), GOOD_SPANS)))


def toc_with(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    toc = copy.deepcopy(good_toc())
    change(toc)
    return toc


def set_row(i: int, value: object) -> Callable[[dict[str, Any]], None]:
    def change(toc: dict[str, Any]) -> None:
        toc["entries"][1][i] = value

    return change


HOSTILE_TOCS: dict[str, object] = {
    "a list": [1, 2],
    "null": None,
    "a number": 7,
    "unknown fields": toc_with(lambda t: t.update(fields=["name", "type"])),
    "no entries key": toc_with(lambda t: t.pop("entries")),
    "entries a string": toc_with(lambda t: t.update(entries="name,type")),
    "entries an object": toc_with(lambda t: t.update(entries={"a": 1})),
    "entries null": toc_with(lambda t: t.update(entries=None)),
    "a row too short": toc_with(lambda t: t["entries"][1].pop()),
    "a row a number": toc_with(lambda t: t["entries"].__setitem__(1, 5)),
    "an unknown type": toc_with(set_row(1, "socket")),
    "a name not a string": toc_with(set_row(0, 12)),
    "a negative size": toc_with(set_row(2, -1)),
    "a size as text": toc_with(set_row(2, "10")),
    "a float offset": toc_with(set_row(14, 1024.5)),
    "a mode as text": toc_with(set_row(3, "rwx")),
    "a mode of infinity": toc_with(set_row(3, 1e400)),
    "a mode of NaN": toc_with(set_row(3, float("nan"))),
    "an mtime as text": toc_with(set_row(6, "yesterday")),
    "xattrs a list": toc_with(set_row(12, [1, 2])),
    "xattrs not base64": toc_with(set_row(12, {"user.a": "abc"})),
    "pax a list": toc_with(set_row(15, [1])),
    "a negative layer size": toc_with(lambda t: t.update(uncompressed_size=-5)),
    "a blob size as text": toc_with(lambda t: t.update(blob_size="1300")),
    "no layer digest": toc_with(lambda t: t.pop("layer_digest")),
    "an entry past the end": toc_with(set_row(2, 5000)),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TOCS))
def test_a_hostile_table_of_contents(case: str) -> None:
    with pytest.raises(FormatError):
        load(raw_index(HOSTILE_TOCS[case], GOOD_SPANS))


@pytest.mark.parametrize(
    "toc_bytes",
    [b"", b"not zlib", zlib.compress(b"{not json"), zlib.compress(b"\xff\xfe"), b"x\x9c"],
    ids=["empty", "not zlib", "not json", "not utf-8", "cut zlib"],
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


def test_windows_that_are_cut_corrupt_or_too_big() -> None:
    good = zlib.compress(b"w" * 100)
    big = zlib.compress(bytes(40_000))
    spans = span_change(1, woff=0, wlen=len(good))
    spans = [*spans[:2], (800, 1200, 2000, 3000, 0, len(good), len(big))]
    data = raw_index(good_toc(), spans, good + big)
    index = load(data)
    assert index.window(0) is None
    assert index.window(1) == b"w" * 100
    with pytest.raises(FormatError):
        index.window(2)  # inflates past 32 KiB
    header = parse_header(data)
    metadata = data[: header.metadata_end]
    cut = parse(metadata, read_windows=lambda off, n: data[off : off + n - 1])
    with pytest.raises(FormatError):
        cut.window(1)
    corrupt = parse(metadata, read_windows=lambda off, n: b"\x00" * n)
    with pytest.raises(FormatError):
        corrupt.window(1)
    unavailable = parse(metadata, read_windows=None)
    with pytest.raises(FormatError):
        unavailable.window(1)
