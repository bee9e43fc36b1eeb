"""The index build: one forward pass over a layer blob, resumable, that can stop early.

Looking up a path advances the pass only until the path's entry and data have been seen;
the rest resumes from there when more is needed. The pass hashes the blob (the layer
digest), feeds the format's span indexer (checkpoints, span digests) and the tar scanner
(the table of contents), and hands decoded spans to the layer's span LRU for the reads
that follow. Only a pass that went to the end *and* whose bytes matched the layer digest
becomes a saved index (the layer decides, see :meth:`seekoci.layer.Layer._complete`).
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from . import formats
from .errors import FormatError, IntegrityError
from .formats.tar import TarEntry, TarScanner
from .spans import SPAN_LRU_BYTES

if TYPE_CHECKING:
    from .formats.base import SpanIndexer
    from .layer import Layer

#: gzip and tar spans are verified in chunks of this many compressed bytes, so a small read
#: fetches the start of its span up to the chunk that covers it, not the whole span
#: (~500 KB saved on an average small-file read at 1 MiB spans; 36 bytes a chunk in the
#: index).
CHUNK_SIZE = 64 << 10

Tee = Callable[[int, bytes, Sequence[TarEntry]], None]

#: Decoded bytes a zstd pass keeps behind it (see IndexBuild.forward).
FORWARD_WINDOW = 32 << 20


class IndexBuild:
    """The (resumable) single pass over a layer blob."""

    def __init__(self, layer: Layer, compression: str) -> None:
        self.layer = layer
        codec = formats.codec_for(compression, where=f"layer {layer.name}")
        # CRCs are checked even when the digest matches: a member whose trailer contradicts
        # its data is a corrupt layer that gzip -t and containerd refuse too.
        self.indexer: SpanIndexer = codec.new_indexer(
            layer.span_size, name=f"layer {layer.name}", elide_windows=True, chunk_size=CHUNK_SIZE
        )
        self.scanner = TarScanner(name=f"layer {layer.name}")
        self.compression = compression
        alg = (layer.digest or "sha256:").partition(":")[0]
        if alg not in ("sha256", "sha384", "sha512"):
            raise FormatError(f"layer {layer.name}: digest algorithm {alg!r} is not supported")
        self.blob_hash = hashlib.new(alg)
        self.stream: Iterator[bytes] | None = None
        self.fed = 0
        self.done = False
        self.keep_spans = True
        #: tee(tar_offset, data, entries_so_far): sees the whole uncompressed stream as it
        #: passes, after the scanner (extraction without an index: seekoci/extract.py)
        self.tee: Tee | None = None
        self._pending = bytearray()  # uncompressed bytes of the open span
        self._pending_start = 0
        self._spans_kept = 0
        # the last bytes a zstd pass decoded: a file of a single-frame layer (one span,
        # closed only at the blob's end) is served from here as soon as the pass has gone
        # past it, without decoding on to the end or again from the start
        self.forward: collections.deque[bytes] | None = (
            collections.deque() if compression == "zstd" else None
        )
        self.forward_start = 0  # stream offset of forward[0]
        self.forward_bytes = 0

    def step(self) -> None:
        """Advance by one chunk of the blob (opens the stream on first use)."""
        if self.stream is None:
            self.stream = self.layer.source.iter_from(0)
        chunk = next(self.stream, None)
        if chunk is None:
            self._finish()
            return
        self.blob_hash.update(chunk)
        self.fed += len(chunk)
        for out in self.indexer.feed(chunk):
            at = self.scanner.position
            self.scanner.feed(out)
            if self.tee is not None:  # after the scanner: entries whose data start here are in
                self.tee(at, out, self.scanner.entries)
            if self.forward is not None:  # whole pieces dropped: no copying
                self.forward.append(out)
                self.forward_bytes += len(out)
                while self.forward_bytes - len(self.forward[0]) >= FORWARD_WINDOW:
                    first = self.forward.popleft()
                    self.forward_bytes -= len(first)
                    self.forward_start += len(first)
            if self.keep_spans:
                self._pending += out
                if len(self._pending) > SPAN_LRU_BYTES:  # a span too big to keep (zstd)
                    self.keep_spans = False
        if self.keep_spans:
            self._keep_spans()
        elif self._pending:
            self._pending.clear()
            self._pending_start = self.indexer.uncompressed_size
        if self.fed > self.layer.size:
            raise IntegrityError(f"layer {self.layer.name}: blob is longer than {self.layer.size}")

    def _keep_spans(self) -> None:
        """Hand decoded spans of the pass to the layer's LRU (the reads right after need them)."""
        spans = self.indexer.spans
        while self._spans_kept < len(spans):
            span = spans[self._spans_kept]
            if span.uncompressed_start >= self._pending_start:
                a = span.uncompressed_start - self._pending_start
                b = span.uncompressed_end - self._pending_start
                self.layer.spans.lru.put(
                    (span.uncompressed_start, span.digest), bytes(self._pending[a:b])
                )
                del self._pending[:b]
                self._pending_start = span.uncompressed_end
            self._spans_kept += 1

    def forward_range(self, offset: int, end: int) -> bytes | None:
        """Bytes ``[offset, end)`` if the forward window holds them (zstd passes)."""
        if self.forward is None or offset < self.forward_start:
            return None
        if end > self.forward_start + self.forward_bytes:
            return None
        parts, pos = [], self.forward_start
        for piece in self.forward:
            if pos >= end:
                break
            a, b = max(offset - pos, 0), min(end - pos, len(piece))
            if a < b:
                parts.append(piece[a:b])
            pos += len(piece)
        return b"".join(parts)

    def _finish(self) -> None:
        self.forward = None
        self.indexer.finish()
        self.scanner.finish()
        if self.keep_spans:
            self._keep_spans()
        self._pending.clear()
        self.done = True
        self.stream = None
        layer = self.layer
        if self.fed != layer.size and layer.size_known:
            raise IntegrityError(
                f"layer {layer.name}: blob has {self.fed} bytes, the manifest says {layer.size}"
            )
        if layer.digest is not None:
            actual = f"{self.blob_hash.name}:{self.blob_hash.hexdigest()}"
            if actual != layer.digest:
                layer.spans.lru.clear()
                raise IntegrityError(f"layer {layer.name}: blob digest is {actual}")

    def close(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None and hasattr(stream, "close"):
            stream.close()
