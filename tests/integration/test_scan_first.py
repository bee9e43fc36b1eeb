"""Scan first, through a real registry: the first touch of a file deep in a lower layer
answers from the fast decode of each layer it needs, the merged view's rules hold (a file
whited out above stays hidden), and the indexes made behind the scans land in the cache
directory, so the next process reads with no pass at all."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from imagebuilder import file, image, layer, random_bytes, text_bytes, whiteout

import seekoci
import seekoci.build
import seekoci.cli

pytestmark = pytest.mark.integration

REPO = "scan/first"

LOWER = layer(
    file("early.txt", b"early\n"),
    *[file(f"lib/t{i}.txt", text_bytes(f"t{i}", 200_000)) for i in range(8)],
    file("lib/weights.bin", random_bytes("w", 3_000_000)),
    file("gone.txt", b"whited out above\n"),
    file("deep/last.txt", b"the last file\n"),
    producer="pigz",
)
UPPER = layer(
    whiteout("gone.txt"),
    *[file(f"up/u{i}.txt", text_bytes(f"u{i}", 150_000)) for i in range(4)],
    producer="python",
)


@pytest.fixture(autouse=True)
def scan_small_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seekoci.build, "SCAN_FIRST_MIN", 0)
    monkeypatch.delenv("SEEKOCI_FIRST_TOUCH", raising=False)


def test_a_first_touch_scans_and_leaves_the_indexes_behind(registry, tmp_path: Path) -> None:
    registry.push(REPO, "v1", image(LOWER, UPPER))
    ref = registry.ref(REPO, "v1")
    cache = tmp_path / "cache"
    with seekoci.open_image(ref, cache_dir=cache) as img:
        assert img.read_bytes("/deep/last.txt") == b"the last file\n"
        lower = img.layers[0]
        assert lower._build is not None and lower._build.scan is not None  # it scanned
        assert not img.exists("/gone.txt")
        assert img.read_bytes("/lib/t3.txt") == text_bytes("t3", 200_000)
        assert img.flush(120)
        assert [layer.index_status for layer in img.layers] == ["built", "built"]
        # the files' digests: the scan skips them, the index made behind it has them
        entry = lower.find("lib/weights.bin")
        assert entry is not None
        assert entry.sha256 == hashlib.sha256(random_bytes("w", 3_000_000)).digest()
    again = seekoci.open_image(ref, cache_dir=cache)
    assert [layer.index_status for layer in again.layers] == ["cached", "cached"]
    assert again.read_bytes("/lib/weights.bin") == random_bytes("w", 3_000_000)
    assert sum(layer.source.bytes_read for layer in again.layers) < 3_500_000


def test_the_cli_saves_the_index_behind_its_read_before_it_returns(
    registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.push(REPO, "cli", image(LOWER, UPPER))
    ref = registry.ref(REPO, "cli")
    out = io.BytesIO()
    sink = io.TextIOWrapper(out, encoding="utf-8")
    code = seekoci.cli.main(["cat", ref, "/deep/last.txt", "--cache-dir", str(tmp_path)], out=sink)
    sink.flush()
    assert code == 0, capsys.readouterr().err
    assert out.getvalue() == b"the last file\n"
    assert not seekoci.build.running_background()  # waited for, not left to the exit
    again = seekoci.open_image(ref, cache_dir=tmp_path)
    assert [layer.index_status for layer in again.layers] == ["cached", "cached"]


def test_a_whole_image_extracted_after_a_scan_is_the_merged_tree(registry, tmp_path: Path) -> None:
    """The merged view's writer meets layers in every state a scan leaves: one scanned
    whole (its index still being made), one scanned part way (stopped early)."""
    registry.push(REPO, "extract", image(LOWER, UPPER))
    ref = registry.ref(REPO, "extract")
    img = seekoci.open_image(ref, cache_dir=tmp_path / "cache")
    assert img.read_bytes("/up/u3.txt") == text_bytes("u3", 150_000)  # the upper, scanned
    assert img.read_bytes("/early.txt") == b"early\n"  # the lower, scanned part way
    dest = tmp_path / "root"
    assert img.extract("/", dest) == []
    assert (dest / "deep/last.txt").read_bytes() == b"the last file\n"
    assert (dest / "lib/weights.bin").read_bytes() == random_bytes("w", 3_000_000)
    assert (dest / "up/u0.txt").read_bytes() == text_bytes("u0", 150_000)
    assert not (dest / "gone.txt").exists()
    assert not list(dest.rglob(".wh.*"))
    assert img.flush(120)
    assert [layer.index_status for layer in img.layers] == ["built", "built"]
