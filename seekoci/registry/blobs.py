"""Blobs over HTTP as range sources: registry layer blobs and plain URLs.

A range read is a ``GET`` with ``Range: bytes=a-b`` that must come back ``206`` with a
``Content-Range`` naming exactly that range of a blob of the expected size; a failed or cut
attempt is resumed from the first byte still missing (see :mod:`~seekoci.registry.retry`).
A body is never read as a range it was not said to be: some servers and CDNs ignore ``Range``
and send the whole blob with ``200``. A range read then fails with a RegistryError saying so
(reading gigabytes to return a few kilobytes would be silently disastrous); a forward stream
from near the start (an index build) reads and drops the bytes before its offset instead,
with one warning.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast
from urllib.parse import unquote, urlsplit, urlunsplit

from requests import Response

from ..errors import IntegrityError, InvalidReferenceError, RegistryError
from ..source import STREAM_CHUNK_SIZE
from .auth import basic_header
from .client import RegistryClient, pull_scope, raise_for_status
from .digest import verify_digest
from .manifest import Descriptor
from .retry import Attempts, RetryPolicy
from .transport import (
    HttpClient,
    TransferStats,
    is_timeout,
    is_transient,
    new_session,
    redact_url,
    release_connection,
    transport_errors,
)

log = logging.getLogger("seekoci.registry")

#: A forward stream (``iter_from``) from at most this offset survives a server that ignores
#: ``Range``: it reads and drops the bytes before its offset (an index build starts at 0).
MAX_SKIP_BYTES = 8 << 20
#: Pieces a range read is received in: a reset mid-body resumes at most this far back.
_READ_PIECE = 256 << 10

_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_UNSATISFIED_RANGE_RE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)


class _WrongAnswer(Exception):
    """An answer that may be right on another attempt (a wrong Content-Range, a cut body)."""


class HTTPRangeSource:
    """Range reads and streaming over HTTP; subclasses say how to send the GET.

    Every read is one request in the sense of :mod:`~seekoci.registry.retry`: connection
    errors, resets and stalls mid-body, cut bodies and wrong ``Content-Range`` answers are
    retried within one budget, each new attempt asking only for the bytes still missing.

    Thread-safe: each call makes its own requests; the counters sit behind a lock.
    """

    def __init__(self, size: int, name: str, policy: RetryPolicy | None = None) -> None:
        self._size = size
        self._name = name
        self._stats = TransferStats()
        self._policy = policy or RetryPolicy.resolve()
        self._lock = threading.Lock()
        self._warned_no_range = False

    @property
    def size(self) -> int:
        return self._size

    @property
    def name(self) -> str:
        return self._name

    @property
    def bytes_read(self) -> int:
        """Payload bytes received so far."""
        return self._stats.bytes_read

    @property
    def requests(self) -> int:
        """HTTP requests made so far (redirect hops, auth and other retries included)."""
        return self._stats.requests

    def _get(self, headers: Mapping[str, str], attempts: Attempts) -> Response:
        raise NotImplementedError

    def _host(self) -> str:
        """The server, as messages name it."""
        return "the server"

    def _what(self, text: str) -> str:
        """``text`` (the blob and the bytes asked for) as messages name it."""
        return text

    def read_range(self, offset: int, length: int) -> bytes:
        return self.read_range_fed(offset, length, None)

    def read_range_fed(
        self, offset: int, length: int, feed: Callable[[memoryview], None] | None
    ) -> bytes:
        """:meth:`read_range`, handing each piece to ``feed`` as it arrives (in order, each
        byte once, retries resuming after what came): a caller can work on the start of
        the range while the rest is on the way. ``feed`` gets views of the buffer being
        filled: it uses or copies them before it returns."""
        return bytes(self._read_into(offset, length, feed))

    def read_buffer(self, offset: int, length: int) -> bytes | bytearray:
        """:meth:`read_range`'s bytes in the buffer the socket filled, not copied out into a
        bytes object: for a caller that only reads it (through memoryviews) and never
        changes it. A 376 MB file read through the pipeline: 2.19 -> 2.01 s."""
        return self._read_into(offset, length, None)

    def _read_into(
        self, offset: int, length: int, feed: Callable[[memoryview], None] | None
    ) -> bytes | bytearray:
        if offset < 0 or length < 0:
            raise ValueError(f"bad range {offset}+{length} of {self._name}")
        end = min(offset + length, self._size)
        if offset >= end:
            return b""
        what = f"{self._name} bytes {offset}-{end - 1}"
        buffer = bytearray(end - offset)
        for piece in self._stream(
            offset, end, _READ_PIECE, what=what, forward=False, into=memoryview(buffer)
        ):
            if feed is not None:
                feed(cast("memoryview", piece))
        return buffer

    def iter_from(self, offset: int = 0, chunk_size: int = STREAM_CHUNK_SIZE) -> Iterator[bytes]:
        if offset < 0:
            raise ValueError(f"bad offset {offset} of {self._name}")
        if offset >= self._size:
            return
        what = f"{self._name} from byte {offset}"
        # without ``into`` the chunks are the body's own bytes
        yield from cast(
            "Iterator[bytes]",
            self._stream(offset, self._size, chunk_size, what=what, forward=True),
        )

    def _stream(
        self,
        first: int,
        end: int,
        chunk_size: int,
        *,
        what: str,
        forward: bool,
        into: memoryview | None = None,
    ) -> Iterator[bytes | memoryview]:
        """Bytes ``[first, end)`` in chunks, resumed after failures where they stopped.

        ``into`` (``end - first`` bytes, not ``forward``): the body is received straight
        into it; the chunks yielded are views of it.

        ``forward``: a stream to the end of the blob. From offset 0 its first request is a
        GET without ``Range`` (200, the whole blob); else it asks for ``bytes=N-``. If the
        server ignores ``Range`` and the stream began within :data:`MAX_SKIP_BYTES` of the
        start, the bytes before the position are read and dropped (warned once).
        """
        what = self._what(what)
        attempts = self._policy.begin(what)
        skip_ok = forward and first <= MAX_SKIP_BYTES
        pos = first
        while pos < end:
            ranged = not (forward and pos == 0)
            last = "" if forward else str(end - 1)
            headers = {"Range": f"bytes={pos}-{last}"} if ranged else {}
            response = self._get(headers, attempts)
            try:
                tried = f" (after {attempts.attempts} attempts)" if attempts.retried else ""
                skip = self._accept(
                    response, pos, end, ranged=ranged, skip_ok=skip_ok, what=what + tried
                )
                started = pos
                body = (
                    _body(response, chunk_size, what=what)
                    if into is None
                    else _body_into(response, into[pos - first :], what=what)
                )
                for chunk in body:
                    attempts.received()
                    self._stats.add_bytes(len(chunk))
                    if skip:
                        cut = min(skip, len(chunk))
                        skip -= cut
                        chunk = chunk[cut:]
                        if not chunk:
                            continue
                    if len(chunk) > end - pos:
                        raise RegistryError(
                            f"{what}: server sent more than the {end - first} bytes asked for"
                        )
                    pos += len(chunk)
                    yield chunk
                if pos < end:
                    raise _WrongAnswer(f"body cut short ({pos - started} of {end - started} bytes)")
            except _WrongAnswer as exc:
                attempts.retry(str(exc), status=response.status_code)
            except RegistryError as exc:
                if not is_transient(exc):
                    raise
                reason = str(exc).split(": ", 1)[-1]
                if is_timeout(exc):
                    attempts.waited(attempts.wait(), reason, exc.__cause__ or exc)
                attempts.retry(f"{reason} at byte {pos}", cause=exc.__cause__ or exc)
            finally:
                response.close()

    def _accept(
        self, response: Response, pos: int, end: int, *, ranged: bool, skip_ok: bool, what: str
    ) -> int:
        """Check an answer's status and ``Content-Range``; return how many bytes of its body
        come before ``pos``. Raise what an error status means, or :class:`_WrongAnswer`."""
        status = response.status_code
        if status not in (200, 206) or (status == 206 and not ranged):
            raise_for_status(response, where=what)
        if not ranged:
            return 0
        asked = f"bytes={pos}-{end - 1}"
        if status == 200:
            if pos == 0 and end == self._size:
                return 0  # the whole blob was asked for, and came
            if skip_ok:
                self._warn_no_range(pos)
                return pos
            response.close()
            raise RegistryError(
                f"{what}: {self._host()} does not honour range requests (answered 200 "
                f"with the whole blob to {asked}); reading it needs them",
                status=200,
            )
        header = response.headers.get("Content-Range", "")
        match = _CONTENT_RANGE_RE.match(header)
        if match is None:
            raise _WrongAnswer(f"missing or malformed Content-Range {header[:80]!r} for {asked}")
        start, last, total = match.groups()
        if (int(start), int(last)) != (pos, end - 1):
            raise _WrongAnswer(f"Content-Range {start}-{last} does not match {asked}")
        if total != "*" and int(total) != self._size:
            raise _WrongAnswer(
                f"Content-Range says the blob has {total} bytes, expected {self._size}"
            )
        return 0

    def _warn_no_range(self, pos: int) -> None:
        with self._lock:
            warned, self._warned_no_range = self._warned_no_range, True
        if not warned:
            log.warning(
                "seekoci: warning: %s ignores range requests (answered 200 with the whole "
                "blob); reading %s from its start to reach byte %d",
                self._host(),
                self._name,
                pos,
            )


def _body(response: Response, chunk_size: int, *, what: str) -> Iterator[bytes]:
    """A body as sent, in pieces of ``chunk_size`` (the last may be shorter); exceptions
    mapped by :func:`~seekoci.registry.transport.transport_errors`.

    When the connection breaks, what arrived before is yielded first: a retry then asks
    only for the bytes after it (``read(n)`` would drop up to ``n`` bytes already received).
    """
    raw = response.raw
    read1 = getattr(raw, "read1", None)  # urllib3 >= 2.3
    # what each receive returned, joined once per piece: one copy of every byte after the
    # socket's (a bytearray grown and then copied out made two, under the GIL)
    parts: list[bytes] = []
    have = 0
    while True:
        try:
            with transport_errors(what):
                want = chunk_size - have
                if read1 is not None:
                    data = read1(want, decode_content=False)
                else:
                    data = raw.read(want, decode_content=False)
        except RegistryError:
            if parts:
                yield b"".join(parts)
            raise
        if not data:
            if parts:
                yield b"".join(parts)
            return
        parts.append(data)
        have += len(data)
        if have >= chunk_size:
            yield b"".join(parts)
            parts.clear()
            have = 0


def _receive(fp: io.BufferedReader, view: memoryview) -> int:
    """One receive of a body into ``view`` (what the buffer holds, or one socket read)."""
    return fp.readinto1(view)


def _body_into(response: Response, view: memoryview, *, what: str) -> Iterator[memoryview]:
    """Receive a body straight into ``view`` (the socket fills it: no copy); yield the part
    each receive filled, so a broken connection keeps what came before it. A body longer
    than ``view`` is an error. A body without a length (chunked) is received in pieces and
    copied in."""
    raw = response.raw
    inner = getattr(raw, "_fp", None)
    fp = getattr(inner, "fp", None)
    if (
        not isinstance(inner, http.client.HTTPResponse)
        or inner.chunked
        or inner.length is None
        or not isinstance(fp, io.BufferedReader)
    ):
        at = 0
        for chunk in _body(response, _READ_PIECE, what=what):
            if len(chunk) > len(view) - at:
                raise RegistryError(f"{what}: server sent more than the bytes asked for")
            view[at : at + len(chunk)] = chunk
            at += len(chunk)
            yield view[at - len(chunk) : at]
        return
    left = inner.length
    if left > len(view):
        raise RegistryError(
            f"{what}: server sends {left} bytes, more than the {len(view)} asked for"
        )
    at = 0
    # what came with the headers first: a receive into the rest of ``view`` that fails
    # would lose the bytes it had copied out of the buffer
    with transport_errors(what):
        piece = len(fp.peek(0)) or _READ_PIECE
    while left:
        with transport_errors(what):
            n = _receive(fp, view[at : at + min(piece, left)])
        piece = _READ_PIECE
        if not n:  # cut short, as urllib3 would say it: the caller asks again for the rest
            with transport_errors(what):
                raise http.client.IncompleteRead(view[:at].tobytes()[-16:], left)
        at += n
        left -= n
        inner.length = left  # what http.client still expects (we read under it)
        yield view[at - n : at]
    with transport_errors(what):
        inner.read()  # nothing left: http.client marks the response done
    release_connection(raw, inner)


class RegistryBlobSource(HTTPRangeSource):
    """A layer blob in a registry, read by ranges through the registry client (auth, redirects)."""

    def __init__(self, client: RegistryClient, repository: str, descriptor: Descriptor) -> None:
        super().__init__(
            descriptor.size,
            descriptor.digest,
            client.policy,
        )
        self._client = client
        self._repository = repository
        self.descriptor = descriptor

    def _get(self, headers: Mapping[str, str], attempts: Attempts) -> Response:
        return self._client.get_blob(
            self._repository,
            self.descriptor.digest,
            headers=headers,
            stats=self._stats,
            attempts=attempts,
        )

    def _what(self, text: str) -> str:
        # messages name the registry and repository as well as the blob
        return f"{self._client.registry}/{self._repository} blob {text}"

    def _host(self) -> str:
        return f"registry {self._client.registry}"

    def __repr__(self) -> str:
        return f"RegistryBlobSource({self._client.registry}/{self._repository}@{self._name})"


def fetch_blob(
    client: RegistryClient,
    repository: str,
    descriptor: Descriptor,
    *,
    use: Callable[[bytes], object] | None = None,
) -> bytes:
    """A whole (small) blob, verified against its descriptor; IntegrityError if it is not it
    (after one refetch: a byte damaged in transit is not the blob's fault).

    ``use(body)`` runs on the calling thread while another thread computes the body's digest
    (hashlib lets go of the GIL): parsing a 19 MB zTOC and hashing it overlap. Whatever
    ``use`` makes of the body is the caller's to keep only once this returns: a body that
    does not match its digest is an IntegrityError (or a refetch, then ``use`` runs again)
    whatever ``use`` returned or raised; an error ``use`` raises on the right bytes is
    raised as it is."""
    what = f"{client.registry}/{repository} blob {descriptor.digest}"
    algorithm = descriptor.digest.partition(":")[0]
    known = algorithm in hashlib.algorithms_available
    fed: list[Any] = []  # the hasher of the latest attempt, fed as the body arrived

    def hasher() -> Any:
        fed[:] = [hashlib.new(algorithm)]
        return fed[0]

    def check(_: Response, data: bytes) -> None:
        if len(data) != descriptor.size:
            got = "more than" if len(data) > descriptor.size else f"only {len(data)} of"
            raise IntegrityError(f"{what}: got {got} the {descriptor.size} bytes it should have")
        if use is None or not known:
            verify_digest(data, descriptor.digest, what=what, hashed=fed[0] if fed else None)
            if use is not None:
                use(data)
            return
        hashed = hashlib.new(algorithm)
        hashing = threading.Thread(
            target=hashed.update, args=(data,), name="seekoci-verify", daemon=True
        )
        hashing.start()
        try:
            use(data)
        except Exception:
            hashing.join()
            verify_digest(data, descriptor.digest, what=what, hashed=hashed)  # not the blob?
            raise
        hashing.join()
        verify_digest(data, descriptor.digest, what=what, hashed=hashed)

    _, data = client.get_small(
        f"/v2/{repository}/blobs/{descriptor.digest}",
        scope=pull_scope(repository),
        what=what,
        limit=descriptor.size,
        check=check,
        hasher=hasher if known and use is None else None,
    )
    return data


class URLSource(HTTPRangeSource):
    """Any HTTP(S) URL that honours ``Range`` (a blob on a web server or object storage).

    User info in the URL (``https://user:pass@host/…``) becomes Basic auth for that origin and
    is removed from the URL and from :attr:`name`.
    """

    def __init__(self, url: str, *, http: HttpClient | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise InvalidReferenceError(f"not an http(s) URL: {redact_url(url)}")
        self._authorization: str | None = None
        if parts.username is not None or parts.password is not None:
            self._authorization = basic_header(
                unquote(parts.username or ""), unquote(parts.password or "")
            )
            netloc = parts.netloc.rsplit("@", 1)[1]
            url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        self._url = url
        self._http = http or HttpClient(new_session())
        super().__init__(0, redact_url(url), self._http.policy)
        self._size = self._discover_size()

    def _get(self, headers: Mapping[str, str], attempts: Attempts | None = None) -> Response:
        return self._http.send(
            "GET",
            self._url,
            headers=headers,
            authorization=self._authorization,
            stats=self._stats,
            attempts=attempts,
        )

    def _host(self) -> str:
        return urlsplit(self._url).netloc

    def _discover_size(self) -> int:
        """Size from HEAD's ``Content-Length``, else from the total of a one-byte range GET.

        HEAD is often refused by object storage (a URL signed for GET only), hence the fallback.
        """
        response = self._http.send(
            "HEAD", self._url, authorization=self._authorization, stats=self._stats
        )
        length = response.headers.get("Content-Length", "")
        ok = response.status_code == 200
        response.close()
        if ok and length.strip().isdigit():
            return int(length)
        response = self._get({"Range": "bytes=0-0"})
        try:
            status = response.status_code
            if status == 206:
                match = _CONTENT_RANGE_RE.match(response.headers.get("Content-Range", ""))
                if match is not None and match.group(3) != "*":
                    return int(match.group(3))
                raise RegistryError(f"{self._name}: cannot tell the size (no Content-Range total)")
            if status == 416:
                match = _UNSATISFIED_RANGE_RE.match(response.headers.get("Content-Range", ""))
                if match is not None:
                    return int(match.group(1))  # an empty blob: no byte 0 to send
            if status == 200:
                raise RegistryError(
                    f"{self._name}: {self._host()} does not honour range requests (answered "
                    "200 to bytes=0-0)",
                    status=200,
                )
            raise_for_status(response, where=self._name)
        finally:
            response.close()

    def close(self) -> None:
        """Close pooled connections."""
        self._http.session.close()

    def __repr__(self) -> str:
        return f"URLSource({self._name!r}, size={self._size})"


def open_url_source(url: str) -> URLSource:
    """A :class:`~seekoci.source.RangeSource` over any HTTP(S) URL that honours ``Range``."""
    return URLSource(url)
