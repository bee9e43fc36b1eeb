"""The process-wide thread pools survive a fork (Dask and multiprocessing workers fork)."""

from __future__ import annotations

import multiprocessing
import sys

import pytest

from seekoci._threads import shared_pool


def _use_pool_in_child(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue.put(shared_pool("test-pool", 1).submit(lambda: 42).result(timeout=10))


@pytest.mark.skipif(sys.platform == "win32", reason="fork is POSIX")
def test_a_pool_made_before_a_fork_works_in_the_child() -> None:
    assert shared_pool("test-pool", 1).submit(lambda: 1).result(timeout=10) == 1
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_use_pool_in_child, args=(queue,))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert queue.get(timeout=5) == 42
    assert shared_pool("test-pool", 1) is shared_pool("test-pool", 1)
