"""The index build: one forward pass over a layer blob, resumable, that can stop early.

Looking up a path advances the pass only until the path's entry and data have been seen;
the rest resumes from there when more is needed. The pass hashes the blob (the layer
digest), feeds the format's span indexer (checkpoints, span digests) and the tar scanner
(the table of contents), and hands decoded spans to the layer's span LRU for the reads
that follow. Only a pass that went to the end *and* whose bytes matched the layer digest
becomes a saved index (the layer decides, see :meth:`seekoci.layer.Layer._complete`).

Three threads overlap the work, linked by bounded queues (so a pass holds a few MiB,
whatever the layer's size, and a lookup that stops early has read only a little past
what it needed):

* the *reader* pulls the blob stream and hashes it (``hashlib`` releases the GIL);
* the *inflater* feeds the span indexer (inflate, CRC, span digests, checkpoints: C code
  that releases the GIL for most of its time);
* the caller of :meth:`IndexBuild.step` parses tar headers (pure Python) and keeps spans.

The indexer belongs to the inflater thread: anything else reading it (windows and chunk
tables of a partial pass) goes through :meth:`IndexBuild.window` /
:meth:`IndexBuild.chunk_table`, under the pass's lock. The spans the caller sees are its own
list (:attr:`IndexBuild.spans`), extended from the queue: a span appears there only once the
scanner has seen every byte of it.

*Scan first* (a lookup's pass over a gzip layer, :class:`IndexBuild` with ``scan=True``):
the lookup waits only for the fastest decode of the blob (no checkpoints,
:meth:`~seekoci.formats.plugin.LayerFormat.stream_inflater`), and the checkpointed index is
made after it by a fourth thread from a copy of the blob spooled to a temporary file as it
was read (no byte fetched twice). That thread gives way while any lookup's scan runs in the
process (:data:`SCAN_GATE`): on two vCPUs the two inflates side by side would slow the
answer the user waits for by a third. The bytes of the file looked up are served from the
scan's last decoded 32 MiB; anything else read before the index is made waits for the
spans it needs.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import queue
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from . import formats
from .errors import FormatError, IntegrityError
from .formats.tar import TarEntry, TarScanner
from .source import STREAM_CHUNK_SIZE
from .spans import SPAN_LRU_BYTES

if TYPE_CHECKING:
    from .formats.base import ChunkTable, Span, SpanIndexer
    from .formats.plugin import StreamInflater
    from .layer import Layer

#: gzip and tar spans are verified in chunks of this many compressed bytes, so a small read
#: fetches the start of its span up to the chunk that covers it, not the whole span
#: (~500 KB saved on an average small-file read at 1 MiB spans; 36 bytes a chunk in the
#: index).
CHUNK_SIZE = 64 << 10

#: tee(tar_offset, data, entries_so_far): sees the whole uncompressed stream of a pass
Tee = Callable[[int, bytes, Sequence[TarEntry]], None]

#: Decoded bytes a zstd pass keeps behind it (see IndexBuild.forward).
FORWARD_WINDOW = 32 << 20

#: Blob chunks (1 MiB each from the sources) read ahead of the inflater.
_READ_AHEAD = 4
#: Most blob bytes the reader runs ahead of what the tar scanner has seen. The lead starts
#: at one chunk and grows with the bytes the scanner has seen (doubling), so a lookup that
#: stops near the start of a blob has read little more than it needed.
_MAX_LEAD = 4 << 20
#: Decoded pieces (up to 256 KiB each) inflated ahead of the tar scanner.
_DECODE_AHEAD = 16
#: Decoded bytes of the last spans a pass keeps for the layer's LRU (a quarter of a 1 GiB
#: layer's spans would otherwise be copied into an LRU that keeps only the last 64 MiB).
_RECENT_BYTES = 32 << 20
#: How often a blocked thread looks whether the pass was closed.
_POLL_S = 0.25


#: Where a scan-first pass spools the blob for the index after it (None: the system's
#: temporary directory). A scan-first pass needs the blob's size free there, plus this.
SPOOL_DIR: str | None = None
_SPOOL_MARGIN = 1 << 30
#: Blobs smaller than this are indexed as they are scanned: their whole pass takes well
#: under a second, and their index is there when the lookup returns.
SCAN_FIRST_MIN = 64 << 20


def scan_first_wanted(size: int) -> bool:
    """Whether a lookup's pass over a blob of ``size`` bytes should scan first: a blob of
    at least :data:`SCAN_FIRST_MIN`, unless ``SEEKOCI_FIRST_TOUCH=pass``, and only with
    room to spool it."""
    if size < SCAN_FIRST_MIN or os.environ.get("SEEKOCI_FIRST_TOUCH", "scan") == "pass":
        return False
    try:
        free = shutil.disk_usage(SPOOL_DIR or tempfile.gettempdir()).free
    except OSError:
        return False
    return free >= size + _SPOOL_MARGIN


#: Set when the interpreter starts to exit (before it waits for non-daemon threads).
_EXITING = threading.Event()
_register_atexit = getattr(threading, "_register_atexit", None)  # what concurrent.futures uses
if _register_atexit is not None:
    _register_atexit(_EXITING.set)


def exiting() -> bool:
    """Whether the interpreter is exiting (or, where that cannot be told, the main thread
    has ended)."""
    return _EXITING.is_set() or not threading.main_thread().is_alive()


class ScanGate:
    """Process-wide count of lookups scanning a blob; background index passes wait while
    it is not zero (and not once the process is exiting)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._scans = 0

    @contextlib.contextmanager
    def scanning(self) -> Iterator[None]:
        with self._cond:
            self._scans += 1
        try:
            yield
        finally:
            with self._cond:
                self._scans -= 1
                if not self._scans:
                    self._cond.notify_all()

    def wait_idle(self, stop: threading.Event) -> None:
        with self._cond:
            while self._scans and not stop.is_set() and not exiting():
                self._cond.wait(_POLL_S)


SCAN_GATE = ScanGate()

#: The background indexes running in this process (see finish_background).
_RUNNING: weakref.WeakSet[_BackgroundIndex] = weakref.WeakSet()
_RUNNING_LOCK = threading.Lock()


def running_background() -> list[_BackgroundIndex]:
    """The indexes being made behind scans in this process that a process exiting now
    would finish: to be saved, of a blob read whole that matched its digest (those of
    scans that stopped early are given up at exit)."""
    with _RUNNING_LOCK:
        return [b for b in _RUNNING if b.keep and b.verified.is_set() and not b.settled.is_set()]


def finish_background(progress: Callable[[str, int, int], None] | None = None) -> None:
    """Wait for the indexes being made behind scans that will be saved (what a process
    exiting would wait for), calling ``progress(name, done, total)`` as they go. Interrupted
    (KeyboardInterrupt), they are called off (nothing saved) and the interrupt raised."""
    try:
        while True:
            running = running_background()
            if not running:
                return
            for background in running:
                if progress is not None:
                    progress(background.name, background.done, background.total)
                background.settled.wait(0.2)
    except KeyboardInterrupt:
        with _RUNNING_LOCK:
            for background in _RUNNING:
                background.stop.set()
        raise


class SpoolLost(Exception):
    """The spooled copy of the blob could not be written (disk full): the index must come
    from a pass of its own."""


class _Spool:
    """The blob as the reader read it, in an unlinked temporary file: written by the
    reader thread, read by the background index thread (positional reads)."""

    def __init__(self) -> None:
        # closed by close(), from whichever thread is last to need it
        self._file = tempfile.TemporaryFile(prefix="seekoci-spool-", dir=SPOOL_DIR)  # noqa: SIM115
        self._fd = self._file.fileno()
        self._cond = threading.Condition()
        self._size = 0
        self._ended = False
        self._lost: OSError | None = None
        # writes and close: a write never goes to a descriptor closed (and maybe reused)
        self._write_lock = threading.Lock()
        self._closed = False

    def append(self, chunk: bytes) -> None:
        if self._lost is not None:
            return
        try:
            with self._write_lock:
                if self._closed:
                    return
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self._fd, view) :]
        except OSError as exc:
            with self._cond:
                self._lost = exc
                self._cond.notify_all()
            return
        with self._cond:
            self._size += len(chunk)
            self._cond.notify_all()

    def end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def read(self, offset: int, length: int, stop: threading.Event) -> bytes:
        """Up to ``length`` bytes at ``offset`` once written (b"" at the blob's end).
        Raises _Closed when stopped or when the process exits before they come; SpoolLost
        when they cannot be read. Only the thread that closes the spool reads it."""
        with self._cond:
            while self._size <= offset and not self._ended:
                if self._lost is not None:
                    raise SpoolLost(str(self._lost))
                if stop.is_set() or exiting():
                    raise _Closed
                self._cond.wait(_POLL_S)
            if self._lost is not None:
                raise SpoolLost(str(self._lost))
            available = self._size - offset
        if available <= 0:
            return b""
        try:
            return os.pread(self._fd, min(length, available), offset)
        except OSError as exc:
            raise SpoolLost(str(exc)) from None

    def close(self) -> None:
        with self._write_lock:
            self._closed = True
            with contextlib.suppress(OSError):
                self._file.close()


class _BackgroundIndex:
    """The checkpointed index of a scanned blob, made from its spool on a thread of its own
    that gives way to scans (see :data:`SCAN_GATE`). Holds no reference to the
    :class:`IndexBuild`. Not a daemon thread when the index is to be saved (``keep``): a
    process that read a file and exits finishes the index of a blob it had read whole."""

    def __init__(
        self,
        indexer: SpanIndexer,
        lock: threading.Lock,
        spool: _Spool,
        scanner: TarScanner,
        *,
        keep: bool,
        done: Callable[[], None],
        name: str = "layer",
        total: int = 0,
    ) -> None:
        # the pools the indexer and scanner use are made on first use, maybe at exit, when
        # importing their module is refused: import it now (they then run their work inline)
        import concurrent.futures.thread  # noqa: F401

        #: the entries again, with each file's digest this time (the scan skips those)
        self.scanner = scanner
        self.stop = threading.Event()
        #: set by the scan once the blob matched the layer digest: at exit, only such a
        #: blob's index is worth finishing
        self.verified = threading.Event()
        self.finished = threading.Event()
        #: set once the thread is through, its index handed to the layer (and saved)
        self.settled = threading.Event()
        self.pid = os.getpid()  # a forked child has no such thread
        #: for progress: the layer's name and blob size, and blob bytes indexed so far
        self.name = name
        self.total = total
        self._done_bytes = 0
        self._progress_lock = threading.Lock()
        self.error: BaseException | None = None
        self._indexer = indexer
        self._lock = lock
        self._spool = spool
        self.keep = keep
        self._done = done
        self._thread = threading.Thread(
            target=self._run, name="seekoci-build-index", daemon=not keep
        )
        with _RUNNING_LOCK:
            _RUNNING.add(self)
        self._thread.start()

    @property
    def done(self) -> int:
        """Blob bytes indexed so far."""
        with self._progress_lock:
            return self._done_bytes

    def _run(self) -> None:
        indexer, lock, spool = self._indexer, self._lock, self._spool
        try:
            offset = 0
            while True:
                SCAN_GATE.wait_idle(self.stop)
                if self.stop.is_set() or (exiting() and not self._worth_finishing()):
                    raise _Closed
                chunk = spool.read(offset, STREAM_CHUNK_SIZE, self.stop)
                if not chunk:
                    break
                offset += len(chunk)
                with self._progress_lock:
                    self._done_bytes = offset
                decoded = indexer.feed(chunk)
                while True:
                    with lock:
                        out = next(decoded, None)
                    if out is None:
                        break
                    self.scanner.feed(out)
            with lock:
                indexer.finish()
            self.scanner.finish()
        except _Closed:
            self.error = _Closed()
        except BaseException as exc:
            self.error = exc
        finally:
            spool.close()
            self.finished.set()
        try:
            if self.error is None:
                self._done()
        finally:
            self.settled.set()

    def _worth_finishing(self) -> bool:
        """At exit: go on only to save the index of a blob that was read whole and
        matched its digest."""
        return self.keep and self.verified.is_set()

    def check_process(self, name: str) -> None:
        if self.pid != os.getpid():
            raise FormatError(
                f"layer {name}: its index was being made in another process (fork); "
                "retry to start a pass here"
            )


def window_range(start: int, pieces: Iterable[bytes], offset: int, end: int) -> bytes | None:
    """Bytes ``[offset, end)`` of consecutive ``pieces`` beginning at stream offset ``start``,
    or None if they do not hold all of them."""
    if offset < start:
        return None
    parts, pos = [], start
    for piece in pieces:
        if pos >= end:
            break
        a, b = max(offset - pos, 0), min(end - pos, len(piece))
        if a < b:
            parts.append(piece[a:b])
        pos += len(piece)
    if pos < end:
        return None
    return b"".join(parts)


class PassMeter:
    """Where a layer's pass spends its reader's time: waiting for the blob's bytes (the
    network), or for the threads after it (inflate, tar scanning: the CPU). Shared by the
    pass's reader thread (writes) and any thread asking (reads); one per layer."""

    #: Seconds of reader time measured before the meter answers.
    SETTLED_S = 0.15

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._network = 0.0
        self._behind = 0.0

    def add(self, network: float, behind: float) -> None:
        with self._lock:
            self._network += network
            self._behind += behind

    def waits_on_network(self) -> bool | None:
        """True when the reader waited more for bytes than for the CPU work after it; None
        until it has run long enough to tell."""
        with self._lock:
            network, behind = self._network, self._behind
        if network + behind < self.SETTLED_S:
            return None
        return network > behind


class _Closed(Exception):
    """The pass was closed: a worker thread stops."""


class _Pipe:
    """A bounded queue between two of the pass's threads that either side can abandon."""

    def __init__(self, size: int, stop: threading.Event) -> None:
        self._q: queue.Queue[Any] = queue.Queue(size)
        self._stop = stop

    def put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue
        raise _Closed

    def get(self) -> Any:
        while not self._stop.is_set():
            try:
                return self._q.get(timeout=_POLL_S)
            except queue.Empty:
                continue
        raise _Closed


class _Workers:
    """The reader and inflater threads of one pass. Holds no reference to the
    :class:`IndexBuild`, so dropping an unfinished pass stops them (see its ``__del__``).

    The inflater sends the scanner ``(decoded bytes, spans closed before them, blob bytes
    consumed so far)``, then the blob's digest (a str) at the end, or an exception.
    """

    def __init__(
        self,
        open_stream: Callable[[], Iterator[bytes]],
        indexer: SpanIndexer | StreamInflater,
        lock: threading.Lock,
        blob_hash: Any,
        size: int,
        name: str,
        meter: PassMeter | None = None,
        spool: _Spool | None = None,
    ) -> None:
        self.stop = threading.Event()
        self._meter = meter
        self.pid = os.getpid()  # a forked child has none of these threads
        self.read_all = threading.Event()  # the reader reached the end of the blob
        self._seen = threading.Condition()
        self._seen_to = 0  # blob bytes whose output the scanner has seen
        self.chunks = _Pipe(_READ_AHEAD, self.stop)
        self.pieces = _Pipe(_DECODE_AHEAD, self.stop)
        self._open_stream = open_stream
        self._indexer = indexer
        self._lock = lock
        self._hash = blob_hash
        self._size = size
        self._name = name
        #: a scan-first pass: the inflater keeps no spans, the reader spools the blob
        self._spool = spool
        self._threads = [
            threading.Thread(target=self._read, name="seekoci-build-read", daemon=True),
            threading.Thread(target=self._inflate, name="seekoci-build-inflate", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read(self) -> None:
        """Blob chunks, hashed, to the inflater; then None and the digest."""
        stream: Iterator[bytes] | None = None
        try:
            stream = self._open_stream()
            fed = 0
            clock, meter = time.perf_counter, self._meter
            got = clock()
            while True:
                self._wait_for_scanner(fed)
                asked = clock()
                chunk = next(stream, None)
                # network: waiting for this chunk; CPU: hashing the last one, and waiting
                # until the threads after this one took it and wanted more
                last, got = got, clock()
                if meter is not None:
                    meter.add(got - asked, asked - last)
                if chunk is None:
                    break
                self._hash.update(chunk)
                fed += len(chunk)
                if fed > self._size:
                    raise IntegrityError(f"layer {self._name}: blob is longer than {self._size}")
                if fed == self._size:  # before the last chunk can be seen: no race
                    self.read_all.set()
                if self._spool is not None:
                    self._spool.append(chunk)
                self.chunks.put(chunk)
            if self._spool is not None:
                self._spool.end()
            self.read_all.set()
            self.chunks.put(None)
            self.chunks.put(f"{self._hash.name}:{self._hash.hexdigest()}")
        except _Closed:
            pass
        except BaseException as exc:
            self._send_error(self.chunks, exc)
        finally:
            if stream is not None and hasattr(stream, "close"):
                stream.close()

    def seen(self, fed: int) -> None:
        """The scanner has seen the output of the blob's first ``fed`` bytes."""
        with self._seen:
            if fed > self._seen_to:
                self._seen_to = fed
                self._seen.notify_all()

    def _wait_for_scanner(self, fed: int) -> None:
        with self._seen:
            while True:
                seen = self._seen_to
                lead = min(_MAX_LEAD, max(STREAM_CHUNK_SIZE, seen))
                if fed - seen < lead:
                    return
                if self.stop.is_set():
                    raise _Closed
                self._seen.wait(_POLL_S)

    def _inflate(self) -> None:
        indexer, lock = self._indexer, self._lock
        published = 0
        fed = 0

        def closed() -> list[Span]:
            nonlocal published
            if self._spool is not None:  # a scan: spans come from the index after it
                return []
            spans = cast("SpanIndexer", indexer).spans
            new = list(spans[published:])
            published = len(spans)
            return new

        try:
            while True:
                chunk = self.chunks.get()
                if isinstance(chunk, BaseException):
                    raise chunk
                if chunk is None:
                    break
                fed += len(chunk)
                decoded = indexer.feed(chunk)
                while True:
                    with lock:
                        out = next(decoded, None)
                        new = closed()
                    if out is None:
                        break
                    self.pieces.put((out, new, fed))
                self.pieces.put((b"", new, fed))
            with lock:
                indexer.finish()
                new = closed()
            self.pieces.put((b"", new, fed))
            self.pieces.put(self.chunks.get())  # the digest
        except _Closed:
            pass
        except BaseException as exc:
            self._send_error(self.pieces, exc)

    def _send_error(self, pipe: _Pipe, exc: BaseException) -> None:
        try:
            pipe.put(exc)
        except _Closed:
            pass

    def close(self, wait: float = 5.0) -> None:
        self.stop.set()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(wait)


class IndexBuild:
    """The (resumable) single pass over a layer blob."""

    def __init__(self, layer: Layer, compression: str, *, scan: bool = False) -> None:
        self.layer = layer
        codec = formats.codec_for(compression, where=f"layer {layer.name}")
        #: scan first (see the module's notes): the fast decoder the scanner reads from,
        #: while the indexer runs behind it on the spooled blob
        self.scan: StreamInflater | None = None
        self._spool: _Spool | None = None  # until the index thread takes it over
        fast = codec.stream_inflater(name=f"layer {layer.name}") if scan else None
        if fast is not None:
            try:
                self._spool = _Spool()
                self.scan = fast
            except OSError:  # no temporary file to be had: index as the pass goes
                pass
        self._background: _BackgroundIndex | None = None
        # CRCs are checked even when the digest matches: a member whose trailer contradicts
        # its data is a corrupt layer that gzip -t and containerd refuse too.
        self.indexer: SpanIndexer = codec.new_indexer(
            layer.span_size, name=f"layer {layer.name}", elide_windows=True, chunk_size=CHUNK_SIZE
        )
        # a scan leaves the files' digests to the index behind it
        self.scanner = TarScanner(name=f"layer {layer.name}", hash_files=self.scan is None)
        self.compression = compression
        alg = (layer.digest or "sha256:").partition(":")[0]
        if alg not in ("sha256", "sha384", "sha512"):
            raise FormatError(f"layer {layer.name}: digest algorithm {alg!r} is not supported")
        self._alg = alg
        self._lock = threading.Lock()  # the indexer, between the inflater and everyone else
        self._workers: _Workers | None = None
        #: spans whose bytes the scanner has seen (this thread's view of the indexer's)
        self.spans: list[Span] = []
        self.fed = 0  # blob bytes consumed by the indexer, as of the last piece
        self.done = False
        self.keep_spans = True
        self._out = 0  # uncompressed bytes seen by the scanner
        # decoded pieces not yet handed to the LRU (joined once per span: one copy)
        self._pending: collections.deque[bytes | memoryview] = collections.deque()
        self._pending_start = 0  # uncompressed offset of the first pending piece
        self._pending_size = 0
        self._spans_kept = 0
        # the last spans decoded, as pieces: joined for the LRU only when the pass pauses
        self._recent: collections.deque[tuple[Span, list[bytes | memoryview]]] = collections.deque()
        self._recent_size = 0
        #: tee(tar_offset, data, entries_so_far): sees the whole uncompressed stream as it
        #: passes, after the scanner (extraction without an index: seekoci/extract.py)
        self.tee: Tee | None = None
        # the last bytes a zstd pass decoded: a file of a single-frame layer (one span,
        # closed only at the blob's end) is served from here as soon as the pass has gone
        # past it, without decoding on to the end or again from the start
        self.forward: collections.deque[bytes] | None = (
            collections.deque() if compression == "zstd" else None
        )
        self.forward_start = 0  # stream offset of forward[0]
        #: a finished zstd pass: (offset, pieces) of its forward window (see window_range)
        self.tail: tuple[int, tuple[bytes, ...]] | None = None
        self.forward_bytes = 0
        if self.scan is not None:  # the file looked up is read from the scan's window
            self.forward = collections.deque()
            self.keep_spans = False

    # -- the indexer, for readers of a partial pass -------------------------------------------
    def window(self, span_index: int) -> bytes | None:
        with self._lock:
            return self.indexer.window(span_index)

    def chunk_table(self, span_index: int) -> ChunkTable | None:
        with self._lock:
            return self.indexer.chunk_table(span_index)

    @property
    def read_all(self) -> bool:
        """True once the whole blob has been read: finishing the pass then costs no more
        bytes, and checks the layer digest before anything read so far is trusted."""
        workers = self._workers
        return workers is not None and workers.read_all.is_set()

    # -- the pass ---------------------------------------------------------------------------
    def step(self) -> None:
        """Advance by one decoded piece of the blob (starts the pass on first use)."""
        if self.done:
            return
        if self._workers is None:
            if self.scan is None:
                self._workers = self._new_workers(self.indexer, self._lock)
            else:
                self._start_scan()
            assert self._workers is not None
        if self._workers.pid != os.getpid():
            self._workers = None  # its threads live in the parent process
            raise FormatError(
                f"layer {self.layer.name}: its index pass was started in another process "
                "(fork); retry to start one here"
            )
        try:
            item = self._workers.pieces.get()
        except _Closed:
            raise FormatError(f"layer {self.layer.name}: its index pass was closed") from None
        if isinstance(item, BaseException):
            self.close()
            raise item
        if isinstance(item, str):
            self._finish(item)
            return
        out, new, self.fed = item
        self._workers.seen(self.fed)
        if out:
            at = self._out
            self.scanner.feed(out)
            self._out += len(out)
            if self.tee is not None:  # after the scanner: entries whose data start here are in
                self.tee(at, out, self.scanner.entries)
            if self.forward is not None:  # whole pieces dropped: no copying
                self.forward.append(out)
                self.forward_bytes += len(out)
                while self.forward_bytes - len(self.forward[0]) >= FORWARD_WINDOW:
                    first = self.forward.popleft()
                    self.forward_bytes -= len(first)
                    self.forward_start += len(first)
        self.spans += new
        if self.keep_spans and out:
            self._pending.append(out)
            self._pending_size += len(out)
            if self._pending_size > SPAN_LRU_BYTES:  # a span too big to keep (zstd)
                self.keep_spans = False
        if self.keep_spans:
            self._keep_spans()
        elif self._pending_size or self._recent:
            self._drop_pending()
            self._recent.clear()
            self._recent_size = 0

    def _new_workers(
        self,
        inflater: SpanIndexer | StreamInflater,
        lock: threading.Lock,
        spool: _Spool | None = None,
    ) -> _Workers:
        """The reader and inflater threads of this pass."""
        layer = self.layer
        return _Workers(
            layer.source.iter_from,
            inflater,
            lock,
            hashlib.new(self._alg),
            layer.size,
            layer.name,
            layer.pass_meter,
            spool=spool,
        )

    def _start_scan(self) -> None:
        """Start a scan, and the index behind it on the spooled blob."""
        assert self.scan is not None and self._spool is not None
        layer = self.layer
        spool, self._spool = self._spool, None
        build = weakref.ref(self)
        owner = weakref.ref(layer)

        def indexed() -> None:  # on the background thread, once the index is made
            this, where = build(), owner()
            if this is not None and where is not None:
                where._indexed_in_background(this)

        # the scan's decoder is the inflater thread's alone: a lock of its own
        self._workers = self._new_workers(self.scan, threading.Lock(), spool)
        # the spool is the background thread's from here: it alone reads and closes it
        self._background = _BackgroundIndex(
            self.indexer,
            self._lock,
            spool,
            TarScanner(name=f"layer {layer.name}"),
            keep=layer.saves_index,
            done=indexed,
            name=layer.name,
            total=layer.size,
        )

    @property
    def scanned(self) -> bool:
        """Whether this is a scan that went to the end: every entry known, the blob checked
        (its index may still be in the making, see :attr:`indexed`)."""
        return self.scan is not None and self.done

    @property
    def indexed(self) -> bool:
        """Whether the checkpointed index of a scan-first pass is made (always true of a
        pass that indexes as it goes, once it is done)."""
        background = self._background
        if background is None:
            return self.scan is None or self.done
        return background.finished.is_set() and background.error is None

    @property
    def entries(self) -> list[TarEntry]:
        """The entries for the index: the scanner's, or (a scan's) those of the index
        behind it, which carry the files' digests."""
        background = self._background
        entries = self.scanner.entries
        if background is not None and background.finished.is_set() and background.error is None:
            # the scan's entries are the ones lookups handed out (hard links are resolved
            # by identity): they take the digests, once
            behind = background.scanner.entries
            if len(behind) != len(entries) or any(
                a.header_offset != b.header_offset or a.name != b.name
                for a, b in zip(entries, behind, strict=True)
            ):
                raise FormatError(
                    f"layer {self.layer.name}: the index pass found {len(behind)} entries "
                    f"where the scan found {len(entries)}, or others"
                )
            for a, b in zip(entries, behind, strict=True):
                a.sha256 = b.sha256
        return entries

    def wait_indexed(self, timeout: float | None = None) -> bool:
        """Wait (without scanning on) until the index behind a scan is made or has failed;
        False if ``timeout`` ran out first."""
        background = self._background
        if background is None:
            return True
        background.check_process(self.layer.name)
        return background.finished.wait(timeout)

    def _sync_spans(self) -> None:
        """Spans the index behind a scan has closed, into :attr:`spans`."""
        with self._lock:
            new = self.indexer.spans[len(self.spans) :]
        if new:
            self.spans += new

    def wait_spans(self, end: int | None) -> None:
        """Until the index behind a scan has spans up to uncompressed offset ``end`` (None:
        all of them). The scan goes on meanwhile if it has not ended (not holding back
        the index: the caller waits for it). Raises what the index failed with
        (:class:`SpoolLost`: it cannot be made from the spool)."""
        background = self._background
        if background is None:
            return
        background.check_process(self.layer.name)
        while True:
            self._sync_spans()
            if end is not None and self.spans and self.spans[-1].uncompressed_end >= end:
                return
            if background.finished.is_set():
                self._sync_spans()
                error = background.error
                if isinstance(error, _Closed):
                    raise FormatError(f"layer {self.layer.name}: its index pass was closed")
                if isinstance(error, OSError):
                    raise SpoolLost(str(error))
                if error is not None:
                    raise error
                return
            if not self.done:
                self.step()
            else:
                background.finished.wait(_POLL_S)

    def _drop_pending(self) -> None:
        self._pending.clear()
        self._pending_size = 0
        self._pending_start = self._out

    def _keep_spans(self) -> None:
        """Keep the last decoded spans of the pass (up to :data:`_RECENT_BYTES`) for the
        layer's LRU: the reads right after a lookup need them. Nothing is copied until
        :meth:`pause` (a lookup near the end of a big layer would copy every span else)."""
        spans = self.spans
        while self._spans_kept < len(spans):
            span = spans[self._spans_kept]
            if span.uncompressed_start >= self._pending_start:
                parts = self._take(span.uncompressed_start, span.uncompressed_end)
                self._recent.append((span, parts))
                self._recent_size += span.uncompressed_size
                while self._recent_size > _RECENT_BYTES and len(self._recent) > 1:
                    self._recent_size -= self._recent.popleft()[0].uncompressed_size
            self._spans_kept += 1

    def pause(self) -> None:
        """The caller stops stepping for now: hand the spans kept to the layer's LRU."""
        recent, self._recent = self._recent, collections.deque()
        self._recent_size = 0
        lru = self.layer.spans.lru
        for span, parts in recent:
            lru.put((span.uncompressed_start, span.digest), b"".join(parts))

    def _take(self, start: int, end: int) -> list[bytes | memoryview]:
        """Uncompressed bytes ``[start, end)`` out of the pending pieces (which hold them),
        as pieces; everything before ``end`` is dropped."""
        pending = self._pending
        parts: list[bytes | memoryview] = []
        pos = self._pending_start
        while pending and pos < end:
            piece = pending[0]
            a, b = max(start - pos, 0), min(end - pos, len(piece))
            if b < len(piece):  # the rest of the piece belongs to the next span
                parts.append(memoryview(piece)[a:b])
                pending[0] = memoryview(piece)[b:]
                pos += b
                break
            pending.popleft()
            parts.append(piece[a:] if a else piece)
            pos += len(piece)
        self._pending_size -= pos - self._pending_start
        self._pending_start = pos
        return parts

    @property
    def produced(self) -> int:
        """Uncompressed bytes the tar scanner has seen so far."""
        return self._out

    def forward_range(self, offset: int, end: int) -> bytes | None:
        """Bytes ``[offset, end)`` if the forward window holds them (zstd passes)."""
        if self.forward is None:
            return None
        return window_range(self.forward_start, self.forward, offset, end)

    def _finish(self, actual: str) -> None:
        if self.forward is not None:  # what the pass ended with, for the read that follows
            self.tail = (self.forward_start, tuple(self.forward))
        self.forward = None
        self._close_workers()
        self.scanner.finish()
        if self.keep_spans:
            self._keep_spans()
            self.pause()
        self._drop_pending()
        self._recent.clear()
        self.done = True
        layer = self.layer
        if self.fed != layer.size and layer.size_known:
            raise IntegrityError(
                f"layer {layer.name}: blob has {self.fed} bytes, the manifest says {layer.size}"
            )
        if layer.digest is not None and actual != layer.digest:
            layer.spans.lru.clear()
            raise IntegrityError(f"layer {layer.name}: blob digest is {actual}")
        if self._background is not None:
            self._background.verified.set()

    def _close_workers(self) -> None:
        workers, self._workers = self._workers, None
        if workers is not None:
            workers.close()

    def close(self) -> None:
        self._close_workers()
        background, self._background = self._background, None
        if background is not None:  # it closes the spool as it stops
            background.stop.set()
        spool, self._spool = self._spool, None
        if spool is not None:  # a scan that never started: no thread has the spool
            spool.close()

    def __del__(self) -> None:
        workers = getattr(self, "_workers", None)
        if workers is not None:
            workers.stop.set()
        background = getattr(self, "_background", None)
        if background is not None:
            background.stop.set()
