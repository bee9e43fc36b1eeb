"""GZIDX interop, with indexed_gzip itself as the oracle: an index seekoci exports lets
indexed_gzip seek and read the blob, and one indexed_gzip exports serves seekoci's reads."""

from __future__ import annotations

import io
import random
import struct
import subprocess
import sys
from pathlib import Path

import indexed_gzip
import pytest
from layers import (
    CountingSource,
    build_tar,
    compress_layer,
    file,
    random_bytes,
    random_tree,
    text_bytes,
)
from tocwriter import estargz

import seekoci
from seekoci.cache import MemoryCache
from seekoci.formats import gzidx as gzidx_format
from seekoci.gzidx import export_gzidx, import_gzidx

PRODUCERS = ("python", "gzip", "pigz", "multi-member", "small-blocks", "fname")


def sample_tar() -> bytes:
    return build_tar(
        [
            *random_tree("gzidx", files=20, max_size=40_000),
            file("big/text", text_bytes("gzidx-big", 600_000)),
            file("big/random", random_bytes("gzidx-rnd", 300_000)),
        ]
    )


TAR = sample_tar()


def blob_of(producer: str) -> bytes:
    if producer == "estargz":
        return estargz(TAR, chunk_size=64 << 10).blob
    return compress_layer(TAR, producer, seed=producer)


def stream_of(producer: str) -> bytes:
    return estargz(TAR, chunk_size=64 << 10).tar if producer == "estargz" else TAR


def ig_reads(path: Path, index: Path, expected: bytes) -> None:
    """indexed_gzip, given ``index``, reads random ranges of ``path`` as ``expected``."""
    f = indexed_gzip.IndexedGzipFile(str(path), index_file=str(index))
    try:
        rnd = random.Random(str(path))
        for _ in range(40):
            offset, length = rnd.randrange(len(expected)), rnd.randrange(80_000)
            f.seek(offset)
            assert f.read(length) == expected[offset : offset + length], (offset, length)
    finally:
        f.close()


def ig_export(path: Path, spacing: int = 1 << 17) -> bytes:
    f = indexed_gzip.IndexedGzipFile(str(path), spacing=spacing)
    try:
        f.build_full_index()
        out = io.BytesIO()
        f.export_index(fileobj=out)
        return out.getvalue()
    finally:
        f.close()


@pytest.mark.parametrize("producer", [*PRODUCERS, "estargz"])
def test_an_index_seekoci_exports_serves_indexed_gzip(producer: str, tmp_path: Path) -> None:
    blob = blob_of(producer)
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(blob)
    layer = seekoci.open_layer(path, cache_dir=False, span_size=64 << 10)
    data = export_gzidx(layer)
    parsed = gzidx_format.read(data)
    assert parsed.compressed_size == len(blob)
    assert parsed.uncompressed_size == len(stream_of(producer))
    assert len(parsed.points) >= 3  # several checkpoints, and the end-of-stream point
    (tmp_path / "x.gzidx").write_bytes(data)
    ig_reads(path, tmp_path / "x.gzidx", stream_of(producer))


@pytest.mark.parametrize("producer", PRODUCERS)
def test_an_index_indexed_gzip_exports_serves_seekoci(producer: str, tmp_path: Path) -> None:
    blob = blob_of(producer)
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(blob)
    data = ig_export(path)
    source = CountingSource(blob)
    layer = seekoci.Layer(source, cache=MemoryCache(), digest=seekoci_digest(blob))
    index = import_gzidx(layer, data)
    assert layer.index_status == "gzidx" and len(index.spans) == len(
        [p for p in gzidx_format.read(data).points if p.uncompressed_offset < len(TAR)]
    )
    source.calls.clear()
    assert layer.open("big/text").read() == text_bytes("gzidx-big", 600_000)
    assert layer.read_range(0, len(TAR) + 1) == TAR
    rnd = random.Random(producer)
    for _ in range(30):
        offset, length = rnd.randrange(len(TAR)), rnd.randrange(50_000)
        assert layer.read_range(offset, length) == TAR[offset : offset + length]
    # and open_layer takes the file too
    again = seekoci.open_layer(path, cache_dir=False, gzidx=data)
    assert again.open("big/random").read() == random_bytes("gzidx-rnd", 300_000)


def seekoci_digest(blob: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(blob).hexdigest()


def test_round_trip_through_both(tmp_path: Path) -> None:
    blob = blob_of("gzip")
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(blob)
    exported = export_gzidx(seekoci.open_layer(path, cache_dir=False, span_size=64 << 10))
    layer = seekoci.open_layer(path, cache_dir=False, gzidx=exported)
    assert layer.read_range(0, len(TAR)) == TAR


# ---------------------------------------------------------------------- bad GZIDX files


def _bad(data: bytes, how: str) -> bytes:
    b = bytearray(data)
    if how == "magic":
        b[:5] = b"GZIDY"
    elif how == "version":
        b[5] = 9
    elif how == "truncated":
        del b[len(b) // 2 :]
    elif how == "size":
        struct.pack_into("<Q", b, 7, struct.unpack_from("<Q", b, 7)[0] + 1)
    elif how == "point-offset":
        struct.pack_into("<Q", b, 35 + 18 * 2, struct.unpack_from("<Q", b, 35 + 18 * 2)[0] + 3)
    elif how == "point-bits":
        b[35 + 18 * 2 + 16] = (b[35 + 18 * 2 + 16] + 1) % 8
    elif how == "window":
        count = struct.unpack_from("<I", b, 31)[0]
        start = 35 + 18 * count
        b[start + 40_000 : start + 40_100] = bytes(100)  # the second point's window
    elif how == "total":
        struct.pack_into("<Q", b, 15, struct.unpack_from("<Q", b, 15)[0] - 1)
    return bytes(b)


@pytest.mark.parametrize(
    "how",
    ["magic", "version", "truncated", "size", "point-offset", "point-bits", "window", "total"],
)
def test_a_gzidx_that_does_not_match_the_blob(how: str, tmp_path: Path) -> None:
    blob = blob_of("gzip")
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(blob)
    data = export_gzidx(seekoci.open_layer(path, cache_dir=False, span_size=64 << 10))
    with pytest.raises(seekoci.FormatError):
        seekoci.open_layer(path, cache_dir=False, gzidx=_bad(data, how))


def test_a_gzidx_of_another_blob(tmp_path: Path) -> None:
    one, other = tmp_path / "one.gz", tmp_path / "other.gz"
    one.write_bytes(blob_of("gzip"))
    other.write_bytes(blob_of("pigz"))
    data = ig_export(other)
    with pytest.raises(seekoci.FormatError):
        seekoci.open_layer(one, cache_dir=False, gzidx=data)


def test_not_for_other_compressions(tmp_path: Path) -> None:
    layer = seekoci.Layer(CountingSource(compress_layer(TAR, "zstd")), cache=MemoryCache())
    with pytest.raises(seekoci.FormatError, match="gzip"):
        export_gzidx(layer)


def test_the_cli_exports_a_local_blob(tmp_path: Path) -> None:
    blob = blob_of("multi-member")
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(blob)
    out = tmp_path / "layer.gzidx"
    run = subprocess.run(
        [sys.executable, "-m", "seekoci", "index", "--export-gzidx", str(out), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    ig_reads(path, out, TAR)
