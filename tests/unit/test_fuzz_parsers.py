"""Hypothesis against every parser of untrusted bytes: only SeekociError subclasses escape.

Each parser gets valid input damaged at random (several bytes changed, cut, extended) and
plain garbage: tar headers (with and without a recomputed checksum), gzip member headers,
seekoci index files (eager and lazy parsing, every page touched), zTOC flatbuffers, image
manifests and indexes, references and ``WWW-Authenticate`` values, and the eStargz,
zstd:chunked interop vectors read as layers. The ``ci`` profile
(tests/unit/layers.py) fixes the budget: the same examples on every run.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import string
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from layers import CI, VECTORS, build_tar, compress_layer, file, hardlink, symlink, text_bytes
from test_formats_index import DIGEST as INDEX_DIGEST
from test_formats_index import load, sample_index

import seekoci
from seekoci import soci
from seekoci.errors import FormatError, InvalidReferenceError, SeekociError
from seekoci.formats.gzip import parse_gzip_header
from seekoci.formats.index import parse_cached, parse_header, serialize
from seekoci.formats.tar import TarScanner
from seekoci.formats.ztoc import decode_ztoc, ztoc_to_layer_index
from seekoci.registry.auth import parse_www_authenticate
from seekoci.registry.manifest import parse_manifest
from seekoci.registry.reference import parse_reference
from seekoci.source import BytesSource

DIGEST = "sha256:" + "ab" * 32

# (position, new byte) pairs: several bytes changed at once
damage = st.lists(st.tuples(st.integers(0, 2**32), st.integers(0, 255)), min_size=1, max_size=8)


def damaged(data: bytes, changes: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for at, value in changes:
        out[at % len(out)] = value
    if cut is not None:
        del out[cut % (len(out) + 1) :]
    return bytes(out)


cuts = st.one_of(st.none(), st.integers(0, 2**32))


# --------------------------------------------------------------------------- tar


@functools.cache
def sample_tar() -> bytes:
    return build_tar(
        [
            file("etc/hosts", b"127.0.0.1 localhost\n"),
            file("a/" + "long" * 40 + "/name", text_bytes("fuzz", 3000)),
            symlink("link", "../../etc/passwd"),
            hardlink("hard", "etc/hosts"),
            file("x", b"", mode=0o4755),
        ],
        "pax",
    )


def fix_checksums(tar: bytearray) -> None:
    """Recompute the checksum of every 512-byte block, as if each were a header: damage that
    passes the checksum gate and reaches the field parsers."""
    for start in range(0, len(tar) - 511, 512):
        block = tar[start : start + 512]
        block[148:156] = b" " * 8
        block[148:156] = b"%06o\x00 " % (sum(block) & 0o777777)
        tar[start : start + 512] = block


def scan(data: bytes, chunk: int) -> None:
    scanner = TarScanner(name="fuzzed tar")
    for pos in range(0, len(data), chunk):
        scanner.feed(data[pos : pos + chunk])
    scanner.finish()
    for entry in scanner.entries:
        assert entry.size >= 0 and entry.data_offset >= 0


@CI
@given(changes=damage, cut=cuts, checksums=st.booleans(), chunk=st.integers(1, 5000))
def test_tar_headers(changes, cut, checksums, chunk) -> None:
    data = bytearray(damaged(sample_tar(), changes, cut))
    if checksums:
        fix_checksums(data)
    try:
        scan(bytes(data), chunk)
    except FormatError:
        pass


@CI
@given(st.binary(min_size=0, max_size=3000), st.integers(1, 700))
def test_tar_garbage(data: bytes, chunk: int) -> None:
    try:
        scan(data, chunk)
    except FormatError:
        pass


# --------------------------------------------------------------------------- gzip


@CI
@given(
    flags=st.integers(0, 255),
    rest=st.binary(max_size=400),
    method=st.sampled_from([8, 8, 8, 0, 255]),
)
def test_gzip_headers(flags: int, rest: bytes, method: int) -> None:
    buf = b"\x1f\x8b" + bytes([method, flags]) + rest
    for n in (0, 1, 3, 10, len(buf)):
        try:
            got = parse_gzip_header(buf[:n], where=" in a fuzzed blob")
        except FormatError:
            continue
        assert got is None or 10 <= got <= n


# --------------------------------------------------------------------------- index files


@functools.cache
def sample_index_file() -> bytes:
    index, _, packed = sample_index()
    return serialize(index, packed)


def touch(index: Any) -> None:
    """Everything a reader would look at (lazy pages load here)."""
    for entry in index.entries:
        assert entry.size >= 0
    for i, span in enumerate(index.spans):
        assert span.compressed_start <= span.compressed_end
        index.record(i)


@CI
@given(changes=damage, cut=cuts)
def test_index_files(changes, cut) -> None:
    data = damaged(sample_index_file(), changes, cut)
    try:
        touch(load(data))
    except FormatError:
        pass
    try:
        index = parse_cached(
            lambda offset, length: data[offset : offset + length],
            len(data),
            expected_digest=INDEX_DIGEST,
            where="fuzzed",
        )
        touch(index)
    except FormatError:
        pass


@CI
@given(st.binary(max_size=600))
def test_index_garbage(data: bytes) -> None:
    for attempt in (data, b"SEEKOCIX" + data, sample_index_file()[:64] + data):
        try:
            parse_header(attempt)
            touch(load(attempt))
        except FormatError:
            pass


# --------------------------------------------------------------------------- zTOC


@functools.cache
def sample_ztoc() -> tuple[bytes, int]:
    blob = compress_layer(sample_tar(), "small-blocks")
    return soci.build_ztoc(io.BytesIO(blob), span_size=1024), len(blob)


@CI
@given(changes=damage, cut=cuts)
def test_ztocs(changes, cut) -> None:
    raw, blob_size = sample_ztoc()
    data = damaged(raw, changes, cut)
    try:
        ztoc = decode_ztoc(data)
        index = ztoc_to_layer_index(
            ztoc,
            layer_digest=DIGEST,
            media_type="application/vnd.oci.image.layer.v1.tar+gzip",
            blob_size=blob_size,
            raw_checkpoints=ztoc.checkpoints,
        )
        touch(index)
    except FormatError:
        pass


# --------------------------------------------------------------------------- manifests

DIGESTS = st.sampled_from([DIGEST, "sha256:12", "md5:" + "0" * 32, "", "sha256:" + "AB" * 32])
MEDIA = st.sampled_from(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "text/plain",
    ]
)
json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=20)
)
json_any = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
descriptor = st.fixed_dictionaries(
    {},
    optional={
        "mediaType": st.one_of(MEDIA, json_any),
        "digest": st.one_of(DIGESTS, json_any),
        "size": st.one_of(st.integers(-5, 2**64), json_any),
        "platform": st.one_of(
            st.fixed_dictionaries(
                {"os": st.sampled_from(["linux", "windows", ""])},
                optional={
                    "architecture": st.sampled_from(["amd64", "arm64", ""]),
                    "variant": json_any,
                },
            ),
            json_any,
        ),
        "annotations": st.one_of(
            st.dictionaries(st.text(max_size=8), json_any, max_size=3), json_any
        ),
        "urls": json_any,
    },
)
manifest = st.fixed_dictionaries(
    {},
    optional={
        "schemaVersion": st.one_of(st.sampled_from([1, 2, 3]), json_any),
        "mediaType": st.one_of(MEDIA, json_any),
        "config": st.one_of(descriptor, json_any),
        "layers": st.one_of(st.lists(descriptor, max_size=3), json_any),
        "manifests": st.one_of(st.lists(descriptor, max_size=3), json_any),
        "subject": st.one_of(descriptor, json_any),
    },
)


@CI
@given(doc=st.one_of(manifest, json_any), hint=st.one_of(st.none(), MEDIA), raw=st.booleans())
def test_manifests(doc: Any, hint: str | None, raw: bool) -> None:
    body = json.dumps(doc).encode() if not raw else json.dumps(doc).encode()[:-1]
    try:
        parsed = parse_manifest(body, media_type_hint=hint, digest=DIGEST, where="fuzzed")
        if parsed.is_index:
            parsed.entries(where="fuzzed")
        else:
            parsed.config(where="fuzzed")
            parsed.layers(where="fuzzed")
    except SeekociError:
        pass


# --------------------------------------------------------------------------- references

ref_text = st.text(
    alphabet=string.ascii_letters + string.digits + ":/@._-[]" + "\x00 é",
    max_size=80,
)


@CI
@given(st.one_of(ref_text, st.text(max_size=40)))
def test_references(text: str) -> None:
    for candidate in (text, "oci:" + text, "docker://" + text, "127.0.0.1:5000/" + text):
        try:
            ref = parse_reference(candidate)
        except InvalidReferenceError as exc:
            assert str(exc).startswith(f"invalid reference {candidate!r}")
            continue
        assert parse_reference(str(ref)) == ref  # what it prints, it reads back


# --------------------------------------------------------------------------- WWW-Authenticate

challenge_text = st.text(
    alphabet=string.ascii_letters + string.digits + ' ,="\\=:/.-_\t', max_size=120
)


@CI
@given(st.one_of(challenge_text, st.text(max_size=60)))
def test_www_authenticate(value: str) -> None:
    for candidate in (value, "Bearer " + value, 'Bearer realm="' + value):
        challenges = parse_www_authenticate(candidate)  # never raises: a bad header is no auth
        for challenge in challenges:
            assert challenge.scheme == challenge.scheme.lower()
            assert all(isinstance(v, str) for v in challenge.params.values())


# --------------------------------------------------------------------------- eStargz, zstd:chunked

VECTOR_BLOBS = {
    "estargz": "estargz/estargz-noprefetch.blob",
    "zstd:chunked": "zstd-chunked/zstdchunked-cstorage.blob",
    "estargz with prefetch": "estargz/estargz-prefetch.blob",
}


@functools.cache
def vector(kind: str) -> tuple[bytes, str, bytes]:
    """A vector blob, its digest and the bytes its whole tar stream reads as."""
    blob = (VECTORS / VECTOR_BLOBS[kind]).read_bytes()
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    layer = seekoci.open_layer(BytesSource(blob, name=kind), digest=digest, cache_dir=False)
    return blob, digest, layer.read_range(0, 1 << 30)


@CI
@given(kind=st.sampled_from(sorted(VECTOR_BLOBS)), changes=damage, cut=cuts)
def test_damaged_estargz_and_zstd_chunked_blobs(kind: str, changes, cut) -> None:
    """Footers, TOCs, skippable frames and frame headers damaged: with the layer digest
    known, an error or (damage that changed nothing) the same bytes; never other bytes."""
    blob, digest, whole = vector(kind)
    data = damaged(blob, changes, cut)
    layer = seekoci.open_layer(BytesSource(data, name=kind), digest=digest, cache_dir=False)
    try:
        layer.format  # noqa: B018 - the footer is read here
        got = layer.read_range(0, 1 << 30)
    except SeekociError:
        return
    assert data == blob and got == whole


# --------------------------------------------------------------------------- GZIDX


@functools.cache
def sample_gzidx() -> tuple[bytes, bytes]:
    """A gzip layer (a few spans) and the GZIDX file seekoci exports for it."""
    from seekoci.gzidx import export_gzidx

    blob = compress_layer(sample_tar() + build_tar([file("big", text_bytes("g", 300_000))]), "gzip")
    layer = seekoci.open_layer(BytesSource(blob), cache_dir=False, span_size=32 << 10)
    return blob, export_gzidx(layer)


@CI
@given(changes=damage, cut=cuts)
def test_gzidx_files(changes, cut) -> None:
    """A damaged GZIDX file is a FormatError at parse time or when imported against its blob
    (never another exception, never wrong bytes)."""
    from seekoci.formats.gzidx import read
    from seekoci.gzidx import import_gzidx

    blob, gzidx = sample_gzidx()
    data = damaged(gzidx, changes, cut)
    try:
        read(data)
    except FormatError:
        pass
    layer = seekoci.open_layer(BytesSource(blob), cache_dir=False)
    try:
        import_gzidx(layer, data)
    except FormatError:
        return
    tar = sample_tar()
    assert layer.read_range(0, len(tar)) == tar  # an index that passed its check reads right


@CI
@given(st.binary(max_size=400))
def test_gzidx_garbage(data: bytes) -> None:
    from seekoci.formats.gzidx import MAGIC, read

    for attempt in (data, MAGIC + data):
        try:
            read(attempt)
        except FormatError:
            pass
