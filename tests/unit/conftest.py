"""Local HTTP fixtures for the registry tests: a fake registry, a blob server, an OCI layout.

Everything listens on 127.0.0.1 port 0 (the OS picks a free port) and is torn down after the
test. The fakes are deliberately small and configurable per test through plain attributes and
a ``hook`` (a function that may answer a request itself).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from httpfake import QuietHandler

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""


class _Handler(QuietHandler):
    server: _Server

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        request = RecordedRequest(
            self.command, parts.path, parse_qs(parts.query), dict(self.headers.items()), body
        )
        with self.server.owner.lock:
            self.server.owner.requests.append(request)
        self.server.owner.handle(self, request)

    do_GET = do_HEAD = do_POST = _dispatch

    def serve_bytes(
        self,
        data: bytes,
        *,
        honour_range: bool = True,
        content_range: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Serve ``data`` honouring a single ``Range`` (as a real blob store does)."""
        extra = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        extra.update(headers or {})
        header = self.headers.get("Range")
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", header or "")
        if not honour_range or match is None:
            self.reply(200, data, extra)
            return
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) else len(data) - 1
        end = min(end, len(data) - 1)
        if start >= len(data):
            self.reply(416, b"", {**extra, "Content-Range": f"bytes */{len(data)}"})
            return
        extra["Content-Range"] = content_range or f"bytes {start}-{end}/{len(data)}"
        self.reply(206, data[start : end + 1], extra)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: LocalServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up mid-request is what some tests are about


class LocalServer:
    """A threaded HTTP server on 127.0.0.1:0 whose requests go to :meth:`handle`.

    ``hook(handler, request) -> bool``: when set and it returns True, the request was answered
    by the hook and the default handling is skipped.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self.hook: Callable[[_Handler, RecordedRequest], bool] | None = None
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self.netloc = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.netloc}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def handle(self, h: _Handler, request: RecordedRequest) -> None:
        if self.hook is not None and self.hook(h, request):
            return
        self.default(h, request)

    def default(self, h: _Handler, request: RecordedRequest) -> None:
        h.reply(404)

    def paths(self, method: str | None = None) -> list[str]:
        with self.lock:
            return [r.path for r in self.requests if method is None or r.method == method]


class FakeBlobServer(LocalServer):
    """Plain static files with Range support: object storage a registry redirects to."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, bytes] = {}
        self.head_status: int | None = None  # e.g. 403: HEAD refused, as signed URLs often do
        self.honour_range = True

    def default(self, h: _Handler, request: RecordedRequest) -> None:
        data = self.files.get(request.path)
        if data is None:
            h.reply(404)
        elif request.method == "HEAD" and self.head_status is not None:
            h.reply(self.head_status)
        else:
            h.serve_bytes(data, honour_range=self.honour_range)


@dataclass
class FakeAuth:
    """How the fake registry guards ``/v2/``: None, ``basic`` or ``bearer``."""

    mode: str | None = None
    username: str = "alice"
    password: str = "s3cret-PASSWORD"
    #: Bearer: credentials the token endpoint demands (None: anonymous tokens are fine).
    token_needs_credentials: bool = False
    #: Bearer: the identity (refresh) token accepted by the POST flow.
    refresh_token: str | None = None
    token_field: str = "token"
    valid_tokens: set[str] = field(default_factory=set)
    issued: list[str] = field(default_factory=list)


class FakeRegistry(LocalServer):
    """An in-memory distribution registry, enough for pulls: manifests, blobs, auth."""

    def __init__(self) -> None:
        super().__init__()
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.blobs: dict[str, bytes] = {}
        self.auth = FakeAuth()
        self.honour_range = True
        self.content_range: str | None = None
        self.blob_redirect: FakeBlobServer | None = None
        self.send_digest_header = True
        self.realm = f"{self.url}/token"

    # -- content ----------------------------------------------------------------------------

    def add_blob(self, data: bytes, media_type: str = OCI_LAYER_GZIP) -> dict[str, Any]:
        digest = sha256(data)
        self.blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def add_manifest(
        self, repo: str, doc: Any, *, tags: tuple[str, ...] = (), media_type: str | None = None
    ) -> dict[str, Any]:
        body = doc if isinstance(doc, bytes) else canonical_json(doc)
        if media_type is None:
            media_type = (
                doc.get("mediaType", OCI_MANIFEST) if isinstance(doc, dict) else OCI_MANIFEST
            )
        digest = sha256(body)
        for ref in (digest, *tags):
            self.manifests[(repo, ref)] = (body, media_type)
        return {"mediaType": media_type, "digest": digest, "size": len(body)}

    def add_image(
        self,
        repo: str,
        *,
        tags: tuple[str, ...] = (),
        layers: tuple[bytes, ...] = (b"layer-0",),
        platform: str = "linux/amd64",
        docker: bool = False,
    ) -> dict[str, Any]:
        """Push a single-platform image; returns its manifest descriptor (with platform)."""
        config_doc, plat = image_config(platform)
        config = self.add_blob(canonical_json(config_doc), DOCKER_CONFIG if docker else OCI_CONFIG)
        layer_type = DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP
        media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
        manifest = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": config,
            "layers": [self.add_blob(data, layer_type) for data in layers],
        }
        desc = self.add_manifest(repo, manifest, tags=tags)
        desc["platform"] = plat
        return desc

    def add_index(
        self,
        repo: str,
        entries: list[dict[str, Any]],
        *,
        tags: tuple[str, ...] = (),
        docker: bool = False,
    ) -> dict[str, Any]:
        doc = {
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST if docker else OCI_INDEX,
            "manifests": entries,
        }
        return self.add_manifest(repo, doc, tags=tags)

    # -- serving ----------------------------------------------------------------------------

    def default(self, h: _Handler, request: RecordedRequest) -> None:
        if request.path == "/token":
            self._token(h, request)
            return
        match = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/([^/]+)", request.path)
        repo = match.group(1) if match else ""
        if request.path.startswith("/v2/") and not self._authorized(h, request, repo):
            return
        if request.path == "/v2/":
            h.reply_json(200, {})
        elif match and match.group(2) == "manifests":
            found = self.manifests.get((repo, match.group(3)))
            accept = request.headers.get("Accept", "")
            if found is None or found[1] not in accept:
                h.reply_json(
                    404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
                )
                return
            body, media_type = found
            headers = {"Content-Type": media_type}
            if self.send_digest_header:
                headers["Docker-Content-Digest"] = sha256(body)
            h.reply(200, body, headers)
        elif match and match.group(2) == "blobs":
            digest = match.group(3)
            data = self.blobs.get(digest)
            if data is None:
                h.reply_json(404, {"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]})
            elif self.blob_redirect is not None:
                self.blob_redirect.files[f"/blobs/{digest}"] = data
                location = f"{self.blob_redirect.url}/blobs/{digest}?X-Signature=sig-123"
                h.reply(307, b"", {"Location": location})
            else:
                h.serve_bytes(
                    data, honour_range=self.honour_range, content_range=self.content_range
                )
        else:
            h.reply(404)

    def _authorized(self, h: _Handler, request: RecordedRequest, repo: str) -> bool:
        auth = self.auth
        given = request.headers.get("Authorization", "")
        if auth.mode is None:
            return True
        if auth.mode == "basic":
            expected = (
                "Basic " + base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()
            )
            if given == expected:
                return True
            h.reply_json(
                401,
                {"errors": [{"code": "UNAUTHORIZED"}]},
                {"WWW-Authenticate": 'Basic realm="fake"'},
            )
            return False
        if given.startswith("Bearer ") and given[7:] in auth.valid_tokens:
            return True
        scope = f',scope="repository:{repo}:pull"' if repo else ""
        error = ',error="invalid_token"' if given else ""
        challenge = f'Bearer realm="{self.realm}",service="fake-registry"{scope}{error}'
        h.reply_json(401, {"errors": [{"code": "UNAUTHORIZED"}]}, {"WWW-Authenticate": challenge})
        return False

    def _token(self, h: _Handler, request: RecordedRequest) -> None:
        auth = self.auth
        if request.method == "POST":
            form = parse_qs(request.body.decode())
            if auth.refresh_token is None or form.get("refresh_token") != [auth.refresh_token]:
                h.reply_json(401, {"error": "invalid_grant"})
                return
        elif auth.token_needs_credentials:
            expected = (
                "Basic " + base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()
            )
            if request.headers.get("Authorization") != expected:
                h.reply_json(401, {"details": "bad credentials"})
                return
        with self.lock:
            token = f"TOKEN-{len(auth.issued)}-zz9"
            auth.issued.append(token)
            auth.valid_tokens.add(token)
        h.reply_json(200, {auth.token_field: token, "expires_in": 300})


def image_config(platform: str) -> tuple[dict[str, Any], dict[str, str]]:
    """A minimal image config for ``os/arch[/variant]`` and the matching platform object."""
    parts = platform.split("/")
    plat = {"os": parts[0], "architecture": parts[1]}
    if len(parts) > 2:
        plat["variant"] = parts[2]
    config = {**plat, "rootfs": {"type": "layers", "diff_ids": []}, "config": {}}
    return config, plat


@pytest.fixture(autouse=True)
def _quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests are about what is retried, not how long it waits: backoff in ms
    (tests/unit/test_registry_retry.py checks the schedule itself; Retry-After waits stay)."""
    from seekoci.registry import retry

    monkeypatch.setattr(retry, "BACKOFF_BASE_SECONDS", 0.001)


@pytest.fixture
def fake_registry() -> Iterator[FakeRegistry]:
    """A fresh fake registry (no auth, Range honoured) on 127.0.0.1."""
    server = FakeRegistry()
    yield server
    server.stop()


@pytest.fixture
def blob_server() -> Iterator[FakeBlobServer]:
    """A second local server standing in for object storage (another origin)."""
    server = FakeBlobServer()
    yield server
    server.stop()


@pytest.fixture
def isolated_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point DOCKER_CONFIG at an empty directory and clear registry-related environment."""
    directory = tmp_path / "docker-config"
    directory.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))
    monkeypatch.delenv("SEEKOCI_INSECURE_REGISTRIES", raising=False)
    return directory


class OCILayoutBuilder:
    """Builds an OCI image layout directory: blobs, images, indexes, tags."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.entries: list[dict[str, Any]] = []
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.write_index()

    def add_blob(self, data: bytes, media_type: str = OCI_LAYER_GZIP) -> dict[str, Any]:
        digest = sha256(data)
        (self.root / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def add_image(
        self, *, layers: tuple[bytes, ...] = (b"layer-0",), platform: str = "linux/amd64"
    ) -> dict[str, Any]:
        config_doc, plat = image_config(platform)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": self.add_blob(canonical_json(config_doc), OCI_CONFIG),
            "layers": [self.add_blob(data) for data in layers],
        }
        desc = self.add_blob(canonical_json(manifest), OCI_MANIFEST)
        desc["platform"] = plat
        return desc

    def add_index(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        return self.add_blob(canonical_json(doc), OCI_INDEX)

    def tag(self, desc: dict[str, Any], name: str | None) -> None:
        entry = dict(desc)
        if name is not None:
            entry["annotations"] = {"org.opencontainers.image.ref.name": name}
        self.entries.append(entry)
        self.write_index()

    def write_index(self) -> None:
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.entries}
        (self.root / "index.json").write_text(json.dumps(doc))


@pytest.fixture
def oci_layout(tmp_path: Path) -> OCILayoutBuilder:
    """An empty OCI image layout in ``tmp_path/layout``."""
    return OCILayoutBuilder(tmp_path / "layout")


@pytest.fixture
def install_executable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str, str], Path]:
    """Install small executable scripts in a directory put first on PATH.

    Used for ``docker-credential-<name>`` helpers: ``install_executable(name, script)``.
    """
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ.get('PATH', '')}")

    def install(name: str, script: str) -> Path:
        path = directory / name
        path.write_text(script)
        os.chmod(path, 0o755)
        return path

    return install
