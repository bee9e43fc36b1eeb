"""Uncompressed tar layers: spans are fixed slices of the blob, nothing to decode."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from ..errors import FormatError
from .base import ChunkTable, IndexerBase, Span, SpanHasher, SpanIndexer
from .plugin import NO_ANNOTATIONS, LayerFormat


class PlainIndexer(IndexerBase):
    """Cuts an uncompressed blob into ``span_size`` slices and hashes each one."""

    compression = "none"

    def __init__(
        self,
        span_size: int,
        *,
        name: str = "tar blob",
        check_crc: bool = True,
        elide_windows: bool = False,
        chunk_size: int = 0,
    ) -> None:
        super().__init__(span_size, name=name, chunk_size=chunk_size)
        self._hasher = SpanHasher(0, chunk_size)

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        offset = self._fed
        self._hasher.add(data, offset)
        self._fed += len(data)
        self._out = self._fed  # nothing to decompress
        # close every span that now ends inside the bytes received
        while self._hasher.span_start + self.span_size <= self._fed:
            self._close(self._hasher.span_start + self.span_size)
        if data:
            yield data

    def _close(self, end: int) -> None:
        start = self._hasher.span_start
        digest = self._hasher.cut(end, end)
        self.spans.append(
            Span(len(self.spans), start, end, start, end, digest, chunk_size=self.chunk_size)
        )
        if self.chunk_size:  # nothing to decode: chunk k holds bytes up to its end
            n = len(self._hasher.last_chunks)
            marks = [min((k + 1) * self.chunk_size, end - start) for k in range(n)]
            self._chunk_tables.append(ChunkTable(self._hasher.last_chunks, marks))

    def finish(self) -> None:
        if self._finished:
            return
        if self._hasher.span_start < self._fed or not self.spans:
            self._close(self._fed)
        self._finished = True


def decode_span(
    span: Span,
    data: bytes | memoryview,
    window: bytes | None,
    *,
    name: str = "tar blob",
    partial: bool = False,
) -> bytes:
    """The span's bytes; ``partial``: ``data`` is a prefix of them."""
    if partial and len(data) <= span.uncompressed_size:
        return bytes(data)
    if len(data) != span.uncompressed_size:
        raise FormatError(
            f"{name}: span {span.index} has {len(data)} bytes, index says {span.uncompressed_size}"
        )
    return bytes(data)


class PlainFormat(LayerFormat):
    """Uncompressed ``tar`` layers."""

    name = compression = "none"
    layer_format = "tar"
    media_types = frozenset(
        {
            "application/vnd.oci.image.layer.v1.tar",
            "application/vnd.oci.image.layer.nondistributable.v1.tar",
            "application/vnd.docker.image.rootfs.diff.tar",
        }
    )

    def sniff(
        self,
        *,
        head: bytes | None = None,
        tail: bytes | None = None,
        annotations: Mapping[str, str] = NO_ANNOTATIONS,
    ) -> bool:
        # a ustar header, or a blob of zeros (an empty tar is its end-of-archive blocks)
        if head is None:
            return False
        return len(head) == 0 or head[257:262] == b"ustar" or head[:512].count(0) == len(head[:512])

    def new_indexer(
        self,
        span_size: int,
        *,
        name: str,
        check_crc: bool = True,
        elide_windows: bool = False,
        chunk_size: int = 0,
    ) -> SpanIndexer:
        return PlainIndexer(span_size, name=name, chunk_size=chunk_size)

    def decode_span(
        self,
        span: Span,
        data: bytes | memoryview,
        window: bytes | None,
        *,
        name: str = "layer",
        partial: bool = False,
    ) -> bytes:
        return decode_span(span, data, window, name=name, partial=partial)
