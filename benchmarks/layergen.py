"""A realistic, deterministic layer for the benchmarks: tar stream written straight into ``gzip``.

What a big ML/Python image layer looks like, in walk order (as image builders write it)::

    etc/...                                      a few small config files
    opt/model/model.safetensors                  float16 weights (~35% of the layer)
    usr/lib/python3.11/site-packages/PKG/...     tens of thousands of Python-like text files
                                                 (~25%), with six extension modules of tens
                                                 of MB each (~40%) spread among the packages

Everything comes from seeded :class:`random.Random` objects, so the same size gives the same tar
(and, with the same ``gzip`` program, the same blob and digest) on every run. The tar is
written by hand (``TarInfo.tobuf`` + data + padding) so each file's data offset is known
without reading the archive back; it streams through ``gzip -6 -n`` into the blob file, so
generation (one core) and compression (the other) overlap and nothing big stays in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import struct
import subprocess
import tarfile
from pathlib import Path
from typing import BinaryIO

MIB = 1 << 20
#: The same fixed mtime as tests/imagebuilder.py: reproducible tars.
MTIME = 1_700_000_000
SITE = "usr/lib/python3.11/site-packages"

#: Shares of the uncompressed layer.
TEXT_SHARE, LIB_SHARE = 0.25, 0.40  # the weights get the rest
LIB_COUNT = 6


@dataclasses.dataclass(frozen=True)
class FileRecord:
    """A regular file of the layer: where its data sits in the tar stream, and its digest."""

    path: str  # absolute, as seekoci sees it
    offset: int  # of its data in the uncompressed tar stream
    size: int
    sha256: str

    @property
    def tar_name(self) -> str:
        return self.path.lstrip("/")


@dataclasses.dataclass
class GeneratedLayer:
    blob_path: Path
    digest: str  # of the gzip blob
    size: int  # compressed bytes
    diff_id: str  # of the tar stream
    tar_size: int
    text_files: list[FileRecord]
    libraries: list[FileRecord]
    weights: FileRecord
    other_files: list[FileRecord]
    directories: int

    @property
    def text_bytes(self) -> int:
        return sum(f.size for f in self.text_files)

    @property
    def files(self) -> int:
        return len(self.text_files) + len(self.libraries) + 1 + len(self.other_files)


# --------------------------------------------------------------------------- content


# fmt: off
_SYLLABLES = [
    "ka", "to", "re", "mi", "na", "lo", "pe", "su", "ri", "co", "da", "ve", "gi", "ba", "te",
    "ul", "ex", "in", "st", "ar", "or", "en", "an", "qu", "ph", "th", "ch", "sh", "io", "ma",
    "pa", "fo", "lu", "ne", "ti", "bo", "ze",
]
_COMMON = [
    "self", "cls", "data", "value", "values", "path", "name", "result", "config", "args",
    "kwargs", "items", "key", "index", "options", "item", "node", "parent", "child", "buffer",
    "stream", "offset", "size", "count", "text", "line", "module", "tensor", "shape", "dtype",
    "device", "layer", "weight", "bias", "state", "cache", "handler", "request", "response",
]
# fmt: on


def _identifiers(rnd: random.Random, n: int) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rnd.choices(_SYLLABLES, k=rnd.randint(2, 4))))
    return sorted(words)


def _code_lines(rnd: random.Random, n: int) -> list[bytes]:
    """A pool of Python-looking source lines (indented, varied, never all the same)."""
    idents = _identifiers(rnd, 3000) + _COMMON * 20

    def ident() -> str:
        return rnd.choice(idents)

    def words() -> str:
        return " ".join(rnd.choice(idents) for _ in range(rnd.randint(2, 9)))

    def camel() -> str:
        return ident().capitalize() + ident().capitalize()

    templates = [
        lambda: f"def {ident()}({ident()}, {ident()}=None):",
        lambda: f"    def {ident()}(self, {ident()}: int = {rnd.randint(0, 4096)}) -> {camel()}:",
        lambda: f"        return self.{ident()}.{ident()}({ident()}, {rnd.randint(0, 99)})",
        lambda: f"    return {ident()}({ident()}[{rnd.randint(0, 9)}:{rnd.randint(10, 99)}])",
        lambda: f"import {ident()}",
        lambda: f"from {ident()}.{ident()} import {camel()}, {ident()}",
        lambda: f"        # {words()}",
        lambda: f"    # {words()}.",
        lambda: f"class {camel()}({camel()}):",
        lambda: f'    """{words().capitalize()}."""',
        lambda: f"        if {ident()} is None:",
        lambda: f'            raise ValueError(f"{words()}: {{{ident()}!r}}")',
        lambda: f"        {ident()} = {ident()}.get({ident()!r}, {rnd.randint(0, 1 << 16)})",
        lambda: f"        for {ident()} in self.{ident()}:",
        lambda: f"            {ident()}.append({ident()} * {rnd.random():.4f})",
        lambda: f"    {ident().upper()} = {rnd.randint(0, 1 << 20)}",
        lambda: f"        self.{ident()} = {ident()}",
        lambda: f"        with open({ident()}, 'rb') as {ident()}:",
        lambda: f"            yield from {ident()}.{ident()}()",
        lambda: "",
        lambda: "",
    ]
    return [rnd.choice(templates)().encode() for _ in range(n)]


def python_module(rnd: random.Random, pool: list[bytes], size: int) -> bytes:
    """About ``size`` bytes of Python-like source (lines drawn from ``pool``)."""
    head = b'"""Generated for the seekoci benchmarks."""\n\nfrom __future__ import annotations\n\n'
    body = b"\n".join(rnd.choices(pool, k=max(1, size // 40)))
    return head + body + b"\n"


#: A skewed byte distribution (x86-64 code is heavy in 00, ff, 48, 89, 8b, e8, 0f ...).
_CODE_TABLE = bytes(
    [0x00] * 48
    + [0xFF] * 14
    + [0x48] * 14
    + [0x89] * 12
    + [0x8B] * 12
    + [0xE8] * 8
    + [0x0F] * 8
    + [0x24] * 6
    + [0x44] * 6
    + [0xC3] * 4
    + list(range(1, 256, 2))[:124]
)
assert len(_CODE_TABLE) == 256


def shared_library(rnd: random.Random, size: int, symbols: list[bytes]) -> bytes:
    """``size`` bytes shaped like a big .so: code-like, random, padding, strings, tables."""
    snippets = [rnd.randbytes(rnd.randint(6, 48)).translate(_CODE_TABLE) for _ in range(4096)]
    out = bytearray(b"\x7fELF\x02\x01\x01\x00" + bytes(8) + struct.pack("<HHI", 3, 62, 1))
    while len(out) < size:
        kind = rnd.choices(("code", "random", "zeros", "strings", "table"), (45, 25, 5, 15, 10))[0]
        n = min(size - len(out), rnd.randint(16 << 10, 2 << 20))
        if kind == "code":
            chunk = b"".join(rnd.choices(snippets, k=n // 27 + 1))
        elif kind == "random":  # compressed resources, packed data
            chunk = rnd.randbytes(n)
        elif kind == "zeros":  # section alignment
            chunk = bytes(min(n, rnd.randint(1 << 10, 64 << 10)))
        elif kind == "strings":  # .dynstr / .strtab
            chunk = b"\0".join(rnd.choices(symbols, k=n // 30 + 1))
        else:  # relocation / unwind tables: regular records
            base = rnd.getrandbits(40)
            block = b"".join(struct.pack("<QQQ", base + 8 * i, 8, i) for i in range(512))
            chunk = block * (n // len(block) + 1)
        out += chunk[:n]
    return bytes(out[:size])


def _symbols(rnd: random.Random, n: int) -> list[bytes]:
    idents = _identifiers(rnd, 2000)
    out = []
    for _ in range(n):
        parts = rnd.choices(idents, k=rnd.randint(2, 5))
        out.append(("_ZN" + "".join(f"{len(p)}{p}" for p in parts) + "E").encode())
    return out


def _half_high_byte_table() -> bytes:
    # High byte of a little-endian float16 (s eeeee mm): the 2 low bits of the random byte stay
    # mantissa, the 6 high ones pick a sign and an exponent. Exponents 6..13 (bias 15) give
    # magnitudes 2^-9 .. 2^-2, most of them near 2^-5, like trained weights; both signs.
    exponents = [6] * 2 + [7] * 3 + [8] * 4 + [9] * 5 + [10] * 6 + [11] * 5 + [12] * 4 + [13] * 3
    pairs = [(sign, e) for sign in (0, 1) for e in exponents]
    assert len(pairs) == 64
    return bytes((pairs[i >> 2][0] << 7) | (pairs[i >> 2][1] << 2) | (i & 3) for i in range(256))


_HALF_HIGH = _half_high_byte_table()


def float16_weights(rnd: random.Random, count: int) -> bytes:
    """``count`` little-endian float16 values (a 10-bit mantissa: limited precision).

    Built lane by lane (the low and the high byte of every value at once) from ``randbytes``
    rather than ``struct.pack`` per value: the same kind of data, a hundred times faster. The
    narrow exponent range is why it compresses a little (about 0.9), as real checkpoints do.
    """
    out = bytearray(2 * count)
    step = 64 << 20  # randbytes(n) fails past 2**28 bytes (getrandbits takes a C int)
    for start in range(0, count, step):
        n = min(step, count - start)
        out[2 * start : 2 * (start + n) : 2] = rnd.randbytes(n)
        out[2 * start + 1 : 2 * (start + n) : 2] = rnd.randbytes(n).translate(_HALF_HIGH)
    return bytes(out)


def safetensors_file(rnd: random.Random, size: int) -> bytes:
    """A valid .safetensors file of about ``size`` bytes: JSON header + float16 tensors."""
    total = max(1 << 16, size)
    cols = 1024
    tensors: dict[str, dict[str, object]] = {"__metadata__": {"format": "pt"}}
    offset = 0
    layer = 0
    while offset < total:
        rows = min(rnd.choice((256, 512, 1024, 4096)), (total - offset) // (2 * cols))
        if rows <= 0:
            break
        for part in ("q_proj", "k_proj", "v_proj", "o_proj", "mlp"):
            if rows <= 0 or offset + rows * cols * 2 > total:
                break
            nbytes = rows * cols * 2
            tensors[f"model.layers.{layer}.{part}.weight"] = {
                "dtype": "F16",
                "shape": [rows, cols],
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
        layer += 1
    header = json.dumps(tensors, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + float16_weights(rnd, offset // 2)


# --------------------------------------------------------------------------- tar


class _TarWriter:
    """Tar members written one by one to ``out``, hashing the stream (the layer's diff_id)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.pos = 0
        self.hash = hashlib.sha256()

    def _write(self, data: bytes) -> None:
        self.hash.update(data)
        self.out.write(data)
        self.pos += len(data)

    def _info(self, name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.size = size
        info.mtime = MTIME
        info.uname = info.gname = "root"
        return info

    def directory(self, name: str) -> None:
        info = self._info(name, tarfile.DIRTYPE, 0o755)
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def file(self, name: str, data: bytes, mode: int = 0o644) -> FileRecord:
        info = self._info(name, tarfile.REGTYPE, mode, len(data))
        header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        offset = self.pos + len(header)
        pad = bytes(-len(data) % tarfile.BLOCKSIZE)
        if len(data) < MIB:
            self._write(header + data + pad)
        else:
            self._write(header)
            self._write(data)
            self._write(pad)
        return FileRecord("/" + name, offset, len(data), hashlib.sha256(data).hexdigest())

    def close(self) -> None:
        end = bytes(2 * tarfile.BLOCKSIZE)
        end += bytes(-(self.pos + len(end)) % tarfile.RECORDSIZE)
        self._write(end)


_ETC = {
    "etc/os-release": b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n',
    "etc/hostname": b"seekoci-bench\n",
    "etc/passwd": b"root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/:/sbin/nologin\n",
    "etc/ld.so.conf": b"include /etc/ld.so.conf.d/*.conf\n",
}


def generate_layer(
    workdir: Path,
    size_mb: int,
    *,
    seed: int = 20240611,
    text_share: float = TEXT_SHARE,
    lib_mb: list[int] | None = None,
) -> GeneratedLayer:
    """Write ``workdir/layer.tar.gz`` of about ``size_mb`` MiB uncompressed; describe it.

    ``text_share`` of it is Python-like text files; the libraries are ``lib_mb`` (MiB each,
    default: :data:`LIB_COUNT` of random sizes adding up to :data:`LIB_SHARE`); the weights
    file takes the rest (at least 1 MiB)."""
    rnd = random.Random(seed)
    total = size_mb * MIB
    text_budget = int(total * text_share)
    if lib_mb is None:
        lib_budget = int(total * LIB_SHARE)
        lib_weights = [rnd.uniform(0.5, 1.5) for _ in range(LIB_COUNT)]
        lib_sizes = [int(lib_budget * w / sum(lib_weights)) for w in lib_weights]
    else:
        lib_sizes = [mb * MIB for mb in lib_mb]
        lib_budget = sum(lib_sizes)
    weights_budget = max(MIB, total - text_budget - lib_budget)

    blob_path = workdir / "layer.tar.gz"
    with blob_path.open("wb") as blob_file:
        gzip = subprocess.Popen(["gzip", "-6", "-n", "-c"], stdin=subprocess.PIPE, stdout=blob_file)
        assert gzip.stdin is not None
        try:
            tar = _TarWriter(gzip.stdin)
            layer = _write_members(tar, rnd, text_budget, lib_sizes, weights_budget)
            tar.close()
        finally:
            gzip.stdin.close()
            if gzip.wait() != 0:
                raise RuntimeError(f"gzip failed with status {gzip.returncode}")

    digest = hashlib.sha256()
    with blob_path.open("rb") as f:
        while chunk := f.read(8 * MIB):
            digest.update(chunk)
    return GeneratedLayer(
        blob_path=blob_path,
        digest="sha256:" + digest.hexdigest(),
        size=blob_path.stat().st_size,
        diff_id="sha256:" + tar.hash.hexdigest(),
        tar_size=tar.pos,
        **layer,
    )


def _walk_key(name: str) -> tuple[str, ...]:
    return tuple(name.split("/"))


def _write_members(
    tar: _TarWriter,
    rnd: random.Random,
    text_budget: int,
    lib_sizes: list[int],
    weights_budget: int,
) -> dict[str, object]:
    """Plan the tree with ``rnd``, then write it in walk order -- parent before children,
    siblings by name, as ``filepath.Walk``, BuildKit and docker write layers -- making each
    file's bytes from its own seed so the order of writing does not change them."""
    pool = _code_lines(rnd, 60_000)
    symbols = _symbols(rnd, 20_000)
    package_names = _identifiers(rnd, 20_000)
    rnd.shuffle(package_names)
    module_names = package_names[-3000:]
    # name -> ("dir",) | (kind, size, seed)
    plan: dict[str, tuple[object, ...]] = {}
    for name in ("etc", "opt", "opt/model", "usr", "usr/lib", "usr/lib/python3.11", SITE):
        plan[name] = ("dir",)
    for name in _ETC:
        plan[name] = ("etc", 0, 0)
    plan["opt/model/model.safetensors"] = ("weights", weights_budget, rnd.getrandbits(64))

    written = 0
    package = 0
    libs = 0
    while written < text_budget or libs < len(lib_sizes):
        pkg = f"{SITE}/{package_names[package]}"
        package += 1
        plan[pkg] = ("dir",)
        subdirs = [pkg] + [f"{pkg}/{s}" for s in rnd.sample(package_names, rnd.randint(0, 4))]
        for sub in subdirs[1:]:
            plan[sub] = ("dir",)
        for _ in range(rnd.randint(4, 60)):
            path = f"{rnd.choice(subdirs)}/{rnd.choice(module_names)}.py"
            if path in plan:
                continue
            size = int(min(80_000, max(60, rnd.lognormvariate(8.0, 1.1))))
            plan[path] = ("text", size, rnd.getrandbits(64))
            written += size
        # An extension module once the text planned so far passes its share of the layer.
        due = (libs + 0.5) / len(lib_sizes) * text_budget
        if libs < len(lib_sizes) and written >= due:
            name = f"{pkg}/_C.cpython-311-x86_64-linux-gnu.so"
            plan[name] = ("lib", lib_sizes[libs], rnd.getrandbits(64))
            libs += 1

    text: list[FileRecord] = []
    lib_records: list[FileRecord] = []
    other: list[FileRecord] = []
    weights: FileRecord | None = None
    dirs = 0
    for name in sorted(plan, key=_walk_key):
        kind, *rest = plan[name]
        if kind == "dir":
            tar.directory(name)
            dirs += 1
            continue
        size, seed = rest
        assert isinstance(size, int) and isinstance(seed, int)
        own = random.Random(seed)
        if kind == "etc":
            other.append(tar.file(name, _ETC[name]))
        elif kind == "weights":
            weights = tar.file(name, safetensors_file(own, size))
        elif kind == "text":
            text.append(tar.file(name, python_module(own, pool, size)))
        else:
            lib_records.append(tar.file(name, shared_library(own, size, symbols), mode=0o755))
    assert weights is not None
    return {
        "text_files": text,
        "libraries": lib_records,
        "weights": weights,
        "other_files": other,
        "directories": dirs,
    }


__all__ = ["FileRecord", "GeneratedLayer", "generate_layer"]
