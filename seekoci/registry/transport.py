"""HTTP plumbing shared by the registry client and plain URL sources.

Three things live here because each must happen in exactly one place:

- :func:`transport_errors` turns every ``requests``/``urllib3``/socket exception into a
  :class:`RegistryError` (``raise ... from exc``). Their own messages are not reused: they quote
  full URLs, and a signed object-storage URL carries its signature in the query string.
- :meth:`HttpClient.send` follows redirects itself, sending ``Authorization`` only back to the
  origin it was meant for. Blob GETs are commonly redirected to object storage, which rejects a
  second auth mechanism and must never see the registry's token.
- :func:`redact_url` is how a URL appears in a message or a log line.

Retries are not urllib3's: :meth:`HttpClient.send` spends the request's budget
(:mod:`~seekoci.registry.retry`), deciding with :func:`is_transient` what may be tried again.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import re
import ssl
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
import requests.auth
import urllib3
import urllib3.exceptions
from urllib3.util.retry import Retry

from .. import _json
from ..errors import RegistryError
from .retry import MAX_RETRY_AFTER_SECONDS, RETRY_STATUSES, Attempts, RetryPolicy
from .tls import SharedTlsAdapter

log = logging.getLogger("seekoci.registry")

#: Connections kept per host: enough for ~8 reader threads plus manifest/token requests.
POOL_SIZE = 16
MAX_REDIRECTS = 10
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class TransferStats:
    """Counters for benchmarks: HTTP requests made and payload bytes received (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.bytes_read = 0

    def add_request(self) -> None:
        with self._lock:
            self.requests += 1

    def add_bytes(self, count: int) -> None:
        with self._lock:
            self.bytes_read += count


@contextmanager
def transport_errors(what: str) -> Iterator[None]:
    """Map any lower-level network exception raised in the block to RegistryError.

    ``what`` says what we were doing ("GET https://host/v2/..."), already redacted.
    """
    try:
        yield
    except (
        requests.RequestException,
        urllib3.exceptions.HTTPError,
        http.client.HTTPException,
        OSError,
    ) as exc:
        raise RegistryError(f"{what}: {describe_transport_error(exc)}") from exc


#: What to call a failure, most specific first; the first kind found anywhere in the chain of
#: wrapped exceptions wins (requests reports an exhausted read retry as a ConnectionError).
_FAILURE_KINDS: list[tuple[type[BaseException], str]] = [
    # urllib3's NewConnectionError subclasses ConnectTimeoutError, for history's sake: first.
    (urllib3.exceptions.NewConnectionError, "cannot connect"),
    (ConnectionRefusedError, "cannot connect"),
    (requests.exceptions.ConnectTimeout, "connection timed out"),
    (urllib3.exceptions.ConnectTimeoutError, "connection timed out"),
    (requests.exceptions.ReadTimeout, "read timed out"),
    (urllib3.exceptions.ReadTimeoutError, "read timed out"),
    (TimeoutError, "timed out"),
    (requests.exceptions.SSLError, "TLS handshake or certificate verification failed"),
    (urllib3.exceptions.SSLError, "TLS handshake or certificate verification failed"),
    (ssl.SSLError, "TLS handshake or certificate verification failed"),
    (requests.exceptions.ContentDecodingError, "could not decode the response body"),
    (requests.exceptions.TooManyRedirects, "too many redirects"),
    (requests.exceptions.InvalidURL, "invalid URL"),
    (requests.exceptions.ChunkedEncodingError, "connection broken while reading the body"),
    (urllib3.exceptions.ProtocolError, "connection broken while reading the body"),
    (http.client.HTTPException, "connection broken while reading the body"),
    (ConnectionError, "connection broken"),
    (requests.exceptions.ConnectionError, "cannot connect"),
]


def describe_transport_error(exc: BaseException) -> str:
    """A short, credential-free description of a transport exception.

    Built from exception types and the OS's ``strerror`` only: the exceptions' own messages
    quote URLs, which may carry user info or a signed query string.
    """
    chain = _exception_chain(exc)
    text = next(
        (label for kind, label in _FAILURE_KINDS if any(isinstance(e, kind) for e in chain)),
        f"network error ({type(exc).__name__})",
    )
    reason = next(
        (str(e.strerror) for e in chain if isinstance(e, OSError) and isinstance(e.strerror, str)),
        None,
    )
    return f"{text} ({reason})" if reason and reason.lower() not in text else text


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps (args, ``reason``, causes), breadth first, without repeats."""
    seen: list[BaseException] = []
    queue = [exc]
    while queue and len(seen) < 20:
        current = queue.pop(0)
        if any(current is s for s in seen):
            continue
        seen.append(current)
        queue.extend(arg for arg in current.args if isinstance(arg, BaseException))
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            queue.append(reason)
        queue.extend(c for c in (current.__cause__, current.__context__) if c is not None)
    return seen


def redact_url(url: str) -> str:
    """``url`` without user info and without the query string (signed URLs keep secrets there)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "<unparsable URL>"
    query = "…" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with default ports made explicit: what may share credentials."""
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or default


def split_host_port(netloc: str) -> tuple[str, int | None]:
    """``host[:port]`` (IPv6 in brackets) -> (host without brackets, port)."""
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = netloc.partition(":")
    return host, int(port) if port.isdigit() else None


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 and ::1: spoken to over plain HTTP, as Docker does."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _NoNetrc(requests.auth.AuthBase):
    """Keeps ``requests`` from adding ~/.netrc credentials, which would override our header."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


def new_session() -> requests.Session:
    """A session with a connection pool for several reader threads (HTTPS connections that
    verify share one TLS context: :mod:`~seekoci.registry.tls`).

    urllib3 retries nothing itself: every retry is :class:`~seekoci.registry.retry.Attempts`'
    (one budget per request, backoff, logged once), and a read timeout urllib3 retried on its
    own doubled the wait for a server that never answers.
    """
    session = requests.Session()
    retry = Retry(total=0, connect=0, read=False, status=0, redirect=0, other=0)
    adapter = SharedTlsAdapter(pool_connections=4, pool_maxsize=POOL_SIZE, max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.auth = _NoNetrc()
    session.headers["User-Agent"] = "seekoci/0.1"
    # Blobs must arrive as stored: a server that gzips on the fly would break byte offsets.
    session.headers["Accept-Encoding"] = "identity"
    return session


_QUIETED_HOSTS: set[str] = set()
_QUIET_LOCK = threading.Lock()


def quiet_insecure_warnings(netloc: str) -> None:
    """Replace urllib3's per-request ``InsecureRequestWarning`` (a two-line warning dump on
    stderr for every connection) for one host the user declared insecure by one seekoci
    warning line. Only that host's warning is filtered: other code in the process keeps it."""
    host, _ = split_host_port(netloc)
    with _QUIET_LOCK:
        if host in _QUIETED_HOSTS:
            return
        _QUIETED_HOSTS.add(host)
        warnings.filterwarnings(
            "ignore",
            message=f"Unverified HTTPS request is being made to host '{re.escape(host)}'",
            category=urllib3.exceptions.InsecureRequestWarning,
        )
    log.warning(
        "seekoci: warning: %s is an insecure registry: its TLS certificate is not verified",
        netloc,
    )


#: Exceptions that say the request itself cannot work: retrying would only repeat them.
_PERMANENT: tuple[type[BaseException], ...] = (
    ssl.SSLCertVerificationError,
    ssl.CertificateError,
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidHeader,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.TooManyRedirects,
    requests.exceptions.ContentDecodingError,
    urllib3.exceptions.LocationValueError,
    urllib3.exceptions.ProxySchemeUnknown,
)
_TLS_CUT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)
_TIMEOUTS: tuple[type[BaseException], ...] = (
    requests.exceptions.Timeout,
    urllib3.exceptions.TimeoutError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether a transport failure (a RegistryError from :func:`transport_errors`) may go
    away on another attempt: connection refused or reset, a broken or cut body, a timeout."""
    chain = _exception_chain(exc)
    if exc.__cause__ is None or any(isinstance(e, _PERMANENT) for e in chain):
        return False
    # a TLS failure is the peer's configuration (a handshake refused, plain HTTP on an HTTPS
    # port) unless it is the connection ending mid-stream, as a reset looks under TLS
    if any(isinstance(e, ssl.SSLError) and not isinstance(e, _TLS_CUT) for e in chain):
        return False
    return any(
        isinstance(
            e,
            (
                requests.RequestException,
                urllib3.exceptions.HTTPError,
                http.client.HTTPException,
                OSError,
            ),
        )
        for e in chain
    )


def is_timeout(exc: BaseException) -> bool:
    """Whether a transport failure was a wait that ran out (connect or read)."""
    chain = _exception_chain(exc)
    # urllib3's NewConnectionError (refused, unreachable) subclasses ConnectTimeoutError
    if any(isinstance(e, urllib3.exceptions.NewConnectionError) for e in chain):
        return False
    return any(isinstance(e, _TIMEOUTS) for e in chain)


_IDEMPOTENT = frozenset({"GET", "HEAD"})


@dataclass
class HttpClient:
    """A session plus the rules for timeouts, retries, TLS verification and redirects.

    ``unverified_netlocs`` lists ``host[:port]`` values (as in the URL) reached over HTTPS
    without certificate verification (insecure registries); every other host is verified,
    including object storage an insecure registry redirects to.
    """

    session: requests.Session
    policy: RetryPolicy = field(default_factory=RetryPolicy.resolve)
    unverified_netlocs: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for netloc in self.unverified_netlocs:
            quiet_insecure_warnings(netloc)

    def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        authorization: str | None = None,
        stats: TransferStats | None = None,
        data: Mapping[str, str] | None = None,
        attempts: Attempts | None = None,
    ) -> requests.Response:
        """Send a request, following redirects; the response is streamed (caller closes it).

        ``authorization`` is sent only to the origin of ``url``: never along a redirect to
        another scheme, host or port. GET and HEAD are retried within ``attempts`` (a fresh
        budget from :attr:`policy` if None) on connection errors, timeouts and
        :data:`~seekoci.registry.retry.RETRY_STATUSES`; a 400 or 403 from where a redirect led
        (a signed URL that expired) sends the request back to ``url`` for a fresh redirect,
        at most twice. Other statuses are the caller's to map.
        """
        if attempts is None:
            attempts = self.policy.begin(f"{method} {redact_url(url)}")
        retry_ok = method.upper() in _IDEMPOTENT
        redirects_renewed = 0
        while True:
            try:
                response = self._follow(method, url, headers, authorization, stats, data, attempts)
            except RegistryError as exc:
                if not retry_ok or not is_transient(exc):
                    raise
                reason = str(exc).split(": ", 1)[-1]  # the failure, without the URL
                if is_timeout(exc):
                    attempts.waited(attempts.wait(), reason, exc.__cause__ or exc)
                attempts.retry(reason, status=exc.status, cause=exc.__cause__ or exc)
                continue
            status = response.status_code
            if not retry_ok:
                return response
            if status in RETRY_STATUSES and attempts.can_retry():
                retry_after = None
                if status in (429, 503):
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                    if retry_after is not None and retry_after > MAX_RETRY_AFTER_SECONDS:
                        return response  # "come back much later": no point in retrying now
                response.close()
                attempts.retry(f"HTTP {status}", status=status, retry_after=retry_after)
                continue
            if (
                status in (400, 403)
                and origin(response.url) != origin(url)
                and redirects_renewed < 2
                and attempts.can_retry()
            ):
                response.close()
                redirects_renewed += 1
                attempts.retry(f"HTTP {status} from {redact_url(response.url)} (expired URL?)")
                continue
            return response

    def _follow(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        authorization: str | None,
        stats: TransferStats | None,
        data: Mapping[str, str] | None,
        attempts: Attempts,
    ) -> requests.Response:
        """One attempt: the request and the redirects it leads to."""
        auth_origin = origin(url)
        hops = 0
        while True:
            request_headers = dict(headers or {})
            if authorization is not None and origin(url) == auth_origin:
                request_headers["Authorization"] = authorization
            what = f"{method} {redact_url(url)}"
            wait = attempts.wait(last=method.upper() not in _IDEMPOTENT)  # (never retried)
            with transport_errors(what):
                response = self.session.request(
                    method,
                    url,
                    headers=request_headers,
                    data=data,
                    stream=True,
                    allow_redirects=False,
                    timeout=(wait, wait),
                    verify=urlsplit(url).netloc not in self.unverified_netlocs,
                )
            if stats is not None:
                stats.add_request()
            status = response.status_code
            location = response.headers.get("Location")
            if status in _REDIRECT_STATUSES and location:
                response.close()
                hops += 1
                if hops > MAX_REDIRECTS:
                    raise RegistryError(
                        f"{what}: more than {MAX_REDIRECTS} redirects", status=status
                    )
                url = urljoin(url, location)
                if status == 303 and method != "HEAD":
                    method, data = "GET", None
                log.debug("%s redirected to %s", what, redact_url(url))
                continue
            return response


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def read_body(response: requests.Response, *, limit: int, what: str, hasher: Any = None) -> bytes:
    """Read a whole (small) body as sent, at most ``limit`` bytes; closes the response.

    Returns ``limit + 1`` bytes at most, so the caller can tell "too long" from "exact".
    ``hasher`` (a hashlib object) is fed each piece as it arrives: a 19 MB zTOC is hashed
    while the rest of it is still on the way.
    """
    try:
        whole = _read_declared(response, limit, what)
        if whole is not None:
            if hasher is not None:
                hasher.update(whole)
            return whole
        chunks: list[bytes] = []
        total = 0
        with transport_errors(what):
            while total <= limit:
                chunk = response.raw.read(min(1 << 20, limit + 1 - total), decode_content=False)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if hasher is not None:
                    hasher.update(chunk)
        return b"".join(chunks)
    finally:
        response.close()


#: The longest declared body received in one read: a longer one comes in pieces, so that a
#: length a server declares (up to what a descriptor from the same server claims: a
#: config "of 10**11 bytes") is never allocated before its bytes arrive
WHOLE_READ_MAX = 64 << 20


def _read_declared(response: requests.Response, limit: int, what: str) -> bytes | None:
    """A body of a declared length (``Content-Length``, not chunked, at most ``limit``)
    received whole in one read from http.client's buffered socket file: the bytes object
    it returns is the one the socket fills, where reading pieces and joining them copies
    every byte once more into a new object (a 19 MB zTOC: 44 -> 25 ms, most of the
    difference the page faults of the second buffer). None: not such a body (the caller
    reads it in pieces). A body cut short is the error a broken transfer is."""
    inner = getattr(response.raw, "_fp", None)
    if (
        not isinstance(inner, http.client.HTTPResponse)
        or inner.chunked
        or inner.length is None
        or inner.length > limit
        or inner.length > WHOLE_READ_MAX  # (a read allocates what it asks for first)
    ):
        return None
    length = inner.length
    with transport_errors(what):
        data = _read_whole(inner, length)
        if len(data) < length:
            raise http.client.IncompleteRead(data[-16:], length - len(data))
    release_connection(response.raw, inner)
    return data


def release_connection(raw: Any, inner: http.client.HTTPResponse) -> None:
    """After a body read under urllib3 (straight from http.client's ``inner``), to its
    end: the connection back to urllib3's pool for the next request."""
    release = getattr(raw, "release_conn", None)
    if release is not None and inner.isclosed():
        release()


def _read_whole(inner: http.client.HTTPResponse, length: int) -> bytes:
    """One read of ``length`` bytes (http.client counts its length down and closes at 0)."""
    return inner.read(length)


def iter_body(response: requests.Response, *, chunk_size: int, what: str) -> Iterator[bytes]:
    """Stream a body as sent, chunk by chunk; exceptions mapped like everywhere else."""
    with transport_errors(what):
        stream = response.raw.stream(chunk_size, decode_content=False)
    while True:
        with transport_errors(what):
            chunk = next(stream, None)
        if chunk is None:
            return
        if chunk:
            yield chunk


def error_detail(response: requests.Response) -> str:
    """The registry's own error code and message (distribution's JSON error body), if any.

    Reads at most 16 KiB and quotes at most 200 characters of ``code: message``: enough to
    say ``MANIFEST_UNKNOWN`` or ``TOOMANYREQUESTS`` without echoing an arbitrary body.
    """
    try:
        body = read_body(response, limit=16 << 10, what="error body")
        data = _json.loads(body)
        first = data["errors"][0]
        text = f"{first.get('code', '')}: {first.get('message', '')}".strip(": ")
    except (RegistryError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return ""
    return text[:200]
