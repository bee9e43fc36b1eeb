"""Range sources: "a sized thing I can read ranges of".

Everything above this module (formats, layers, the image view) sees a blob only through
:class:`RangeSource`. Implementations: :class:`FileSource` (a local file),
``seekoci.registry.blobs.RegistryBlobSource`` (a registry blob) and
``seekoci.registry.blobs.URLSource`` (any HTTP(S) URL that honours ``Range``).

Implementations must be thread-safe: several threads may call ``read_range`` at once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from .errors import FormatError

#: Default chunk size for streaming reads.
STREAM_CHUNK_SIZE = 1 << 20


@runtime_checkable
class RangeSource(Protocol):
    """A blob of known size whose byte ranges can be read, from any thread."""

    @property
    def size(self) -> int:
        """Total size of the blob in bytes."""
        ...

    @property
    def name(self) -> str:
        """What to call this blob in messages (a digest, a path or a URL without credentials)."""
        ...

    def read_range(self, offset: int, length: int) -> bytes:
        """Return exactly ``length`` bytes from ``offset`` (fewer only past the end of the blob)."""
        ...

    def iter_from(self, offset: int = 0, chunk_size: int = STREAM_CHUNK_SIZE) -> Iterator[bytes]:
        """Stream the blob from ``offset`` to its end in chunks (one request for remote blobs).

        Closing the generator releases the underlying connection or file.
        """
        ...


class FileSource:
    """A local file as a :class:`RangeSource` (``pread``, so reads from threads never race)."""

    def __init__(self, path: str | os.PathLike[str], *, name: str | None = None) -> None:
        self._path = os.fspath(path)
        self._fd = os.open(self._path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._size = os.fstat(self._fd).st_size
        self._name = name or self._path
        self._lock = threading.Lock()
        self.bytes_read = 0
        self.requests = 0

    @property
    def size(self) -> int:
        return self._size

    @property
    def name(self) -> str:
        return self._name

    def read_range(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"bad range {offset}+{length} of {self._name}")
        length = max(0, min(length, self._size - offset))
        parts = []
        done = 0
        while done < length:
            chunk = os.pread(self._fd, length - done, offset + done)
            if not chunk:
                raise FormatError(f"{self._name}: file shrank while reading at {offset + done}")
            parts.append(chunk)
            done += len(chunk)
        with self._lock:
            self.bytes_read += length
            self.requests += 1
        return b"".join(parts)

    def iter_from(self, offset: int = 0, chunk_size: int = STREAM_CHUNK_SIZE) -> Iterator[bytes]:
        pos = offset
        while pos < self._size:
            chunk = self.read_range(pos, min(chunk_size, self._size - pos))
            pos += len(chunk)
            yield chunk

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __repr__(self) -> str:
        return f"FileSource({self._path!r}, size={self._size})"


class BytesSource:
    """An in-memory blob as a :class:`RangeSource` (tests, small artifacts)."""

    def __init__(self, data: bytes, *, name: str = "<bytes>") -> None:
        self._data = bytes(data)
        self._name = name

    @property
    def size(self) -> int:
        return len(self._data)

    @property
    def name(self) -> str:
        return self._name

    def read_range(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"bad range {offset}+{length} of {self._name}")
        return self._data[offset : offset + length]

    def iter_from(self, offset: int = 0, chunk_size: int = STREAM_CHUNK_SIZE) -> Iterator[bytes]:
        for pos in range(offset, len(self._data), chunk_size):
            yield self._data[pos : pos + chunk_size]
