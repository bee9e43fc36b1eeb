"""The cache directory: content-addressed, written atomically.

Layout under ``cache_dir``::

    indexes/<alg>/<hex>.v<N>   the index of the layer whose digest is <alg>:<hex>
                               (index format version N); only indexes built from bytes that
                               verified against the layer digest are ever written
    spans/sha256/<hex>         compressed bytes of one span, named by their own sha256
                               (also the metadata of published indexes, by its digest)
    published/<alg>/<hex>.json where a published index of that layer was found: registry,
                               repository and the index blob's descriptor

Every file is written to a temporary name in the same directory and renamed into place, so
processes sharing the directory never see half a file. Whatever is read back is checked
again (span files against their name, indexes against the layer digest they carry).
``cache_dir=False`` gives a :class:`MemoryCache` that keeps nothing on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .formats.index import INDEX_VERSION


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()

#: read(offset, length) -> bytes
ReadAt = Callable[[int, int], bytes]


def default_cache_dir() -> Path:
    env = os.environ.get("SEEKOCI_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "seekoci"
    return Path.home() / ".cache" / "seekoci"


def _split(digest: str) -> tuple[str, str]:
    alg, sep, hexpart = digest.partition(":")
    if (
        not sep
        or not alg.isalnum()
        or not hexpart
        or not all(c in "0123456789abcdef" for c in hexpart)
    ):
        raise ValueError(f"not a digest: {digest!r}")
    return alg, hexpart


class MemoryCache:
    """Keeps indexes and spans in memory only (``cache_dir=False``); spans bounded by size."""

    persistent = False

    def __init__(self, max_span_bytes: int = 256 << 20) -> None:
        self._indexes: dict[str, bytes] = {}
        self._published: dict[str, dict[str, Any]] = {}
        self._spans: OrderedDict[str, bytes] = OrderedDict()
        self._span_bytes = 0
        self._max = max_span_bytes
        self._lock = threading.Lock()

    def index_path(self, layer_digest: str) -> Path | None:
        return None

    def load_index(self, layer_digest: str) -> bytes | None:
        with self._lock:
            return self._indexes.get(layer_digest)

    def index_reader(self, layer_digest: str) -> tuple[int, ReadAt] | None:
        data = self.load_index(layer_digest)
        if data is None:
            return None
        return len(data), lambda offset, length: data[offset : offset + length]

    def save_index(self, layer_digest: str, data: bytes) -> None:
        with self._lock:
            self._indexes[layer_digest] = data

    def write_index(self, layer_digest: str, write: Callable[[BinaryIO], None]) -> None:
        out = io.BytesIO()
        write(out)
        self.save_index(layer_digest, out.getvalue())

    def load_published(self, layer_digest: str) -> dict[str, Any] | None:
        with self._lock:
            return self._published.get(layer_digest)

    def save_published(self, layer_digest: str, doc: dict[str, Any]) -> None:
        with self._lock:
            self._published[layer_digest] = doc

    def load_span(
        self, digest_hex: str, check: Callable[[bytes], bool] | None = None
    ) -> bytes | None:
        with self._lock:
            data = self._spans.get(digest_hex)
            if data is not None:
                self._spans.move_to_end(digest_hex)
            return data

    def has_span(self, digest_hex: str) -> bool:
        with self._lock:
            return digest_hex in self._spans

    def load_prefix(self, digest_hex: str) -> bytes | None:
        return self.load_span(digest_hex + ".prefix")

    def has_prefix(self, digest_hex: str) -> bool:
        return self.has_span(digest_hex + ".prefix")

    def save_prefix(self, digest_hex: str, data: bytes) -> None:
        key = digest_hex + ".prefix"
        with self._lock:
            old = self._spans.pop(key, None)
            if old is not None:
                self._span_bytes -= len(old)
                data = max(old, data, key=len)
        self.save_span(key, data)

    def save_span(self, digest_hex: str, data: bytes) -> None:
        with self._lock:
            if digest_hex in self._spans or len(data) > self._max:
                return
            self._spans[digest_hex] = data
            self._span_bytes += len(data)
            while self._span_bytes > self._max:
                _, old = self._spans.popitem(last=False)
                self._span_bytes -= len(old)


class DiskCache:
    """A cache directory shared safely between threads and processes."""

    persistent = True

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _atomic_write(self, path: Path, data: bytes | Callable[[BinaryIO], None]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                if callable(data):
                    data(f)
                else:
                    f.write(data)
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a shared cache needs more
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def index_path(self, layer_digest: str) -> Path:
        alg, hexpart = _split(layer_digest)
        return self.root / "indexes" / alg / f"{hexpart}.v{INDEX_VERSION}"

    def load_index(self, layer_digest: str) -> bytes | None:
        try:
            return self.index_path(layer_digest).read_bytes()
        except OSError:
            return None

    def index_reader(self, layer_digest: str) -> tuple[int, ReadAt] | None:
        """Size and a range reader of a cached index, without reading it whole: a cold read
        needs the header, the table of contents and one window, not every window."""
        path = self.index_path(layer_digest)
        try:
            size = path.stat().st_size
        except OSError:
            return None

        def read(offset: int, length: int) -> bytes:
            with open(path, "rb") as f:
                return os.pread(f.fileno(), length, offset)

        return size, read

    def save_index(self, layer_digest: str, data: bytes) -> None:
        self._atomic_write(self.index_path(layer_digest), data)

    def write_index(self, layer_digest: str, write: Callable[[BinaryIO], None]) -> None:
        """Like :meth:`save_index`, with the bytes written by ``write(file)`` (streamed)."""
        self._atomic_write(self.index_path(layer_digest), write)

    def _published_path(self, layer_digest: str) -> Path:
        alg, hexpart = _split(layer_digest)
        return self.root / "published" / alg / f"{hexpart}.json"

    def load_published(self, layer_digest: str) -> dict[str, Any] | None:
        """Where a published index of this layer was found last time (see remote.py)."""
        try:
            doc = json.loads(self._published_path(layer_digest).read_bytes())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def save_published(self, layer_digest: str, doc: dict[str, Any]) -> None:
        try:
            self._atomic_write(self._published_path(layer_digest), json.dumps(doc).encode())
        except OSError:
            pass

    def _span_path(self, digest_hex: str) -> Path:
        return self.root / "spans" / "sha256" / digest_hex

    def load_span(
        self, digest_hex: str, check: Callable[[bytes], bool] | None = None
    ) -> bytes | None:
        """The bytes saved under ``digest_hex`` if they still match it: their sha256, or
        ``check(data)`` for a digest of another kind (a chunked span's)."""
        try:
            data = self._span_path(digest_hex).read_bytes()
        except OSError:
            return None
        ok = check(data) if check is not None else hashlib.sha256(data).hexdigest() == digest_hex
        if not ok:
            # damaged on disk: drop it, so that the refetched bytes are saved in its place
            # (save_span keeps a file that exists)
            with contextlib.suppress(OSError):
                self._span_path(digest_hex).unlink()
            return None
        return data

    def has_span(self, digest_hex: str) -> bool:
        return self._span_path(digest_hex).is_file()

    def load_prefix(self, digest_hex: str) -> bytes | None:
        """The start of a chunked span saved by a read that needed only that much (the
        caller checks its chunks)."""
        try:
            return self._span_path(digest_hex + ".prefix").read_bytes()
        except OSError:
            return None

    def has_prefix(self, digest_hex: str) -> bool:
        return self._span_path(digest_hex + ".prefix").is_file()

    def save_prefix(self, digest_hex: str, data: bytes) -> None:
        path = self._span_path(digest_hex + ".prefix")
        try:
            if path.stat().st_size >= len(data):
                return
        except OSError:
            pass
        try:
            self._atomic_write(path, data)
        except OSError:
            pass

    def save_span(self, digest_hex: str, data: bytes) -> None:
        path = self._span_path(digest_hex)
        if not path.exists():
            try:
                self._atomic_write(path, data)
            except OSError:
                pass  # a full or read-only cache slows us down, it does not fail reads


Cache = MemoryCache | DiskCache


def open_cache(cache_dir: str | os.PathLike[str] | bool | None) -> Cache:
    """``None``: the default directory; ``False``: memory only; else that directory."""
    if cache_dir is False:
        return MemoryCache()
    if cache_dir is None or cache_dir is True:
        return DiskCache(default_cache_dir())
    return DiskCache(cache_dir)
