"""Windows kept only as far back as a span's data reaches (seekoci's own index, not zTOCs)."""

from __future__ import annotations

import gzip
import random

from seekoci.formats.gzip import GzipIndexer, decode_span


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


def test_trimmed_and_dropped_windows_still_decode_every_span_exactly() -> None:
    data = mixed_data()
    blob, indexer = indexed(data, elide=True)
    sizes = {len(indexer.window(s.index) or b"") for s in indexer.spans}
    assert 0 in sizes and sizes & {4096, 16384}, sizes  # some dropped, some trimmed
    for span in indexer.spans:
        raw = blob[span.compressed_start : span.compressed_end]
        got = decode_span(span, raw, indexer.window(span.index))
        assert got == data[span.uncompressed_start : span.uncompressed_end]


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
