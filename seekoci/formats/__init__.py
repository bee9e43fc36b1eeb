"""Pure format code: tar table of contents, gzip checkpoints, zstd frames, embedded TOCs,
the index file.

Nothing here does I/O: indexers are fed bytes, decoders get one span's bytes, an embedded
index reads through the ``read_range`` it is handed. :data:`FORMATS` is the plug-in
registry (:mod:`.plugin`); this module registers the built-in formats.
"""

from __future__ import annotations

from .base import Span, SpanIndexer
from .estargz import EstargzFormat
from .gzip import GzipFormat
from .plain import PlainFormat
from .plugin import LayerFormat, Registry
from .zstd import ZstdFormat
from .zstd_chunked import ZstdChunkedFormat

__all__ = [
    "CODECS",
    "FORMATS",
    "Codec",
    "LayerFormat",
    "Span",
    "SpanIndexer",
    "codec_for",
    "compression_of",
    "detect",
    "detect_compression",
    "get",
    "media_type_for",
]

FORMATS = Registry()
# compressions first: detection by the first bytes tries them in this order
FORMATS.register(GzipFormat())
FORMATS.register(ZstdFormat())
FORMATS.register(PlainFormat())
# formats that carry their own TOC, recognised by annotation or footer
FORMATS.register(EstargzFormat())
FORMATS.register(ZstdChunkedFormat())

#: The former name of a format plug-in.
Codec = LayerFormat
#: The compressions by name (what a pass-built index can be of).
CODECS: dict[str, LayerFormat] = {f.name: f for f in FORMATS.compressions()}

get = FORMATS.get
detect = FORMATS.detect
compression_of = FORMATS.compression_of
detect_compression = FORMATS.detect_compression
media_type_for = FORMATS.media_type_for


def codec_for(compression: str, *, where: str) -> LayerFormat:
    """The format plug-in of ``compression`` (FormatError naming ``where`` if unknown)."""
    return FORMATS.get(compression, where=where)
