"""Layers that carry their own TOC (eStargz, zstd:chunked): the shared vectors made by the
reference producers, then blobs from tests/tocwriter.py for the variants and hostile forms."""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
import zstandard
from layers import (
    VECTORS,
    CountingSource,
    build_tar,
    file,
    random_bytes,
    random_tree,
    symlink,
    text_bytes,
)
from tocwriter import Made, estargz, zstd_chunked

import seekoci
from seekoci.cache import MemoryCache

SOURCE_FILES = {
    f["name"]: f["sha256"]
    for f in json.loads((VECTORS / "estargz/source.files.json").read_text())["regular_files"]
}
VECTOR_BLOBS = {
    "estargz-prefetch": "estargz/estargz-prefetch",
    "estargz-noprefetch": "estargz/estargz-noprefetch",
    "zstdchunked-cstorage": "zstd-chunked/zstdchunked-cstorage",
}


def vector(name: str) -> tuple[bytes, dict[str, Any]]:
    stem = VECTORS / VECTOR_BLOBS[name]
    return stem.with_suffix(".blob").read_bytes(), json.loads(
        stem.with_suffix(".meta.json").read_text()
    )


def layer_of(
    blob: bytes,
    annotations: dict[str, str] | None = None,
    *,
    digest: str | None = None,
    media_type: str | None = None,
) -> tuple[seekoci.Layer, CountingSource]:
    """A layer over ``blob`` as a registry image has it (media type from the manifest)."""
    if media_type is None:
        media_type = "application/vnd.oci.image.layer.v1.tar+" + (
            "gzip" if blob[:2] == b"\x1f\x8b" else "zstd"
        )
    source = CountingSource(blob)
    layer = seekoci.Layer(
        source,
        cache=MemoryCache(),
        digest=digest,
        media_type=media_type,
        size=len(blob),
        annotations=annotations,
    )
    return layer, source


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------ vectors


@pytest.mark.parametrize("name", sorted(VECTOR_BLOBS))
@pytest.mark.parametrize("annotated", [True, False], ids=["annotated", "footer"])
def test_every_vector_file_reads_back(name: str, annotated: bool) -> None:
    blob, meta = vector(name)
    layer, _ = layer_of(
        blob,
        meta["annotations"] if annotated else None,
        # with annotations the digest is known too (a registry layer): the TOC is vouched for
        digest=meta["blob_digest"] if annotated else None,
        media_type=meta["media_type"],
    )
    assert layer.format == ("estargz" if name.startswith("estargz") else "zstd:chunked")
    seen = 0
    for path, digest in SOURCE_FILES.items():
        assert sha(layer.open(path).read()) == digest, path
        seen += 1
    assert seen == len(SOURCE_FILES) and layer.index_status == "embedded"
    assert layer.stat("link-to-hostname").linkname == "etc/hostname"
    assert layer.stat("dev/null").type == "char"
    assert layer.stat("bin/tool").mode & 0o7777 == 0o4755
    assert layer.stat("xattr.txt").xattrs == {"user.foo": b"bar", "user.bin": b"\xff\x00\x01"}
    assert layer.open("hardlink-to-tool").read() == layer.open("bin/tool").read()
    assert "checked" in layer.index().verification


@pytest.mark.parametrize("name", sorted(VECTOR_BLOBS))
def test_vector_tar_stream_and_size(name: str) -> None:
    blob, meta = vector(name)
    layer, _ = layer_of(blob, meta["annotations"], media_type=meta["media_type"])
    if name.startswith("estargz"):
        tar = gzip.decompress(blob)
    else:
        tar = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True).read()
    assert sha(tar) == meta["diff_id"]
    assert layer.uncompressed_size == len(tar)
    assert layer.read_range(0, len(tar) + 10) == tar
    assert layer.read_range(len(tar) // 3, 5000) == tar[len(tar) // 3 : len(tar) // 3 + 5000]


def test_zstd_chunked_vector_needs_no_pass_for_tar_ranges() -> None:
    blob, meta = vector("zstdchunked-cstorage")
    layer, source = layer_of(blob, meta["annotations"], media_type=meta["media_type"])
    tar = (VECTORS / "estargz/source.tar").read_bytes()
    assert layer.uncompressed_size_known(layer.index()) == len(tar)  # the tar-split's
    assert layer.read_range(0, len(tar)) == tar
    assert source.streamed == 0  # TOC + tar-split gave every offset: no forward pass
    index = layer.index()  # payload offsets; the tar-split's made on demand, once
    assert not index.tar_offsets and index.tar_index is not None
    assert index.tar_index().tar_offsets and index.tar_index() is index.tar_index()


def test_a_zstd_chunked_file_read_leaves_the_tar_split_unread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its 57 MB of JSON (for 54k files) cost as much as the TOC: files are read with
    payload offsets, and the tar-split is parsed by the first read of tar-stream ranges."""
    from seekoci.formats import zstd_chunked_toc

    blob, meta = vector("zstdchunked-cstorage")
    tar = (VECTORS / "estargz/source.tar").read_bytes()
    layer, _ = layer_of(blob, meta["annotations"], media_type=meta["media_type"])
    read: list[int] = []
    layout_of = zstd_chunked_toc.layout_of

    def counted(data: bytes, *, packed: int | None = None, where: str) -> Any:
        read.append(len(data))
        return layout_of(data, packed=packed, where=where)

    monkeypatch.setattr(zstd_chunked_toc, "layout_of", counted)
    for name, digest in SOURCE_FILES.items():
        if layer.stat(name).type == "file":
            assert sha(layer.open(name).read()) == digest
    assert layer.index_status == "embedded" and not read
    assert layer.read_range(0, len(tar)) == tar
    assert layer.read_range(len(tar) // 2, 700) == tar[len(tar) // 2 : len(tar) // 2 + 700]
    assert len(read) == 1


@pytest.mark.parametrize("name", sorted(VECTOR_BLOBS))
def test_one_small_file_costs_the_tail_and_its_chunk(name: str) -> None:
    blob, meta = vector(name)
    layer, source = layer_of(blob, meta["annotations"], media_type=meta["media_type"])
    assert sha(layer.open("etc/hostname").read()) == SOURCE_FILES["etc/hostname"]
    toc_start = int(
        meta["annotations"]
        .get("io.github.containers.zstd-chunked.manifest-position", f"{meta.get('toc_offset')}:")
        .split(":")[0]
    )
    assert len(source.calls) == 2 and source.streamed == 0
    tail, chunk = source.calls
    assert tail[0] <= toc_start and tail[0] + tail[1] == len(blob)
    assert chunk[1] < 200  # the member / frames of an 8-byte file


@pytest.mark.parametrize("name", sorted(VECTOR_BLOBS))
def test_a_flipped_byte_in_a_chunk_is_an_integrity_error(name: str) -> None:
    blob, meta = vector(name)
    good, _ = layer_of(blob, meta["annotations"], media_type=meta["media_type"])
    spans = good.index().spans
    entry = good.find("big/random.bin")
    assert entry is not None
    target = next(
        s for s in spans if s.uncompressed_start <= entry.data_offset + 70_000 < s.uncompressed_end
    )
    bad = bytearray(blob)
    bad[(target.compressed_start + target.compressed_end) // 2] ^= 0x40
    layer, _ = layer_of(bytes(bad), meta["annotations"], media_type=meta["media_type"])
    with pytest.raises(seekoci.IntegrityError, match="chunk digest"):
        layer.open("big/random.bin").read()
    assert sha(layer.open("big/text.txt").read()) == SOURCE_FILES["big/text.txt"]


@pytest.mark.parametrize("name", sorted(VECTOR_BLOBS))
def test_a_toc_that_does_not_match_its_annotation(name: str) -> None:
    blob, meta = vector(name)
    annotations = {
        k: ("sha256:" + "0" * 64 if k.endswith(("toc.digest", "manifest-checksum")) else v)
        for k, v in meta["annotations"].items()
    }
    layer, _ = layer_of(blob, annotations, media_type=meta["media_type"])
    with pytest.raises(seekoci.IntegrityError, match="TOC"):
        layer.open("etc/hostname")


def test_the_toc_digest_is_the_annotation() -> None:
    for name in ("estargz-prefetch", "estargz-noprefetch"):
        toc = (VECTORS / VECTOR_BLOBS[name]).with_suffix(".toc.json").read_bytes()
        _, meta = vector(name)
        assert sha(toc) == meta["annotations"]["containerd.io/snapshot/stargz/toc.digest"]


def test_open_layer_detects_the_format_from_the_bytes(tmp_path: Path) -> None:
    for name in VECTOR_BLOBS:
        blob, _ = vector(name)
        path = tmp_path / name
        path.write_bytes(blob)
        layer = seekoci.open_layer(path, cache_dir=False)
        assert layer.index_status in ("none", "embedded")
        assert sha(layer.open("big/text.txt").read()) == SOURCE_FILES["big/text.txt"]
        assert layer.index_status == "embedded" and layer.random_access


# ------------------------------------------------------------------ variants (tocwriter)


def corpus() -> bytes:
    return build_tar(
        [
            *random_tree("toc", files=12, max_size=9000),
            file("big/text.txt", text_bytes("toc-big", 150_000)),
            file("big/zeros.bin", bytes(200_000)),
            file("empty", b""),
            symlink("link", "big/text.txt"),
        ]
    )


def files_of(tar: bytes) -> dict[str, bytes]:
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        return {
            m.name: tf.extractfile(m).read()  # type: ignore[union-attr]
            for m in tf.getmembers()
            if m.isreg()
        }


VARIANTS = {
    "estargz": lambda tar: estargz(tar, chunk_size=32 << 10),
    "estargz-packed": lambda tar: estargz(tar, chunk_size=32 << 10, pack_below=4096),
    "stargz-legacy": lambda tar: estargz(tar, legacy=True),
    "zstd:chunked": lambda tar: zstd_chunked(tar, chunk_size=32 << 10),
    "zstd:chunked-old-footer": lambda tar: zstd_chunked(tar, old_footer=True),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("annotated", [True, False], ids=["annotated", "footer"])
def test_variants_read_back(variant: str, annotated: bool) -> None:
    tar = corpus()
    made: Made = VARIANTS[variant](tar)
    layer, source = layer_of(made.blob, made.annotations if annotated else None)
    for name, content in files_of(tar).items():
        assert layer.open(name).read() == content, name
    assert layer.index_status == "embedded" and source.streamed == 0
    assert layer.read_range(0, len(made.tar) + 1) == made.tar
    assert layer.uncompressed_size == len(made.tar)
    if variant == "stargz-legacy":
        assert "legacy stargz" in layer.index().verification
    if variant == "estargz-packed":
        assert any(s.skip for s in layer.index().spans)


def test_zero_chunks_are_not_fetched() -> None:
    made = zstd_chunked(corpus(), chunk_size=32 << 10)
    layer, source = layer_of(made.blob, made.annotations)
    assert layer.open("big/zeros.bin").read() == bytes(200_000)
    assert len(source.calls) == 1  # the TOC: nothing for the zeros


def test_a_legacy_stargz_registry_layer_is_built_not_trusted() -> None:
    made = estargz(corpus(), legacy=True)
    layer, source = layer_of(made.blob, digest=sha(made.blob))
    assert layer.open("big/text.txt").read() == text_bytes("toc-big", 150_000)
    assert layer.index_status in ("partial", "built") and source.streamed


def test_a_footer_without_annotation_is_not_trusted_for_a_digest() -> None:
    made = zstd_chunked(corpus())
    layer, _ = layer_of(made.blob, digest=sha(made.blob))
    layer.index()
    assert layer.index_status == "built"  # verified against the digest by the pass


@pytest.mark.parametrize("writer", [estargz, zstd_chunked], ids=["estargz", "zstd:chunked"])
def test_a_file_of_thousands_of_chunks(writer: Any) -> None:
    # each chunk's place is checked against the bytes the chunks before it hold (kept as
    # they are added: summing them again for every chunk was quadratic in the chunks)
    data = text_bytes("many", 3_000_000)
    made = writer(build_tar([file("many.txt", data), file("after", b"x")]), chunk_size=1024)
    layer, _ = layer_of(made.blob, made.annotations)
    spans = layer.index().spans
    assert sum(1 for s in spans if s.uncompressed_end - s.uncompressed_start == 1024) > 2900
    assert layer.open("many.txt").read() == data
    assert layer.open("after").read() == b"x"


# ------------------------------------------------------------------------- bad input


def _chunk(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e for e in doc["entries"] if e.get("name") == name)


BAD_TOCS = {
    "offset-outside": lambda doc: _chunk(doc, "big/text.txt").update(offset=10**9),
    "negative-size": lambda doc: _chunk(doc, "big/text.txt").update(chunkSize=-5),
    "unknown-type": lambda doc: _chunk(doc, "link").update(type="socket"),
    "bad-digest-form": lambda doc: _chunk(doc, "big/text.txt").update(chunkDigest="md5:00"),
    "no-entries": lambda doc: doc.pop("entries"),
    "chunk-out-of-place": lambda doc: next(
        e for e in doc["entries"] if e.get("type") == "chunk"
    ).update(chunkOffset=1),
}


@pytest.mark.parametrize("size", [2**63, 10**12])
@pytest.mark.parametrize("writer", [estargz, zstd_chunked], ids=["estargz", "zstd:chunked"])
def test_a_file_size_no_data_can_hold_is_a_format_error(writer: Any, size: int) -> None:
    # a one-chunk file whose TOC size is past what its bytes decode to: zstd was asked for
    # the whole size at once (OverflowError for 2**63, MemoryError for 10**12)
    made = writer(
        build_tar([file("b", b"x" * 200)]), edit=lambda d: d["entries"][0].update(size=size)
    )
    layer, _ = layer_of(made.blob, made.annotations)
    assert layer.stat("b").size == size
    with pytest.raises(seekoci.SeekociError):  # (a FormatError, or the chunk's IntegrityError)
        layer.open("b").read(1000)


@pytest.mark.parametrize("edit", sorted(BAD_TOCS))
@pytest.mark.parametrize("writer", [estargz, zstd_chunked], ids=["estargz", "zstd:chunked"])
def test_a_malformed_toc_is_a_format_error(writer: Any, edit: str) -> None:
    made = writer(corpus(), chunk_size=32 << 10, edit=BAD_TOCS[edit])
    layer, _ = layer_of(made.blob, made.annotations)
    with pytest.raises(seekoci.FormatError):
        layer.open("big/text.txt").read()


@pytest.mark.parametrize("toc_bytes", [b"{not json", b"[" * 100_000], ids=["garbage", "deep"])
def test_a_toc_that_is_not_json(toc_bytes: bytes) -> None:
    made = estargz(corpus(), toc_bytes=toc_bytes)
    layer, _ = layer_of(made.blob, made.annotations)
    with pytest.raises(seekoci.FormatError, match="not JSON"):
        layer.listdir("/")


def test_a_toc_length_past_the_blob_is_refused_before_the_blob_is_read() -> None:
    # a position annotation claiming a TOC of 10**15 bytes made the reader fetch the blob
    # from the offset to its end (the whole blob) before the length was checked
    made = zstd_chunked(build_tar([file("big", random_bytes("zc-pos", 4 << 20))]))
    key = "io.github.containers.zstd-chunked.manifest-position"
    annotations = {**made.annotations, key: f"8:{10**15}:0:1"}
    layer, source = layer_of(made.blob, annotations)
    with pytest.raises(seekoci.FormatError, match="over"):
        layer.index()
    assert source.bytes_read < 64 << 10


def test_a_footer_pointing_at_the_blobs_start_is_refused_before_the_blob_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a footer whose TOC offset is 0 made the reader fetch the whole blob for its "TOC";
    # the bound (512 MiB and the TOC's headers) lowered here to 1 MiB for a 4 MiB blob
    from tocwriter import _footer

    from seekoci.formats import estargz as estargz_format

    monkeypatch.setattr(estargz_format, "MAX_TOC_MEMBER", 1 << 20)
    made = estargz(build_tar([file("big", random_bytes("esgz-pos", 4 << 20))]))
    blob = made.blob[:-51] + _footer(0, legacy=False)
    layer, source = layer_of(blob)  # (no annotations: the footer is all there is)
    with pytest.raises(seekoci.FormatError, match="footer puts a TOC"):
        layer.index()
    assert source.bytes_read < 128 << 10


def test_a_lying_chunk_digest_is_an_integrity_error() -> None:
    def lie(doc: dict[str, Any]) -> None:
        for e in doc["entries"]:
            if e.get("name") == "big/text.txt" and e.get("chunkOffset") == 32 << 10:
                e["chunkDigest"] = "sha256:" + "ab" * 32

    for writer in (estargz, zstd_chunked):
        made = writer(corpus(), chunk_size=32 << 10, edit=lie)
        layer, _ = layer_of(made.blob, made.annotations)
        with layer.open("big/text.txt") as f:
            assert f.read(1000) == text_bytes("toc-big", 150_000)[:1000]  # chunk 0 is fine
            with pytest.raises(seekoci.IntegrityError):
                f.read()


@pytest.mark.parametrize("cut", [1, 20, 51, 72])
def test_a_truncated_footer(cut: int) -> None:
    made = estargz(corpus())
    layer, _ = layer_of(made.blob[:-cut], made.annotations)  # annotated: the TOC is needed
    with pytest.raises(seekoci.FormatError, match="footer"):
        layer.listdir("/")
    for made, footer in ((estargz(corpus()), 51), (zstd_chunked(corpus()), 72)):
        # not recognised without its footer: read as a plain stream, which ends too early
        # (a whole footer cut off leaves a valid plain stream, read as one)
        layer, _ = layer_of(made.blob[:-cut])
        assert layer.format == "tar"
        if cut == footer:
            assert layer.listdir("/")
            continue
        with pytest.raises(seekoci.FormatError):
            layer.listdir("/")


def test_a_toc_position_outside_the_blob() -> None:
    made = zstd_chunked(corpus())
    annotations = dict(made.annotations)
    key = "io.github.containers.zstd-chunked.manifest-position"
    annotations[key] = f"{len(made.blob) + 100}:50:50:1"
    layer, _ = layer_of(made.blob, annotations)
    with pytest.raises(seekoci.FormatError, match="outside"):
        layer.listdir("/")


# ------------------------------------------------------------------------ image view


@pytest.mark.parametrize("name", ["estargz-prefetch", "estargz-noprefetch"])
def test_landmarks_and_the_toc_are_in_the_layer_not_the_image(name: str) -> None:
    from seekoci.image import Image

    blob, meta = vector(name)
    layer, _ = layer_of(blob, meta["annotations"], digest=meta["blob_digest"])
    landmark = ".prefetch.landmark" if name == "estargz-prefetch" else ".no.prefetch.landmark"
    assert landmark in layer.listdir("/") and "stargz.index.json" in layer.listdir("/")
    assert layer.open("stargz.index.json").read() == (
        (VECTORS / VECTOR_BLOBS[name]).with_suffix(".toc.json").read_bytes()
    )
    img = Image(
        reference="test",
        digest="sha256:" + "0" * 64,
        platform="linux/amd64",
        config={},
        manifest={},
        layers=[layer],
    )
    assert not {landmark, "stargz.index.json"} & set(img.listdir("/"))
    for hidden in (landmark, "stargz.index.json"):
        assert not img.exists("/" + hidden)
        with pytest.raises(FileNotFoundError):
            img.read_bytes("/" + hidden)
    assert sha(img.read_bytes("/big/text.txt")) == SOURCE_FILES["big/text.txt"]


def test_an_embedded_toc_is_never_written_as_seekoci_index() -> None:
    from seekoci.formats.index import index_file, parse_header

    blob, meta = vector("estargz-prefetch")
    layer, _ = layer_of(blob, meta["annotations"], digest=meta["blob_digest"])
    with pytest.raises(seekoci.FormatError, match="not written"):
        index_file(layer.index())
    built = layer.pass_index()  # what publish_native and the cache get: a pass's index
    assert built.tar_offsets and not built.format
    assert parse_header(index_file(built)) is not None
    assert layer.index_status == "embedded"  # reads still go through the TOC


def test_a_footer_that_points_far_from_the_end_is_refused() -> None:
    """A lying footer must not make a reader fetch the whole blob as 'the TOC'."""
    made = zstd_chunked(corpus())
    blob = bytearray(made.blob)
    struct.pack_into("<Q", blob, len(blob) - 64, 100)  # the TOC "at" offset 100
    layer, source = layer_of(bytes(blob))  # no annotations: the footer is all there is
    with pytest.raises(seekoci.FormatError, match="outside"):
        layer.listdir("/")
    assert source.bytes_read < 70_000


# ------------------------------------------------------------------------- tar-split, digests

_RECORDS = [
    {"type": 2, "payload": "ZXRjLwAA", "position": 0},
    {"type": 1, "name": "etc/", "size": 0, "position": 1},
    {"type": 2, "payload": "aG9zdG5hbWU=", "position": 2},
    {"type": 1, "name": "etc/hostname", "size": 5, "payload": "AAAAAAAAAAA=", "position": 3},
]


def _lines(sep: bytes, *, end: bytes = b"", start: bytes = b"") -> bytes:
    return start + sep.join(json.dumps(r).encode() for r in _RECORDS) + end


@pytest.mark.parametrize(
    "data",
    [
        _lines(b"\n", end=b"\n"),  # as tar-split writes it
        _lines(b"\n"),  # no newline after the last record
        _lines(b"\r\n", end=b"\r\n"),
        _lines(b"\r"),  # lone CRs: the line by line way
        _lines(b"\n\n", end=b"\n"),  # blank lines between records
        _lines(b"\n", end=b"\n\n \n"),  # blank lines at the end
        _lines(b"\n", start=b"\n\n", end=b"\n"),  # and at the start
    ],
    ids=["lf", "no-final-lf", "crlf", "cr", "blank-inside", "blank-end", "blank-start"],
)
def test_a_tar_split_reads_as_its_lines(data: bytes) -> None:
    """Newlines made commas (one copy of the tar-split) or lines split and joined (when that
    is not JSON): the layout of every non-blank line's record, in order."""
    from seekoci.formats.toc import Payload, Segment
    from seekoci.formats.zstd_chunked_toc import layout_of

    assert layout_of(data, where="t") == [
        Segment(b"etc/\x00\x00"),
        Payload("etc/", 0),
        Segment(b"hostname"),
        Payload("etc/hostname", 5),
    ]


@pytest.mark.parametrize(
    ("record", "why"),
    [
        ({"type": 2, "payload": "ZX*jLwAA"}, "Only base64 data|Non-base64"),
        ({"type": 2, "payload": "QQ==QQ=="}, "Excess data|Non-base64"),
        ({"type": 2, "payload": 5}, "payload int"),
        ({"type": 2}, "payload"),
        ({"type": 1, "name": "a", "size": -1}, "size -1"),
        ({"type": 3}, "type 3"),
        ([1, 2], "list indices"),
    ],
)
def test_a_malformed_tar_split_record(record: Any, why: str) -> None:
    from seekoci.formats.zstd_chunked_toc import layout_of

    data = b"\n".join([json.dumps(_RECORDS[0]).encode(), json.dumps(record).encode(), b""])
    with pytest.raises(seekoci.FormatError, match=f"record 2 is malformed.*({why})"):
        layout_of(data, where="t")


@pytest.mark.parametrize(
    "value",
    [
        "sha256:" + "AB" * 32,  # upper case
        "sha256:" + "ab" * 31 + "a",  # 63 digits
        "sha256:" + "ab" * 32 + "a",  # 65
        "sha256:" + "ab" * 31 + "ag",  # not hex
        "sha256:" + "ab" * 31 + "a ",  # a space
        "sha256: " + "ab" * 31 + "a",
        "sha256:" + "-" * 64,
        "md5:" + "ab" * 16,
        b"sha256:" + b"ab" * 32,
        None,
    ],
)
def test_a_chunk_digest_that_is_not_64_lowercase_hex_digits(value: object) -> None:
    from seekoci.formats.toc import digest_hex

    with pytest.raises(seekoci.FormatError):
        digest_hex(value, where="t")
    assert digest_hex("sha256:" + "0a" * 32, where="t") == "0a" * 32


def test_a_tar_split_of_lf_ended_lines_is_read_record_by_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No JSON array of the whole tar-split is made when its lines are plain: a 57 MB
    tar-split held as an array of 100k records, and the copies that make it, cost more
    than reading its records where they lie."""
    from seekoci.formats import zstd_chunked_toc
    from seekoci.formats.toc import Payload, Segment

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the tar-split was parsed as one array")

    monkeypatch.setattr(zstd_chunked_toc.json, "loads", refuse)
    layout = zstd_chunked_toc.layout_of(_lines(b"\n", end=b"\n"), where="t")
    assert layout == [
        Segment(b"etc/\x00\x00"),
        Payload("etc/", 0),
        Segment(b"hostname"),
        Payload("etc/hostname", 5),
    ]


@pytest.mark.parametrize("writer", [estargz, zstd_chunked], ids=["estargz", "zstd:chunked"])
def test_debug_info_of_a_binary_in_a_toc_layer(writer: Any) -> None:
    """Insight reads an ELF file's tables at its entry's ``data_offset``: in the space of
    the layer's own index, which for a TOC layer lays payloads end to end -- not a
    tar-stream offset."""
    from test_insight_units import make_elf

    from seekoci.insight.bloat import _debug_bytes

    binary = make_elf(True, "<")
    tar = build_tar([file("a.txt", text_bytes("a", 5000)), file("usr/lib/libx.so", binary)])
    made = writer(tar, chunk_size=1 << 20)
    layer, _ = layer_of(made.blob, made.annotations)
    entry = layer.find("usr/lib/libx.so")
    assert entry is not None and not layer.index().tar_offsets
    assert layer.read_entry_range(entry.data_offset, len(binary)) == binary
    assert layer.read_range(entry.data_offset, len(binary)) != binary  # the tar's bytes there
    assert _debug_bytes(layer, entry) == 1234 + 99 + 7


@pytest.mark.parametrize("writer", [estargz, zstd_chunked], ids=["estargz", "zstd:chunked"])
def test_layer_usage_of_a_toc_layer_hides_the_file_after_an_empty_one(
    writer: Any, tmp_path: Path
) -> None:
    """In a TOC layer's payload offsets an empty file's entry has the offset of the file
    after it: the merged view showing the one must not count the other as shown."""
    import imagebuilder
    from layers import dir, whiteout

    from seekoci import insight

    entries = (dir("d"), file("d/empty", b""), file("d/big", b"x" * 5000))
    made = writer(build_tar(list(entries)), chunk_size=1 << 20)
    lower = imagebuilder.Layer(
        entries=entries,
        producer="gzip" if writer is estargz else "zstd",
        tar_format="pax",
        tar=made.tar,
        blob=made.blob,
        media_type=imagebuilder.OCI_LAYER + ("+gzip" if writer is estargz else "+zstd"),
        annotations=tuple(made.annotations.items()),
    )
    upper = imagebuilder.layer(whiteout("d/big"))
    imagebuilder.write_oci_layout(tmp_path / "l", imagebuilder.image(lower, upper), "t")
    img = seekoci.open_image(f"oci:{tmp_path / 'l'}:t", cache_dir=False)
    assert not img.layers[0].index().tar_offsets and img.layers[0].index_status == "embedded"
    rows = insight.layer_usage(img)
    assert rows[0].hidden_bytes == 5000


def test_the_toc_entry_of_an_estargz_toc_member_is_read_from_its_first_blocks() -> None:
    """The landmark entry is made of the member's first blocks (the TOC was decoded whole
    already): a member damaged far past its header still gives it."""
    import gzip as gz
    import io
    import tarfile

    from seekoci.formats.estargz_toc import toc_file

    toc = random_bytes(5, 200_000).hex().encode()  # compresses little
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("stargz.index.json")
        info.size = len(toc)
        tar.addfile(info, io.BytesIO(toc))
    member = gz.compress(buf.getvalue())
    for damaged in (member, member[:-5000] + bytes(b ^ 0xFF for b in member[-5000:])):
        landmark = toc_file(damaged, toc, 100, 100 + len(member), where="t")
        assert landmark.entry.name == "stargz.index.json" and landmark.entry.size == len(toc)
        (chunk,) = landmark.chunks
        assert buf.getvalue()[chunk.skip : chunk.skip + len(toc)] == toc
        assert (chunk.compressed_start, chunk.compressed_end) == (100, 100 + len(member))
