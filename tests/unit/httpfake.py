"""The HTTP plumbing the unit tests' fake servers share: a quiet, keep-alive handler that
sends whole responses in one segment."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any


class QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # idle keep-alive connections end, so no thread lingers after a test
    # Headers and body in one segment: otherwise Nagle + delayed ACK add 40 ms per request.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        """Send a complete response (HEAD: headers only)."""
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def reply_json(
        self,
        status: int,
        doc: Any,
        headers: dict[str, str] | None = None,
        *,
        compact: bool = False,
    ) -> None:
        separators = (",", ":") if compact else None
        body = json.dumps(doc, separators=separators).encode()
        self.reply(status, body, {"Content-Type": "application/json", **(headers or {})})
