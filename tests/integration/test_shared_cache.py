"""Several processes sharing one empty cache directory build a layer's index once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from imagebuilder import file, image, layer, random_bytes, text_bytes

import seekoci
import seekoci.cache

pytestmark = pytest.mark.integration

NEEDLE = b"one build for four readers\n" * 4

READER = """
import sys, seekoci
img = seekoci.open_image(sys.argv[1], cache_dir=sys.argv[2])
img.build_index()
assert img.read_bytes("/needle.txt") == sys.argv[3].encode() * 4
print(",".join(layer.index_status for layer in img.layers))
"""


def test_four_processes_build_one_index_and_a_fifth_reads_it(
    registry: Any, counting_proxy: Any, tmp_path: Path
) -> None:
    big = layer(
        file("random.bin", random_bytes("shared-random", 3 << 20)),
        file("needle.txt", NEEDLE),
        file("text.txt", text_bytes("shared-text", 6 << 20)),
        producer="python",
    )
    digest = registry.push("shared/cache", "v1", image(big))
    proxy = counting_proxy(registry)
    ref = proxy.ref("shared/cache", digest)
    cache = tmp_path / "shared"
    line = NEEDLE[: len(NEEDLE) // 4].decode()
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", READER, ref, str(cache), line],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outcomes = [r.communicate(timeout=300) for r in readers]
    assert all(r.returncode == 0 for r in readers), outcomes
    statuses = sorted(out.strip() for out, _ in outcomes)
    assert statuses == ["built", "cached", "cached", "cached"], statuses
    layer_digest = seekoci.open_image(ref, cache_dir=cache).layers[0].digest
    whole = [
        r for r in proxy.records if r.kind == "blob" and layer_digest in r.path and not r.range
    ]
    assert len(whole) == 1, proxy.summary()  # one full pass over the layer, not four

    proxy.reset()
    fifth = seekoci.open_image(ref, cache_dir=cache)
    assert fifth.read_bytes("/needle.txt") == NEEDLE
    assert fifth.layers[0].index_status == "cached"
    assert all(r.range for r in proxy.records), proxy.summary()  # a span at most
    assert sorted(p.name for p in (cache / "indexes" / "sha256").iterdir()) == [
        layer_digest.split(":")[1] + f".v{seekoci.cache.INDEX_VERSION}"
    ]
