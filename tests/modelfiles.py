"""Model files for tests: GGUF written by the ``gguf`` package, safetensors by the format.

    gguf_bytes(tmp_path, tensors={"w": array}, kv={"general.name": "tiny"})
    safetensors_bytes({"w": ("F16", array)})

safetensors is simple enough to write by hand (8-byte little-endian header length, the JSON
header, the data), which also lets the tests write BF16, which numpy cannot hold.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np

_NUMPY = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "I8": "i1", "I16": "<i2", "I32": "<i4",
          "I64": "<i8", "U8": "u1", "BOOL": "?"}  # fmt: skip


def bf16_round(values: np.ndarray) -> np.ndarray:
    """float32 values that bfloat16 holds exactly (the low 16 bits cleared)."""
    bits = np.asarray(values, dtype="<f4").view("<u4") & np.uint32(0xFFFF0000)
    return bits.view("<f4")


def safetensors_bytes(
    tensors: Mapping[str, tuple[str, np.ndarray]], metadata: Mapping[str, str] | None = None
) -> bytes:
    """A ``.safetensors`` file: name -> (dtype, array); BF16 arrays are float32 values."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    data = bytearray()
    for name, (dtype, array) in tensors.items():
        if dtype == "BF16":
            raw = (np.asarray(array, dtype="<f4").view("<u4") >> 16).astype("<u2").tobytes()
        else:
            raw = np.ascontiguousarray(array, dtype=_NUMPY[dtype]).tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": list(np.shape(array)),
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes
    return len(text).to_bytes(8, "little") + text + bytes(data)


def gguf_bytes(
    tmp: Path,
    tensors: Mapping[str, np.ndarray],
    kv: Mapping[str, Any] | None = None,
    *,
    arch: str = "llama",
    alignment: int | None = None,
    raw_types: Mapping[str, gguf.GGMLQuantizationType] | None = None,
) -> bytes:
    """A GGUF v3 file written by ``gguf.GGUFWriter``. ``kv`` values: str, int (UINT32),
    float (FLOAT32), bool, lists (arrays; lists of lists nest). ``raw_types`` stores a tensor's
    bytes (a uint8 array of whole blocks per row) as a quantized type: name -> type."""
    path = tmp / f"model-{len(list(tmp.iterdir()))}.gguf"
    writer = gguf.GGUFWriter(str(path), arch)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for key, value in (kv or {}).items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)
    for name, array in tensors.items():
        if raw_types and name in raw_types:
            writer.add_tensor(name, array, raw_dtype=raw_types[name])
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()
