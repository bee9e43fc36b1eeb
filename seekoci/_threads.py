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
