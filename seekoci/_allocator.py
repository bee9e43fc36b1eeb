"""Free memory given back to the system between the pieces of a long read (glibc only;
elsewhere nothing is done).

A whole-tree extraction passes buffers of a few KiB to a few MiB between threads:
compressed runs, decoded spans and chunks, pieces for the file writers. glibc's
``malloc`` serves buffers past its mmap threshold with mappings of their own, but raises
that threshold to the size of each such buffer freed (up to 32 MiB): soon every buffer
comes from the per-thread arenas, and what is freed there stays resident, in holes too
small for the next buffer or in another thread's arena: ~100 MiB of free memory during
``get /`` of a 54k-file eStargz image.

Holding the threshold at 1 MiB (``mallopt``) took that image's peak RSS from 274-295 to
207-214 MiB, but it is the process's setting, not a library's, and it costs CPU: every
buffer of 1 MiB or more a fresh mapping, ``get /`` of a gzip image took ~25% more. What
is done instead changes no setting: ``malloc_trim`` after each piece of an extraction
hands the free pages back (peak 263-278 -> 249 MiB for that image, no CPU seen;
docs/performance.md, "The ninth session's changes").
"""

from __future__ import annotations

import sys
import threading
from typing import Any

_lock = threading.Lock()
_libc: list[Any] = []  # [] until looked up; then [the C library, or None]


def _glibc() -> Any:
    """The C library when it has ``malloc_trim`` (glibc), or None."""
    with _lock:
        if not _libc:
            found = None
            if sys.platform.startswith("linux"):
                try:
                    import ctypes

                    lib = ctypes.CDLL(None)
                    if hasattr(lib, "malloc_trim"):
                        lib.malloc_trim.argtypes = [ctypes.c_size_t]
                        lib.malloc_trim.restype = ctypes.c_int
                        found = lib
                except Exception:  # (a Python without ctypes, a C library without it)
                    found = None
            _libc.append(found)
        return _libc[0]


def release_free_memory() -> None:
    """Give the free memory the allocator's arenas hold back to the system (microseconds
    to a few milliseconds: one pass over their free lists)."""
    lib = _glibc()
    if lib is not None:
        lib.malloc_trim(0)
