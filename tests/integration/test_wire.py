"""Bytes on the wire: with an index in the cache, one small file costs a small range read."""

from __future__ import annotations

from pathlib import Path

import pytest
from imagebuilder import file, image, layer, random_bytes, text_bytes

import seekoci

pytestmark = pytest.mark.integration

REPO = "wire/big"
NEEDLE = b"the needle in the middle of a 64 MB layer\n" * 20
LIMIT = 2 << 20


@pytest.fixture(scope="module")
def big_image(registry):
    # 32 MB of incompressible bytes, the needle, 32 MB of text: the needle sits ~40 MB into
    # the compressed stream, far from its start and from its end.
    lay = layer(
        file("filler/random.bin", random_bytes("wire-random", 32 << 20)),
        file("needle/needle.txt", NEEDLE),
        file("filler/text.txt", text_bytes("wire-text", 32 << 20)),
        producer="python",
    )
    img = image(layer(file("base.txt", b"small base layer\n")), lay)
    registry.push(REPO, "v1", img)
    return img


def test_small_read_after_index_transfers_little(
    big_image, registry, counting_proxy, tmp_path: Path
) -> None:
    big = big_image.layers[1]
    assert len(big.tar) > 64 << 20 and big.size > 40 << 20
    cache = tmp_path / "cache"
    first = seekoci.open_image(registry.ref(REPO, "v1"), cache_dir=cache)
    first.build_index()

    proxy = counting_proxy(registry)
    second = seekoci.open_image(proxy.ref(REPO, "v1"), cache_dir=cache)
    assert second.read_bytes("/needle/needle.txt") == NEEDLE
    assert proxy.bytes("blob") < LIMIT, (
        f"{proxy.bytes('blob')} blob bytes for a {len(NEEDLE)}-byte file:\n{proxy.summary()}"
    )


def test_small_read_through_the_proxy_is_correct_and_ranged(
    big_image, registry, counting_proxy, tmp_path: Path
) -> None:
    """The whole path through the proxy (index built through it too) gives the right bytes."""
    proxy = counting_proxy(registry)
    img = seekoci.open_image(proxy.ref(REPO, "v1"), cache_dir=tmp_path / "cache")
    img.build_index()
    built = proxy.bytes("blob")
    assert built >= big_image.layers[1].size * 0.9, "the index was built without the blob?"
    proxy.reset()
    with img.open("/filler/text.txt") as f:
        f.seek(20 << 20)
        assert (
            f.read(4096)
            == big_image.layers[1].entry("filler/text.txt").data[20 << 20 : (20 << 20) + 4096]
        )
    assert proxy.bytes("blob") < LIMIT, proxy.summary()
    assert proxy.bytes("blob") == 0 or all(
        r.range for r in proxy.records if r.kind == "blob" and r.method == "GET"
    ), proxy.summary()
