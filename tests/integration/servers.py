"""Real servers for the integration tests: the registry, a token service, a counting proxy.

* :class:`RegistryServer` runs Debian's ``docker-registry`` (CNCF distribution 2.8) on a free
  loopback port with filesystem storage in a temporary directory, optionally behind htpasswd
  (bcrypt) or token auth.
* :class:`TokenService` is the token endpoint for token auth: ES256 JWTs signed by a key whose
  self-signed certificate is the registry's ``rootcertbundle``.
* :class:`CountingProxy` is a reverse proxy in front of a registry that counts requests and
  response body bytes per kind of path, so tests can assert how much seekoci fetched.

See /work/shared/specs/REGISTRY-TESTING.md for the registry facts these rely on.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import http.client
import json
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import bcrypt
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from pushclient import RegistryClient

REGISTRY_BINARY = "docker-registry"
STARTUP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def blob_storage_path(storage_root: Path, digest: str) -> Path:
    """Where the filesystem driver keeps a blob's bytes."""
    algo, _, hexdigest = digest.partition(":")
    return storage_root / "docker/registry/v2/blobs" / algo / hexdigest[:2] / hexdigest / "data"


def tamper_blob(storage_root: Path, digest: str, offset: int, replacement: bytes) -> bytes:
    """Overwrite bytes of a stored blob in place (same length): a registry that lies.

    Returns the bytes that were there before, so a test can restore them.
    """
    path = blob_storage_path(storage_root, digest)
    size = path.stat().st_size
    if offset < 0 or offset + len(replacement) > size:
        raise ValueError(f"{digest}: {offset}+{len(replacement)} is outside its {size} bytes")
    with path.open("r+b") as f:
        f.seek(offset)
        before = f.read(len(replacement))
        f.seek(offset)
        f.write(replacement)
    return before


# --------------------------------------------------------------------------- token service


def libtrust_kid(public_key: ec.EllipticCurvePublicKey) -> str:
    """The key id docker/libtrust derives: base32 of sha256(DER SPKI)[:30], 12 groups of 4."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclasses.dataclass
class TokenRecord:
    account: str  # "" for anonymous
    scopes: list[str]
    access: list[dict[str, Any]]


class TokenService:
    """A Docker token service (``GET realm?service=&scope=``, also OAuth2 ``POST``).

    Anonymous callers get ``pull`` on every repository except those under
    ``private_prefix``; callers with valid Basic credentials get every action they ask for;
    wrong credentials get 401. ``issued`` counts tokens handed out.
    """

    def __init__(
        self,
        workdir: Path,
        users: Mapping[str, str],
        *,
        service: str = "seekoci-test-registry",
        issuer: str = "seekoci-test-issuer",
        private_prefix: str = "private/",
        lifetime: int = 300,
    ) -> None:
        self.users = dict(users)
        self.service = service
        self.issuer = issuer
        self.private_prefix = private_prefix
        self.lifetime = lifetime
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid = libtrust_kid(self.key.public_key())
        self.cert_path = workdir / "token-cert.pem"
        self.cert_path.write_bytes(self._self_signed_cert())
        self.records: list[TokenRecord] = []
        self.refused = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def issued(self) -> int:
        with self._lock:
            return len(self.records)

    def _self_signed_cert(self) -> bytes:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "seekoci test token signer")])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def grant(self, account: str, scope: str) -> dict[str, Any] | None:
        """The access entry for one ``type:name:actions`` scope (None: nothing granted)."""
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if not kind or not name:
            return None
        asked = [a for a in actions.split(",") if a]
        if account:
            allowed = asked
        elif kind == "repository" and not name.startswith(self.private_prefix):
            allowed = [a for a in asked if a == "pull"]
        else:
            allowed = []
        return {"type": kind, "name": name, "actions": allowed}

    def make_token(self, account: str, scopes: list[str]) -> str:
        access = [g for g in (self.grant(account, s) for s in scopes) if g is not None]
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": account,
            "aud": self.service,
            "exp": now + self.lifetime,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        header = {"typ": "JWT", "alg": "ES256", "kid": self.kid}
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        der = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        with self._lock:
            self.records.append(TokenRecord(account, scopes, access))
        return signing_input + "." + _b64url(signature)

    def check_basic(self, header: str | None) -> str | None:
        """Account name for a valid ``Basic`` header, ``""`` for none, None if refused."""
        if not header:
            return ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return None
        if user in self.users and secrets.compare_digest(self.users[user], password):
            return user
        return None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True  # else ~40 ms per proxied request
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="seekoci-test-tokens"')
                self.end_headers()
                self.wfile.write(data)

            def _issue(self, account: str | None, scopes: list[str]) -> None:
                if account is None:
                    with service._lock:
                        service.refused += 1
                    self._reply(401, {"errors": [{"code": "UNAUTHORIZED"}]})
                    return
                token = service.make_token(account, scopes)
                self._reply(
                    200,
                    {
                        "token": token,
                        "access_token": token,
                        "expires_in": service.lifetime,
                        "issued_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                    },
                )

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                if url.path != "/token":
                    self._reply(404, {"errors": [{"code": "NOT_FOUND"}]})
                    return
                scopes = [s for value in query.get("scope", []) for s in value.split()]
                self._issue(service.check_basic(self.headers.get("Authorization")), scopes)

            def do_POST(self) -> None:
                # OAuth2 (what containerd and newer Docker use): grant_type=password.
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                if urlsplit(self.path).path != "/token":
                    self._reply(404, {"errors": [{"code": "NOT_FOUND"}]})
                    return
                if form.get("grant_type") != ["password"]:
                    self._reply(400, {"error": "unsupported_grant_type"})
                    return
                user = form.get("username", [""])[0]
                password = form.get("password", [""])[0]
                ok = user in service.users and secrets.compare_digest(service.users[user], password)
                scopes = [s for value in form.get("scope", []) for s in value.split()]
                self._issue(user if ok else None, scopes)

        return Handler

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --------------------------------------------------------------------------- registry


class RegistryServer:
    """A ``docker-registry serve`` process on a free 127.0.0.1 port.

    No auth by default; ``htpasswd_users`` turns on Basic auth (bcrypt hashes), a
    ``token_service`` token auth. ``credentials`` (if any) are used by :meth:`push` and are
    exposed as ``username`` and ``password``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        htpasswd_users: Mapping[str, str] | None = None,
        token_service: TokenService | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        if shutil.which(REGISTRY_BINARY) is None:
            raise RuntimeError(
                f"{REGISTRY_BINARY} is not installed (apt-get install docker-registry)"
            )
        self.workdir = workdir
        self.root = workdir / "storage"
        self.root.mkdir(parents=True, exist_ok=True)
        self.token_service = token_service
        self.credentials = credentials
        self.log_path = workdir / "registry.log"
        self.config_path = workdir / "config.yml"
        self.auth_config: dict[str, Any] = {}
        if htpasswd_users is not None:
            htpasswd = workdir / "htpasswd"
            htpasswd.write_text(
                "".join(
                    f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
                    for user, pw in htpasswd_users.items()
                )
            )
            self.auth_config = {"htpasswd": {"realm": "seekoci-test", "path": str(htpasswd)}}
        elif token_service is not None:
            self.auth_config = {
                "token": {
                    "realm": token_service.realm,
                    "service": token_service.service,
                    "issuer": token_service.issuer,
                    "rootcertbundle": str(token_service.cert_path),
                }
            }
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def username(self) -> str:
        assert self.credentials is not None, "this registry has no credentials"
        return self.credentials[0]

    @property
    def password(self) -> str:
        assert self.credentials is not None, "this registry has no credentials"
        return self.credentials[1]

    @property
    def tokens_issued(self) -> int:
        """Tokens the token service has handed out so far (0 without token auth)."""
        return self.token_service.issued if self.token_service else 0

    def ref(self, repo: str, tag: str = "latest") -> str:
        sep = "@" if tag.startswith("sha256:") else ":"
        return f"{self.host}/{repo}{sep}{tag}"

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.root)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": secrets.token_hex(16)},
        }
        if self.auth_config:
            config["auth"] = self.auth_config
        return config

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> RegistryServer:
        for _attempt in range(3):
            self.port = free_port()
            # JSON is YAML: no YAML library needed.
            self.config_path.write_text(json.dumps(self._config(), indent=2))
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [REGISTRY_BINARY, "serve", str(self.config_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            if self._wait_ready():
                return self
            if "address already in use" not in self.log_text():
                break
        raise RuntimeError(
            f"docker-registry did not answer on {self.url}/v2/ within {STARTUP_TIMEOUT:.0f} s."
            f"\n--- its output ({self.log_path}) ---\n{self.log_text()[-4000:]}"
        )

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                resp = requests.get(f"{self.url}/v2/", timeout=1)
            except requests.ConnectionError:
                time.sleep(0.02)
                continue
            if resp.status_code in (200, 401):
                return True
            time.sleep(0.02)
        self.stop()
        return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    # ------------------------------------------------------------------ helpers for tests

    def client(self, auth: tuple[str, str] | None = None) -> RegistryClient:
        return RegistryClient(self.url, auth if auth is not None else self.credentials)

    def push(self, repo: str, tag: str, target: Any) -> str:
        """Push an ``imagebuilder`` Image or Index as ``repo:tag``; returns its digest."""
        return self.client().push(repo, tag, target)

    def blob_path(self, digest: str) -> Path:
        return blob_storage_path(self.root, digest)

    def tamper_blob(self, digest: str, offset: int, replacement: bytes) -> bytes:
        return tamper_blob(self.root, digest, offset, replacement)

    def blob_url(self, repo: str, digest: str) -> str:
        return f"{self.url}/v2/{repo}/blobs/{digest}"


# --------------------------------------------------------------------------- counting proxy

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}

_KINDS = [
    ("base", re.compile(r"^/v2/?$")),
    ("upload", re.compile(r"^/v2/.+/blobs/uploads/")),
    ("blob", re.compile(r"^/v2/.+/blobs/[a-z0-9]+:[a-f0-9]+$")),
    ("manifest", re.compile(r"^/v2/.+/manifests/[^/]+$")),
    ("tags", re.compile(r"^/v2/.+/tags/list$")),
]


def path_kind(path: str) -> str:
    """``manifest``, ``blob``, ``upload``, ``tags``, ``base`` (``/v2/``) or ``other``."""
    bare = urlsplit(path).path
    for kind, pattern in _KINDS:
        if pattern.match(bare):
            return kind
    return "other"


@dataclasses.dataclass
class ProxyRecord:
    method: str
    path: str
    kind: str
    range: str | None
    status: int
    body_bytes: int
    #: time.monotonic() when the request arrived and when its answer was sent
    start: float = 0.0
    end: float = 0.0


@dataclasses.dataclass
class FakeResponse:
    status: int
    body: bytes
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


class CountingProxy:
    """A threaded reverse proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port``).

    Headers pass through untouched (Range, Authorization, WWW-Authenticate, Host); a
    ``Location`` naming the upstream is rewritten to the proxy. ``records`` logs every request;
    :meth:`bytes` and :meth:`requests` sum them per kind of path. ``fakes`` maps a path (without
    query) to a :class:`FakeResponse` served instead of the upstream's answer: a lying registry.
    ``delay`` (seconds) is added to every request, as a far registry would: requests sent
    one after another then show as a chain (:meth:`sequential_round_trips`).
    """

    def __init__(self, upstream: str, *, delay: float = 0.0) -> None:
        self.delay = delay
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.upstream_netloc = parts.netloc
        self.records: list[ProxyRecord] = []
        self.fakes: dict[str, FakeResponse] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def ref(self, repo: str, tag: str = "latest") -> str:
        sep = "@" if tag.startswith("sha256:") else ":"
        return f"{self.host}/{repo}{sep}{tag}"

    def reset(self) -> None:
        with self._lock:
            self.records.clear()

    def _select(self, kind: str | None) -> Iterator[ProxyRecord]:
        with self._lock:
            records = [dataclasses.replace(r) for r in self.records]
        return (r for r in records if kind is None or r.kind == kind)

    def bytes(self, kind: str | None = None) -> int:
        """Response body bytes sent to clients (for one kind of path, or all)."""
        return sum(r.body_bytes for r in self._select(kind))

    def requests(self, kind: str | None = None) -> int:
        return sum(1 for _ in self._select(kind))

    def sequential_round_trips(self) -> int:
        """The longest chain of requests each sent after the one before it was answered:
        the round trips a client waited for one after another (concurrent ones count once)."""
        records = sorted(self._select(None), key=lambda r: r.start)
        depth: list[int] = []
        for i, r in enumerate(records):
            before = [depth[j] for j in range(i) if records[j].end <= r.start]
            depth.append(1 + max(before, default=0))
        return max(depth, default=0)

    def summary(self) -> str:
        lines = [
            f"{r.method} {r.path} range={r.range} -> {r.status} {r.body_bytes} B"
            for r in self._select(None)
        ]
        return "\n".join(lines)

    def _record(self, record: ProxyRecord) -> None:
        with self._lock:
            self.records.append(record)

    def _count(self, record: ProxyRecord, nbytes: int) -> None:
        with self._lock:
            record.body_bytes += nbytes

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self
        local = threading.local()

        def connection(fresh: bool = False) -> http.client.HTTPConnection:
            conn = getattr(local, "conn", None)
            if conn is None or fresh:
                if conn is not None:
                    conn.close()
                conn = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=60
                )
                local.conn = conn
            return conn

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True  # else ~40 ms per proxied request
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _read_request_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(body)
                        body += self.rfile.read(size)
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _forward(self) -> None:
                started = time.monotonic()
                try:
                    self._forward_timed(started)
                finally:
                    with proxy._lock:
                        for r in reversed(proxy.records):
                            if r.start == started:
                                r.end = time.monotonic()
                                break

            def _forward_timed(self, started: float) -> None:
                if proxy.delay:
                    time.sleep(proxy.delay)
                body = self._read_request_body()
                kind = path_kind(self.path)
                fake = proxy.fakes.get(urlsplit(self.path).path)
                if fake is not None:
                    self._send_fake(fake, kind, started)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                if body or self.command in ("PUT", "POST", "PATCH"):
                    headers["Content-Length"] = str(len(body))
                try:
                    conn = connection()
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                except (OSError, http.client.HTTPException):
                    conn = connection(fresh=True)
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                # The record is made and counted before bytes go out, so a client that has
                # read a response always finds it counted.
                record = ProxyRecord(
                    self.command, self.path, kind, self.headers.get("Range"), resp.status, 0,
                    start=started,
                )  # fmt: skip
                proxy._record(record)
                self.send_response_only(resp.status, resp.reason)
                for key, value in resp.getheaders():
                    if key.lower() in _HOP_BY_HOP or key.lower() == "content-length":
                        continue
                    if key.lower() == "location":
                        value = value.replace(f"//{proxy.upstream_netloc}", f"//{proxy.host}", 1)
                    self.send_header(key, value)
                no_body = self.command == "HEAD" or resp.status in (204, 304)
                length = resp.getheader("Content-Length")
                try:
                    if no_body:
                        if length is not None:
                            self.send_header("Content-Length", length)
                        self.end_headers()
                        resp.read()
                    elif length is not None:
                        self.send_header("Content-Length", length)
                        self.end_headers()
                        while chunk := resp.read(1 << 16):
                            proxy._count(record, len(chunk))
                            self.wfile.write(chunk)
                    else:
                        data = resp.read()
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        proxy._count(record, len(data))
                        self.wfile.write(data)
                    self.wfile.flush()
                except OSError:
                    # The client went away mid-body (a reader that stopped early): drop the
                    # half-read upstream response with its connection.
                    connection(fresh=True)
                    self.close_connection = True

            def _send_fake(self, fake: FakeResponse, kind: str, started: float = 0.0) -> None:
                body = b"" if self.command == "HEAD" else fake.body
                proxy._record(
                    ProxyRecord(
                        self.command,
                        self.path,
                        kind,
                        self.headers.get("Range"),
                        fake.status,
                        len(body),
                        start=started,
                    )
                )
                self.send_response_only(fake.status)
                for key, value in fake.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(fake.body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        return Handler

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
