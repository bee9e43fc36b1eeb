"""Thread pools shared by the whole process, one per purpose.

A ``ThreadPoolExecutor`` inherited through ``fork`` has no threads in the child and would
hang the first task submitted there, so each pool is recreated in a process that did not
create it (Dask and multiprocessing workers fork).
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: CPUs from which one index pass (it keeps ~1.5 busy: inflate, hashing, tar headers) leaves
#: room for more threads beside it; with fewer, threads added beside a pass take its CPU.
ROOM_BESIDE_A_PASS = 4


def room_beside_a_pass() -> bool:
    """Whether this machine has CPUs to spare beside a running index pass
    (:data:`ROOM_BESIDE_A_PASS`)."""
    return (os.cpu_count() or 1) >= ROOM_BESIDE_A_PASS


_POOLS: dict[str, tuple[int, concurrent.futures.ThreadPoolExecutor]] = {}
_LOCK = threading.Lock()


def shared_pool(name: str, workers: int) -> concurrent.futures.ThreadPoolExecutor:
    """The process's pool called ``name`` (created with ``workers`` threads)."""
    with _LOCK:
        found = _POOLS.get(name)
        if found is None or found[0] != os.getpid():
            pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=name)
            _POOLS[name] = found = (os.getpid(), pool)
        return found[1]


def submit_or_run(
    pool: concurrent.futures.ThreadPoolExecutor, fn: Callable[..., T], *args: Any
) -> concurrent.futures.Future[T]:
    """``pool.submit(fn, *args)``, or ``fn`` run here when the pool takes no more work (the
    interpreter is exiting: a thread finishing an index then must not fail on that)."""
    try:
        return pool.submit(fn, *args)
    except RuntimeError:
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            done.set_result(fn(*args))
        except BaseException as exc:
            done.set_exception(exc)
        return done
