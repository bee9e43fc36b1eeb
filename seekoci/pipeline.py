"""The read pipeline: many spans, large requests, parallel inflate, bytes in order.

A read that covers several spans is planned as a list of *steps*, one per span, in order:

* a span whose decoded bytes are in memory is ready at once;
* a span kept in the cache directory is loaded, checked and decoded on the decode pool;
* neighbouring spans that must come from the blob are coalesced into *runs* fetched with
  one range request each (up to :data:`MAX_REQUEST` compressed bytes, gaps of up to
  :data:`MAX_GAP` fetched and dropped) on a bounded pool of connections; each span of a run
  is then checked against its digest and inflated on the decode pool (zlib, isal and zstd
  release the GIL, so both cores inflate at once), neighbouring small spans together, up
  to :data:`DECODE_BATCH` bytes in one task. An embedded TOC's chunks (eStargz,
  zstd:chunked: one or a few per file) come in runs too, each checked once decoded; one
  whose bytes in a run are damaged is fetched again by itself.

The consumer takes the spans' bytes in order while the steps after it are under way, at
most ``window`` uncompressed bytes ahead of it, so memory stays bounded whatever the size
of the read. An error inside a worker (:class:`IntegrityError`, :class:`FormatError`, a
registry error) is raised on the reading thread when it reaches that span; closing the
stream cancels what has not started.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from . import spans as spans_module
from ._threads import shared_pool
from .formats.base import CHECK_COMPRESSED, ChunkTable, Span, span_matches
from .spans import SpanReader

T = TypeVar("T")

#: Compressed bytes in one coalesced range request: large enough that a request's latency
#: is small beside its transfer, small enough that several are in flight within a window.
MAX_REQUEST = 16 << 20
#: The smallest run worth a request of its own while the window is small (readahead that
#: has just started): runs are at most half the window, and at least this.
MIN_REQUEST = 1 << 20
#: Compressed bytes between two spans that a run fetches and drops rather than make two
#: requests (a zstd:chunked blob's tar headers lie in frames between its files' chunks).
MAX_GAP = 64 << 10
#: Uncompressed bytes decoded ahead of the reader at most (the memory a stream may hold).
MAX_WINDOW = 64 << 20
#: Uncompressed bytes of neighbouring spans of a run decoded by one task of the decode pool:
#: a TOC's chunks are one or a few per file (50k for a 1 GB layer), and a task of its own
#: for each cost more than decoding most of them.
DECODE_BATCH = 1 << 20
#: Connections fetching runs at once (for all readers of the process).
FETCHERS = 4
#: Reads of more uncompressed bytes than this are streaming reads: their spans are not
#: written to the cache directory (a 10 GB file read once must not fill it with its spans).
STREAMING_BYTES = 16 << 20


def _fetch_pool() -> concurrent.futures.ThreadPoolExecutor:
    return shared_pool("seekoci-fetch", FETCHERS)


def _decode_pool() -> concurrent.futures.ThreadPoolExecutor:
    return shared_pool("seekoci-inflate", max(2, os.cpu_count() or 2))


@dataclass
class _Step:
    """One span of the read: its future decoded bytes, and the slice the reader wants."""

    span: Span
    start: int  # offset of the wanted bytes inside the span's uncompressed bytes
    end: int
    future: concurrent.futures.Future[bytes] | None = None
    ready: bytes | None = None
    #: decoded with the neighbouring spans of its run (one task): what that task gives,
    #: each span's bytes or what decoding them raised, and this span's place in it
    batch: concurrent.futures.Future[_Decoded] | None = None
    part: int = 0
    #: the read ends inside this chunked span: only its first chunks are fetched (and how
    #: many, with the table that checks them); None: the whole span
    cut: tuple[ChunkTable, int] | None = None

    @property
    def compressed_end(self) -> int:
        """Where this step's bytes end in the blob (its first chunks only, when cut)."""
        if self.cut is None:
            return self.span.compressed_end
        return min(
            self.span.compressed_end,
            self.span.compressed_start + self.cut[1] * self.span.chunk_size,
        )


class _Decoded:
    """What one decode task made of its steps: each step's bytes, or the error decoding it
    raised; or, ``joined``, the bytes of all its steps (that many) as one piece."""

    __slots__ = ("joined", "pieces")

    def __init__(self, pieces: list[bytes | BaseException | None], joined: int = 0) -> None:
        self.pieces = pieces
        self.joined = joined


def _settle(target: concurrent.futures.Future[T], work: Callable[[], T]) -> None:
    """Run ``work`` into ``target`` unless the reader gave the step up meanwhile."""
    if not target.set_running_or_notify_cancel():
        return
    try:
        target.set_result(work())
    except BaseException as exc:
        target.set_exception(exc)


class SpanStream:
    """Bytes ``[offset, end)`` of a layer's uncompressed stream, span by span, in order.

    Iterate it for the pieces (``bytes``, one per span); ``window`` may be raised while it
    runs (readahead that grows while a reader stays sequential). One consumer at a time.
    """

    def __init__(
        self,
        reader: SpanReader,
        spans: Sequence[Span],
        first: int,
        offset: int,
        end: int,
        *,
        window: int = MAX_WINDOW,
        keep: bool | None = None,
    ) -> None:
        self._reader = reader
        self._spans = spans
        self._next = first  # index of the next span to plan
        self._pos = offset  # first byte not yet planned
        self._end = end
        self.window = window
        self._pending: deque[_Step] = deque()
        self._ahead = 0  # uncompressed bytes planned and not yet taken
        self._closed = False
        #: whether fetched spans go to the cache directory: not for a streaming read
        self._keep = end - offset <= STREAMING_BYTES if keep is None else keep

    # -- planning ---------------------------------------------------------------------------
    def _plan(self) -> None:
        """Start steps until ``window`` bytes are ahead of the reader or the read is planned."""
        run: list[_Step] = []
        cap = max(MIN_REQUEST, min(MAX_REQUEST, self.window // 2))
        if self._pending and self.window - self._ahead < cap:
            return  # no room for a whole run yet: wait, rather than fetch a span at a time
        while (
            not self._closed
            and self._pos < self._end
            and self._next < len(self._spans)
            and (self._ahead < self.window or not self._pending)
        ):
            span = self._spans[self._next]
            if span.uncompressed_start >= self._end:
                break
            step = _Step(
                span,
                max(self._pos, span.uncompressed_start) - span.uncompressed_start,
                min(self._end, span.uncompressed_end) - span.uncompressed_start,
            )
            self._next += 1
            self._pos = span.uncompressed_start + step.end
            self._ahead += span.uncompressed_size
            self._pending.append(step)
            if self._start_alone(step):
                self._submit(run)
                run = []
                continue
            if run and (
                span.compressed_start - run[-1].span.compressed_end > MAX_GAP
                or span.compressed_start < run[-1].span.compressed_start  # (a TOC's order)
                or span.compressed_end - run[0].span.compressed_start > cap
            ):
                self._submit(run)
                run = []
            run.append(step)
        self._submit(run)

    def _start_alone(self, step: _Step) -> bool:
        """Serve the step without a run: its decoded bytes in memory, its compressed bytes
        in the cache directory, or a span too large to hold (streamed by itself)."""
        reader, span = self._reader, step.span
        data = reader.cached(span)
        if data is not None and len(data) >= step.end:
            step.ready = data
            return True
        if span.check != CHECK_COMPRESSED:  # an embedded TOC's chunk: checked once decoded
            if span.zeros or reader.has_local(span):  # produced, or in the cache directory
                step.future = _fetch_pool().submit(reader.decoded, span)
                return True
            return False  # fetched in a run with its neighbours
        if reader.has_local(span):
            step.future = _decode_pool().submit(self._decode_local, span)
            return True
        if span.uncompressed_size > spans_module.LARGE_SPAN:
            step.future = _fetch_pool().submit(reader.stream, span, step.start, step.end)
            step.start, step.end = 0, step.end - step.start
            return True
        return False

    def _decode_local(self, span: Span) -> bytes:
        compressed = self._reader.fetch(span)  # the cache directory first, checked
        return self._reader.decode_span(span, compressed, keep=False)

    def _submit(self, run: list[_Step]) -> None:
        """One request for the run's bytes; when they are in, one decode task per span, or
        per batch of neighbouring small spans (:data:`DECODE_BATCH`)."""
        if not run:
            return
        last = run[-1]
        if last.end < last.span.uncompressed_size:  # the read ends inside it: its start only
            last.cut = self._reader.local_cut(last.span, last.end)
        batches: list[tuple[concurrent.futures.Future[_Decoded], list[_Step]]] = []
        # (a run of less than two batches is still decoded by two tasks: both cores)
        limit = min(DECODE_BATCH, sum(step.span.uncompressed_size for step in run) // 2)
        size = limit
        for step in run:
            if size >= limit:
                batches.append((concurrent.futures.Future(), []))
                size = 0
            future, steps = batches[-1]
            step.batch, step.part = future, len(steps)
            steps.append(step)
            size += step.span.uncompressed_size
        base = run[0].span.compressed_start
        fetched = _fetch_pool().submit(  # (a TOC's chunks may nest: the furthest end)
            self._fetch, [step.span for step in run], max(step.compressed_end for step in run)
        )

        def decode_all(done: concurrent.futures.Future[bytes | bytearray]) -> None:
            for future, steps in batches:
                work = partial(self._decode_batch, done, base, steps)
                _decode_pool().submit(_settle, future, work)

        fetched.add_done_callback(decode_all)

    def _decode_batch(
        self, fetched: concurrent.futures.Future[bytes | bytearray], base: int, steps: list[_Step]
    ) -> _Decoded:
        """Each step's bytes, or the error decoding them raised (raised to the reader when
        it reaches that step, not before: the steps before it are delivered). Past an
        error that is not an :class:`Exception`, the steps left are not decoded: each
        gets that error. Steps decoded together (an embedded TOC's chunks) are one piece."""
        together = self._decode_together(fetched, base, steps)
        views = [view for view in together if view is not None]
        if len(steps) > 1 and len(views) == len(steps):
            return _Decoded([b"".join(views)], joined=len(steps))
        out: list[bytes | BaseException | None] = []
        for step, view in zip(steps, together, strict=True):
            if view is not None:
                out.append(view.tobytes())
                continue
            try:
                out.append(self._decode(fetched, base, step))
            except Exception as exc:
                out.append(exc)
            except BaseException as exc:
                out += [exc] * (len(steps) - len(out))
                break
        return _Decoded(out)

    def _decode_together(
        self, fetched: concurrent.futures.Future[bytes | bytearray], base: int, steps: list[_Step]
    ) -> Sequence[memoryview | None]:
        """The steps' bytes decoded by one call of the codec, where they are whole spans all
        in the fetched buffer and the reader takes them that way (an embedded TOC's chunks,
        see :meth:`SpanReader.decoded_run`); None for each step left to :meth:`_decode`."""
        blob = fetched.result()
        if len(steps) < 2 or any(
            step.cut is not None or step.span.zeros or step.span.compressed_end - base > len(blob)
            for step in steps
        ):
            return [None] * len(steps)
        return self._reader.decoded_run([step.span for step in steps], blob, base, keep=self._keep)

    def _fetch(self, spans: list[Span], end: int) -> bytes | bytearray:
        if self._closed:
            return b""
        self._reader.prefetch_windows(spans)
        start = spans[0].compressed_start
        source = self._reader.source
        # the range's buffer as received (the spans are cut out of it as views): no copy
        read: Callable[[int, int], bytes | bytearray] = getattr(
            source, "read_buffer", source.read_range
        )
        return read(start, end - start)

    def _decode(
        self, fetched: concurrent.futures.Future[bytes | bytearray], base: int, step: _Step
    ) -> bytes:
        blob = fetched.result()  # done: this runs from its callback (re-raises its error)
        span = step.span
        if step.cut is not None:
            piece = memoryview(blob)[span.compressed_start - base : step.compressed_end - base]
            data = self._reader.decode_start(span, bytes(piece), step.cut, step.end)
            if data is not None:
                return data
            return self._reader.data(span, step.end)  # damaged or short: the reader's way
        piece = memoryview(blob)[span.compressed_start - base : span.compressed_end - base]
        if span.check != CHECK_COMPRESSED:  # an embedded TOC's chunk: checked once decoded
            if span.compressed_end - base > len(blob):  # a short body: by itself
                return self._reader.decoded(span)
            return self._reader.decoded_from(span, piece, keep=self._keep)  # read in place
        compressed: bytes | memoryview
        if span_matches(span, piece):
            compressed = piece  # decoded in place, copied only to be kept
            if self._keep:
                compressed = bytes(piece)
                self._reader.save(span, compressed)
        else:  # damaged in transit, or a short body: this span alone, once more
            compressed = self._reader.fetch(span, keep=self._keep)
        return self._reader.decode_span(span, compressed, keep=False)

    # -- taking -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._closed:
            raise StopIteration
        if not self._pending:
            self._plan()
            if not self._pending:
                raise StopIteration
        step = self._pending.popleft()
        try:
            data = self._take(step)
        except BaseException:
            self.close()
            raise
        self._ahead -= step.span.uncompressed_size
        start, end = step.start, step.end
        joined = step.batch.result().joined if step.batch is not None else 0
        if joined:  # the bytes of this step and of the next ones of its batch, in one piece
            last = step
            for _ in range(joined - 1):
                last = self._pending.popleft()
                self._ahead -= last.span.uncompressed_size
            end = len(data) - (last.span.uncompressed_size - last.end)
        self._plan()  # keep the window full while the reader uses this span
        if start == 0 and end == len(data):
            return data
        return data[start:end]

    @staticmethod
    def _take(step: _Step) -> bytes:
        """The step's decoded bytes, once they are in (a batch decoded as one piece: all of
        them, at its first step)."""
        if step.ready is not None:
            return step.ready
        if step.batch is not None:
            results = step.batch.result().pieces
            found = results[step.part]
            results[step.part] = None  # taken: not held until the batch's last step is
            if isinstance(found, BaseException):
                raise found
            assert found is not None  # (each step is taken once)
            return found
        assert step.future is not None
        return step.future.result()

    def close(self) -> None:
        """Stop: steps not started are cancelled, running ones finish unseen."""
        self._closed = True
        while self._pending:
            step = self._pending.popleft()
            for future in (step.future, step.batch):
                if future is not None:
                    future.cancel()
        self._ahead = 0

    def __enter__(self) -> SpanStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class BytesStream:
    """A stream of bytes already at hand (one piece), with :class:`SpanStream`'s surface."""

    def __init__(self, data: bytes) -> None:
        self.window = 0
        self._data: bytes | None = data if data else None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        data, self._data = self._data, None
        if data is None:
            raise StopIteration
        return data

    def close(self) -> None:
        self._data = None

    def __enter__(self) -> BytesStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
