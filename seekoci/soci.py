"""AWS SOCI interop: build and read zTOCs.

SOCI (Seekable OCI, awslabs/soci-snapshotter) lazily loads container layers without changing
them: beside each large layer it publishes a zTOC, a flatbuffer listing every tar entry and
the gzip checkpoints (or fixed slices for plain tar) needed to decode one span on its own.

>>> from seekoci import soci
>>> blob = soci.build_ztoc(open("layer.tar.gz", "rb"), span_size=4 << 20)  # doctest: +SKIP
>>> ztoc = soci.read_ztoc(blob)                                              # doctest: +SKIP
>>> [f.name for f in ztoc.files]                                             # doctest: +SKIP

Checkpoints are placed by the reference implementation's rule, so the same blob and span
size give the same checkpoint bytes and span digests as the SOCI CLI. The format notes are
in :mod:`seekoci.formats.ztoc`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import BinaryIO

from .formats.ztoc import Ztoc, ZtocFile, decode_ztoc, encode_ztoc, ztoc_from_blob
from .formats.ztoc import ztoc_to_layer_index as ztoc_to_layer_index

#: SOCI's default span size (4 MiB).
DEFAULT_SPAN_SIZE = 4 << 20


def build_ztoc(
    fileobj: BinaryIO | Iterable[bytes],
    *,
    span_size: int = DEFAULT_SPAN_SIZE,
    build_tool_identifier: str | None = None,
) -> bytes:
    """The zTOC flatbuffer bytes of a tar or tar+gzip blob, read once front to back.

    ``fileobj`` is a binary file object (or an iterable of byte chunks) positioned at the
    start of the blob. ``build_tool_identifier`` defaults to ``"seekoci <version>"``.
    A blob that is neither (zstd, say) or a tar SOCI cannot describe raises
    :class:`~seekoci.errors.FormatError`.
    """
    ztoc = ztoc_from_blob(
        fileobj, span_size, build_tool_identifier=build_tool_identifier, name="layer blob"
    )
    return encode_ztoc(ztoc)


def read_ztoc(blob: bytes) -> Ztoc:
    """Decode zTOC bytes (checked throughout: anything malformed is a FormatError).

    The result has ``version``, ``build_tool_identifier``, ``compressed_size``,
    ``uncompressed_size``, ``compression_algorithm``, ``max_span_id``, ``span_digests``
    (``"sha256:…"``), ``checkpoints`` (the raw checkpoint bytes as stored) and ``files``
    (entries with ``name``, ``type``, ``uncompressed_offset``, ``uncompressed_size``,
    ``linkname``, ``mode``, ``uid``, ``gid``, ``uname``, ``gname``, ``mod_time``,
    ``devmajor``, ``devminor``, ``xattrs``).
    """
    return decode_ztoc(blob)


__all__ = [
    "DEFAULT_SPAN_SIZE",
    "Ztoc",
    "ZtocFile",
    "build_ztoc",
    "read_ztoc",
    "ztoc_to_layer_index",
]
