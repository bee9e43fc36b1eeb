"""A fault-injecting reverse proxy in front of the real registry, and an "object storage"
server on another loopback address that the proxy can redirect blob GETs to.

:class:`FaultProxy` forwards every request to the registry (headers untouched, Range and
Authorization included) and, for requests whose path contains a fault's ``match`` (a layer
digest), breaks the answer the way flaky networks and odd servers do, for the first
``times`` matching requests (None: every one). Kinds (:class:`Fault`):

``reset``        the full headers, ``after`` body bytes, then a TCP reset
``truncate``     the full ``Content-Length``, half the body, then a clean close
``status``       ``status`` (500, 502, 503 ...) instead of the answer
``ratelimit``    ``429`` with ``Retry-After: retry_after``
``ignore-range`` the ``Range`` header dropped on the way: a 200 with the whole blob
``wrong-range``  the range moved ``shift`` bytes back before forwarding: a 206 whose
                 Content-Range (truthfully) names other bytes than those asked for
``flip``         one byte of the body flipped (the middle one)
``hang``         nothing at all for ``seconds``, then the connection closed
``stall``        the headers and ``after`` bytes of the body, then nothing for ``seconds``
``redirect``     a 307 to the :class:`StorageServer` (another host: 127.0.0.2), with a
                 fresh signature in the query each time
``expire``       the storage server answers 403 to the first ``times`` signatures

Everything stays on loopback. Bodies are small in these tests, so answers are read whole
from the registry before being sent on (broken or not).
"""

from __future__ import annotations

import dataclasses
import http.client
import itertools
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
}


@dataclasses.dataclass
class Fault:
    kind: str
    times: int | None = 1
    match: str = "/blobs/"
    after: int | None = 1000
    status: int = 503
    retry_after: str = "1"
    shift: int = 100
    seconds: float = 3.0
    #: count ``times`` per blob path instead of over all of them
    per_path: bool = False
    hits: int = 0
    _by_path: dict[str, int] = dataclasses.field(default_factory=dict)

    def take(self, path: str) -> bool:
        """Whether this request gets the fault (counting it)."""
        if self.match not in path:
            return False
        key = path.split("?")[0] if self.per_path else ""
        done = self._by_path.get(key, 0)
        if self.times is not None and done >= self.times:
            return False
        self._by_path[key] = done + 1
        self.hits += 1
        return True


@dataclasses.dataclass
class Seen:
    method: str
    path: str
    range: str | None
    authorization: bool
    status: int


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that give up on a stalled or broken answer are the point


def _upstream_request(
    host: str, port: int, method: str, path: str, headers: dict[str, str], body: bytes | None
) -> tuple[int, str, list[tuple[str, str]], bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, resp.reason, resp.getheaders(), data
    finally:
        conn.close()


class _Base:
    def __init__(self, address: str) -> None:
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self._server = _Server((address, 0), self._handler())
        self.port = int(self._server.server_address[1])
        self.host = f"{address}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def record(self, handler: BaseHTTPRequestHandler, status: int) -> None:
        with self.lock:
            self.seen.append(
                Seen(
                    handler.command,
                    handler.path,
                    handler.headers.get("Range"),
                    "Authorization" in handler.headers,
                    status,
                )
            )

    def requests(self, match: str = "") -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if match in s.path]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def read_body(self) -> bytes | None:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def send_answer(
        self, status: int, headers: list[tuple[str, str]], body: bytes, *, length: int | None = None
    ) -> None:
        self.send_response_only(status)
        for key, value in headers:
            if key.lower() not in _HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), not a FIN."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


class StorageServer(_Base):
    """Object storage on 127.0.0.2: serves ``/blob/<repo>/<digest>?sig=N`` by fetching the
    blob from the registry with its own credentials (``Range`` passed on); a signature in
    ``expired`` gets 403. ``seen`` records whether an ``Authorization`` header arrived."""

    def __init__(self, upstream: str, credentials: tuple[str, str] | None) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.credentials = credentials
        self.expired: set[str] = set()
        super().__init__("127.0.0.2")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        storage = self

        class Handler(_Handler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                sig = parse_qs(url.query).get("sig", [""])[0]
                if sig in storage.expired:
                    storage.record(self, 403)
                    body = b"<Error><Code>AccessDenied</Code>Request has expired</Error>"
                    self.send_answer(403, [("Content-Type", "application/xml")], body)
                    return
                _, repo_and_digest = url.path.split("/blob/", 1)
                repo, _, digest = repo_and_digest.rpartition("/")
                headers = {}
                if self.headers.get("Range"):
                    headers["Range"] = self.headers["Range"]
                if storage.credentials is not None:
                    import base64

                    token = base64.b64encode(":".join(storage.credentials).encode()).decode()
                    headers["Authorization"] = f"Basic {token}"
                status, _, answer_headers, data = _upstream_request(
                    *storage.upstream, "GET", f"/v2/{repo}/blobs/{digest}", headers, None
                )
                storage.record(self, status)
                keep = [(k, v) for k, v in answer_headers if k.lower() == "content-range"]
                keep.append(("Content-Type", "application/octet-stream"))
                self.send_answer(status, keep, data)

        return Handler


class FaultProxy(_Base):
    """The registry at ``upstream`` (``http://host:port``) behind :attr:`faults`."""

    def __init__(self, upstream: str, *, storage: StorageServer | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.upstream_netloc = parts.netloc
        self.faults: list[Fault] = []
        self.storage = storage
        self._signatures = itertools.count(1)
        super().__init__("127.0.0.1")

    def ref(self, repo: str, tag: str = "latest") -> str:
        return f"{self.host}/{repo}:{tag}"

    def _take(self, kind: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.kind == kind and fault.take(path):
                    return fault
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(_Handler):
            def _forward(self) -> None:
                body = self.read_body()
                path = self.path
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                if body is not None:
                    headers["Content-Length"] = str(len(body))
                blob_get = self.command == "GET" and "/blobs/sha256:" in path
                if blob_get:
                    if (fault := proxy._take("hang", path)) is not None:
                        proxy.record(self, 0)
                        time.sleep(fault.seconds)
                        self.close_connection = True
                        return
                    if (fault := proxy._take("status", path)) is not None:
                        proxy.record(self, fault.status)
                        self.send_answer(fault.status, [("Content-Type", "text/plain")], b"oops")
                        return
                    if (fault := proxy._take("ratelimit", path)) is not None:
                        proxy.record(self, 429)
                        answer = [("Retry-After", fault.retry_after)]
                        self.send_answer(429, answer, b"slow down")
                        return
                    if proxy.storage is not None and proxy._take("redirect", path) is not None:
                        repo, _, digest = path.split("/v2/", 1)[1].partition("/blobs/")
                        sig = next(proxy._signatures)
                        with proxy.lock:
                            if any(f.kind == "expire" and f.take(path) for f in proxy.faults):
                                proxy.storage.expired.add(str(sig))
                        location = (
                            f"http://{proxy.storage.host}/blob/{repo}/{digest}"
                            f"?sig={sig}&X-Amz-Signature=SECRET-SIGNATURE"
                        )
                        proxy.record(self, 307)
                        self.send_answer(307, [("Location", location)], b"")
                        return
                    if "Range" in headers and proxy._take("ignore-range", path) is not None:
                        del headers["Range"]
                    if (
                        "Range" in headers
                        and (fault := proxy._take("wrong-range", path)) is not None
                    ):
                        first, _, last = headers["Range"].removeprefix("bytes=").partition("-")
                        moved = max(0, int(first) - fault.shift)
                        end = str(max(moved, int(last) - fault.shift)) if last else ""
                        headers["Range"] = f"bytes={moved}-{end}"
                status, _, answer, data = _upstream_request(
                    *proxy.upstream, self.command, path, headers, body
                )
                answer = [
                    (k, v.replace(f"//{proxy.upstream_netloc}", f"//{proxy.host}", 1))
                    if k.lower() == "location"
                    else (k, v)
                    for k, v in answer
                ]
                proxy.record(self, status)
                if not blob_get or status not in (200, 206):
                    self.send_answer(status, answer, data)
                    return
                if (fault := proxy._take("flip", path)) is not None and data:
                    middle = len(data) // 2
                    data = data[:middle] + bytes([data[middle] ^ 0x40]) + data[middle + 1 :]
                if (fault := proxy._take("reset", path)) is not None:
                    self.send_answer(status, answer, data[: fault.after or 0], length=len(data))
                    self.reset()
                    return
                if proxy._take("truncate", path) is not None:
                    self.send_answer(status, answer, data[: len(data) // 2], length=len(data))
                    self.close_connection = True
                    return
                if (fault := proxy._take("stall", path)) is not None:
                    self.send_answer(status, answer, data[: fault.after or 0], length=len(data))
                    time.sleep(fault.seconds)
                    self.close_connection = True
                    return
                self.send_answer(status, answer, data)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        return Handler
