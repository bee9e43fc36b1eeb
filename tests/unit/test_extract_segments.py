"""How a whole-tree extraction cuts each layer's files into segments (streams read on
several threads), and that the cut changes nothing in what is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from layers import build_tar, file, hardlink, one_layer_image, text_bytes

import seekoci
import seekoci.extract as extract
from seekoci.formats.tar import TarEntry
from seekoci.image import Image


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
    img = one_layer_image(build_tar(declared))
    img.layers[0].index()
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


class _Recorder:
    """Stands in for ``_write_segment``: records each segment's offsets, may fail one."""

    def __init__(self, fail_at: int | None = None) -> None:
        import threading

        self.segments: list[list[int]] = []
        self.fail_at = fail_at
        self._lock = threading.Lock()

    def __call__(self, files: list[extract._File], copied: object) -> None:
        with self._lock:
            self.segments.append([f.start for f in files])
        if self.fail_at is not None and files[0].start == self.fail_at:
            raise seekoci.FormatError("segment failed")


def _wait_for(pred: object, timeout: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_segments_start_while_the_walk_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files found in tar order are cut as they come: the first segment is being written
    before the walk has handed over its last file."""
    monkeypatch.setattr(extract, "SEGMENT_SPLIT", 1000)
    recorder = _Recorder()
    monkeypatch.setattr(extract, "_write_segment", recorder)
    layer = object()
    copied = extract._Copied(0, None)
    feed = extract._SegmentFeed(copied)
    try:
        for f in files_at(layer, (0, 400), (512, 400), (1024, 400), (1536, 400)):
            feed.add(f)
        assert _wait_for(lambda: recorder.segments == [[0, 512]])  # before finish()
        feed.add(files_at(layer, (2048, 4000))[0])
        feed.finish()
    finally:
        feed.close()
    assert sorted(recorder.segments) == [[0, 512], [1024, 1536], [2048]]


def test_a_growing_total_is_never_shown_complete_early() -> None:
    seen: list[tuple[int, int]] = []
    copied = extract._Copied(0, lambda done, total: seen.append((done, total)), growing=True)
    copied.expect(100)
    copied.add(100)  # all that is known so far is done, but the walk goes on
    copied.expect(50)
    copied.add(20)
    copied.settle()
    copied.add(30)
    assert seen == [(100, 101), (120, 150), (120, 150), (150, 150)]


def test_files_found_behind_the_segments_are_written_at_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(extract, "SEGMENT_SPLIT", 1000)
    recorder = _Recorder()
    monkeypatch.setattr(extract, "_write_segment", recorder)
    layer = object()
    files = files_at(layer, (0, 400), (512, 400), (1024, 400), (1536, 400), (100, 10))
    feed = extract._SegmentFeed(extract._Copied(0, None))
    try:
        for f in files:
            feed.add(f)
        feed.finish()
    finally:
        feed.close()
    written = sorted(at for seg in recorder.segments for at in seg)
    assert written == sorted(f.start for f in files)  # every file once
    assert [100] in recorder.segments  # the late one in a segment of its own, at the end


def test_a_layer_in_no_order_is_cut_only_at_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past LATE_FILES files behind its frontier a layer stops cutting early: what is left
    is cut once every file is known, into as few segments as a sorted list gives."""
    monkeypatch.setattr(extract, "LATE_FILES", 2)
    recorder = _Recorder()
    monkeypatch.setattr(extract, "_write_segment", recorder)
    layer = object()
    starts = [9000, 8000, 7000, 6000, 5000, 4000, 3000, 2000, 1000, 0]
    feed = extract._SegmentFeed(extract._Copied(0, None))
    try:
        for f in files_at(layer, *[(at, 100) for at in starts]):
            feed.add(f)
        feed.finish()
    finally:
        feed.close()
    assert sorted(at for seg in recorder.segments for at in seg) == sorted(starts)
    assert len(recorder.segments) <= 2  # [9000] early, the rest as one sorted segment


def test_a_failed_segment_stops_the_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extract, "SEGMENT_SPLIT", 1000)
    recorder = _Recorder(fail_at=0)
    monkeypatch.setattr(extract, "_write_segment", recorder)
    layer = object()
    feed = extract._SegmentFeed(extract._Copied(0, None))
    with pytest.raises(seekoci.FormatError, match="segment failed"):
        try:
            at = 0
            for _ in range(10_000):  # the walk goes on until the failure reaches it
                for f in files_at(layer, (at, 400)):
                    feed.add(f)
                at += 1024
                if at > 2048:
                    _wait_for(lambda: bool(recorder.segments), 1.0)
            feed.finish()
        finally:
            feed.close()
    assert len(recorder.segments) < 10_000


def test_a_tree_whose_layer_is_in_reverse_order_comes_out_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A layer written in no walk order (its files found behind the segments) is still
    written whole, each file once."""
    monkeypatch.setattr(extract, "SEGMENT_SPLIT", 64 << 10)
    monkeypatch.setattr(extract, "LATE_FILES", 5)
    names = [f"lib/m{i:02d}.py" for i in range(40)]
    declared = [file(n, text_bytes(n, 9_000 + 777 * i)) for i, n in enumerate(names)]
    img = one_layer_image(build_tar(list(reversed(declared))))
    img.extract("/", str(tmp_path / "out"))
    for i, n in enumerate(names):
        assert (tmp_path / "out" / n).read_bytes() == text_bytes(n, 9_000 + 777 * i)


def test_a_staged_write_that_fails_is_raised_not_lost(tmp_path: Path) -> None:
    """The staging tee writes on a thread of its own: a failure there (here: its directory
    is gone) comes back to the pass, and the pass's thread never waits on a dead writer."""
    stager = extract._Stager(str(tmp_path / "gone"))
    entries = [entry("a", 512, 10_000), entry("b", 11_264, 10)]
    stager(0, bytes(20_000), entries)  # handed over; the writer fails on it
    with pytest.raises(FileNotFoundError):
        for _ in range(10_000):  # until the failure is seen: never a hang on a full queue
            stager(20_000, bytes(1000), entries)
    assert isinstance(stager.close(), FileNotFoundError)


def test_staged_files_hold_their_bytes(tmp_path: Path) -> None:
    stager = extract._Stager(str(tmp_path))
    data = bytes(range(256)) * 100
    entries = [entry("a", 512, 10_000), entry("b", 11_264, 0), entry("c", 11_264, 5_000)]
    for at in range(0, len(data), 777):  # pieces that cut files anywhere
        stager(at, data[at : at + 777], entries)
    assert stager.close() is None
    assert Path(stager.staged[id(entries[0])]).read_bytes() == data[512:10_512]
    assert Path(stager.staged[id(entries[1])]).read_bytes() == b""
    assert Path(stager.staged[id(entries[2])]).read_bytes() == data[11_264:16_264]


@pytest.mark.parametrize("keep", [False, True])
def test_staged_files_are_finished_with_their_mode_and_time(tmp_path: Path, keep: bool) -> None:
    """A staged file leaves the writer with its entry's mode (setuid/setgid dropped unless
    kept) and time, so placing it is one rename."""
    import os

    stager = extract._Stager(str(tmp_path), keep_special_bits=keep)
    a = TarEntry(name="a", type="file", size=100, mode=0o4755, uid=0, gid=0, mtime=1_000_000.5,
                 data_offset=512)  # fmt: skip
    stager(0, bytes(1024), [a])
    assert stager.close() is None
    st = os.stat(stager.staged[id(a)])
    assert st.st_mode & 0o7777 == (0o4755 if keep else 0o755)
    assert st.st_mtime == 1_000_000.5
