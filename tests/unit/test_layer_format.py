"""layer.format from the blob itself when no annotation says (shared vectors)."""

from __future__ import annotations

from pathlib import Path

import pytest

import seekoci

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


@pytest.mark.parametrize(
    ("blob", "compression", "fmt"),
    [
        ("estargz/estargz-prefetch.blob", "gzip", "estargz"),
        ("estargz/estargz-noprefetch.blob", "gzip", "estargz"),
        ("zstd-chunked/zstdchunked-cstorage.blob", "zstd", "zstd:chunked"),
        ("estargz/source.tar", "none", "tar"),
        ("soci/layer.tar.gz", "gzip", "tar"),
    ],
)
def test_format_is_read_from_the_footer(blob: str, compression: str, fmt: str) -> None:
    layer = seekoci.open_layer(VECTORS / blob, cache_dir=False)
    assert (layer.compression, layer.format) == (compression, fmt)
    reads = layer.source.requests  # type: ignore[attr-defined]
    assert layer.format == fmt and layer.source.requests == reads  # type: ignore[attr-defined]


def test_an_annotation_wins_without_reading(tmp_path: Path) -> None:
    layer = seekoci.Layer(
        seekoci.source.BytesSource(b"\x1f\x8b" + bytes(100)),
        cache=seekoci.cache.MemoryCache(),
        media_type="application/vnd.oci.image.layer.v1.tar+gzip",
        annotations={"containerd.io/snapshot/stargz/toc.digest": "sha256:" + "0" * 64},
    )
    assert layer.format == "estargz"
