"""seekoci._allocator: free memory the C allocator holds is given back to the system."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from seekoci._allocator import release_free_memory

#: run in a fresh process: the test process's heap after other tests is not a known state
_HOLES = textwrap.dedent(
    """
    import os
    from seekoci._allocator import release_free_memory

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    # 800 buffers of 100 KiB (below malloc's mmap threshold), every other one freed: 40
    # MB of holes between buffers that stay, which malloc keeps (none is at the top of
    # its heap, where it would trim by itself)
    big, kept = [], []
    for _ in range(400):
        big.append(bytearray(100 << 10))  # (zeroed: resident)
        kept.append(bytearray(100 << 10))
    grown = rss()
    del big
    freed = rss()
    release_free_memory()
    print(grown - freed, freed - rss(), len(kept))
    """
)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc_trim")
def test_free_memory_held_by_malloc_is_given_back() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _HOLES], capture_output=True, text=True, check=True
    )
    by_itself, given_back, kept = map(int, done.stdout.split())
    # most of the 40 MB stays with malloc when freed; most of that goes back when asked
    assert by_itself < 10 << 20, "malloc gave the memory back by itself: the test is moot"
    assert given_back > 30 << 20, f"only {given_back} bytes given back"
    assert kept == 400


def test_a_python_without_ctypes_gives_nothing_back_and_raises_nothing() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["ctypes"] = None  # as if the interpreter were built without it
        from seekoci._allocator import release_free_memory
        release_free_memory()
        release_free_memory()
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "ok", "")


def test_giving_back_is_safe_to_repeat() -> None:
    for _ in range(3):
        release_free_memory()
    data = bytearray(b"\2" * (1 << 20))
    assert data.count(2) == 1 << 20
