"""How a whole-tree extraction cuts each layer's files into segments (streams read on
several threads), and that the cut changes nothing in what is written."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from layers import build_tar, compress_layer, file, hardlink, text_bytes

import seekoci
import seekoci.extract as extract
from seekoci.cache import MemoryCache
from seekoci.formats.tar import TarEntry
from seekoci.image import Image
from seekoci.source import BytesSource


def entry(name: str, offset: int, size: int) -> TarEntry:
    return TarEntry(
        name=name, type="file", size=size, mode=0o644, uid=0, gid=0, mtime=0.0, data_offset=offset
    )


def files_at(layer: object, *spans: tuple[int, int]) -> list[extract._File]:
    return [
        extract._File(layer, entry(f"f{i}", at, size), f"/d/f{i}", 0o644, 0.0)  # type: ignore[arg-type]
        for i, (at, size) in enumerate(spans)
    ]


def test_one_layer_is_cut_at_the_first_file_past_the_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extract, "SEGMENT_SPLIT", 1000)
    layer = object()
    files = files_at(layer, (0, 400), (512, 400), (1024, 400), (1536, 400), (2048, 4000))
    segments = extract._segments(files)
    assert sorted([f.start for f in seg] for seg in segments) == [[0, 512], [1024, 1536], [2048]]


def test_files_sharing_their_bytes_stay_in_one_segment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extract, "SEGMENT_SPLIT", 1000)
    layer = object()
    # hard links to one entry: the same bytes, read once for all of them
    files = files_at(layer, (0, 1500), (1536, 10), (1536, 10), (1536, 10))
    segments = extract._segments(files)
    assert sorted([f.start for f in seg] for seg in segments) == [[0], [1536, 1536, 1536]]


def test_a_gap_still_cuts_and_layers_never_mix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extract, "SEGMENT_GAP", 100)
    a, b = object(), object()
    files = files_at(a, (0, 10), (512, 10)) + files_at(b, (0, 10), (600, 10))
    segments = extract._segments(files)
    assert all(len({id(f.layer) for f in seg}) == 1 for seg in segments)
    assert len(segments) == 4  # every neighbour is more than 100 bytes away


def test_a_tree_cut_into_many_segments_comes_out_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(extract, "SEGMENT_SPLIT", 64 << 10)
    declared = [file(f"lib/m{i}.py", text_bytes(f"m{i}", 20_000 + 999 * i)) for i in range(40)]
    declared.append(hardlink("lib/again.py", "lib/m7.py"))
    blob = compress_layer(build_tar(declared), "python")
    layer = seekoci.Layer(
        BytesSource(blob, name="layer"),
        cache=MemoryCache(),
        digest="sha256:" + hashlib.sha256(blob).hexdigest(),
        span_size=32 << 10,
    )
    img = Image(
        reference="test", digest="", platform="linux/amd64", config={}, manifest={}, layers=[layer]
    )
    layer.index()
    assert len(extract._segments(_all_files(img))) > 5
    img.extract("/", str(tmp_path / "out"))
    for i in range(40):
        got = (tmp_path / "out" / "lib" / f"m{i}.py").read_bytes()
        assert got == text_bytes(f"m{i}", 20_000 + 999 * i)
    assert (tmp_path / "out" / "lib" / "again.py").read_bytes() == text_bytes("m7", 20_000 + 6993)


def _all_files(img: Image) -> list[extract._File]:
    tree = img.tree()
    out = []
    for dirpath, _dirs, names in tree.walk("/"):
        for name in names:
            src = f"{dirpath.rstrip('/')}/{name}"
            holder = extract._holder(img, tree.resolve(src, follow_symlinks=False))
            assert holder is not None
            out.append(extract._File(holder[0], holder[1], src, 0o644, 0.0))
    return out
