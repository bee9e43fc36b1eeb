"""Windows kept only where a span's data copies from them (seekoci's own index, not zTOCs)."""

from __future__ import annotations

import concurrent.futures
import gzip
import random
import zlib
from collections.abc import Callable

import pytest

from seekoci.formats import gzip as gzip_format
from seekoci.formats.gzip import GzipIndexer, decode_span, window_uses


def indexed(data: bytes, elide: bool) -> tuple[bytes, GzipIndexer]:
    blob = gzip.compress(data, 6)
    indexer = GzipIndexer(64 << 10, elide_windows=elide)
    for i in range(0, len(blob), 50_000):
        for _ in indexer.feed(blob[i : i + 50_000]):
            pass
    indexer.finish()
    return blob, indexer


def mixed_data() -> bytes:
    rnd = random.Random(11)
    words = [bytes(rnd.choices(b"abcdefghij", k=rnd.randint(2, 8))) for _ in range(300)]
    parts = []
    for i in range(40):
        kind = i % 3
        if kind == 0:  # text with near references
            parts.append(b" ".join(rnd.choices(words, k=20_000)))
        elif kind == 1:  # incompressible
            parts.append(rnd.randbytes(100_000))
        else:  # long-range repeats: a block seen ~20 KB earlier
            block = rnd.randbytes(20_000)
            parts.append(block + rnd.randbytes(1_000) + block)
    return b"".join(parts)


def test_sparse_and_dropped_windows_still_decode_every_span_exactly() -> None:
    data = mixed_data()
    blob, indexer = indexed(data, elide=True)
    _, full = indexed(data, elide=False)
    dropped = zeroed = 0
    for span in indexer.spans:
        window = indexer.window(span.index)
        whole = full.window(span.index) or b""
        if window is None:
            dropped += whole != b""
            continue
        assert len(window) == len(whole)
        for at in range(0, len(whole), 128):  # each block kept as it was, or zeroed
            block = window[at : at + 128]
            assert block in (whole[at : at + 128], bytes(len(block)))
            zeroed += block != whole[at : at + 128]
    assert dropped and zeroed  # some windows dropped, some kept only in part
    for span in indexer.spans:
        raw = blob[span.compressed_start : span.compressed_end]
        got = decode_span(span, raw, indexer.window(span.index))
        assert got == data[span.uncompressed_start : span.uncompressed_end]


def test_window_uses_keeps_exactly_the_blocks_copied_from() -> None:
    rnd = random.Random(3)
    window = rnd.randbytes(32768)
    data = window[5000:5300] + rnd.randbytes(200) + window[30000:30100] + rnd.randbytes(40_000)
    comp = zlib.compressobj(6, zlib.DEFLATED, -15, zdict=window)
    stream = comp.compress(data) + comp.flush()
    want = 32768 + 258

    def decode(w: bytes) -> bytes:
        d = zlib.decompressobj(-15, zdict=w) if w else zlib.decompressobj(-15)
        return d.decompress(stream, want)

    sparse = window_uses(window, decode, decode(window))
    assert sparse is not None and decode(sparse) == decode(window)
    kept = {at // 128 for at in range(0, 32768, 128) if sparse[at : at + 128] != bytes(128)}
    copied = set(range(5000 // 128, 5299 // 128 + 1)) | set(range(30000 // 128, 30099 // 128 + 1))
    assert kept == copied
    # nothing copied: nothing kept; a decode that stops short: cannot tell
    plain = zlib.compressobj(6, zlib.DEFLATED, -15)
    stream = plain.compress(rnd.randbytes(40_000)) + plain.flush()
    assert window_uses(window, decode, decode(window)) == b""
    assert window_uses(window, lambda w: decode(w)[:100], decode(window)) is None


def test_the_ztoc_builder_keeps_full_windows() -> None:
    data = mixed_data()
    _, full = indexed(data, elide=False)
    _, trimmed = indexed(data, elide=True)
    assert [s.digest for s in full.spans] == [s.digest for s in trimmed.spans]
    full_bytes = sum(full.packed_length(s.index) for s in full.spans)
    trimmed_bytes = sum(trimmed.packed_length(s.index) for s in trimmed.spans)
    assert trimmed_bytes < full_bytes
    late = [s for s in full.spans if s.uncompressed_start >= 32768]
    assert late and all(len(full.window(s.index) or b"") == 32768 for s in late)


def test_a_failing_window_analysis_keeps_whole_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> bytes:
        raise RuntimeError("analysis bug")

    monkeypatch.setattr(gzip_format, "window_uses", broken)
    data = mixed_data()
    blob, indexer = indexed(data, elide=True)
    _, full = indexed(data, elide=False)
    for span in indexer.spans:
        window = indexer.window(span.index)
        assert window is None or window == full.window(span.index)
        raw = blob[span.compressed_start : span.compressed_end]
        got = decode_span(span, raw, window)
        assert got == data[span.uncompressed_start : span.uncompressed_end]


class _Later(concurrent.futures.Future):  # type: ignore[type-arg]
    """A future whose work runs only when its result is asked for."""

    def __init__(self, work: Callable[[], object]) -> None:
        super().__init__()
        self._work = work

    def result(self, timeout: float | None = None) -> object:
        if not self.done():
            self.set_result(self._work())
        return super().result(timeout)


class _Idle:
    """An executor that leaves every analysis pending until the pass asks for it."""

    def submit(self, fn: Callable[..., object], *args: object) -> _Later:
        return _Later(lambda: fn(*args))


def test_windows_are_served_while_their_analysis_is_pending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gzip_format, "_analysis", lambda: _Idle())
    data = mixed_data()
    blob = gzip.compress(data, 6)
    indexer = GzipIndexer(64 << 10, elide_windows=True)
    pending_seen = 0
    for i in range(0, len(blob), 20_000):
        for _ in indexer.feed(blob[i : i + 20_000]):
            pass
        pending_seen += bool(indexer._probing)
        for span in indexer.spans:  # a read in the middle of the pass
            raw = blob[span.compressed_start : span.compressed_end]
            assert (
                decode_span(span, raw, indexer.window(span.index))
                == data[span.uncompressed_start : span.uncompressed_end]
            )
    indexer.finish()
    assert pending_seen and not indexer._probing
