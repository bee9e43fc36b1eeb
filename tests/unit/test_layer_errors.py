"""Bad blobs: a FormatError that names the layer, never a bare zlib/tarfile/struct error,
never a hang, never wrong bytes."""

from __future__ import annotations

import functools
import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from layers import (
    CI,
    build_tar,
    compress_layer,
    end_of_archive,
    file,
    member,
    pax_member,
    pax_record,
    raw_header,
    sha256_digest,
    text_bytes,
)

import seekoci
from seekoci.source import BytesSource

NAME = "blob-under-test"


@functools.cache
def good_tar() -> bytes:
    return build_tar([file(f"f{i}", text_bytes(i, 3000 * i)) for i in range(8)])


def gz(tar: bytes) -> bytes:
    return gzip.compress(tar, 6, mtime=0)


def read_everything(layer: seekoci.Layer) -> None:
    layer.index()
    for entry in layer.entries():
        if entry.type == "file":
            layer.open(entry.name).read()


def assert_format_error(blob: bytes, tmp_path: Path, *, with_digest: bool = True) -> None:
    """By path (named by the path) and by digest (named by the digest; nothing is saved in
    the cache)."""
    path = tmp_path / NAME
    path.write_bytes(blob)
    layer = seekoci.open_layer(path, cache_dir=False, span_size=4096)
    with pytest.raises(seekoci.FormatError) as info:
        read_everything(layer)
    assert NAME in str(info.value)
    if not with_digest:
        return
    digest = sha256_digest(blob)
    layer = seekoci.open_layer(path, digest=digest, cache_dir=tmp_path / "cache", span_size=4096)
    with pytest.raises(seekoci.FormatError) as info:
        layer.find("no-such-name")
    assert digest in str(info.value)
    assert not (tmp_path / "cache" / "indexes").exists()


def with_checksum(block: bytes) -> bytes:
    block = bytearray(block)
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


PATH_RECORD = pax_record("path", "d/" + "x" * 150)


def with_pax_path(records: bytes) -> bytes:
    return pax_member(records) + member(raw_header("short", size=1), b"x") + end_of_archive()


def _bad_mode_field() -> bytes:
    tar = bytearray(build_tar([file("a", b"data")], "ustar"))
    tar[100:108] = b"zzzzzzz\x00"
    tar[0:512] = with_checksum(bytes(tar[0:512]))
    return bytes(tar)


BAD_TARS: dict[str, Callable[[], bytes]] = {
    "bad checksum": lambda: bytes([good_tar()[0] ^ 1]) + good_tar()[1:],
    "truncated inside an entry": lambda: good_tar()[: 512 * 3 + 100],
    "pax record length not a number": lambda: with_pax_path(b"1z" + PATH_RECORD[2:]),
    "pax record without =": lambda: with_pax_path(PATH_RECORD.replace(b"=", b"_")),
    "pax record overruns its header": lambda: with_pax_path(b"999" + PATH_RECORD[3:]),
    "pax record without its newline": lambda: with_pax_path(PATH_RECORD[:-1] + b"x"),
    "pax mtime not a number": lambda: (
        pax_member(pax_record("mtime", "abcde"))
        + member(raw_header("a", size=1), b"x")
        + end_of_archive()
    ),
    "pax size negative": lambda: (
        pax_member(pax_record("size", "-5"))
        + member(raw_header("a", size=1), b"x")
        + end_of_archive()
    ),
    "mode field not octal": _bad_mode_field,
    "gnu sparse file": lambda: member(raw_header("s", typeflag=b"S", size=0)) + end_of_archive(),
    "negative size": lambda: member(raw_header("n", size=b"\xff" * 12)) + end_of_archive(),
}


@pytest.mark.parametrize("compressed", [False, True], ids=["tar", "gzip"])
@pytest.mark.parametrize("case", sorted(BAD_TARS))
def test_a_bad_tar_is_a_format_error_naming_the_layer(
    case: str, compressed: bool, tmp_path: Path
) -> None:
    tar = BAD_TARS[case]()
    assert_format_error(gz(tar) if compressed else tar, tmp_path)


def _flip(blob: bytes, at: int, mask: int = 0x55) -> bytes:
    return blob[:at] + bytes([blob[at] ^ mask]) + blob[at + 1 :]


BAD_GZIPS: dict[str, Callable[[bytes], bytes]] = {
    "truncated in the header": lambda b: b[:6],
    "truncated after the header": lambda b: b[:10],
    "truncated in the deflate data": lambda b: b[: len(b) // 2],
    "truncated in the trailer": lambda b: b[:-3],
    "garbage after the end": lambda b: b + b"garbage!",
    "a second member cut short": lambda b: b + b[:20],
    "bad crc": lambda b: (
        b[:-8] + struct.pack("<I", (struct.unpack("<I", b[-8:-4])[0] ^ 1)) + b[-4:]
    ),
    "bad isize": lambda b: b[:-4] + struct.pack("<I", struct.unpack("<I", b[-4:])[0] + 1),
    "corrupt deflate data": lambda b: _flip(b, len(b) // 3),
    # the first block's BTYPE bits: dynamic (10) becomes the reserved type 11
    "invalid deflate block type": lambda b: _flip(b, 10, 0b110),
    "reserved header flags": lambda b: b[:3] + b"\xe0" + b[4:],
    "not deflate": lambda b: b[:2] + b"\x07" + b[3:],
}


@pytest.mark.parametrize("case", sorted(BAD_GZIPS))
def test_a_bad_gzip_is_a_format_error_naming_the_layer(case: str, tmp_path: Path) -> None:
    # a bad CRC under a matching digest has a test of its own (below)
    assert_format_error(BAD_GZIPS[case](gz(good_tar())), tmp_path, with_digest=case != "bad crc")


def test_a_bad_crc_is_a_format_error_even_when_the_digest_matches(tmp_path: Path) -> None:
    # The digest says the bytes are the ones published; it does not make a gzip member whose
    # trailer contradicts its data valid (gzip -t, Go's compress/gzip and so containerd all
    # refuse it), so the index must not be built, saved or served.
    blob = BAD_GZIPS["bad crc"](gz(good_tar()))
    path = tmp_path / NAME
    path.write_bytes(blob)
    digest = sha256_digest(blob)
    layer = seekoci.open_layer(path, digest=digest, cache_dir=tmp_path / "cache")
    with pytest.raises(seekoci.FormatError) as info:
        layer.index()
    assert digest in str(info.value)
    assert not (tmp_path / "cache" / "indexes").exists()


def test_a_blob_that_is_neither_gzip_nor_tar(tmp_path: Path) -> None:
    assert_format_error(b"PK\x03\x04 this is a zip file" + bytes(600), tmp_path)


@CI
@given(
    at=st.integers(0, 10**9),
    value=st.integers(1, 255),
    cut=st.one_of(st.none(), st.integers(1, 10**9)),
    producer=st.sampled_from(["python", "multi-member", "fname", "small-blocks"]),
)
def test_damaged_gzip_layers_never_give_wrong_bytes(
    at: int, value: int, cut: int | None, producer: str
) -> None:
    tar = build_tar([file(f"f{i}", text_bytes(i, 2000 * i)) for i in range(6)])
    blob = bytearray(compress_layer(tar, producer))
    at %= len(blob)
    blob[at] ^= value
    if cut is not None:  # keep a byte at least: an empty blob is an empty layer
        del blob[max(cut % len(blob), 1) :]
    layer = seekoci.open_layer(BytesSource(bytes(blob), name=NAME), cache_dir=False)
    try:
        got = layer.read_range(0, len(tar) + 1)
    except seekoci.FormatError as exc:
        assert NAME in str(exc)
        return
    # a change the format cannot notice (a gzip header's MTIME, OS, FNAME bytes...)
    assert got == tar
