"""Binary file objects over a byte range of a layer's uncompressed stream."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import Any

ReadRange = Callable[[int, int], bytes]


class RangeFile(io.BufferedIOBase):
    """A read-only, seekable file of ``size`` bytes starting at ``base`` in a tar stream.

    Each object has its own position (and lock), so threads may share one or use several.
    """

    def __init__(self, read_range: ReadRange, base: int, size: int, name: str) -> None:
        super().__init__()
        self._read_range = read_range
        self._base = base
        self.size = size
        self.name = name
        self._pos = 0
        self._lock = threading.Lock()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def readable(self) -> bool:
        self._check_open()
        return True

    def seekable(self) -> bool:
        self._check_open()
        return True

    def writable(self) -> bool:
        self._check_open()
        return False

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        with self._lock:
            if whence == io.SEEK_SET:
                new = offset
            elif whence == io.SEEK_CUR:
                new = self._pos + offset
            elif whence == io.SEEK_END:
                new = self.size + offset
            else:
                raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
            if new < 0:
                raise ValueError(f"negative seek position {new}")
            self._pos = new
            return new

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        with self._lock:
            remaining = max(0, self.size - self._pos)
            n = remaining if size is None or size < 0 else min(size, remaining)
            if n == 0:
                return b""
            data = self._read_range(self._base + self._pos, n)
            self._pos += len(data)
            return data

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readinto1(self, buffer: Any) -> int:
        return self.readinto(buffer)

    def __repr__(self) -> str:
        state = "closed " if self.closed else ""
        return f"<seekoci {state}file {self.name!r} size={self.size}>"

    def __reduce_ex__(self, protocol: object) -> Any:
        # an open file is a position in one process's view: open the path again over there
        # (pickle the Image or Layer and the path instead)
        raise TypeError(f"cannot pickle {self!r}: open it again from a pickled Image or Layer")
