"""Binary file objects over a byte range of a layer's uncompressed stream.

A file read front to back gets *readahead*: once a reader has gone
:data:`READAHEAD_AFTER` bytes without a seek, the rest of the file comes through a stream
of the read pipeline, whose window starts at twice what was read so far and doubles with
every span taken, up to the pipeline's maximum; a seek drops it. Small reads, random reads
and short sequential reads (a header, then the bytes it points at) fetch only what they
ask for.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

ReadRange = Callable[[int, int], bytes]

#: Bytes read in order, from one position on, before readahead starts.
READAHEAD_AFTER = 1 << 20
#: The largest readahead window (uncompressed bytes ahead of the reader).
READAHEAD_MAX = 64 << 20


class Stream(Protocol):
    """Pieces of bytes in order (``seekoci.pipeline.SpanStream``)."""

    window: int

    def __next__(self) -> bytes: ...

    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


#: open_stream(offset, length, window) -> Stream of the bytes [offset, offset + length)
OpenStream = Callable[[int, int, int], Stream]


class RangeFile(io.BufferedIOBase):
    """A read-only, seekable file of ``size`` bytes starting at ``base`` in a tar stream.

    Each object has its own position (and lock), so threads may share one or use several.
    """

    def __init__(
        self,
        read_range: ReadRange,
        base: int,
        size: int,
        name: str,
        *,
        open_stream: OpenStream | None = None,
    ) -> None:
        super().__init__()
        self._read_range = read_range
        self._open_stream = open_stream
        self._base = base
        self.size = size
        self.name = name
        self._pos = 0
        self._lock = threading.Lock()
        self._in_order = 0  # bytes read since the last seek (or the start), in order
        self._last_end = 0  # where the last read ended
        self._stream: Stream | None = None
        self._stream_pos = 0  # file position of the first byte of _piece
        self._piece = b""  # the stream's last piece; the reader has taken _taken bytes of it
        self._taken = 0

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
            pos = self._pos
            remaining = max(0, self.size - pos)
            n = remaining if size is None or size < 0 else min(size, remaining)
            if n == 0:
                return b""
            self._in_order = self._in_order + n if pos == self._last_end else n
            if self._stream is not None and pos != self._stream_pos:
                self._drop_stream()
            if (
                self._stream is None
                and self._open_stream is not None
                and self._in_order > READAHEAD_AFTER
                and n < remaining
            ):
                window = min(READAHEAD_MAX, max(2 * READAHEAD_AFTER, 2 * self._in_order))
                self._stream = self._open_stream(self._base + pos, remaining, window)
                self._stream_pos, self._piece, self._taken = pos, b"", 0
            if self._stream is not None:
                data = self._take(n)
            else:
                data = self._read_range(self._base + pos, n)
            self._pos = self._last_end = pos + len(data)
            return data

    def _take(self, n: int) -> bytes:
        """``n`` bytes from the readahead stream (fewer only at its end)."""
        stream = self._stream
        assert stream is not None
        # pieces as views, joined once: a read across two spans copies each byte once, not
        # twice (a slice of each, then their join)
        parts: list[bytes | memoryview] = []
        got = 0
        while got < n:
            if self._taken == len(self._piece):
                try:
                    self._piece, self._taken = next(stream), 0
                except StopIteration:
                    break
                except BaseException:
                    self._drop_stream()
                    raise
                stream.window = min(READAHEAD_MAX, 2 * stream.window)
            k = min(n - got, len(self._piece) - self._taken)
            if k == len(self._piece):
                parts.append(self._piece)
            else:
                parts.append(memoryview(self._piece)[self._taken : self._taken + k])
            self._taken += k
            got += k
        self._stream_pos += got
        if len(parts) == 1:
            return bytes(parts[0])  # the piece itself when whole, else one copy
        return b"".join(parts)

    def _drop_stream(self) -> None:
        stream, self._stream, self._piece, self._taken = self._stream, None, b"", 0
        if stream is not None:
            stream.close()

    def close(self) -> None:
        with self._lock:
            self._drop_stream()
        super().close()

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
