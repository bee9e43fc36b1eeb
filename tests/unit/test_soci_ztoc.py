"""SOCI zTOCs: the reference checkpoint vectors, the table of contents against ``tarfile``,
resuming at every checkpoint through a LayerIndex, encode/decode round trips and hostile
zTOCs (always a FormatError, quickly)."""

from __future__ import annotations

import dataclasses
import decimal
import functools
import hashlib
import io
import itertools
import json
import struct
import tarfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from layers import (
    CI,
    VECTORS,
    Entry,
    block,
    build_tar,
    char,
    compress_layer,
    dir,
    end_of_archive,
    fifo,
    file,
    hardlink,
    member,
    pax_member,
    pax_record,
    random_bytes,
    raw_header,
    symlink,
    text_bytes,
)

from seekoci import soci
from seekoci.errors import FormatError
from seekoci.formats import CODECS
from seekoci.formats.index import LayerIndex
from seekoci.formats.ztoc import (
    CHECKPOINT_RECORD_SIZE,
    Checkpoint,
    Ztoc,
    ZtocFile,
    decode_ztoc,
    encode_ztoc,
    format_mod_time,
    gzip_checkpoints_blob,
    parse_gzip_checkpoints,
    parse_mod_time,
    parse_tar_zinfo,
    tar_zinfo_blob,
    ztoc_from_blob,
)

SOCI = VECTORS / "soci"
SPAN = 65536
GZIP_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR_TYPE = "application/vnd.oci.image.layer.v1.tar"
GO_TYPES = {
    tarfile.REGTYPE: "reg",
    tarfile.AREGTYPE: "reg",
    tarfile.CONTTYPE: "reg",
    tarfile.LNKTYPE: "hardlink",
    tarfile.SYMTYPE: "symlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.DIRTYPE: "dir",
    tarfile.FIFOTYPE: "fifo",
}


@functools.cache
def vectors() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((SOCI / "vectors.json").read_text())
    return doc


@functools.cache
def reference_blobs() -> tuple[bytes, bytes, bytes]:
    """(layer.tar.gz, layer.tar, the reference checkpoint blob)."""
    return (
        (SOCI / "layer.tar.gz").read_bytes(),
        (SOCI / "layer.tar").read_bytes(),
        (SOCI / "layer.tar.gz.zinfo").read_bytes(),
    )


@functools.cache
def reference_ztoc(name: str = "layer.tar.gz") -> bytes:
    with open(SOCI / name, "rb") as f:
        return soci.build_ztoc(f, span_size=SPAN)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_index(ztoc: Ztoc, blob: bytes, media_type: str = GZIP_TYPE) -> LayerIndex:
    return soci.ztoc_to_layer_index(
        ztoc, layer_digest=sha256(blob), media_type=media_type, blob_size=len(blob)
    )


def decode_all(index: LayerIndex, blob: bytes) -> bytes:
    """The uncompressed stream the index describes, span by span, each span verified."""
    codec = CODECS[index.compression]
    out = []
    for span in index.spans:
        data = blob[span.compressed_start : span.compressed_end]
        assert hashlib.sha256(data).hexdigest() == span.digest
        out.append(codec.decode_span(span, data, index.window(span.index)))
    return b"".join(out)


def tar_end(tar: bytes) -> int:
    """Where Go's archive/tar stops reading: after the last entry and two zero blocks."""
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        members = tf.getmembers()
    end = 0
    if members:
        last = members[-1]
        end = last.offset_data + (last.size if last.isreg() else 0)
        end += -end % 512
    return min(len(tar), end + 1024)


def mtime_ns(m: tarfile.TarInfo) -> int:
    """A member's mtime in exact nanoseconds (tarfile's float loses the last digits)."""
    if "mtime" in m.pax_headers:
        return int(decimal.Decimal(m.pax_headers["mtime"]) * 1_000_000_000)
    return int(m.mtime) * 1_000_000_000


def check_against_tarfile(ztoc: Ztoc, tar: bytes) -> None:
    """Every tar member, in order, as Python's tarfile reads it; file bytes at the offsets."""
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        members = tf.getmembers()
        assert len(ztoc.files) == len(members)
        for f, m in zip(ztoc.files, members, strict=True):
            assert f.name.rstrip("/") == m.name  # tarfile drops a directory's trailing "/"
            assert f.type == GO_TYPES[m.type]
            assert f.uncompressed_offset == m.offset_data
            assert f.uncompressed_size == (m.size if m.isreg() else 0)
            assert (f.linkname, f.mode, f.uid, f.gid) == (m.linkname, m.mode, m.uid, m.gid)
            assert (f.uname, f.gname) == (m.uname, m.gname)
            if m.ischr() or m.isblk():
                assert (f.devmajor, f.devminor) == (m.devmajor, m.devminor)
            assert parse_mod_time(f.mod_time) == mtime_ns(m)
            assert {k: v.decode("utf-8", "surrogateescape") for k, v in f.xattrs.items()} == (
                m.pax_headers
            )
            assert list(f.xattrs) == sorted(f.xattrs)
            if m.isreg():
                data = tar[f.uncompressed_offset : f.uncompressed_offset + f.uncompressed_size]
                extracted = tf.extractfile(m)
                assert extracted is not None
                assert data == extracted.read()
    assert ztoc.uncompressed_size == tar_end(tar)


# --------------------------------------------------------------------------- reference vectors


def test_checkpoints_are_the_reference_bytes() -> None:
    blob, _, zinfo = reference_blobs()
    case = vectors()["cases"]["layer.tar.gz"]
    ztoc = soci.read_ztoc(reference_ztoc())
    assert ztoc.checkpoints == zinfo
    assert sha256(ztoc.checkpoints) == case["zinfo_sha256"]
    assert ztoc.span_digests == case["span_digests"]
    assert ztoc.max_span_id == case["max_span_id"] == 18
    assert ztoc.compression_algorithm == "gzip"
    assert ztoc.version == "0.9"
    assert ztoc.build_tool_identifier.startswith("seekoci ")
    assert ztoc.compressed_size == len(blob) == case["layer_size"]
    span_size, points = parse_gzip_checkpoints(ztoc.checkpoints)
    assert span_size == SPAN
    got = [
        {"in": p.compressed_offset, "out": p.uncompressed_offset, "bits": p.bits} for p in points
    ]
    assert got == case["checkpoints"]


def test_the_checkpoint_blob_round_trips() -> None:
    _, _, zinfo = reference_blobs()
    span_size, points = parse_gzip_checkpoints(zinfo)
    assert gzip_checkpoints_blob(span_size, points) == zinfo
    # windows shorter than 32 KiB (near the start of the stream) are zero-padded in front
    short = [dataclasses.replace(points[0], window=b""), *points[1:]]
    assert gzip_checkpoints_blob(span_size, short) == zinfo


def test_resuming_at_every_checkpoint_gives_the_tar() -> None:
    blob, tar, _ = reference_blobs()
    ztoc = soci.read_ztoc(reference_ztoc())
    index = layer_index(ztoc, blob)
    assert not index.windows_packed
    assert len(index.spans) == 19
    assert index.window_locations[0] == (0, 0)  # nothing before out = 0
    assert all(length == 32768 for _, length in index.window_locations[1:])
    # the index ends where the tar ends (the zTOC's uncompressed size)
    assert decode_all(index, blob) == tar[: index.uncompressed_size]
    # decoded on to the end of the stream, the last span gives the whole layer.tar
    last = dataclasses.replace(index.spans[-1], uncompressed_end=vectors()["uncompressed_tar_size"])
    data = blob[last.compressed_start : last.compressed_end]
    window = index.window(last.index)
    whole = decode_all(dataclasses.replace(index, spans=index.spans[:-1]), blob)
    whole += CODECS["gzip"].decode_span(last, data, window)
    assert sha256(whole) == "sha256:" + vectors()["uncompressed_tar_sha256"]


def test_each_span_decodes_on_its_own() -> None:
    blob, tar, _ = reference_blobs()
    index = layer_index(soci.read_ztoc(reference_ztoc()), blob)
    for span in index.spans:
        data = blob[span.compressed_start : span.compressed_end]
        out = CODECS["gzip"].decode_span(span, data, index.window(span.index))
        assert out == tar[span.uncompressed_start : span.uncompressed_end]


def test_legacy_checkpoint_blob_without_checkpoint_0() -> None:
    blob, tar, zinfo = reference_blobs()
    legacy = zinfo[:12] + zinfo[12 + CHECKPOINT_RECORD_SIZE :]
    span_size, points = parse_gzip_checkpoints(legacy)
    _, full = parse_gzip_checkpoints(zinfo)
    assert span_size == SPAN
    assert points[0] == Checkpoint(10, 0, 0, bytes(32768))
    assert points == full  # the reference's checkpoint 0 is exactly the implied one
    ztoc = dataclasses.replace(soci.read_ztoc(reference_ztoc()), checkpoints=legacy)
    decoded = decode_ztoc(encode_ztoc(ztoc))
    assert decoded.checkpoints == legacy
    index = layer_index(decoded, blob)
    assert index.window_locations[0] == (0, 0)
    assert decode_all(index, blob) == tar[: index.uncompressed_size]


def test_table_of_contents_matches_tarfile() -> None:
    blob, tar, _ = reference_blobs()
    ztoc = soci.read_ztoc(reference_ztoc())
    check_against_tarfile(ztoc, tar)
    assert ztoc.files[0].name == "etc/"  # as stored: Go keeps the trailing slash
    assert ztoc.files[0].mod_time == "2023-11-14T22:13:20Z"
    index = layer_index(ztoc, blob)
    stream = decode_all(index, blob)
    for entry, f in zip(index.entries, ztoc.files, strict=True):
        assert entry.raw_name == f.name
        assert entry.name == f.name.rstrip("/")
        assert entry.data_offset == f.uncompressed_offset
        if entry.type == "file":
            data = stream[entry.data_offset : entry.data_offset + entry.size]
            assert data == tar[f.uncompressed_offset : f.uncompressed_offset + f.uncompressed_size]
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        assert [e.header_offset for e in index.entries] == [m.offset for m in tf.getmembers()]


def test_uncompressed_layer() -> None:
    _, tar, _ = reference_blobs()
    ztoc = soci.read_ztoc(reference_ztoc("layer.tar"))
    assert ztoc.compression_algorithm == "uncompressed"
    assert parse_tar_zinfo(ztoc.checkpoints) == (SPAN, len(tar))
    assert ztoc.compressed_size == len(tar)
    slices = [tar[i : i + SPAN] for i in range(0, len(tar), SPAN)]
    assert ztoc.max_span_id == len(slices) - 1 == 24
    assert ztoc.span_digests == [sha256(s) for s in slices]
    check_against_tarfile(ztoc, tar)
    index = layer_index(ztoc, tar, TAR_TYPE)
    assert index.compression == "none"
    assert index.uncompressed_size == len(tar)
    assert decode_all(index, tar) == tar


def test_tar_zinfo_forms() -> None:
    blob = tar_zinfo_blob(4 << 20, 123456789)
    assert parse_tar_zinfo(blob) == (4 << 20, 123456789)
    # older builders wrote the three integers raw
    assert parse_tar_zinfo(struct.pack("<iqq", 2, 65536, 1000)) == (65536, 1000)
    for bad in (b"", b"\x00" * 3, struct.pack("<iqq", 2, 0, 1000), b"\xff" * 64):
        with pytest.raises(FormatError):
            parse_tar_zinfo(bad)


def test_a_tar_whose_size_is_a_multiple_of_the_span() -> None:
    tar = build_tar([file("a", text_bytes("m", 9000))])
    assert len(tar) % 1024 == 0
    ztoc = ztoc_from_blob(io.BytesIO(tar), 1024)
    assert ztoc.max_span_id == len(tar) // 1024 - 1  # SOCI's MaxSpanID: no empty last span
    assert decode_ztoc(encode_ztoc(ztoc)) == ztoc


# --------------------------------------------------------------------------- mod_time


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (1_700_000_000 * 10**9, "2023-11-14T22:13:20Z"),
        (1_700_000_000 * 10**9 + 500_000_000, "2023-11-14T22:13:20.5Z"),
        (1_700_000_000 * 10**9 + 1, "2023-11-14T22:13:20.000000001Z"),
        (0, "1970-01-01T00:00:00Z"),
        (-1_500_000_000, "1969-12-31T23:59:58.5Z"),
        (253402300799 * 10**9, "9999-12-31T23:59:59Z"),
        (253402300800 * 10**9, ""),  # year 10000: Go's MarshalText fails, SOCI writes ""
        (-62167219200 * 10**9, "0000-01-01T00:00:00Z"),
        (-62167219201 * 10**9, ""),
    ],
)
def test_mod_time_is_go_marshal_text(ns: int, text: str) -> None:
    assert format_mod_time(ns) == text
    if text:
        assert parse_mod_time(text) == ns


def test_mod_time_parsing() -> None:
    assert parse_mod_time("2023-11-14T23:13:20+01:00") == 1_700_000_000 * 10**9
    assert parse_mod_time("2023-11-14T21:13:20.25-01:00") == 1_700_000_000 * 10**9 + 250_000_000
    for bad in ("", "yesterday", "2023-13-01T00:00:00Z", "2023-11-14 22:13:20Z"):
        assert parse_mod_time(bad) is None


@CI
@given(st.integers(min_value=-62167219200 * 10**9, max_value=253402300799 * 10**9 + 999999999))
def test_mod_time_round_trips(ns: int) -> None:
    assert parse_mod_time(format_mod_time(ns)) == ns


# --------------------------------------------------------------------------- what Go sees


def every_kind() -> list[Entry]:
    return [
        dir("etc"),
        file("etc/passwd", b"root:x:0:0\n", uid=1000, gid=100, xattrs={"user.k": b"\x00\xffv"}),
        file("etc/frac", b"x", mtime=1_700_000_000.25),
        file("d/" + "long" * 40, text_bytes("l", 3000)),
        file("d/n\u00e9", b"accent"),
        symlink("etc/sh", "/bin/busybox"),
        hardlink("etc/passwd2", "etc/passwd"),
        char("dev/null", 1, 3),
        block("dev/sda", 8, 0),
        fifo("run/fifo"),
        file("empty", b""),
    ]


@pytest.mark.parametrize("tar_format", ["pax", "gnu", "ustar"])
@pytest.mark.parametrize("producer", ["python", "none", "multi-member"])
def test_every_entry_kind(tar_format: str, producer: str) -> None:
    entries = every_kind()
    if tar_format != "pax":
        entries = [dataclasses.replace(e, xattrs=None, mtime=int(e.mtime)) for e in entries]
    if tar_format == "ustar":
        entries = [e for e in entries if len(e.name) < 100 and e.name.isascii()]
    tar = build_tar(entries, tar_format)
    blob = compress_layer(tar, producer)
    ztoc = soci.read_ztoc(soci.build_ztoc(io.BytesIO(blob), span_size=4096))
    check_against_tarfile(ztoc, tar)
    media_type = TAR_TYPE if producer == "none" else GZIP_TYPE
    index = layer_index(ztoc, blob, media_type)
    stream = decode_all(index, blob)
    by_name = {e.name: e for e in index.entries}
    for e in entries:
        got = by_name[e.name]
        assert got.type == e.type
        if e.type == "file":
            assert stream[got.data_offset : got.data_offset + got.size] == e.data
        if e.xattrs:
            assert got.xattrs == dict(e.xattrs)
        if e.type in ("char", "block"):
            assert (got.devmajor, got.devminor) == (e.devmajor, e.devminor)
    if tar_format == "pax":
        assert by_name["etc/frac"].mtime == 1_700_000_000.25


def test_pax_records_are_listed_as_xattrs() -> None:
    tar = build_tar([file("a", b"1", mtime=1_700_000_000.5, xattrs={"security.x": b"\x01"})])
    ztoc = ztoc_from_blob(io.BytesIO(tar), SPAN)
    (f,) = ztoc.files
    assert f.xattrs == {"SCHILY.xattr.security.x": b"\x01", "mtime": b"1700000000.5"}
    assert f.mod_time == "2023-11-14T22:13:20.5Z"


def test_v7_directory_and_slash_named_regular_file() -> None:
    # "\0" with a trailing slash is a directory to Go; "0" with one stays a regular file
    tar = (
        member(raw_header("old/", typeflag=b"\x00", magic=b"\x00" * 8))
        + member(raw_header("odd/", typeflag=b"0", size=3), b"abc")
        + member(raw_header("plain", typeflag=b"\x00", size=2), b"hi")
        + member(raw_header("cont", typeflag=b"7", size=1), b"c")
        + end_of_archive()
    )
    ztoc = ztoc_from_blob(io.BytesIO(tar), SPAN)
    assert [(f.name, f.type, f.uncompressed_size) for f in ztoc.files] == [
        ("old/", "dir", 0),
        ("odd/", "reg", 3),
        ("plain", "reg", 2),
        ("cont", "reg", 1),
    ]
    assert ztoc.uncompressed_size == len(tar)
    assert decode_ztoc(encode_ztoc(ztoc)) == ztoc


@pytest.mark.parametrize(
    "tar",
    [
        # a global PAX header: Go returns it as an entry, SOCI refuses it
        pax_member(pax_record("comment", "x"), typeflag=b"g")
        + member(raw_header("a", size=1), b"a")
        + end_of_archive(),
        member(raw_header("a", size=1), b"a")
        + pax_member(pax_record("comment", "x"), typeflag=b"g")
        + member(raw_header("b", size=1), b"b")
        + end_of_archive(),
        member(raw_header("dump", typeflag=b"D")) + end_of_archive(),  # GNU dumpdir
        member(raw_header("what", typeflag=b"Z", size=1), b"z") + end_of_archive(),
        member(raw_header("vol", typeflag=b"V")) + member(raw_header("a")) + end_of_archive(),
        # a lone zero block in the middle: Go stops with ErrHeader
        member(raw_header("a")) + bytes(512) + member(raw_header("b")) + end_of_archive(),
    ],
    ids=["global-first", "global-middle", "dumpdir", "unknown", "volume", "zero-block"],
)
def test_tars_soci_cannot_describe(tar: bytes) -> None:
    with pytest.raises(FormatError):
        ztoc_from_blob(io.BytesIO(tar), SPAN)


def test_zstd_and_garbage_blobs_are_refused() -> None:
    tar = build_tar([file("a", b"1")])
    for blob in (compress_layer(tar, "zstd"), b"not a tar at all" * 64, tar[:700]):
        with pytest.raises(FormatError):
            soci.build_ztoc(io.BytesIO(blob))


def test_chunked_input_and_tar_end() -> None:
    tar = build_tar([file("a", text_bytes("c", 5000)), dir("b")])
    blob = compress_layer(tar, "python")
    whole = ztoc_from_blob(io.BytesIO(blob), 2048)
    pieces = ztoc_from_blob((blob[i : i + 7] for i in range(0, len(blob), 7)), 2048)
    assert whole == pieces
    assert whole.uncompressed_size == tar_end(tar) < len(tar)  # tarfile pads to 10 KiB
    # no end-of-archive blocks at all: Go's reader stops at the end of the stream
    bare = tar[: tar_end(tar) - 1024]
    assert ztoc_from_blob(io.BytesIO(bare), 2048).uncompressed_size == len(bare)


def test_build_tool_identifier() -> None:
    blob = soci.build_ztoc(
        io.BytesIO(build_tar([file("a")])), build_tool_identifier="AWS SOCI CLI v0.2"
    )
    assert soci.read_ztoc(blob).build_tool_identifier == "AWS SOCI CLI v0.2"


def test_index_refuses_the_wrong_blob_size() -> None:
    blob, _, _ = reference_blobs()
    ztoc = soci.read_ztoc(reference_ztoc())
    with pytest.raises(FormatError, match="blob"):
        soci.ztoc_to_layer_index(
            ztoc, layer_digest=sha256(blob), media_type=GZIP_TYPE, blob_size=len(blob) + 1
        )


# --------------------------------------------------------------------------- round trips


def full_ztoc() -> Ztoc:
    """A zTOC with every field set to something other than its default."""
    tar = build_tar(every_kind())
    ztoc = ztoc_from_blob(io.BytesIO(compress_layer(tar, "python")), 4096)
    ztoc.files.append(
        ZtocFile(
            name="bad/\udcff\udcfe",  # a name that was not UTF-8 in the tar
            type="char",
            uncompressed_offset=ztoc.files[-1].uncompressed_offset + 512,
            uncompressed_size=0,
            linkname="\u00fc",
            mode=0o7777,
            uid=2**32 - 1,
            gid=65534,
            uname="u",
            gname="g",
            mod_time="2023-11-14T22:13:20.123456789Z",
            devmajor=2**40,
            devminor=-1,
            xattrs={"SCHILY.xattr.a": bytes(range(256)), "z": b""},
        )
    )
    ztoc.uncompressed_size += 512
    return ztoc


def test_round_trip_every_field() -> None:
    ztoc = full_ztoc()
    blob = encode_ztoc(ztoc)
    decoded = decode_ztoc(blob)
    assert decoded == ztoc
    assert encode_ztoc(decoded) == blob
    assert decode_ztoc(blob + b"---SOCI-PREFETCH---[]") == ztoc  # newer builders' suffix


@st.composite
def trees(draw: st.DrawFn) -> list[Entry]:
    count = draw(st.integers(min_value=0, max_value=12))
    entries: list[Entry] = []
    for i in range(count):
        kind = draw(st.sampled_from(["file", "file", "file", "dir", "symlink", "fifo"]))
        name = f"d{i % 3}/e{i}" + draw(st.sampled_from(["", "\u00e9", "x" * 120]))
        if kind == "file":
            size = draw(st.sampled_from([0, 1, 511, 512, 513, 4000, 20000]))
            data = random_bytes(f"{i}-{size}", size) if draw(st.booleans()) else bytes(size)
            xattrs = draw(
                st.none()
                | st.dictionaries(st.sampled_from(["user.a", "user.b"]), st.binary(max_size=8))
            )
            mtime = draw(st.sampled_from([1_700_000_000, 1_700_000_000.5, 0, 86400 * 365 * 200]))
            entries.append(file(name, data, mode=0o755, uid=i, xattrs=xattrs or None, mtime=mtime))
        elif kind == "dir":
            entries.append(dir(name))
        elif kind == "symlink":
            entries.append(symlink(name, "../" + "t" * draw(st.integers(1, 150))))
        else:
            entries.append(fifo(name))
    return entries


@CI
@given(
    trees(),
    st.sampled_from(["python", "none", "small-blocks"]),
    st.sampled_from([512, 3000, 16384]),
)
def test_random_tars_round_trip(entries: list[Entry], producer: str, span_size: int) -> None:
    tar = build_tar(entries)
    blob = compress_layer(tar, producer)
    raw = soci.build_ztoc(io.BytesIO(blob), span_size=span_size)
    ztoc = soci.read_ztoc(raw)
    assert encode_ztoc(ztoc) == raw
    check_against_tarfile(ztoc, tar)
    index = layer_index(ztoc, blob, TAR_TYPE if producer == "none" else GZIP_TYPE)
    assert decode_all(index, blob) == tar[: index.uncompressed_size]
    if producer != "none":
        span_size_, points = parse_gzip_checkpoints(ztoc.checkpoints)
        assert span_size_ == span_size
        outs = [p.uncompressed_offset for p in points]
        # SOCI's rule: a new checkpoint only once more than span_size bytes came out
        assert all(b - a > span_size for a, b in itertools.pairwise(outs))


# --------------------------------------------------------------------------- hostile zTOCs


@functools.cache
def small_ztoc(producer: str = "small-blocks") -> bytes:
    """A few spans (gzip: a 32 KiB window each), a directory, a file and a symlink."""
    tar = build_tar([dir("a"), file("a/b", text_bytes("s", 3000)), symlink("a/c", "b")])
    return soci.build_ztoc(io.BytesIO(compress_layer(tar, producer)), span_size=1024)


def assert_rejected_or_valid(data: bytes) -> None:
    """A FormatError or a zTOC that passed every check; never anything else, never slow."""
    start = time.monotonic()
    try:
        decode_ztoc(data)
    except FormatError:
        pass
    assert time.monotonic() - start < 1


@pytest.mark.parametrize("producer", ["small-blocks", "none"])
def test_truncated_ztocs(producer: str) -> None:
    data = small_ztoc(producer)
    for n in range(0, len(data), 7):
        with pytest.raises(FormatError):
            decode_ztoc(data[:n])


def structurally_damaged(producer: str) -> Iterator[bytes]:
    """The small zTOC of ``producer`` with each byte in turn flipped three ways, all but the
    bytes of checkpoint windows (opaque data: any value is valid)."""
    data = small_ztoc(producer)
    ztoc = decode_ztoc(data)
    start = data.find(ztoc.checkpoints)
    windows = [
        range(
            start + 12 + k * CHECKPOINT_RECORD_SIZE + 17,
            start + 12 + (k + 1) * CHECKPOINT_RECORD_SIZE,
        )
        for k in range(ztoc.max_span_id + 1)
        if producer != "none"
    ]
    for i in range(len(data)):
        if any(i in w for w in windows):
            continue
        for flip in (0x01, 0x80, 0xFF):
            damaged = bytearray(data)
            damaged[i] ^= flip
            yield bytes(damaged)


@pytest.mark.parametrize("producer", ["small-blocks", "none"])
def test_every_structural_byte_damaged(producer: str) -> None:
    for damaged in structurally_damaged(producer):
        assert_rejected_or_valid(damaged)


@CI
@given(st.binary(max_size=300))
def test_garbage(data: bytes) -> None:
    assert_rejected_or_valid(data)


def test_garbage_bytes() -> None:
    for data in (b"", b"\x00", b"\x00" * 4, b"\xff" * 100, b"\x04\x00\x00\x00" * 50, b"zTOC" * 999):
        with pytest.raises(FormatError):
            decode_ztoc(data)


def test_a_vector_longer_than_the_buffer() -> None:
    data = bytearray(small_ztoc())
    # the root table's uoffset + vtable lead to fields; instead, claim a huge length for the
    # last string of the buffer (the version string, written first, sits at the end)
    at = len(data) - 8  # "0.9\0" is preceded by its u32 length
    assert data[at : at + 4] == struct.pack("<I", 3)
    data[at : at + 4] = struct.pack("<I", 0x7FFFFFF0)
    with pytest.raises(FormatError, match="does not fit"):
        decode_ztoc(bytes(data))


def mutated(**changes: Any) -> bytes:
    ztoc = decode_ztoc(small_ztoc())
    files = changes.pop("files", None)
    ztoc = dataclasses.replace(ztoc, **changes)
    if files is not None:
        ztoc.files = files(ztoc.files)
    return encode_ztoc(ztoc)


def shift(files: list[ZtocFile], index: int, by: int) -> list[ZtocFile]:
    files[index] = dataclasses.replace(
        files[index], uncompressed_offset=files[index].uncompressed_offset + by
    )
    return files


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda z: {"max_span_id": z.max_span_id + 1}, id="more-spans"),
        pytest.param(lambda z: {"max_span_id": z.max_span_id - 1}, id="fewer-spans"),
        pytest.param(lambda z: {"max_span_id": -1}, id="no-spans"),
        pytest.param(lambda z: {"span_digests": z.span_digests[:-1]}, id="digest-missing"),
        pytest.param(lambda z: {"span_digests": [*z.span_digests, z.span_digests[0]]}, id="extra"),
        pytest.param(lambda z: {"span_digests": ["md5:00", *z.span_digests[1:]]}, id="bad-digest"),
        pytest.param(
            lambda z: {"span_digests": [z.span_digests[0].upper(), *z.span_digests[1:]]},
            id="upper-digest",
        ),
        pytest.param(lambda z: {"checkpoints": z.checkpoints[:-1]}, id="checkpoints-cut"),
        pytest.param(lambda z: {"checkpoints": b""}, id="no-checkpoints"),
        pytest.param(lambda z: {"compressed_size": 5}, id="checkpoint-past-the-end"),
        pytest.param(lambda z: {"uncompressed_size": 1000}, id="entry-past-the-end"),
        pytest.param(lambda z: {"compressed_size": -1}, id="negative-size"),
        pytest.param(lambda z: {"compression_algorithm": "uncompressed"}, id="wrong-algorithm"),
        pytest.param(lambda z: {"files": lambda f: shift(f, 1, -512)}, id="overlap"),
        pytest.param(lambda z: {"files": lambda f: shift(f, 1, 100)}, id="misaligned"),
        pytest.param(lambda z: {"files": lambda f: shift(f, 2, 10**9)}, id="offset-out-of-range"),
        pytest.param(lambda z: {"files": lambda f: shift(f, 0, -(10**6))}, id="negative-offset"),
        pytest.param(lambda z: {"files": lambda f: [*f, f[1]]}, id="duplicate-entry"),
        pytest.param(
            lambda z: {"files": lambda f: [dataclasses.replace(f[0], type="sparse"), *f[1:]]},
            id="unknown-type",
        ),
    ],
)
def test_inconsistent_ztocs(bad: Any) -> None:
    ztoc = decode_ztoc(small_ztoc())
    with pytest.raises(FormatError):
        decode_ztoc(mutated(**bad(ztoc)))


def test_non_monotonic_checkpoints() -> None:
    _, _, zinfo = reference_blobs()
    span_size, points = parse_gzip_checkpoints(zinfo)
    for bad_points in (
        [points[0], points[2], points[1], *points[3:]],
        [points[0], dataclasses.replace(points[1], uncompressed_offset=0), *points[2:]],
        [points[0], dataclasses.replace(points[1], bits=9), *points[2:]],
        [dataclasses.replace(points[0], uncompressed_offset=5), *points[1:]],
    ):
        with pytest.raises(FormatError):
            parse_gzip_checkpoints(gzip_checkpoints_blob(span_size, bad_points))
    for blob in (zinfo[:11], zinfo[:-1], struct.pack("<iq", 0, SPAN), struct.pack("<iq", -5, SPAN)):
        with pytest.raises(FormatError):
            parse_gzip_checkpoints(blob)


def reference_files(data: bytes) -> list[ZtocFile] | None:
    """The FileMetadata tables read field by field through the checked accessors (the way
    decode_ztoc did before its loop was written out): what the fast loop must agree with."""
    from seekoci.formats.ztoc import _I64, _U32, _Buffer, _text

    try:
        buf = _Buffer(data, "reference")
        root = buf.table(buf.u32(0), "Ztoc")
        toc = root.table(4, "TOC")
        if toc is None:
            return []
        return [
            ZtocFile(
                _text(t.string(0)),
                _text(t.string(1)),
                t.scalar(2, _I64, 0),
                t.scalar(3, _I64, 0),
                _text(t.string(4)),
                t.scalar(5, _I64, 0),
                t.scalar(6, _U32, 0),
                t.scalar(7, _U32, 0),
                _text(t.string(8)),
                _text(t.string(9)),
                _text(t.string(10)),
                t.scalar(11, _I64, 0),
                t.scalar(12, _I64, 0),
                {_text(x.string(0)): x.string(1) for x in t.tables(13, "Xattr")},
            )
            for t in toc.tables(0, "FileMetadata")
        ]
    except FormatError:
        return None


def test_the_file_loop_agrees_with_the_field_by_field_reader() -> None:
    """Random damage to a zTOC with xattrs: the fast FileMetadata loop accepts exactly what
    the checked accessors accept, and reads the same entries."""
    import random

    from seekoci.formats.ztoc import _Buffer, _decode_files

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(30):
            info = tarfile.TarInfo(f"d/f{i}.txt")
            info.size = i * 37
            if i % 5 == 0:  # some entries with xattrs (a table vector of their own)
                info.pax_headers = {"SCHILY.xattr.user.k": f"v{i}"}
            tar.addfile(info, io.BytesIO(bytes([i]) * info.size))
    data = soci.build_ztoc(io.BytesIO(compress_layer(out.getvalue(), "gzip")), span_size=4096)
    files = decode_ztoc(data).files
    assert reference_files(data) == files and sum(bool(f.xattrs) for f in files) == 6
    rnd = random.Random(7)
    agreed = decoded = 0
    for _ in range(3000):
        damaged = bytearray(data)
        for _ in range(rnd.randint(1, 3)):
            damaged[rnd.randrange(len(damaged))] ^= 1 << rnd.randrange(8)
        expected = reference_files(bytes(damaged))
        try:
            buf = _Buffer(bytes(damaged), "fast")
            toc = buf.table(buf.u32(0), "Ztoc").table(4, "TOC")
            got = [] if toc is None else _decode_files(buf, toc)
        except FormatError:
            got = None
        assert got == expected
        agreed += 1
        decoded += got is not None
    assert agreed == 3000 and 500 < decoded < 3000
