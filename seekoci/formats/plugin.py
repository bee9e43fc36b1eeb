"""The layer-format plug-in: what a format declares, and the registry that picks one.

A *format* is one :class:`LayerFormat`. Two kinds are registered:

* compressions (``gzip``, ``zstd``, ``none``): they own the layer media types, recognise a
  blob by its first bytes, and index it with a single forward pass (``new_indexer``);
* refinements of a compression that carry their own table of contents (``estargz`` on
  gzip, ``zstd:chunked`` on zstd): recognised by a manifest annotation or by the blob's
  tail, they build a :class:`~seekoci.formats.index.LayerIndex` from that TOC
  (``embedded_index``) without a pass over the layer.

Adding a format is one module with one :class:`LayerFormat` and one :func:`register` call
(``seekoci/formats/__init__.py`` registers the built-in ones). Nothing here does I/O: an
embedded index is read through the ``read_range`` it is handed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from ..errors import FormatError
from .base import Span, SpanIndexer

if TYPE_CHECKING:
    from .index import LayerIndex

#: Bytes of the blob's end handed to :meth:`LayerFormat.sniff`: the largest footer known
#: (zstd:chunked's 64-byte payload in its 8-byte skippable-frame header is 72).
TAIL_BYTES = 72
#: Bytes of the blob's start handed to :meth:`LayerFormat.sniff` (a tar header block).
HEAD_BYTES = 512

#: read_range(offset, length) -> bytes of the blob
ReadRange = Callable[[int, int], bytes]
#: decode_stream(compressed_chunks, start, end, *, name) -> bytes [start, end) of a span
#: too large to hold in memory
DecodeStream = Callable[..., bytes]

NO_ANNOTATIONS: Mapping[str, str] = {}


class StreamDecoder(Protocol):
    """One span's compressed bytes decoded as they arrive (:meth:`LayerFormat.span_decoder`):
    ``feed`` each piece in order (it never raises: the bytes are not checked yet), then
    ``result`` once all are in and checked: the span's bytes, or the FormatError."""

    def feed(self, data: bytes | memoryview) -> None: ...

    def result(self) -> bytes: ...


class StreamInflater(Protocol):
    """A whole blob decoded front to back with no checkpoints (:meth:`LayerFormat.
    stream_inflater`): ``feed`` gives the uncompressed bytes of each next piece of the blob,
    ``finish`` checks the blob ended where its format says it does (FormatError else)."""

    def feed(self, data: bytes) -> Iterator[bytes]: ...

    def finish(self) -> None: ...


class LayerFormat(Protocol):
    """One layer format. Subclass it to inherit the defaults (no embedded index, spans
    small enough to decode whole)."""

    #: registry key: ``gzip``, ``zstd``, ``none``, ``estargz``, ``zstd:chunked``
    name: str
    #: ``gzip``, ``zstd`` or ``none`` (a refinement names the compression it refines)
    compression: str
    #: ``Layer.format``: ``tar`` for the plain compressions, else the format's name
    layer_format: str
    #: layer media types this format owns (refinements share their compression's)
    media_types: frozenset[str] = frozenset()
    decode_stream: DecodeStream | None = None
    #: root-level names the format adds to the tar that the image's filesystem does not show
    hidden_names: frozenset[str] = frozenset()

    def sniff(
        self,
        *,
        head: bytes | None = None,
        tail: bytes | None = None,
        annotations: Mapping[str, str] = NO_ANNOTATIONS,
    ) -> bool:
        """Whether the blob is in this format, from what is known: its first
        :data:`HEAD_BYTES`, its last :data:`TAIL_BYTES` (None: not read) and the manifest's
        annotations for the layer."""
        return False

    def new_indexer(
        self,
        span_size: int,
        *,
        name: str,
        check_crc: bool = True,
        elide_windows: bool = False,
        chunk_size: int = 0,
    ) -> SpanIndexer:
        """A single-pass indexer over the blob (refinements use their compression's)."""
        raise FormatError(f"{name}: {self.name} layers cannot be indexed by a pass")

    def decode_span(
        self,
        span: Span,
        data: bytes | memoryview,
        window: bytes | None,
        *,
        name: str = "layer",
        partial: bool = False,
    ) -> bytes:
        """One span's uncompressed bytes from its compressed bytes (checked already when the
        span's ``check`` is ``compressed``, checked by the caller after this otherwise).
        ``data`` may be a view into a larger buffer (a coalesced range request's): read it
        in place, return ``bytes``."""
        raise NotImplementedError

    def decode_run(
        self,
        spans: Sequence[Span],
        data: bytes | bytearray,
        base: int,
        *,
        name: str = "layer",
    ) -> Sequence[memoryview] | None:
        """The uncompressed bytes of several whole spans, each checked by its caller after
        decoding (an embedded TOC's chunks), whose compressed bytes are in ``data`` (the
        blob from offset ``base`` on), decoded by one call that leaves the GIL once for all
        of them, not once each; or None where the format has no such call (the caller
        decodes them one by one). A FormatError names no span: the caller decodes them one
        by one to find which. A span whose bytes come out wrong is the caller's to find
        (by its length and digest)."""
        return None

    def span_decoder(
        self, span: Span, window: bytes | None, *, name: str = "layer"
    ) -> StreamDecoder | None:
        """A decoder fed the span's compressed bytes as they arrive (what
        :meth:`decode_span` makes of them all, so the inflate overlaps the transfer), or
        None where the format decodes a span only whole."""
        return None

    def stream_inflater(self, *, name: str) -> StreamInflater | None:
        """A decoder of the whole blob, faster than :meth:`new_indexer`'s because it keeps
        no checkpoints (a first lookup answers from it while the index is built after), or
        None where the indexer is as fast."""
        return None

    def embedded_index(
        self,
        read_range: ReadRange,
        size: int,
        annotations: Mapping[str, str],
        *,
        name: str,
        require_verified: bool = False,
    ) -> LayerIndex | None:
        """The index the blob carries (its TOC), or None when it carries none.

        ``require_verified``: return None unless the TOC can be checked against a digest in
        ``annotations`` (the blob's own digest cannot vouch for it before a whole pass).
        A TOC that is there but malformed raises FormatError, one that does not match its
        annotation IntegrityError."""
        return None


class Registry:
    """The formats seekoci knows, compressions first (in registration order)."""

    def __init__(self) -> None:
        self._formats: dict[str, LayerFormat] = {}
        self._lock = threading.Lock()

    def register(self, fmt: LayerFormat) -> LayerFormat:
        with self._lock:
            if fmt.name in self._formats:
                raise ValueError(f"format {fmt.name!r} is registered already")
            self._formats[fmt.name] = fmt
        return fmt

    def __iter__(self) -> Iterator[LayerFormat]:
        with self._lock:
            return iter(list(self._formats.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._formats

    def get(self, name: str, *, where: str = "layer") -> LayerFormat:
        try:
            return self._formats[name]
        except KeyError:
            known = ", ".join(sorted(self._formats))
            raise FormatError(
                f"{where}: {name} layers are not supported (supported: {known})"
            ) from None

    def compressions(self) -> list[LayerFormat]:
        return [f for f in self if f.layer_format == "tar"]

    def refinements(self, compression: str) -> list[LayerFormat]:
        return [f for f in self if f.layer_format != "tar" and f.compression == compression]

    def compression_of(self, media_type: str) -> str | None:
        """The compression a media type names (None when it does not say)."""
        for fmt in self.compressions():
            if media_type in fmt.media_types:
                return fmt.compression
        return None

    def media_type_for(self, compression: str) -> str:
        """The OCI media type of a layer of this compression (the first one it declares)."""
        fmt = self.get(compression)
        oci = sorted(
            t for t in fmt.media_types if t.startswith("application/vnd.oci.image.layer.v1")
        )
        return oci[0] if oci else sorted(fmt.media_types)[0]

    def detect_compression(self, head: bytes) -> str:
        """Compression of a blob from its first bytes (at least 512 for tar detection)."""
        for fmt in self.compressions():
            if fmt.sniff(head=head):
                return fmt.compression
        raise FormatError("blob is neither gzip, zstd nor a tar archive")

    def detect(
        self,
        compression: str,
        annotations: Mapping[str, str],
        read_tail: Callable[[], bytes] | None,
    ) -> LayerFormat:
        """The most specific format of a layer of ``compression``: a refinement claimed by
        the annotations (nothing read), else one whose footer the tail shows (``read_tail``
        called at most once, not at all when no refinement of the compression exists),
        else the compression itself."""
        candidates = self.refinements(compression)
        for fmt in candidates:
            if fmt.sniff(annotations=annotations):
                return fmt
        if candidates and read_tail is not None:
            tail = read_tail()
            for fmt in candidates:
                if fmt.sniff(tail=tail):
                    return fmt
        return self.get(compression)
