"""The cyclic garbage collector held off while seekoci builds a large graph of objects.

CPython runs a full collection each time the objects that survived earlier collections
grow by a quarter, and a full collection visits every one of them. Building the merged
tree of a 54k-file image makes ~300k objects that live as long as the image (entries,
nodes, their dictionaries) and hold no reference cycles: seven full collections, each
visiting all that was built so far, found nothing to free and took 0.32 s of the 5.4 s
``get /`` of such an image, most of it before the first file is written, while the other
CPU waits.

:func:`paused` holds the collector off for such a build: CPU work on objects already at
hand (no network wait under it, so it lasts what the build lasts). Reference counting
still frees everything else as usual; only cyclic garbage waits for the collector, which
runs again when the build ends. The collector's state is the process's: pauses from
several threads nest, and the collector is enabled again when the last one ends, if it
was enabled when the first began (a program that turned it off keeps it off). A process
forked during a pause starts with none (Dask and multiprocessing workers fork).
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections.abc import Iterator


class _Pauses:
    """How many pauses are under way, and whether the collector runs again after them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._resume = False

    def begin(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._depth += 1

    def end(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._resume:
                gc.enable()
                self._resume = False  # (last: a fork before it enables again, harmlessly)

    def forked(self) -> None:
        """In a child forked while a pause was under way -- or in the middle of beginning or
        ending one: the threads that would end it are not there, so the collector is as it
        was before the pause, and no pause is on."""
        self._lock = threading.Lock()  # (another thread may have held it at the fork)
        if self._resume:
            gc.enable()
        self._resume = False
        self._depth = 0


_PAUSES = _Pauses()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_PAUSES.forked)


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """No cyclic collection while the block runs (see the module's text)."""
    _PAUSES.begin()
    try:
        yield
    finally:
        _PAUSES.end()
