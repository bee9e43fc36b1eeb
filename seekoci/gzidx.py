"""GZIDX interop for gzip layers: export seekoci's checkpoints for indexed_gzip, rapidgzip
and ratarmount, and read a layer through a GZIDX file one of them wrote.

Export (:func:`export_gzidx`) writes one point per span of the layer's index (a pass-built,
cached or published one; an eStargz layer's pass-built one) plus the end-of-stream point
indexed_gzip writes. Windows are the ones seekoci keeps: where seekoci found that a span's
data never reaches back into part (or all) of its window, those bytes are zeros -- decoding
from the point gives the same bytes either way, which is all a window is for.

Import (:func:`import_gzidx`): a GZIDX carries no digests and no table of contents, so
nothing in it can be trusted or used as it is. One pass over the blob (checked against the
layer digest when there is one) decodes it forward for the tar's entries, decodes every
span again from the GZIDX point with the GZIDX window and compares: a file that does not
match the blob is a FormatError naming the first point that is wrong. The spans then get
seekoci's digests of their compressed bytes, so later reads are verified like any index's.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import TYPE_CHECKING

from .errors import FormatError, IntegrityError
from .formats import gzidx as fmt
from .formats.base import WINDOW_SIZE, Span
from .formats.gzip import decode_span
from .formats.index import LayerIndex
from .formats.tar import TarScanner

if TYPE_CHECKING:
    from .layer import Layer

__all__ = ["export_gzidx", "import_gzidx"]


def _pad(window: bytes | None) -> bytes:
    window = window or b""
    return bytes(WINDOW_SIZE - len(window)) + window[-WINDOW_SIZE:]


def export_gzidx(layer: Layer) -> bytes:
    """The GZIDX bytes of a gzip layer's checkpoints (builds or loads its index)."""
    if layer.compression != "gzip":
        raise FormatError(f"layer {layer.name}: GZIDX is for gzip layers, not {layer.compression}")
    index = layer.pass_index()  # an embedded TOC's pieces are no checkpoints: a pass's
    points = []
    for span in index.spans:
        cin = span.compressed_start + (1 if span.bits else 0)
        kept = index.window(span.index) if span.uncompressed_start else None
        if span.uncompressed_start == 0:
            window = b""  # the stream's start: nothing before it
        elif kept is None and not span.bits and _member_start(layer, span):
            window = b""  # a member's start needs none
        else:
            window = _pad(kept)
        points.append(fmt.Point(cin, span.uncompressed_start, span.bits, window))
    usize = index.uncompressed_size
    tail = layer.read_range(max(0, usize - WINDOW_SIZE), WINDOW_SIZE)
    points.append(fmt.Point(index.blob_size, usize, 0, _pad(tail)))
    return fmt.write(fmt.Gzidx(index.blob_size, usize, index.span_size or layer.span_size, points))


def _member_start(layer: Layer, span: Span) -> bool:
    """Whether the span starts right after a gzip member header (seekoci's member
    checkpoints): the bytes before it end a member's trailer and hold a header."""
    head = layer.source.read_range(max(0, span.compressed_start - 10), 10)
    return head[:2] == b"\x1f\x8b"


def import_gzidx(layer: Layer, data: bytes) -> LayerIndex:
    """Give ``layer`` an index from the GZIDX file ``data``, checked against the blob in one
    pass (see the module docstring); returns it."""
    name = f"layer {layer.name}"
    if layer.compression != "gzip":
        raise FormatError(f"{name}: GZIDX is for gzip layers, not {layer.compression}")
    gz = fmt.read(data, where=f"GZIDX for {name}")
    if gz.compressed_size != layer.size:
        raise FormatError(
            f"{name}: the GZIDX is of a {gz.compressed_size}-byte blob, this one has {layer.size}"
        )
    points = [p for p in gz.points if p.uncompressed_offset < gz.uncompressed_size]
    if not points or points[0].uncompressed_offset != 0:
        raise FormatError(f"{name}: the GZIDX's first point is not at the stream's start")
    ends = [p.compressed_offset for p in points[1:]] + [layer.size]
    alg = (layer.digest or "sha256:").partition(":")[0]
    blob_hash = hashlib.new(alg)
    scanner = TarScanner(name=name)
    spans: list[Span] = []
    out = bytearray()  # forward-decoded bytes of the span being checked
    out_pos = 0  # stream offset of out[0]
    blob = bytearray()  # compressed bytes of the spans not yet checked
    blob_pos = 0
    current = 0  # next span to check
    decomp = zlib.decompressobj(31)
    fed = 0

    def check_spans(final: bool) -> None:
        nonlocal current, out_pos, blob_pos
        while current < len(points):
            p = points[current]
            uend = (
                points[current + 1].uncompressed_offset
                if current + 1 < len(points)
                else gz.uncompressed_size
            )
            cstart, cend = p.span_start, ends[current]
            if out_pos + len(out) < uend or blob_pos + len(blob) < cend:
                if not final:
                    return
                raise FormatError(f"{name}: GZIDX point {current} lies past the blob's end")
            comp = bytes(blob[cstart - blob_pos : cend - blob_pos])
            span = Span(current, cstart, cend, p.uncompressed_offset, uend, "", p.bits)
            want = bytes(out[p.uncompressed_offset - out_pos : uend - out_pos])
            try:
                got = decode_span(span, comp, p.window or None, name=name)
            except FormatError:
                got = None
            if got != want:
                raise FormatError(
                    f"{name}: GZIDX point {current} (compressed {p.compressed_offset}, "
                    f"uncompressed {p.uncompressed_offset}) does not match the blob"
                )
            spans.append(
                Span(
                    current,
                    cstart,
                    cend,
                    p.uncompressed_offset,
                    uend,
                    hashlib.sha256(comp).hexdigest(),
                    p.bits,
                )
            )
            current += 1
            keep_c = points[current].span_start if current < len(points) else cend
            del blob[: max(0, keep_c - blob_pos)]
            blob_pos = max(blob_pos, keep_c)
            keep_u = points[current].uncompressed_offset if current < len(points) else uend
            del out[: keep_u - out_pos]
            out_pos = keep_u

    try:
        pending = b""
        for chunk in layer.source.iter_from(0):
            blob_hash.update(chunk)
            fed += len(chunk)
            blob += chunk
            pending += chunk
            while pending:
                piece = decomp.decompress(pending, 1 << 20)
                pending = decomp.unconsumed_tail
                if piece:
                    scanner.feed(piece)
                    out += piece
                if decomp.eof:
                    rest = decomp.unused_data
                    decomp = zlib.decompressobj(31)
                    pending = rest
                    if not rest.strip(b"\0"):
                        pending = b""
                elif not piece:
                    break
            check_spans(final=False)
        scanner.finish()
    except zlib.error as exc:
        raise FormatError(f"{name}: corrupt gzip data ({exc})") from None
    if out_pos + len(out) != gz.uncompressed_size:
        raise FormatError(
            f"{name}: the blob decodes to {out_pos + len(out)} bytes, the GZIDX says "
            f"{gz.uncompressed_size}"
        )
    check_spans(final=True)
    if layer.digest is not None:
        actual = f"{alg}:{blob_hash.hexdigest()}"
        if actual != layer.digest:
            raise IntegrityError(f"{name}: blob digest is {actual}")
    windows = [p.window for p in points]
    index = LayerIndex(
        layer_digest=layer.digest or "",
        media_type=layer.media_type,
        compression="gzip",
        blob_size=fed,
        uncompressed_size=gz.uncompressed_size,
        span_size=gz.spacing,
        spans=spans,
        entries=scanner.entries,
        window_locations=[(i, len(w)) for i, w in enumerate(windows)],
        read_windows=lambda i, n: windows[i],
        tool="GZIDX import",
        windows_packed=False,
        verification="GZIDX points checked against the blob by one pass; spans by sha256",
    )
    layer._set_index(index, "gzidx")
    return index
