"""The cyclic collector held off while big graphs are built (seekoci._gc): it is on again
afterwards whenever it was on before, off when the program had turned it off, and pauses
from several threads nest."""

from __future__ import annotations

import gc
import multiprocessing
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from layers import build_tar, file, one_layer_image, text_bytes

import seekoci.extract as extract
from seekoci import _gc
from seekoci.tree import Tree


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    was = gc.isenabled()
    yield
    (gc.enable if was else gc.disable)()


def test_the_collector_is_off_inside_and_on_again_after() -> None:
    gc.enable()
    with _gc.paused():
        assert not gc.isenabled()
        with _gc.paused():  # nested
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_program_that_turned_it_off_keeps_it_off() -> None:
    gc.disable()
    with _gc.paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_an_error_inside_still_ends_the_pause() -> None:
    gc.enable()
    with pytest.raises(KeyError), _gc.paused():
        raise KeyError("x")
    assert gc.isenabled()


def test_pauses_of_two_threads_overlap_and_the_last_one_out_enables_it() -> None:
    gc.enable()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def a() -> None:
        with _gc.paused():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b() -> None:
        a_in.wait(10)
        with _gc.paused():
            b_in.set()
            a_out.wait(10)
            seen["after a left"] = gc.isenabled()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"after a left": False}  # b's pause still holds it off
    assert gc.isenabled()


def test_the_merged_tree_and_the_walk_of_get_run_with_it_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gc.enable()
    states: dict[str, bool] = {}
    merged, walk = Tree.merged, extract._walk

    def recording_merged(layers):  # type: ignore[no-untyped-def]
        states["merged"] = gc.isenabled()
        return merged(layers)

    def recording_walk(*args, **kwargs):  # type: ignore[no-untyped-def]
        states["walk"] = gc.isenabled()
        return walk(*args, **kwargs)

    monkeypatch.setattr(Tree, "merged", staticmethod(recording_merged))
    monkeypatch.setattr(extract, "_walk", recording_walk)
    img = one_layer_image(
        build_tar([file(f"d/f{i}", text_bytes(f"f{i}", 3000)) for i in range(20)])
    )
    img.extract("/", str(tmp_path / "out"))
    assert states == {"merged": False, "walk": False}
    assert gc.isenabled()
    assert (tmp_path / "out" / "d" / "f7").read_bytes() == text_bytes("f7", 3000)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_child_forked_during_a_pause_has_the_collector_back() -> None:
    """A pause under way in the parent when it forks is not the child's: the threads that
    would end it are not there, so the child starts with the collector as it was."""
    gc.enable()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    with _gc.paused():
        child = context.Process(target=_report_collector, args=(queue,))
        child.start()
        child.join(timeout=30)
    assert child.exitcode == 0
    assert queue.get(timeout=5) == (True, True)  # on at start; on again after a pause


def _report_collector(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    at_start = gc.isenabled()
    with _gc.paused():
        pass
    queue.put((at_start, gc.isenabled()))


@pytest.mark.parametrize("moment", ["after disabling, before counting", "after counting down"])
def test_a_fork_in_the_middle_of_beginning_or_ending_a_pause(moment: str) -> None:
    """Forked between a pause's two steps (another thread was beginning or ending one),
    the child still finds the collector as it was before the pause."""
    pauses = _gc._Pauses()
    gc.enable()
    pauses.begin()
    if moment == "after counting down":
        pauses._depth = 0  # end() counted down, then the fork, before gc.enable()
    else:
        pauses._depth = 0  # begin() disabled it, then the fork, before counting
    assert not gc.isenabled()
    pauses.forked()
    assert gc.isenabled()
    assert pauses._depth == 0
