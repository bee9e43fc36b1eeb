"""Blobs over HTTP as range sources: registry layer blobs and plain URLs.

A range read is one ``GET`` with ``Range: bytes=a-b`` that must come back ``206`` with a
``Content-Range`` naming exactly that range of a blob of the expected size. Anything else is a
RegistryError, because some servers and CDNs ignore ``Range`` and send the whole blob with
``200``; reading gigabytes to return a few kilobytes would be silently disastrous.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

from requests import Response

from ..errors import IntegrityError, InvalidReferenceError, RegistryError
from ..source import STREAM_CHUNK_SIZE
from .auth import basic_header
from .client import RegistryClient, check_status, raise_for_status
from .digest import verify_digest
from .manifest import Descriptor
from .transport import HttpClient, TransferStats, iter_body, new_session, read_body, redact_url

_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_UNSATISFIED_RANGE_RE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)


class HTTPRangeSource:
    """Range reads and streaming over HTTP; subclasses say how to send the GET.

    Thread-safe: each call makes its own request; the counters sit behind a lock.
    """

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._stats = TransferStats()

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
        """HTTP requests made so far (redirect hops and auth retries included)."""
        return self._stats.requests

    def _get(self, headers: Mapping[str, str]) -> Response:
        raise NotImplementedError

    def read_range(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"bad range {offset}+{length} of {self._name}")
        end = min(offset + length, self._size)
        if offset >= end:
            return b""
        last = end - 1
        response = self._get({"Range": f"bytes={offset}-{last}"})
        self._expect_partial(response, offset, last)
        want = end - offset
        what = f"{self._name} bytes {offset}-{last}"
        data = read_body(response, limit=want, what=what)
        self._stats.add_bytes(len(data))
        if len(data) < want:
            raise RegistryError(f"{what}: short body ({len(data)} of {want} bytes)")
        if len(data) > want:
            raise RegistryError(f"{what}: server sent more than the {want} bytes asked for")
        return data

    def iter_from(self, offset: int = 0, chunk_size: int = STREAM_CHUNK_SIZE) -> Iterator[bytes]:
        if offset < 0:
            raise ValueError(f"bad offset {offset} of {self._name}")
        if offset >= self._size:
            return
        response = self._get({"Range": f"bytes={offset}-"} if offset > 0 else {})
        try:
            if offset > 0:
                self._expect_partial(response, offset, self._size - 1)
            else:
                check_status(response, where=self._name, expected=(200,))
            expected = self._size - offset
            received = 0
            what = f"{self._name} from byte {offset}"
            for chunk in iter_body(response, chunk_size=chunk_size, what=what):
                received += len(chunk)
                self._stats.add_bytes(len(chunk))
                if received > expected:
                    raise RegistryError(f"{what}: body longer than the {expected} bytes expected")
                yield chunk
            if received < expected:
                raise RegistryError(f"{what}: short body ({received} of {expected} bytes)")
        finally:
            response.close()

    def _expect_partial(self, response: Response, first: int, last: int) -> None:
        """Insist on ``206`` with ``Content-Range: bytes first-last/size``; else close and raise."""
        status = response.status_code
        asked = f"bytes={first}-{last}"
        if status == 200:
            response.close()
            raise RegistryError(
                f"{self._name}: server ignored Range (answered 200 to {asked})", status=200
            )
        if status != 206:
            raise_for_status(response, where=self._name)
        header = response.headers.get("Content-Range", "")
        match = _CONTENT_RANGE_RE.match(header)
        problem = None
        if match is None:
            problem = f"missing or malformed Content-Range {header[:80]!r}"
        else:
            start, end, total = match.groups()
            if (int(start), int(end)) != (first, last):
                problem = f"Content-Range {start}-{end} does not match the range asked for"
            elif total != "*" and int(total) != self._size:
                problem = f"Content-Range says the blob has {total} bytes, expected {self._size}"
        if problem is not None:
            response.close()
            raise RegistryError(f"{self._name}: {problem} ({asked})", status=status)


class RegistryBlobSource(HTTPRangeSource):
    """A layer blob in a registry, read by ranges through the registry client (auth, redirects)."""

    def __init__(self, client: RegistryClient, repository: str, descriptor: Descriptor) -> None:
        super().__init__(descriptor.size, descriptor.digest)
        self._client = client
        self._repository = repository
        self.descriptor = descriptor

    def _get(self, headers: Mapping[str, str]) -> Response:
        return self._client.get_blob(
            self._repository, self.descriptor.digest, headers=headers, stats=self._stats
        )

    def __repr__(self) -> str:
        return f"RegistryBlobSource({self._client.registry}/{self._repository}@{self._name})"


def fetch_blob(client: RegistryClient, repository: str, descriptor: Descriptor) -> bytes:
    """A whole (small) blob, verified against its descriptor; IntegrityError if it is not it."""
    what = f"{client.registry}/{repository} blob {descriptor.digest}"
    response = client.get_blob(repository, descriptor.digest)
    check_status(response, where=what)
    data = read_body(response, limit=descriptor.size, what=what)
    if len(data) != descriptor.size:
        got = "more than" if len(data) > descriptor.size else f"only {len(data)} of"
        raise IntegrityError(f"{what}: got {got} the {descriptor.size} bytes it should have")
    verify_digest(data, descriptor.digest, what=what)
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
        super().__init__(0, redact_url(url))
        self._size = self._discover_size()

    def _get(self, headers: Mapping[str, str]) -> Response:
        return self._http.send(
            "GET", self._url, headers=headers, authorization=self._authorization, stats=self._stats
        )

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
                    f"{self._name}: server ignored Range (answered 200 to bytes=0-0)", status=200
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
