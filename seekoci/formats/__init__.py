"""Pure format code: tar table of contents, gzip checkpoints, the index file.

Nothing here does I/O: indexers are fed bytes, decoders get one span's bytes. The
:data:`CODECS` table is the plug-in point for layer compressions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import FormatError
from . import gzip as _gzip
from . import plain as _plain
from . import zstd as _zstd
from .base import Span, SpanIndexer

__all__ = ["CODECS", "Codec", "Span", "SpanIndexer", "compression_of", "detect_compression"]


@dataclass(frozen=True)
class Codec:
    """A layer compression seekoci can index and read."""

    name: str
    new_indexer: Callable[..., SpanIndexer]
    decode_span: Callable[..., bytes]
    #: decode_stream(compressed_chunks, start, end, *, name) -> bytes [start, end) of a span
    #: too large to hold; None when spans are always small
    decode_stream: Callable[..., bytes] | None = None


CODECS: dict[str, Codec] = {
    "gzip": Codec("gzip", _gzip.GzipIndexer, _gzip.decode_span),
    "none": Codec("none", _plain.PlainIndexer, _plain.decode_span),
    "zstd": Codec("zstd", _zstd.ZstdIndexer, _zstd.decode_span, _zstd.decode_stream),
}

_GZIP_TYPES = {
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
}
_TAR_TYPES = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
}
_ZSTD_TYPES = {
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
}


def compression_of(media_type: str) -> str | None:
    """``"gzip"``, ``"zstd"`` or ``"none"`` for a layer media type (Docker's count as their
    OCI twins); None when the media type does not say."""
    if media_type in _GZIP_TYPES:
        return "gzip"
    if media_type in _TAR_TYPES:
        return "none"
    if media_type in _ZSTD_TYPES:
        return "zstd"
    return None


def detect_compression(head: bytes) -> str:
    """Compression of a blob from its first bytes (at least 512 for tar detection)."""
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    magic = int.from_bytes(head[:4], "little") if len(head) >= 4 else 0
    if magic == 0xFD2FB528 or magic & 0xFFFFFFF0 == 0x184D2A50:  # frame or skippable frame
        return "zstd"
    if len(head) == 0 or head[257:262] == b"ustar" or head[:512].count(0) == len(head[:512]):
        return "none"
    raise FormatError("blob is neither gzip, zstd nor a tar archive")


def codec_for(compression: str, *, where: str) -> Codec:
    try:
        return CODECS[compression]
    except KeyError:
        raise FormatError(
            f"{where}: {compression} layers are not supported (supported: gzip, zstd, plain tar)"
        ) from None
