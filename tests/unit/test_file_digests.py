"""Per-file content digests: recorded by the tar scanner, kept in index format 6, absent (not
wrong) in format 5 indexes and in indexes without them."""

from __future__ import annotations

import hashlib
import itertools
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from layers import build_tar, compress, dir, file, hardlink, random_bytes, sha256_digest
from layers import symlink as symlink_entry

import seekoci
from seekoci.errors import FormatError
from seekoci.formats.entries import EntryTable, encode, encode_digests
from seekoci.formats.index import (
    INDEX_VERSION,
    LayerIndex,
    parse,
    parse_header,
    parse_lazy,
    serialize,
)
from seekoci.formats.pages import PagedEntries
from seekoci.formats.tar import TarScanner

FILES = {
    "etc/empty": b"",
    "etc/small": b"hello\n",
    "data/exact-block": random_bytes("block", 512),
    "data/big": random_bytes("big", 300_000),
}


def sample_tar(tar_format: str = "pax") -> bytes:
    return build_tar(
        [
            dir("etc"),
            *(file(name, data) for name, data in FILES.items() if name.startswith("etc")),
            dir("data"),
            *(file(name, data) for name, data in FILES.items() if name.startswith("data")),
            hardlink("data/link", "data/big"),
            symlink_entry("etc/sym", "small"),
        ],
        tar_format,
    )


def scan(tar: bytes, cuts: list[int], **kwargs: bool) -> TarScanner:
    scanner = TarScanner(name="digest test", **kwargs)
    points = sorted({0, len(tar), *(c % (len(tar) + 1) for c in cuts)})
    for a, b in itertools.pairwise(points):
        scanner.feed(tar[a:b])
    scanner.finish()
    return scanner


@settings(max_examples=60, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=12),
    tar_format=st.sampled_from(["pax", "gnu", "ustar"]),
    hash_thread=st.booleans(),
)
def test_every_regular_file_gets_the_sha256_of_its_bytes_however_the_stream_is_cut(
    cuts: list[int], tar_format: str, hash_thread: bool
) -> None:
    entries = scan(sample_tar(tar_format), cuts, hash_thread=hash_thread).entries
    digests = {e.name: e.sha256 for e in entries}
    for name, data in FILES.items():
        assert digests[name] == hashlib.sha256(data).digest(), name
    by_name = {e.name: e for e in entries}
    assert by_name["data/big"].digest == sha256_digest(FILES["data/big"])
    for other in ("etc", "data", "data/link", "etc/sym"):
        assert by_name[other].sha256 is None and by_name[other].digest is None


@pytest.mark.parametrize("hash_thread", [False, True])
def test_a_buffer_the_caller_reuses_after_each_feed_is_hashed_as_it_was(
    hash_thread: bool,
) -> None:
    tar = sample_tar()
    scanner = TarScanner(name="digest test", hash_thread=hash_thread)
    buf = bytearray(1000)
    for at in range(0, len(tar), len(buf)):
        piece = tar[at : at + len(buf)]
        buf[: len(piece)] = piece
        scanner.feed(memoryview(buf)[: len(piece)])
        buf[:] = b"\xee" * len(buf)  # what the caller writes next
    scanner.finish()
    digests = {e.name: e.sha256 for e in scanner.entries}
    assert all(digests[n] == hashlib.sha256(d).digest() for n, d in FILES.items())


@pytest.mark.parametrize(("cpus", "thread"), [(None, False), (1, False), (3, False), (4, True)])
def test_files_are_hashed_on_a_thread_only_with_cpus_to_spare(
    monkeypatch: pytest.MonkeyPatch, cpus: int | None, thread: bool
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: cpus)
    assert TarScanner().hash_thread is thread
    assert TarScanner(hash_thread=not thread).hash_thread is (not thread)


def test_hashing_can_be_turned_off() -> None:
    entries = scan(sample_tar(), [], hash_files=False).entries
    assert all(e.sha256 is None for e in entries)


def test_the_digests_are_raw_bytes_beside_the_entry_table() -> None:
    entries = scan(sample_tar(), []).entries
    doc = encode(entries)
    assert "sha256" not in json.dumps(doc)  # not in the JSON a lookup parses
    raw = encode_digests(entries)
    assert raw == b"".join(hashlib.sha256(d).digest() for d in FILES.values())
    table = EntryTable(json.loads(json.dumps(doc)))
    first = table[1]  # made before the digests arrive: gets its digest too
    assert first.sha256 is None and not table.has_digests()
    table.set_digests(raw)
    assert table.has_digests() and first.sha256 == hashlib.sha256(b"").digest()
    assert [e.sha256 for e in table] == [e.sha256 for e in entries]
    assert table.digests() == raw


def test_a_table_with_an_unknown_digest_has_none() -> None:
    entries = scan(sample_tar(), []).entries
    entries[1].sha256 = None
    assert encode_digests(entries) == b""
    assert encode_digests([e for e in entries if e.type != "file"]) == b""


@pytest.mark.parametrize("length", [0, 31, 32 * 3, 32 * 5])
def test_digests_that_do_not_number_one_per_file_are_a_format_error(length: int) -> None:
    table = EntryTable(encode(scan(sample_tar(), []).entries))
    with pytest.raises(FormatError, match="one per file"):
        table.set_digests(b"\x00" * length)


def _index(entries: list) -> LayerIndex:  # type: ignore[type-arg]
    from seekoci.formats.base import Span

    end = max(e.data_offset + e.size for e in entries)
    span = Span(0, 0, end, 0, end, hashlib.sha256(b"x").hexdigest())
    return LayerIndex(
        layer_digest="sha256:" + "ab" * 32,
        media_type="application/vnd.oci.image.layer.v1.tar",
        compression="none",
        blob_size=end,
        uncompressed_size=end,
        span_size=1 << 20,
        spans=[span],
        entries=entries,
    )


def test_the_index_file_round_trips_the_digests_and_says_version_6() -> None:
    entries = scan(sample_tar(), []).entries
    data = serialize(_index(entries), [b""])
    assert struct.unpack_from("<H", data, 8)[0] == INDEX_VERSION == 6
    loaded = parse(data, read_windows=None)
    assert [e.sha256 for e in loaded.entries] == [e.sha256 for e in entries]


def test_a_version_5_index_still_reads_its_files_just_have_no_digest() -> None:
    entries = scan(sample_tar(), [], hash_files=False).entries
    data = bytearray(serialize(_index(entries), [b""]))
    struct.pack_into("<H", data, 8, 5)  # what seekoci before format 6 wrote: no sha256 column
    loaded = parse(bytes(data), read_windows=None)
    assert [e.name for e in loaded.entries] == [e.name for e in entries]
    assert all(e.sha256 is None for e in loaded.entries)


def test_a_version_5_file_in_the_cache_is_still_used(tmp_path) -> None:  # type: ignore[no-untyped-def]
    blob = compress(sample_tar(), "python")
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(blob)
    digest = sha256_digest(blob)
    cache = tmp_path / "cache"
    seekoci.open_layer(path, digest=digest, cache_dir=cache).index()
    (current,) = (cache / "indexes").rglob(f"*.v{INDEX_VERSION}")
    older = current.with_suffix(".v5")
    data = bytearray(current.read_bytes())
    struct.pack_into("<H", data, 8, 5)
    older.write_bytes(bytes(data))
    current.unlink()
    reopened = seekoci.open_layer(path, digest=digest, cache_dir=cache)
    assert reopened.index_status == "cached"
    assert reopened.stat("/etc/small").size == len(FILES["etc/small"])
    assert not current.exists(), "a readable older index was rebuilt"


def test_a_built_layer_exposes_the_digests(tmp_path) -> None:  # type: ignore[no-untyped-def]
    blob = compress(sample_tar(), "zstd")
    path = tmp_path / "layer.tar.zst"
    path.write_bytes(blob)
    layer = seekoci.open_layer(path, digest=sha256_digest(blob), cache_dir=tmp_path / "c")
    by_name = {e.name: e for e in layer.entries()}
    assert by_name["data/big"].sha256 == hashlib.sha256(FILES["data/big"]).digest()
    # and again from the cache directory (the index file, paged)
    again = seekoci.open_layer(path, digest=sha256_digest(blob), cache_dir=tmp_path / "c")
    assert again.index_status == "cached"
    cached = {e.name: e for e in again.entries()}
    assert cached["data/big"].sha256 == by_name["data/big"].sha256
    assert cached["etc/empty"].sha256 == hashlib.sha256(b"").digest()


def _many_files_index() -> tuple[bytes, list]:  # type: ignore[type-arg]
    tar = build_tar([dir("d"), *(file(f"d/f{i:04d}", b"%d" % i) for i in range(1500))], "ustar")
    entries = scan(tar, []).entries
    return serialize(_index(entries), [b""]), entries


def test_a_lookup_in_a_ranged_index_does_not_fetch_the_digests() -> None:
    data, entries = _many_files_index()
    fetched: list[tuple[int, int]] = []

    def read_at(offset: int, length: int) -> bytes:
        fetched.append((offset, length))
        return data[offset : offset + length]

    header = parse_header(data)
    index = parse_lazy(data[: header.head_end], read_at)
    paged = index.entries
    assert isinstance(paged, PagedEntries) and len(paged.page_infos) == 3
    digest_areas = [(p.digests_offset, p.digests_length) for p in paged.page_infos]
    assert all(
        n == 32 * p.count - 32 * (i == 0)
        for i, ((_, n), p) in enumerate(zip(digest_areas, paged.page_infos, strict=True))
    )  # fmt: skip (page 0 holds "d")
    found = paged.lookup("d/f0700")
    assert found is not None and found.sha256 is None

    def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
        return a[0] < b[0] + b[1] and b[0] < a[0] + a[1]

    assert not any(overlaps(r, area) for r in fetched for area in digest_areas)
    paged.load_digests_for(found)
    assert found.sha256 == hashlib.sha256(b"700").digest()
    paged.load_all(digests=True)
    assert [e.sha256 for e in paged] == [e.sha256 for e in entries]


def test_damaged_digests_are_a_format_error_and_leave_the_entries_usable() -> None:
    data, _ = _many_files_index()
    header = parse_header(data)
    index = parse_lazy(data[: header.head_end], lambda o, n: data[o : o + n])
    paged = index.entries
    assert isinstance(paged, PagedEntries)
    area = paged.page_infos[1]
    bad = bytearray(data)
    bad[area.digests_offset + 5] ^= 1
    damaged = parse_lazy(bytes(bad[: header.head_end]), lambda o, n: bytes(bad[o : o + n]))
    assert isinstance(damaged.entries, PagedEntries)
    with pytest.raises(FormatError, match="file digests of page 1"):
        damaged.entries.load_all(digests=True)
    assert damaged.entries.lookup("d/f0700") is not None
    with pytest.raises(FormatError, match="digests"):
        parse(bytes(bad[: header.metadata_end]), read_windows=None)


def test_the_digests_lie_after_every_entry_page_as_documented() -> None:
    data, entries = _many_files_index()
    header = parse_header(data)
    index = parse_lazy(data[: header.head_end], lambda o, n: data[o : o + n])
    paged = index.entries
    assert isinstance(paged, PagedEntries)
    infos = paged.page_infos
    pages_end = infos[-1].offset + infos[-1].length
    assert infos[0].digests_offset == pages_end  # all entry pages, then all digests
    files = [e for e in entries if e.type == "file"]
    area = data[pages_end : header.toc_offset + header.toc_length]
    assert area == b"".join(e.sha256 for e in files)  # type: ignore[misc]
    for a, b in itertools.pairwise(infos):
        assert b.digests_offset == a.digests_offset + a.digests_length


def test_an_index_read_by_range_writes_back_the_same_bytes_digests_and_all() -> None:
    from seekoci.formats.index import index_file

    data, _ = _many_files_index()
    header = parse_header(data)
    reads: list[tuple[int, int]] = []

    def read_at(offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return data[offset : offset + length]

    index = parse_lazy(data[: header.head_end], read_at)
    assert index_file(index) == data
    paged = index.entries
    assert isinstance(paged, PagedEntries) and len(paged.page_infos) == 3
    area = (paged.page_infos[0].digests_offset, header.toc_offset + header.toc_length)
    digest_reads = [r for r in reads if r[0] < area[1] and area[0] < r[0] + r[1]]
    assert len(digest_reads) == 1  # the digests came in one coalesced fetch, not one per page
