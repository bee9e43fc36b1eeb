"""Declarative layer blobs for the unit tests.

The entry helpers and producers come from ``tests/imagebuilder.py`` (shared with the
integration tests), so a unit test reads like::

    tar = build_tar([dir("etc"), file("etc/passwd", b"root:x:0:0\\n"), symlink("sh", "bin/sh")])
    blob = compress(tar, "pigz")

Producers (:data:`PRODUCERS`, through :func:`compress_layer`): ``python`` (the gzip module),
``gzip`` (the program), ``pigz`` (``pigz -p 2``), ``multi-member`` (the tar cut into several
gzip members), ``fname`` (a gzip header with FEXTRA, FNAME and FCOMMENT), ``small-blocks``
(zlib with memLevel 1: a deflate block every few hundred bytes), ``zstd`` (one frame),
``zstd-frames`` (a frame per 8 KiB) and ``none`` (the plain tar).

This module adds what only the unit tests need: random file trees, raw tar header blocks for
hostile archives, gzip streams with block boundaries where a test wants them, range sources
that count or misbehave, the location of the shared vectors and the hypothesis ``ci``
profile.
"""

from __future__ import annotations

import functools
import hashlib
import io
import random
import struct
import sys
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, settings

_TESTS_DIR = Path(__file__).resolve().parents[1]
if str(_TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(_TESTS_DIR))

from imagebuilder import (  # noqa: E402
    DEFAULT_MTIME,
    Entry,
    block,
    build_tar,
    char,
    compress,
    dir,
    fifo,
    file,
    gzip_with_header_fields,
    hardlink,
    opaque,
    random_bytes,
    sha256_digest,
    symlink,
    text_bytes,
    whiteout,
)

__all__ = [
    "CI",
    "DEFAULT_MTIME",
    "PRODUCERS",
    "VECTORS",
    "CountingSource",
    "Entry",
    "FlakySource",
    "block",
    "build_tar",
    "char",
    "compress",
    "compress_layer",
    "deflate_with_boundaries",
    "dir",
    "end_of_archive",
    "fifo",
    "file",
    "file_entries",
    "first_big_last",
    "gzip_member",
    "gzip_with_header_fields",
    "hardlink",
    "member",
    "opaque",
    "pax_member",
    "pax_record",
    "random_bytes",
    "random_tree",
    "raw_header",
    "sha256_digest",
    "sha256_hex",
    "symlink",
    "tar_members",
    "text_bytes",
    "whiteout",
    "zstd_frames",
]

#: Every producer of a gzip, zstd or plain tar layer. ``small-blocks`` is zlib with memLevel
#: 1: a deflate block every few hundred bytes, so checkpoints land at every bit position.
#: ``zstd`` is one frame (one span); ``zstd-frames`` a frame per 8 KiB of tar.
PRODUCERS = (
    "python",
    "gzip",
    "pigz",
    "multi-member",
    "fname",
    "small-blocks",
    "zstd",
    "zstd-frames",
    "none",
)

#: The interop vectors made by the reference implementations, copied into the repository
#: (tests/vectors/README.md says what made them) so that a clone tests on its own.
VECTORS = Path(__file__).resolve().parents[1] / "vectors"

# A fixed budget, no example database and the same examples on every run. No shrinking
# either: a failure is reported as drawn, so a failing run costs no more than a passing one.
settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=True,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
CI = settings.get_profile("ci")


# --------------------------------------------------------------------------- trees


T = TypeVar("T")


def in_threads(call: Callable[[], T], count: int = 2) -> list[T]:
    """What ``call()`` returned in each of ``count`` threads started together."""
    got: list[T] = []
    threads = [threading.Thread(target=lambda: got.append(call())) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got


def random_tree(seed: int | str, files: int = 30, max_size: int = 40_000) -> list[Entry]:
    """Directories and files of mixed content (text, random, zeros, empty), from ``seed``."""
    rnd = random.Random(seed)
    dirs = ["etc", "usr", "usr/lib", "usr/share/doc", "var/log"]
    entries: list[Entry] = [dir(d) for d in ["usr/share", *dirs]]
    for i in range(files):
        size = rnd.choice([0, 1, 511, 512, 513, rnd.randint(0, max_size)])
        kind = rnd.choice(["text", "random", "zeros"])
        if kind == "text":
            data = text_bytes(f"{seed}-{i}", size)
        elif kind == "random":
            data = random_bytes(f"{seed}-{i}", size)
        else:
            data = bytes(size)
        entries.append(
            file(f"{rnd.choice(dirs)}/f{i:03d}.{kind}", data, mode=rnd.choice([0o644, 0o755]))
        )
    return entries


def file_entries(entries: Sequence[Entry]) -> dict[str, bytes]:
    """Normalised name -> bytes of every regular file (the last one of a name wins)."""
    return {e.name.strip("/"): e.data for e in entries if e.type == "file"}


# --------------------------------------------------------------------------- raw tar


def raw_header(
    name: bytes | str,
    *,
    typeflag: bytes = b"0",
    size: int | bytes = 0,
    mode: int | bytes = 0o644,
    linkname: bytes = b"",
    magic: bytes = b"ustar\x0000",
    checksum: int | None = None,
) -> bytes:
    """One 512-byte tar header block; numeric fields may be given as raw field bytes.

    The checksum is computed unless ``checksum`` is given (to write a wrong one).
    """
    if isinstance(name, str):
        name = name.encode()

    def num(value: int | bytes, width: int) -> bytes:
        if isinstance(value, bytes):
            return value.ljust(width, b"\x00")[:width]
        return b"%0*o\x00" % (width - 1, value)

    block_ = bytearray(512)
    block_[0:100] = name.ljust(100, b"\x00")[:100]
    block_[100:108] = num(mode, 8)
    block_[108:116] = num(0, 8)
    block_[116:124] = num(0, 8)
    block_[124:136] = num(size, 12)
    block_[136:148] = num(DEFAULT_MTIME, 12)
    block_[156:157] = typeflag
    block_[157:257] = linkname.ljust(100, b"\x00")[:100]
    block_[257:265] = magic
    block_[148:156] = b" " * 8
    value = sum(block_) if checksum is None else checksum
    block_[148:156] = b"%06o\x00 " % value
    return bytes(block_)


def member(header: bytes, data: bytes = b"") -> bytes:
    """A header block followed by ``data`` padded to whole blocks."""
    return header + data + bytes(-len(data) % 512)


def pax_record(key: str, value: bytes | str) -> bytes:
    """One PAX record ``"%d %s=%s\\n"`` whose length field counts itself."""
    body = key.encode() + b"=" + (value.encode() if isinstance(value, str) else value) + b"\n"
    n = len(body) + 2
    while len(b"%d " % n) + len(body) != n:
        n += 1
    return b"%d " % n + body


def pax_member(records: bytes, *, typeflag: bytes = b"x") -> bytes:
    """An extended header (``x``, or ``g`` for a global one) carrying ``records``."""
    return member(raw_header("././@PaxHeader", typeflag=typeflag, size=len(records)), records)


def end_of_archive() -> bytes:
    return bytes(1024)


# --------------------------------------------------------------------------- gzip


def gzip_member(deflate: bytes, data: bytes, *, header: bytes | None = None) -> bytes:
    """A gzip member around raw ``deflate`` bytes of ``data`` (minimal 10-byte header)."""
    head = header if header is not None else b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"
    return head + deflate + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


def deflate_with_boundaries(data: bytes, cuts: Sequence[int], *, mem_level: int = 8) -> bytes:
    """Raw deflate of ``data`` with a full flush (a block boundary) at every offset in ``cuts``.

    A small ``mem_level`` makes zlib end a block every few hundred symbols, which gives many
    block boundaries at every bit position.
    """
    comp = zlib.compressobj(6, zlib.DEFLATED, -15, mem_level)
    out = []
    pos = 0
    for cut in [*cuts, len(data)]:
        out.append(comp.compress(data[pos:cut]))
        if cut != len(data):
            out.append(comp.flush(zlib.Z_FULL_FLUSH))
        pos = cut
    out.append(comp.flush())
    return b"".join(out)


def compress_layer(tar: bytes, producer: str, *, seed: int | str = 0) -> bytes:
    """``tar`` compressed by one of :data:`PRODUCERS`."""
    if producer == "small-blocks":
        return gzip_member(deflate_with_boundaries(tar, [], mem_level=1), tar)
    if producer == "zstd-frames":
        return zstd_frames(tar, 8192)
    return compress(tar, producer, seed=seed)


def one_layer_image(tar: bytes) -> Any:
    """A :class:`seekoci.image.Image` of one gzip layer of ``tar`` (32 KiB spans), its bytes
    in memory, cached in memory."""
    import seekoci
    from seekoci.cache import MemoryCache
    from seekoci.image import Image
    from seekoci.source import BytesSource

    blob = compress_layer(tar, "python")
    layer = seekoci.Layer(
        BytesSource(blob, name="layer"),
        cache=MemoryCache(),
        digest="sha256:" + hashlib.sha256(blob).hexdigest(),
        span_size=32 << 10,
    )
    return Image(
        reference="test", digest="", platform="linux/amd64", config={}, manifest={}, layers=[layer]
    )


def zstd_frames(data: bytes, frame_size: int) -> bytes:
    """``data`` as independent zstd frames of ``frame_size`` uncompressed bytes each."""
    import zstandard

    cctx = zstandard.ZstdCompressor(level=3)
    pieces = [data[i : i + frame_size] for i in range(0, len(data), frame_size)] or [b""]
    return b"".join(cctx.compress(p) for p in pieces)


# --------------------------------------------------------------------------- sources


class CountingSource:
    """A :class:`seekoci.RangeSource` over bytes that records every ``read_range`` call."""

    def __init__(self, data: bytes, *, name: str = "counting-blob") -> None:
        self.data = bytearray(data)
        self._name = name
        self.calls: list[tuple[int, int]] = []
        self.streamed = 0

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def name(self) -> str:
        return self._name

    def read_range(self, offset: int, length: int) -> bytes:
        self.calls.append((offset, length))
        return bytes(self.data[offset : offset + length])

    def iter_from(self, offset: int = 0, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        for pos in range(offset, len(self.data), chunk_size):
            chunk = bytes(self.data[pos : pos + chunk_size])
            self.streamed += len(chunk)
            yield chunk

    @property
    def bytes_read(self) -> int:
        return sum(n for _, n in self.calls)


class FlakySource(CountingSource):
    """Returns damaged bytes for the first ``bad_reads`` range reads, then the real ones."""

    def __init__(self, data: bytes, *, bad_reads: int, name: str = "flaky-blob") -> None:
        super().__init__(data, name=name)
        self.bad_reads = bad_reads

    def read_range(self, offset: int, length: int) -> bytes:
        data = super().read_range(offset, length)
        if self.bad_reads and data:
            self.bad_reads -= 1
            damaged = bytearray(data)
            damaged[len(damaged) // 2] ^= 0xFF
            return bytes(damaged)
        return data


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tar_members(tar: bytes) -> list[tuple[str, int, int]]:
    """(name, header offset, data offset) of every member, as ``tarfile`` reads them."""
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        return [(m.name, m.offset, m.offset_data) for m in tf.getmembers()]


@functools.cache
def first_big_last(big_mib: int) -> tuple[bytes, bytes]:
    """A gzip layer (python's gzip) and its tar: a small file first, six text files, a
    random file of ``big_mib`` MiB, a small file last. For passes that stop early or go on."""
    members = [file("first", b"early\n")]
    members += [file(f"text{i}", text_bytes(i, 300_000)) for i in range(6)]
    members += [file("big", random_bytes("big", big_mib << 20)), file("last", b"late\n")]
    tar = build_tar(members)
    return tar, compress_layer(tar, "python")


def with_directory(data: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """A native index file whose directory is ``data``'s after ``edit`` (the header's
    offsets moved to match; pages, span records and windows kept as they are)."""
    import json

    import zstandard

    from seekoci.formats.index import parse_header

    header = parse_header(data)
    directory = json.loads(zstandard.ZstdDecompressor().decompressobj().decompress(
        data[64 : header.head_end]))  # fmt: skip
    edit(directory)
    new_dir = zstandard.ZstdCompressor().compress(json.dumps(directory).encode())
    delta = len(new_dir) - header.directory_length
    head = bytearray(data[:64])
    struct.pack_into("<QQQ", head, 24, header.toc_length + delta, header.span_offset + delta,
                     header.windows_offset + delta)  # fmt: skip
    struct.pack_into("<Q", head, 56, len(new_dir))
    return bytes(head) + new_dir + data[header.head_end :]
