"""Model files inside images, read without fetching their weights.

Every function takes anything with an ``open(path)`` returning a seekable binary file (an
:class:`~seekoci.Image`, a :class:`~seekoci.Layer`) and reads only the bytes it needs: a
header, or a header and one tensor. ``read_tensor`` needs numpy (``seekoci[models]``).
"""

from __future__ import annotations

import math
import posixpath
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from . import _json
from .errors import FormatError, TensorNotFoundError

if TYPE_CHECKING:
    import numpy

__all__ = [
    "GGML_TYPES",
    "MAX_GGUF_HEADER",
    "MAX_SAFETENSORS_HEADER",
    "ModelFile",
    "describe_model",
    "find_models",
    "gguf_metadata",
    "gguf_tensor_nbytes",
    "read_tensor",
    "safetensors_metadata",
    "safetensors_shards",
]


class Opener(Protocol):
    def open(self, path: str) -> Any: ...


#: A safetensors header larger than this is refused (the format's own readers cap it at
#: 100 MB; a bigger claim is a corrupt or hostile file, not a model).
MAX_SAFETENSORS_HEADER = 100 << 20
#: ... and one holding more JSON values than this (a tensor takes about seven: the largest
#: checkpoints have thousands of tensors a shard) -- 100 MB of ``{},`` would take 2.6 GB
#: once parsed, and of ``[[[`` 4.8 GB.
MAX_SAFETENSORS_VALUES = 1 << 22
#: A GGUF header (metadata and tensor infos) larger than this is refused. Tokenizer
#: vocabularies make real headers a few MB (a 256k-token vocabulary with scores and types:
#: ~6 MB); 256 MiB bounds memory on a hostile file.
MAX_GGUF_HEADER = 256 << 20
#: The first read of a GGUF header; it grows by doubling as parsing needs more.
GGUF_FIRST_READ = 64 << 10
#: Nesting of GGUF arrays of arrays accepted (real files nest once at most).
MAX_GGUF_NESTING = 8
#: Array elements accepted in one header, all arrays together: real vocabularies hold up to
#: ~260k tokens in three arrays plus merges (~1M values); this bounds the Python objects a
#: hostile header can make (~130 MB).
MAX_GGUF_VALUES = 1 << 22
#: GGML_MAX_DIMS is 4; a little headroom for newer writers, and a bound on a hostile count.
MAX_GGUF_DIMS = 8

_GGUF_MAGIC = b"GGUF"
_GGUF_DEFAULT_ALIGNMENT = 32

#: GGML tensor type id -> (name, elements per block, bytes per block), as ggml.h numbers them
#: (ids 4, 5 and 31-33 were removed types; a file using them is refused).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}
_GGML_BY_NAME = {name: (block, size) for name, block, size in GGML_TYPES.values()}

# GGUF metadata value types: id -> struct format of a scalar (8 string, 9 array: special)
_GGUF_SCALARS: dict[int, str] = {
    0: "B",  # UINT8
    1: "b",  # INT8
    2: "H",  # UINT16
    3: "h",  # INT16
    4: "I",  # UINT32
    5: "i",  # INT32
    6: "f",  # FLOAT32
    7: "?",  # BOOL
    10: "Q",  # UINT64
    11: "q",  # INT64
    12: "d",  # FLOAT64
}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


# -- safetensors ------------------------------------------------------------------------------
def _safetensors_header(f: BinaryIO, path: str, size: int) -> tuple[dict[str, Any], int]:
    """(header, offset of the data section) of an open ``.safetensors`` file."""
    size_bytes = f.read(8)
    if len(size_bytes) != 8:
        raise FormatError(f"{path}: too short for a safetensors file")
    length = int.from_bytes(size_bytes, "little")
    if length > MAX_SAFETENSORS_HEADER or length > size - 8:
        raise FormatError(f"{path}: safetensors header length {length} is not plausible")
    raw = f.read(length)
    try:
        header = _json.loads(raw, max_values=MAX_SAFETENSORS_VALUES)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"{path}: safetensors header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: safetensors header is not a JSON object")
    return header, 8 + length


def safetensors_metadata(img: Opener, path: str) -> dict[str, Any]:
    """The parsed JSON header of a ``.safetensors`` file: tensor name -> ``dtype``,
    ``shape``, ``data_offsets``, plus ``__metadata__`` when present.

    Reads only the 8-byte length and the header itself: a 10 GB weights file costs a span
    or two.
    """
    with img.open(path) as f:
        return _safetensors_header(f, path, f.size)[0]


#: safetensors dtype -> numpy dtype string (little-endian, as the format stores them)
_SAFETENSORS_DTYPES = {
    "F16": "<f2",
    "F32": "<f4",
    "F64": "<f8",
    "I8": "i1",
    "I16": "<i2",
    "I32": "<i4",
    "I64": "<i8",
    "U8": "u1",
    "U16": "<u2",
    "U32": "<u4",
    "U64": "<u8",
    "BOOL": "?",
    "BF16": "<u2",  # widened to float32 after reading (numpy has no bfloat16)
}
_SAFETENSORS_ITEMSIZE = {
    "F16": 2, "F32": 4, "F64": 8, "I8": 1, "I16": 2, "I32": 4, "I64": 8, "U8": 1, "U16": 2,
    "U32": 4, "U64": 8, "BOOL": 1, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip


def _tensor_entry(header: dict[str, Any], name: str, path: str) -> tuple[str, list[int], int, int]:
    entry = header.get(name) if name != "__metadata__" else None
    if entry is None:
        raise TensorNotFoundError(f"{path}: no tensor {name!r}")
    if not isinstance(entry, dict):  # there, but not a tensor's entry: the file's fault
        raise FormatError(f"{path}: tensor {name!r} has a malformed header entry")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if (
        not isinstance(dtype, str)
        or not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise FormatError(f"{path}: tensor {name!r} has a malformed header entry")
    begin, end = offsets
    return dtype, shape, begin, end


def read_tensor(img: Opener, path: str, name: str) -> numpy.ndarray:
    """One tensor of a ``.safetensors`` file as a numpy array with the header's shape,
    reading only the header and that tensor's bytes. BF16 comes back as float32.

    ``path`` may also be a sharded checkpoint's ``model.safetensors.index.json``: the tensor
    is read from the shard its ``weight_map`` names. A missing tensor raises
    :class:`~seekoci.TensorNotFoundError` (a ``KeyError`` and a ``SeekociError``).
    """
    import numpy as np

    if path.endswith(".json"):
        shards = safetensors_shards(img, path)
        if name not in shards:
            raise TensorNotFoundError(f"{path}: no tensor {name!r} in the weight map")
        path = shards[name]
    with img.open(path) as f:
        header, data_start = _safetensors_header(f, path, f.size)
        dtype, shape, begin, end = _tensor_entry(header, name, path)
        if dtype not in _SAFETENSORS_DTYPES:
            raise FormatError(f"{path}: tensor {name!r} has dtype {dtype}, which is not supported")
        count = math.prod(shape)
        nbytes = count * _SAFETENSORS_ITEMSIZE[dtype]
        if begin < 0 or end - begin != nbytes or data_start + end > f.size:
            raise FormatError(
                f"{path}: tensor {name!r} claims bytes {begin}-{end} of the data, which do not "
                f"hold {shape} {dtype} values inside the file"
            )
        out = np.empty(count, dtype=_SAFETENSORS_DTYPES[dtype])
        view = out.data.cast("B")
        f.seek(data_start + begin)
        done = 0
        while done < nbytes:
            n = f.readinto(view[done:])
            if not n:
                raise FormatError(f"{path}: tensor {name!r} is cut short")
            done += n
    if dtype == "BF16":  # a bfloat16 is the upper half of a float32
        out = (out.astype("<u4") << 16).view("<f4")
    try:  # numpy's own limits: at most 64 dimensions, each one an index it can hold
        result: numpy.ndarray = out.reshape(shape)
    except ValueError as exc:
        raise FormatError(
            f"{path}: tensor {name!r} has a shape numpy cannot make ({exc})"
        ) from None
    return result


def safetensors_shards(img: Opener, index_path: str) -> dict[str, str]:
    """Tensor name -> absolute path of the shard holding it, from a sharded checkpoint's
    ``model.safetensors.index.json`` (shard names are relative to the index's directory)."""
    with img.open(index_path) as f:
        if f.size > MAX_SAFETENSORS_HEADER:
            raise FormatError(f"{index_path}: {f.size} bytes is too large for a shard index")
        raw = f.read()
    try:
        doc = _json.loads(raw, max_values=MAX_SAFETENSORS_VALUES)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"{index_path}: shard index is not JSON ({exc})") from None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise FormatError(f"{index_path}: shard index has no weight_map of file names")
    base = posixpath.dirname(index_path) or "/"
    out = {}
    for tensor, shard in weight_map.items():
        joined = posixpath.normpath(posixpath.join(base, shard))
        out[tensor] = joined if joined.startswith("/") else "/" + joined
    return out


# -- GGUF ---------------------------------------------------------------------------------------
class _GrowingHeader:
    """The start of a file, fetched as parsing needs it: 64 KiB first, then doubling, never
    past :data:`MAX_GGUF_HEADER` or the file's end."""

    def __init__(self, f: Any, path: str) -> None:
        self.f = f
        self.path = path
        self.size: int = f.size
        self.data = b""
        self.pos = 0

    def need(self, n: int) -> None:
        end = self.pos + n
        if end <= len(self.data):
            return
        if end > self.size:
            raise FormatError(f"{self.path}: GGUF header is cut short at byte {self.pos}")
        if end > MAX_GGUF_HEADER:
            raise FormatError(
                f"{self.path}: GGUF header is larger than {MAX_GGUF_HEADER} bytes; refused"
            )
        want = min(max(end, 2 * len(self.data), GGUF_FIRST_READ), self.size, MAX_GGUF_HEADER)
        self.f.seek(len(self.data))
        more = self.f.read(want - len(self.data))
        self.data += more
        if end > len(self.data):
            raise FormatError(f"{self.path}: GGUF header is cut short at byte {self.pos}")

    def unpack_all(self, fmt: str) -> tuple[Any, ...]:
        size = struct.calcsize(fmt)
        self.need(size)
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def unpack(self, fmt: str) -> Any:
        return self.unpack_all(fmt)[0]

    def count(self, fmt: str, what: str, each: int = 1) -> int:
        """A length field, bounded by what the rest of the file could hold."""
        n: int = self.unpack(fmt)
        if n * each > self.size - self.pos:
            raise FormatError(
                f"{self.path}: GGUF {what} count {n} at byte {self.pos} is larger than the file"
            )
        return n


@dataclass
class _GGUFParser:
    r: _GrowingHeader
    order: str  # "<" or ">"
    version: int = 3
    path: str = ""
    depth: int = field(default=0)
    values: int = field(default=0)

    def string(self) -> str:
        n = self.r.count(self.order + ("Q" if self.version >= 2 else "I"), "string length")
        self.r.need(n)
        raw = self.r.data[self.r.pos : self.r.pos + n]
        self.r.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _GGUF_SCALARS:
            return self.r.unpack(self.order + _GGUF_SCALARS[vtype])
        if vtype == _GGUF_STRING:
            return self.string()
        if vtype == _GGUF_ARRAY:
            return self.array()
        raise FormatError(f"{self.path}: unknown GGUF value type {vtype} at byte {self.r.pos}")

    def array(self) -> list[Any]:
        if self.depth >= MAX_GGUF_NESTING:
            raise FormatError(f"{self.path}: GGUF arrays nested more than {MAX_GGUF_NESTING} deep")
        etype = self.r.unpack(self.order + "I")
        n = self.r.count(self.order + ("Q" if self.version >= 2 else "I"), "array")
        self.values += n
        if self.values > MAX_GGUF_VALUES:
            raise FormatError(
                f"{self.path}: more than {MAX_GGUF_VALUES} GGUF array values; refused"
            )
        if etype in _GGUF_SCALARS:  # one unpack for the lot (token scores, types, ...)
            return list(self.r.unpack_all(f"{self.order}{n}{_GGUF_SCALARS[etype]}"))
        self.depth += 1
        try:
            return [self.value(etype) for _ in range(n)]
        finally:
            self.depth -= 1


def gguf_metadata(img: Opener, path: str) -> dict[str, Any]:
    """A GGUF file's header: ``{"version", "metadata": {key: value}, "tensors": [{"name",
    "shape", "dtype", "offset"}]}``.

    ``shape`` lists the dimensions as the file stores them (GGML order, fastest-varying
    first, as ``gguf.GGUFReader`` reports them); ``dtype`` is GGML's type name (``"F16"``,
    ``"Q4_K"``); ``offset`` is the absolute byte offset of the tensor's data in the file
    (the data section starts at the next multiple of ``general.alignment``, default 32).
    Metadata arrays are lists (nested arrays nested lists). Only the header's bytes are read:
    64 KiB first, more only if the header is longer. GGUF v1-v3, either byte order.
    """
    with img.open(path) as f:
        r = _GrowingHeader(f, path)
        r.need(4)
        if r.data[:4] != _GGUF_MAGIC:
            raise FormatError(f"{path}: not a GGUF file (magic {r.data[:4]!r})")
        r.pos = 4
        raw_version = r.unpack("<I")
        order = "<"
        if raw_version & 0xFFFF == 0 and raw_version != 0:  # written big-endian
            order, raw_version = ">", int.from_bytes(raw_version.to_bytes(4, "little"), "big")
        if raw_version not in (1, 2, 3):
            raise FormatError(f"{path}: GGUF version {raw_version} is not supported (1-3)")
        p = _GGUFParser(r, order, raw_version, path)
        width = "Q" if raw_version >= 2 else "I"
        # a tensor info takes at least 4+4+4+8 bytes (v1, empty name, no dims), a key-value 8+4+1
        n_tensors = r.count(order + width, "tensor", each=20)
        n_kv = r.count(order + width, "metadata", each=13)
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = p.string()
            metadata[key] = p.value(r.unpack(order + "I"))
        infos: list[tuple[str, list[int], int, int]] = []
        for _ in range(n_tensors):
            name = p.string()
            n_dims = r.unpack(order + "I")
            if n_dims > MAX_GGUF_DIMS:
                raise FormatError(f"{path}: tensor {name!r} claims {n_dims} dimensions")
            dims = list(r.unpack_all(f"{order}{n_dims}{width}"))
            ggml_type = r.unpack(order + "I")
            offset = r.unpack(order + "Q")
            infos.append((name, dims, ggml_type, offset))
        header_end = r.pos
    alignment = metadata.get("general.alignment", _GGUF_DEFAULT_ALIGNMENT)
    if (
        not isinstance(alignment, int)
        or isinstance(alignment, bool)
        or alignment <= 0
        or alignment & (alignment - 1)
    ):
        raise FormatError(f"{path}: general.alignment {alignment!r} is not a power of two")
    data_start = -(-header_end // alignment) * alignment
    tensors = []
    for name, dims, ggml_type, offset in infos:
        if ggml_type not in GGML_TYPES:
            raise FormatError(f"{path}: tensor {name!r} has unknown GGML type {ggml_type}")
        tensors.append(
            {
                "name": name,
                "shape": dims,
                "dtype": GGML_TYPES[ggml_type][0],
                "offset": data_start + offset,
            }
        )
    return {"version": raw_version, "metadata": metadata, "tensors": tensors}


def gguf_tensor_nbytes(dtype: str, shape: list[int]) -> int:
    """Bytes a GGUF tensor's data takes (quantized types are stored in blocks)."""
    block, size = _GGML_BY_NAME[dtype]
    return math.prod(shape) // block * size


# -- a summary per model file -------------------------------------------------------------------
@dataclass(frozen=True)
class ModelFile:
    """What ``seekoci models`` prints for one model: a ``.safetensors`` or ``.gguf`` file,
    or a sharded checkpoint (``sharded``: listed by its ``*.safetensors.index.json``,
    ``files`` naming the shards)."""

    path: str
    format: str  # "safetensors" or "gguf"
    tensors: int
    parameters: int
    dtypes: dict[str, int]  # dtype -> number of tensors
    bytes: int  # on-disk size of the file(s)
    files: list[str] = field(default_factory=list)
    sharded: bool = False  # a checkpoint in shards, listed by its index

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "sharded": self.sharded,
            "tensors": self.tensors,
            "parameters": self.parameters,
            "dtypes": dict(self.dtypes),
            "bytes": self.bytes,
            "files": list(self.files),
        }


def _count(entries: list[tuple[str, list[int]]]) -> tuple[int, int, dict[str, int]]:
    dtypes: dict[str, int] = {}
    params = 0
    for dtype, shape in entries:
        dtypes[dtype] = dtypes.get(dtype, 0) + 1
        params += math.prod(shape)
    return len(entries), params, dict(sorted(dtypes.items()))


def _safetensors_entries(img: Opener, path: str) -> list[tuple[str, list[int]]]:
    header = safetensors_metadata(img, path)
    out = []
    for name in header:
        if name != "__metadata__":
            dtype, shape, _, _ = _tensor_entry(header, name, path)
            out.append((dtype, shape))
    return out


def describe_model(img: Any, path: str) -> ModelFile:
    """Format, tensor count, parameters, dtypes and bytes of one model file (headers only)."""
    if path.endswith(".gguf"):
        meta = gguf_metadata(img, path)
        n, params, dtypes = _count([(t["dtype"], t["shape"]) for t in meta["tensors"]])
        return ModelFile(path, "gguf", n, params, dtypes, img.stat(path).size, [path])
    if path.endswith(".safetensors.index.json"):
        shards = sorted(set(safetensors_shards(img, path).values()))
        entries: list[tuple[str, list[int]]] = []
        size = 0
        for shard in shards:
            entries += _safetensors_entries(img, shard)
            size += img.stat(shard).size
        n, params, dtypes = _count(entries)
        return ModelFile(path, "safetensors", n, params, dtypes, size, shards, sharded=True)
    if path.endswith(".safetensors"):
        n, params, dtypes = _count(_safetensors_entries(img, path))
        return ModelFile(path, "safetensors", n, params, dtypes, img.stat(path).size, [path])
    raise FormatError(f"{path}: not a model file seekoci knows (.safetensors, .gguf)")


def find_models(img: Any, top: str = "/") -> list[str]:
    """Paths of the model files under ``top``: ``.gguf``, ``.safetensors``, and sharded
    checkpoints by their index (their shards are not listed on their own)."""
    found: list[str] = []
    sharded: set[str] = set()
    for dirpath, _dirs, files in img.walk(top):
        base = dirpath.rstrip("/")
        for name in files:
            full = f"{base}/{name}"
            if name.endswith(".safetensors.index.json"):
                found.append(full)
                try:
                    sharded.update(safetensors_shards(img, full).values())
                except (FormatError, OSError):
                    pass
            elif name.endswith((".gguf", ".safetensors")):
                found.append(full)
    return sorted(p for p in found if p not in sharded)
