"""The cache directory: content-addressed, written atomically, capped in size.

Layout under ``cache_dir``::

    indexes/<alg>/<hex>.v<N>   the index of the layer whose digest is <alg>:<hex>
                               (index format version N); only indexes built from bytes that
                               verified against the layer digest are ever written
    spans/sha256/<hex>         compressed bytes of one span, named by their own sha256
                               (also the header + directory of published indexes, by digest)
    spans/sha256/<hex>.prefix  the checked first chunks of a span
    blobs/<alg>/<hex>          small blobs and manifests fetched by digest: manifests,
                               image configs, index artifact manifests, SOCI zTOCs
    ranges/<alg>/<hex>/<o>-<n> bytes [o, o+n) of the blob <alg>:<hex> (a published index
                               read by range), preceded by their own sha256 (32 bytes)
    referrers/<alg>/<hex>.json the referrers listing of a manifest, with the time it was read
    published/<alg>/<hex>.json where a published index of that layer was found: kind,
                               registry, repository and the index blob's descriptor
    locks/<alg>/<hex>.lock     held (``flock``) by the process building that layer's index

Every file is written to a temporary name in the same directory and renamed into place, so
processes sharing the directory never see half a file. Whatever is read back is checked
again (span and blob files against their name, ranges against the sha256 they carry,
indexes against the layer digest they carry); a file that fails is ignored and refetched.

Span files are written by a background thread (:class:`_Writer`, one per directory and
process, bounded queue); a read in the same process sees a span still queued. The
directory is kept under ``SEEKOCI_CACHE_MAX`` (default 4 GiB): least recently used spans go
first, then ranges, blobs and listings, indexes last (:meth:`DiskCache.prune`; files are
touched when loaded). ``cache_dir=False`` gives a :class:`MemoryCache` that keeps nothing on
disk.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import io
import json
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from . import _json
from .formats.index import INDEX_VERSION, READABLE_VERSIONS

#: read(offset, length) -> bytes
ReadAt = Callable[[int, int], bytes]

#: Default cap on the cache directory (``SEEKOCI_CACHE_MAX``).
DEFAULT_MAX_BYTES = 4 << 30
MAX_ENV = "SEEKOCI_CACHE_MAX"
#: ``1``: keep the spans of large streaming reads too (off by default: a 10 GB read would
#: otherwise push everything else out of the cache).
KEEP_STREAMED_ENV = "SEEKOCI_CACHE_STREAMED"
#: Seconds a cached referrers listing is used without asking the registry again.
REFERRERS_TTL_ENV = "SEEKOCI_REFERRERS_TTL"
DEFAULT_REFERRERS_TTL = 600.0
#: Bytes of span files queued for the background writer at most; past that a save is
#: dropped (the span is fetched again next time), never a wait on the disk.
WRITE_QUEUE_BYTES = 64 << 20
#: A prune pass runs on a process's first write and after every cap/16 bytes written.
_CHECK_FRACTION = 16
#: Automatic pruning brings the directory down to this fraction of the cap (hysteresis).
_PRUNE_TARGET = 0.9
#: Loads touch a file's mtime (the LRU clock) at most this often.
_TOUCH_EVERY = 60.0
#: Temporary files older than this are left-overs of a killed process.
_STALE_TMP = 3600.0
#: Seconds a missing span directory is taken as still missing without looking again. A
#: whole TOC layer asks for each of its chunks (65k for 1 GB) whether it is kept, and an
#: extraction keeps none: a ``stat`` each, waiting for the GIL after every one, cost its
#: writers ~0.9 of 4 CPU-s. A span another process saves meanwhile is fetched from the
#: registry instead (the same checked bytes); this process's own saves are seen at once
#: (_SpanDir.writes).
SPAN_DIR_RECHECK = 1.0


@dataclasses.dataclass
class _SpanDir:
    """What this process knows of one cache directory's span directory, whichever
    DiskCache object or writer it goes through (under _span_dirs_lock)."""

    #: files this process has begun or finished writing in the cache directory
    writes: int = 0
    #: until when (time.monotonic) the span directory is known missing, and the count of
    #: writes that knowledge holds for (a write since makes it stale)
    missing_until: float = 0.0
    missing_at: int = -1


_span_dirs: dict[str, _SpanDir] = {}  # cache directory (absolute path) -> its _SpanDir
_span_dirs_lock = threading.Lock()


def _span_dir_of(root: str) -> _SpanDir:
    """(Called with _span_dirs_lock held.)"""
    found = _span_dirs.get(root)
    if found is None:
        found = _span_dirs[root] = _SpanDir()
    return found


def _wrote(root: str) -> None:
    """A write in the cache directory ``root`` began or landed."""
    with _span_dirs_lock:
        _span_dir_of(root).writes += 1


#: Eviction order: lower ranks go first, least recently used first within a rank.
_RANKS = {
    "spans": 0,
    "ranges": 1,
    "blobs": 1,
    "referrers": 1,
    "published": 1,
    "indexes": 2,
}
KINDS = tuple(_RANKS)

_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from ``"5G"``, ``"500M"``, ``"1.5G"``, ``"64KiB"`` or ``"123"`` (binary units)."""
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    number = raw.rstrip("KMGT")
    unit = raw[len(number) :]
    if unit not in _SIZE_UNITS or len(unit) > 1:
        raise ValueError(f"not a size: {text!r} (try 500M or 5G)")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (try 500M or 5G)") from None
    if value < 0 or value != value:
        raise ValueError(f"not a size: {text!r}")
    return int(value * _SIZE_UNITS[unit])


def cache_max_bytes() -> int:
    """``$SEEKOCI_CACHE_MAX`` in bytes, else :data:`DEFAULT_MAX_BYTES` (a bad value too)."""
    env = os.environ.get(MAX_ENV)
    if not env:
        return DEFAULT_MAX_BYTES
    try:
        return parse_size(env)
    except ValueError:
        return DEFAULT_MAX_BYTES


def referrers_ttl() -> float:
    try:
        return float(os.environ.get(REFERRERS_TTL_ENV, DEFAULT_REFERRERS_TTL))
    except ValueError:
        return DEFAULT_REFERRERS_TTL


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


def _matches_digest(data: bytes, digest: str) -> bool:
    alg, hexpart = _split(digest)
    try:
        return hashlib.new(alg, data).hexdigest() == hexpart
    except ValueError:  # an algorithm hashlib does not know: nothing to check it against
        return False


def _new_temporary(directory: Path) -> tuple[int, str]:
    """A new file ``.tmp-<random>`` in ``directory``, open for writing, with the mode a
    shared cache needs (0666 less the umask): what ``tempfile.mkstemp`` does, without its
    import (~5 ms of a cold read) or its 0600."""
    while True:
        tmp = os.path.join(directory, f".tmp-{os.urandom(8).hex()}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:  # pragma: no cover - 64 random bits
            continue


def _atomic_write(path: Path, data: bytes | Callable[[BinaryIO], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_temporary(path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class _Writer:
    """Writes queued files in a daemon thread, one per cache directory and process.

    ``pending`` keeps each queued file's bytes until it is on disk, so a read in this
    process finds what it saved a moment ago. The queue holds at most ``limit`` bytes: a
    save beyond that is dropped (a refetch later), so a slow disk never stalls a read.
    """

    def __init__(self, limit: int = WRITE_QUEUE_BYTES, *, root: str = "") -> None:
        self.limit = limit
        self._root = root  # (for _wrote)
        self._cond = threading.Condition()
        self._queue: deque[tuple[Path, bytes] | Callable[[], None]] = deque()
        self._pending: dict[Path, bytes] = {}
        self._bytes = 0
        self._busy = False
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def submit(self, path: Path, data: bytes, *, replace: bool = False) -> bool:
        """Queue ``data`` for ``path`` (``replace``: over bytes still queued for it)."""
        with self._cond:
            old = self._pending.get(path)
            if old is not None and not replace:
                return True
            if self._bytes and self._bytes + len(data) > self.limit:  # one big file may go
                self.dropped += 1
                return False
            self._pending[path] = data
            self._bytes += len(data) - (len(old) if old is not None else 0)
            self._queue.append((path, data))
            self._start()
            self._cond.notify_all()
            return True

    def submit_job(self, job: Callable[[], None]) -> None:
        with self._cond:
            self._queue.append(job)
            self._start()
            self._cond.notify_all()

    def get(self, path: Path) -> bytes | None:
        with self._cond:
            return self._pending.get(path)

    def has_pending(self) -> bool:
        with self._cond:
            return bool(self._pending)

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="seekoci-cache", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._busy = False
                    self._cond.notify_all()
                    if not self._cond.wait(timeout=30):
                        self._thread = None
                        return
                item = self._queue.popleft()
                self._busy = True
            try:
                if callable(item):
                    item()
                else:
                    try:
                        with contextlib.suppress(OSError):  # a full disk slows reads, no more
                            _atomic_write(*item)
                    finally:
                        _wrote(self._root)  # (landed, or given up)
            except Exception:  # a job must not kill the writer
                pass
            finally:
                if not callable(item):
                    with self._cond:
                        if self._pending.get(item[0]) is item[1]:  # not replaced since
                            del self._pending[item[0]]
                            self._bytes -= len(item[1])

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued is on disk (True) or ``timeout`` passed (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(timeout=left)
        return True


_WRITERS: dict[tuple[str, int], _Writer] = {}
_WRITERS_LOCK = threading.Lock()


def _writer_for(root: Path) -> _Writer:
    key = (os.path.abspath(root), os.getpid())  # a forked child gets its own
    with _WRITERS_LOCK:
        writer = _WRITERS.get(key)
        if writer is None:
            writer = _WRITERS[key] = _Writer(root=key[0])
        return writer


def flush_all(timeout: float | None = 30.0) -> None:
    """Wait for every background write of this process (also run at exit)."""
    with _WRITERS_LOCK:
        writers = [w for (_, pid), w in _WRITERS.items() if pid == os.getpid()]
    for writer in writers:
        writer.flush(timeout)


atexit.register(flush_all)


@dataclasses.dataclass
class KindUsage:
    files: int = 0
    bytes: int = 0


@dataclasses.dataclass
class PruneResult:
    removed_files: int
    removed_bytes: int
    remaining_bytes: int


class _Fd:
    """An open file kept for preads (a cached index: evicting its file does not cut it)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    def read(self, offset: int, length: int) -> bytes:
        out = bytearray()
        while len(out) < length:
            piece = os.pread(self.fd, length - len(out), offset + len(out))
            if not piece:
                break
            out += piece
        return bytes(out)

    def __del__(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.close(self.fd)


class MemoryCache:
    """Keeps indexes and spans in memory only (``cache_dir=False``); spans bounded by size."""

    persistent = False
    keep_streamed = False

    def __init__(self, max_span_bytes: int = 256 << 20) -> None:
        self._indexes: dict[str, bytes] = {}
        self._published: dict[str, dict[str, Any]] = {}
        self._spans: OrderedDict[str, bytes] = OrderedDict()
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._ranges: dict[str, dict[tuple[int, int], bytes]] = {}
        self._referrers: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._build_locks: dict[str, threading.Lock] = {}
        self._span_bytes = 0
        self._range_bytes = 0
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

    @contextlib.contextmanager
    def build_lock(self, layer_digest: str) -> Iterator[None]:
        """Held around a full index build (one build per layer at a time in this process)."""
        with self._lock:
            lock = self._build_locks.setdefault(layer_digest, threading.Lock())
        with lock:
            yield

    def load_published(self, layer_digest: str) -> dict[str, Any] | None:
        with self._lock:
            return self._published.get(layer_digest)

    def save_published(self, layer_digest: str, doc: dict[str, Any]) -> None:
        with self._lock:
            self._published[layer_digest] = doc

    # -- blobs by digest, ranges of blobs, referrers listings -------------------------------
    def load_blob(self, digest: str) -> bytes | None:
        with self._lock:
            data = self._blobs.get(digest)
            if data is not None:
                self._blobs.move_to_end(digest)
            return data

    def save_blob(self, digest: str, data: bytes, *, verified: bool = False) -> None:
        if len(data) > self._max // 4 or not (verified or _matches_digest(data, digest)):
            return
        with self._lock:
            self._blobs[digest] = data
            while sum(map(len, self._blobs.values())) > self._max // 4:
                self._blobs.popitem(last=False)

    def load_range(self, blob_digest: str, offset: int, length: int) -> bytes | None:
        with self._lock:
            for (o, n), data in self._ranges.get(blob_digest, {}).items():
                if o <= offset and offset + length <= o + n:
                    return data[offset - o : offset - o + length]
        return None

    def save_range(self, blob_digest: str, offset: int, data: bytes) -> None:
        with self._lock:
            if self._range_bytes + len(data) > self._max // 4:  # bounded: start over
                self._ranges.clear()
                self._range_bytes = 0
            self._ranges.setdefault(blob_digest, {})[(offset, len(data))] = data
            self._range_bytes += len(data)

    def load_referrers(self, subject: str, max_age: float) -> list[dict[str, Any]] | None:
        with self._lock:
            found = self._referrers.get(subject)
        if found is None or time.time() - found[0] > max_age:
            return None
        return found[1]

    def save_referrers(self, subject: str, descriptors: list[dict[str, Any]]) -> None:
        with self._lock:
            self._referrers[subject] = (time.time(), descriptors)

    # -- spans ------------------------------------------------------------------------------
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

    def save_span(self, digest_hex: str, data: bytes, *, streamed: bool = False) -> None:
        if streamed and not self.keep_streamed:
            return
        with self._lock:
            if digest_hex in self._spans or len(data) > self._max:
                return
            self._spans[digest_hex] = data
            self._span_bytes += len(data)
            while self._span_bytes > self._max:
                _, old = self._spans.popitem(last=False)
                self._span_bytes -= len(old)

    # -- upkeep -----------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        return True

    def content_store(self) -> ContentStore:
        return ContentStore(self)


class ContentStore:
    """Blobs by digest for the registry package (``get``/``put``): it never imports the
    cache, it is handed this (see :class:`seekoci.registry.resolve.BlobStore`)."""

    def __init__(self, cache: MemoryCache | DiskCache) -> None:
        self._cache = cache

    def get(self, digest: str) -> bytes | None:
        try:
            return self._cache.load_blob(digest)
        except ValueError:
            return None

    def put(self, digest: str, data: bytes, *, verified: bool = False) -> None:
        with contextlib.suppress(ValueError):
            self._cache.save_blob(digest, data, verified=verified)


class DiskCache:
    """A cache directory shared safely between threads and processes.

    ``background=True`` (what :func:`open_cache` gives) writes span files from a background
    thread; ``max_bytes`` caps the directory (default ``$SEEKOCI_CACHE_MAX``, else 4 GiB;
    0: no cap); ``keep_streamed`` keeps the spans of large streaming reads too
    (default ``$SEEKOCI_CACHE_STREAMED=1``).
    """

    persistent = True

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        background: bool = False,
        max_bytes: int | None = None,
        keep_streamed: bool | None = None,
    ) -> None:
        self.root = Path(root)
        self._span_dir = os.path.join(self.root, "spans", "sha256")
        self.max_bytes = cache_max_bytes() if max_bytes is None else max_bytes
        self.keep_streamed = (
            os.environ.get(KEEP_STREAMED_ENV) == "1" if keep_streamed is None else keep_streamed
        )
        self._writer = _writer_for(self.root) if background else None
        self._lock = threading.Lock()
        self._written = 0
        self._checked = False
        self._ranges: dict[str, list[tuple[int, int]]] = {}
        self._root_key = os.path.abspath(self.root)  # (for _span_dirs)

    # -- writing and reading files ----------------------------------------------------------
    def _atomic_write(self, path: Path, data: bytes | Callable[[BinaryIO], None]) -> None:
        _atomic_write(path, data)
        if not callable(data):
            self._note_written(len(data))

    def _put(self, path: Path, data: bytes, *, replace: bool = False) -> None:
        """Write a whole file, in the background when there is a writer (never raises)."""
        _wrote(self._root_key)  # begun (a span file may be coming)
        if self._writer is not None:
            if self._writer.submit(path, data, replace=replace):
                self._note_written(len(data))
            return
        try:
            with contextlib.suppress(OSError):
                self._atomic_write(path, data)
        finally:
            _wrote(self._root_key)  # landed

    def _read(self, path: Path) -> bytes | None:
        """A file's bytes (a queued write's too), its mtime touched now and then."""
        if self._writer is not None:
            queued = self._writer.get(path)
            if queued is not None:
                return queued
        try:
            with open(path, "rb") as f:
                data = f.read()
                self._touch(f.fileno())
        except OSError:
            return None
        return data

    @staticmethod
    def _touch(fd: int) -> None:
        """The LRU clock is the mtime: loads move it forward (at most once a minute)."""
        try:
            now = time.time()
            if now - os.fstat(fd).st_mtime > _TOUCH_EVERY:
                os.utime(fd, (now, now))
        except OSError:
            pass  # a read-only cache: no LRU, no harm

    def _exists(self, path: Path) -> bool:
        if self._writer is not None and self._writer.get(path) is not None:
            return True
        return path.is_file()

    def _discard(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the background writes of this process are on disk."""
        return self._writer.flush(timeout) if self._writer is not None else True

    # -- indexes ----------------------------------------------------------------------------
    def index_path(self, layer_digest: str) -> Path:
        alg, hexpart = _split(layer_digest)
        return self.root / "indexes" / alg / f"{hexpart}.v{INDEX_VERSION}"

    def load_index(self, layer_digest: str) -> bytes | None:
        return self._read(self._readable_path(layer_digest))

    def _readable_path(self, layer_digest: str) -> Path:
        """The cached index of the current version, else one of an older version this
        seekoci still reads (written before an upgrade), else the current path."""
        path = self.index_path(layer_digest)
        if not path.exists():
            for version in sorted(READABLE_VERSIONS, reverse=True):
                older = path.with_suffix(f".v{version}")
                if older.exists():
                    return older
        return path

    def index_reader(self, layer_digest: str) -> tuple[int, ReadAt] | None:
        """Size and a range reader of a cached index, without reading it whole: a cold read
        needs the header, the table of contents and one window, not every window. The file
        stays open, so an eviction (or a rebuild elsewhere) does not cut a loaded index."""
        path = self._readable_path(layer_digest)
        try:
            handle = _Fd(path)
            size = os.fstat(handle.fd).st_size
        except OSError:
            return None
        self._touch(handle.fd)
        return size, handle.read

    def save_index(self, layer_digest: str, data: bytes) -> None:
        self._atomic_write(self.index_path(layer_digest), data)

    def write_index(self, layer_digest: str, write: Callable[[BinaryIO], None]) -> None:
        """Like :meth:`save_index`, with the bytes written by ``write(file)`` (streamed).
        Written now, not in the background: a build lock is released only after it."""
        path = self.index_path(layer_digest)
        self._atomic_write(path, write)
        with contextlib.suppress(OSError):
            self._note_written(path.stat().st_size)

    @contextlib.contextmanager
    def build_lock(self, layer_digest: str) -> Iterator[None]:
        """Held around a full index build: processes sharing the directory build a layer
        once; the others wait here and then find the index (callers check again after).

        ``flock`` is released by the kernel when its holder dies, so a killed build leaves
        no stale lock. A directory we cannot write gives no lock (and no saved index)."""
        alg, hexpart = _split(layer_digest)
        path = self.root / "locks" / alg / f"{hexpart}.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError:
            yield
            return
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    break
                except OSError as exc:
                    if exc.errno != errno.EINTR:
                        raise
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # -- published indexes ------------------------------------------------------------------
    def _published_path(self, layer_digest: str) -> Path:
        alg, hexpart = _split(layer_digest)
        return self.root / "published" / alg / f"{hexpart}.json"

    def load_published(self, layer_digest: str) -> dict[str, Any] | None:
        """Where a published index of this layer was found last time (see remote.py)."""
        raw = self._read(self._published_path(layer_digest))
        try:
            doc = _json.loads(raw) if raw is not None else None
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def save_published(self, layer_digest: str, doc: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self._atomic_write(self._published_path(layer_digest), json.dumps(doc).encode())

    # -- blobs by digest --------------------------------------------------------------------
    def _blob_path(self, digest: str) -> Path:
        alg, hexpart = _split(digest)
        return self.root / "blobs" / alg / hexpart

    def load_blob(self, digest: str) -> bytes | None:
        """A manifest, config or zTOC saved by digest, if it still matches the digest."""
        path = self._blob_path(digest)
        data = self._read(path)
        if data is None:
            return None
        if not _matches_digest(data, digest):
            self._discard(path)  # damaged on disk: refetch and write again
            return None
        return data

    def save_blob(self, digest: str, data: bytes, *, verified: bool = False) -> None:
        """Keep a blob under its digest: checked against it here unless the caller has
        just done so (``verified``: a zTOC of 19 MB costs 13 ms of sha256 a time)."""
        path = self._blob_path(digest)
        if (verified or _matches_digest(data, digest)) and not self._exists(path):
            self._put(path, data)

    # -- ranges of blobs --------------------------------------------------------------------
    def _range_dir(self, blob_digest: str) -> Path:
        alg, hexpart = _split(blob_digest)
        return self.root / "ranges" / alg / hexpart

    def _known_ranges(self, blob_digest: str) -> list[tuple[int, int]]:
        with self._lock:
            known = self._ranges.get(blob_digest)
            if known is not None:
                return list(known)
        found: list[tuple[int, int]] = []
        with contextlib.suppress(OSError):
            for name in os.listdir(self._range_dir(blob_digest)):
                start, sep, length = name.partition("-")
                if sep and start.isdigit() and length.isdigit():
                    found.append((int(start), int(length)))
        with self._lock:
            known = self._ranges.setdefault(blob_digest, [])
            known.extend(r for r in found if r not in known)
            return list(known)

    def load_range(self, blob_digest: str, offset: int, length: int) -> bytes | None:
        """Bytes ``[offset, offset + length)`` of a blob, from a saved range that holds
        them and still matches the sha256 saved with it (None for a name that is not a
        digest)."""
        try:
            _split(blob_digest)
        except ValueError:
            return None
        for start, size in self._known_ranges(blob_digest):
            if not (start <= offset and offset + length <= start + size):
                continue
            path = self._range_dir(blob_digest) / f"{start}-{size}"
            raw = self._read(path)
            if (
                raw is None
                or len(raw) != 32 + size
                or hashlib.sha256(raw[32:]).digest() != raw[:32]
            ):
                with self._lock:
                    known = self._ranges.get(blob_digest, [])
                    if (start, size) in known:
                        known.remove((start, size))
                if raw is not None:
                    self._discard(path)
                continue
            return raw[32 + offset - start : 32 + offset - start + length]
        return None

    def save_range(self, blob_digest: str, offset: int, data: bytes) -> None:
        """Keep bytes ``[offset, offset + len(data))`` of the blob ``blob_digest``."""
        try:
            _split(blob_digest)
        except ValueError:
            return
        if not data:
            return
        path = self._range_dir(blob_digest) / f"{offset}-{len(data)}"
        self._known_ranges(blob_digest)
        with self._lock:
            known = self._ranges.setdefault(blob_digest, [])
            if (offset, len(data)) not in known:
                known.append((offset, len(data)))
        self._put(path, hashlib.sha256(data).digest() + data)

    # -- referrers listings -----------------------------------------------------------------
    def _referrers_path(self, subject: str) -> Path:
        alg, hexpart = _split(subject)
        return self.root / "referrers" / alg / f"{hexpart}.json"

    def load_referrers(self, subject: str, max_age: float) -> list[dict[str, Any]] | None:
        """The descriptors a listing of ``subject``'s referrers gave, if it is younger than
        ``max_age`` seconds."""
        raw = self._read(self._referrers_path(subject))
        try:
            doc = _json.loads(raw) if raw is not None else None
            if not isinstance(doc, dict) or time.time() - float(doc["saved"]) > max_age:
                return None
            found = doc["descriptors"]
        except (ValueError, KeyError, TypeError):
            return None
        return found if isinstance(found, list) else None

    def save_referrers(self, subject: str, descriptors: list[dict[str, Any]]) -> None:
        doc = {"subject": subject, "saved": time.time(), "descriptors": descriptors}
        with contextlib.suppress(OSError):
            self._atomic_write(self._referrers_path(subject), json.dumps(doc).encode())

    # -- spans ------------------------------------------------------------------------------
    def _span_file(self, digest_hex: str) -> str:
        return os.path.join(self._span_dir, digest_hex)

    def _span_path(self, digest_hex: str) -> Path:
        return Path(self._span_file(digest_hex))

    def load_span(
        self, digest_hex: str, check: Callable[[bytes], bool] | None = None
    ) -> bytes | None:
        """The bytes saved under ``digest_hex`` if they still match it: their sha256, or
        ``check(data)`` for a digest of another kind (a chunked span's)."""
        path = self._span_path(digest_hex)
        data = self._read(path)
        if data is None:
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
        # asked of every chunk of a TOC layer read whole (50k for 1 GB): a str path, not a
        # Path, when nothing is queued (2 us a check, against 11), and no check at all
        # while the span directory is missing (SPAN_DIR_RECHECK)
        writer = self._writer
        if writer is not None and writer.has_pending():
            return self._exists(self._span_path(digest_hex))
        if self._no_spans():
            return False
        return os.path.isfile(self._span_file(digest_hex))

    def _no_spans(self) -> bool:
        """Whether the span directory is missing: looked at once a SPAN_DIR_RECHECK, and
        again whenever this process has begun or finished writing a file in the cache
        directory since (through any object or writer)."""
        now = time.monotonic()
        with _span_dirs_lock:
            known = _span_dir_of(self._root_key)
            if now < known.missing_until and known.writes == known.missing_at:
                return True
            writes = known.writes
        if os.path.isdir(self._span_dir):
            return False
        with _span_dirs_lock:
            if known.writes == writes:  # no write began or landed meanwhile
                known.missing_until, known.missing_at = now + SPAN_DIR_RECHECK, writes
        return True

    def load_prefix(self, digest_hex: str) -> bytes | None:
        """The start of a chunked span saved by a read that needed only that much (the
        caller checks its chunks)."""
        return self._read(self._span_path(digest_hex + ".prefix"))

    def has_prefix(self, digest_hex: str) -> bool:
        return self._exists(self._span_path(digest_hex + ".prefix"))

    def save_prefix(self, digest_hex: str, data: bytes) -> None:
        path = self._span_path(digest_hex + ".prefix")
        queued = self._writer.get(path) if self._writer is not None else None
        if queued is not None and len(queued) >= len(data):
            return
        try:
            if path.stat().st_size >= len(data):
                return
        except OSError:
            pass
        self._put(path, data, replace=True)  # a longer prefix replaces a shorter one

    def save_span(self, digest_hex: str, data: bytes, *, streamed: bool = False) -> None:
        """Keep a span's verified bytes. ``streamed``: the span belongs to a large
        streaming read (a whole big file, an extraction) and is kept only when
        :attr:`keep_streamed` says so -- a 10 GB read must not flush the cache."""
        if streamed and not self.keep_streamed:
            return
        path = self._span_path(digest_hex)
        if not self._exists(path):
            self._put(path, data)  # a full or read-only cache slows us down, never fails

    # -- size -------------------------------------------------------------------------------
    def _note_written(self, nbytes: int) -> None:
        if not self.max_bytes:
            return
        with self._lock:
            self._written += nbytes
            due = not self._checked or self._written >= self.max_bytes // _CHECK_FRACTION
            if due:
                self._checked = True
                self._written = 0
        if due:
            if self._writer is not None:
                self._writer.submit_job(self._auto_prune)
            else:
                self._auto_prune()

    def _auto_prune(self) -> None:
        with contextlib.suppress(OSError):
            self.prune(int(self.max_bytes * _PRUNE_TARGET), only_if_over=self.max_bytes)

    def _files(self) -> Iterator[tuple[str, os.stat_result, str]]:
        """(kind, stat, path) of every cache file; left-over temporary files are removed."""
        now = time.time()
        for kind in KINDS:
            for dirpath, _dirs, names in os.walk(self.root / kind):
                for name in names:
                    path = os.path.join(dirpath, name)
                    try:
                        st = os.stat(path)
                    except OSError:
                        continue
                    if name.startswith(".tmp-"):
                        if now - st.st_mtime > _STALE_TMP:
                            with contextlib.suppress(OSError):
                                os.unlink(path)
                        continue
                    yield kind, st, path

    def usage(self) -> dict[str, KindUsage]:
        """Files and bytes per kind (``spans``, ``ranges``, ``blobs``, ``referrers``,
        ``published``, ``indexes``)."""
        out = {kind: KindUsage() for kind in KINDS}
        for kind, st, _path in self._files():
            out[kind].files += 1
            out[kind].bytes += st.st_size
        return out

    def prune(
        self, max_bytes: int | None = None, *, everything: bool = False, only_if_over: int = 0
    ) -> PruneResult:
        """Remove files until the directory holds at most ``max_bytes`` (default: the cap):
        least recently used first, spans before ranges, blobs and listings, indexes last.
        ``everything``: remove every cached file. ``only_if_over``: do nothing unless the
        directory holds more than that. One process prunes at a time; a file removed under
        another process's feet is just fetched again (an open index keeps its file)."""
        limit = 0 if everything else (self.max_bytes if max_bytes is None else max_bytes)
        if only_if_over and self._total() <= only_if_over:
            return PruneResult(0, 0, -1)  # the usual case: one scan, no lock, nothing to do
        lock = self.root / "locks" / "prune.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if only_if_over else 0))
            except BlockingIOError:  # another process is pruning: leave it to that one
                return PruneResult(0, 0, -1)
            files = [
                (_RANKS[kind], st.st_mtime, st.st_size, path) for kind, st, path in self._files()
            ]
            total = sum(f[2] for f in files)
            removed = removed_bytes = 0
            for _rank, _mtime, size, path in sorted(files):
                if total <= limit:
                    break
                try:
                    os.unlink(path)
                except OSError:
                    continue
                total -= size
                removed += 1
                removed_bytes += size
            with self._lock:
                self._ranges.clear()
            return PruneResult(removed, removed_bytes, total)
        finally:
            os.close(fd)

    def _total(self) -> int:
        return sum(st.st_size for _kind, st, _path in self._files())

    def content_store(self) -> ContentStore:
        return ContentStore(self)


Cache = MemoryCache | DiskCache


def open_cache(cache_dir: str | os.PathLike[str] | bool | None) -> Cache:
    """``None``: the default directory; ``False``: memory only; else that directory
    (span files written in the background, the directory capped by ``SEEKOCI_CACHE_MAX``)."""
    if cache_dir is False:
        return MemoryCache()
    if cache_dir is None or cache_dir is True:
        return DiskCache(default_cache_dir(), background=True)
    return DiskCache(cache_dir, background=True)
