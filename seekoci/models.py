"""Model files inside images, read without fetching their weights."""

from __future__ import annotations

import json
from typing import Any

from .errors import FormatError
from .image import Image

#: A safetensors header larger than this is refused (the format's own readers cap it at
#: 100 MB; a bigger claim is a corrupt or hostile file, not a model).
MAX_SAFETENSORS_HEADER = 100 << 20


def safetensors_metadata(img: Image, path: str) -> dict[str, Any]:
    """The parsed JSON header of a ``.safetensors`` file: tensor name -> ``dtype``,
    ``shape``, ``data_offsets``, plus ``__metadata__`` when present.

    Reads only the 8-byte length and the header itself: a 10 GB weights file costs a span
    or two.
    """
    with img.open(path) as f:
        size_bytes = f.read(8)
        if len(size_bytes) != 8:
            raise FormatError(f"{path}: too short for a safetensors file")
        length = int.from_bytes(size_bytes, "little")
        if length > MAX_SAFETENSORS_HEADER or length > f.size - 8:
            raise FormatError(f"{path}: safetensors header length {length} is not plausible")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"{path}: safetensors header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: safetensors header is not a JSON object")
    return header
