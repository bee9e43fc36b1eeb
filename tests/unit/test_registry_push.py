"""Blob uploads, manifest PUTs and referrers against a local in-memory registry that takes writes.

The fake follows the distribution protocol closely where it matters to a client: each upload
answer moves the session to a new ``Location`` (older ones are refused, so a client that does
not follow the latest one fails), PATCH answers carry ``Range``, the final ``PUT ?digest=``
checks the bytes, an index naming a missing manifest is a 400, and OCI manifests are only
served to an ``Accept`` that names them. Its referrers API can be switched on and off.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from httpfake import QuietHandler

from seekoci.errors import AuthenticationError, FormatError, IntegrityError, RegistryError
from seekoci.registry import RegistryClient
from seekoci.registry.push import (
    blob_exists,
    get_manifest_optional,
    put_manifest,
    upload_blob,
)
from seekoci.registry.referrers import list_referrers, push_referrer, referrers_tag

pytestmark = pytest.mark.usefixtures("isolated_docker_config")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
SOCI_V1 = "application/vnd.amazon.soci.index.v1+json"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
USER, PASSWORD = "writer", "pw-Zq8-never-in-messages"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compact(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- the fake registry


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Upload:
    repo: str
    data: bytearray = field(default_factory=bytearray)
    state: int = 0


class PushRegistry:
    """An in-memory registry for writes. Attributes tune it per test:

    ``location_style``: ``absolute`` | ``path`` (``/v2/...``) | ``relative`` (``<id>?...``)
    | ``cycle`` (each answer the next of the three). ``referrers_api``: serve
    ``/v2/R/referrers/D`` and send ``OCI-Subject``. ``send_subject_header``: with the API, say
    so on the manifest PUT. ``basic``: demand Basic credentials. ``upload_host``: another
    PushRegistry where upload sessions live. ``hook(handler, seen) -> bool``: answer a request
    instead (True) or let it through.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self.blobs: dict[str, bytes] = {}
        self.repo_blobs: dict[str, set[str]] = {}
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.uploads: dict[str, Upload] = {}
        self.ids = itertools.count(1)
        self.location_style = "absolute"
        self._styles = itertools.cycle(["absolute", "path", "relative"])
        self.referrers_api = False
        self.send_subject_header = True
        self.basic = False
        self.upload_host: PushRegistry | None = None
        self.hook: Callable[[Handler, Seen], bool] | None = None
        self.page_size = 0  # referrers API: entries per page (0: all at once)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.registry = self  # type: ignore[attr-defined]
        self.netloc = f"127.0.0.1:{self.server.server_address[1]}"
        self.url = f"http://{self.netloc}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def client(self, auth: tuple[str, str] | None = None) -> RegistryClient:
        return RegistryClient(self.netloc, auth=auth)

    # -- helpers for tests ------------------------------------------------------------------

    def requests(self, method: str | None = None) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if method is None or s.method == method]

    def reset(self) -> None:
        with self.lock:
            self.seen.clear()

    def add_blob(self, repo: str, data: bytes) -> str:
        digest = sha256(data)
        self.blobs[digest] = data
        self.repo_blobs.setdefault(repo, set()).add(digest)
        return digest

    def add_manifest(self, repo: str, body: bytes, media_type: str, tag: str | None = None) -> str:
        digest = sha256(body)
        self.manifests[(repo, digest)] = (body, media_type)
        if tag:
            self.manifests[(repo, tag)] = (body, media_type)
        return digest

    def session_url(self, upload_id: str, upload: Upload, base: str) -> str:
        upload.state += 1
        path = f"/v2/{upload.repo}/blobs/uploads/{upload_id}?_state={upload_id}.{upload.state}"
        style = next(self._styles) if self.location_style == "cycle" else self.location_style
        if style == "absolute":
            return self.url + path
        if style == "path":
            return path
        return path.rsplit("/", 1)[1]  # relative to the session URL just used

    # -- serving ----------------------------------------------------------------------------

    def handle(self, h: Handler, seen: Seen) -> None:
        with self.lock:
            self.seen.append(seen)
        if self.hook is not None and self.hook(h, seen):
            return
        if self.basic and not self._authorized(h, seen):
            return
        parts = seen.path.split("/")
        if seen.path == "/v2/":
            h.json(200, {})
        elif "/blobs/uploads/" in seen.path:
            self._upload(h, seen)
        elif len(parts) >= 5 and parts[-2] == "blobs":
            self._blob(h, seen, "/".join(parts[2:-2]), parts[-1])
        elif len(parts) >= 5 and parts[-2] == "manifests":
            self._manifest(h, seen, "/".join(parts[2:-2]), parts[-1])
        elif len(parts) >= 5 and parts[-2] == "referrers" and self.referrers_api:
            self._referrers(h, seen, "/".join(parts[2:-2]), parts[-1])
        else:
            h.reply(404, b"404 page not found\n", {"Content-Type": "text/plain"})

    def _authorized(self, h: Handler, seen: Seen) -> bool:
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if seen.headers.get("Authorization") == expected:
            return True
        h.json(401, error("UNAUTHORIZED"), {"WWW-Authenticate": 'Basic realm="push"'})
        return False

    def _blob(self, h: Handler, seen: Seen, repo: str, digest: str) -> None:
        if digest in self.repo_blobs.get(repo, set()):
            data = self.blobs[digest]
            h.reply(200, data, {"Docker-Content-Digest": digest})
        else:
            h.json(404, error("BLOB_UNKNOWN"))

    def _upload(self, h: Handler, seen: Seen) -> None:
        repo, _, rest = seen.path[len("/v2/") :].partition("/blobs/uploads/")
        if seen.method == "POST":
            mount = seen.query.get("mount", [""])[0]
            source = seen.query.get("from", [""])[0]
            if mount and mount in self.repo_blobs.get(source, set()):
                self.repo_blobs.setdefault(repo, set()).add(mount)
                h.reply(
                    201,
                    b"",
                    {"Location": f"/v2/{repo}/blobs/{mount}", "Docker-Content-Digest": mount},
                )
                return
            host = self.upload_host or self
            upload_id = f"u{next(host.ids)}"
            upload = host.uploads[upload_id] = Upload(repo)
            location = host.session_url(upload_id, upload, seen.path)
            if host is not self:
                location = host.url + f"/v2/{repo}/blobs/uploads/{upload_id}?_state={upload_id}.1"
            h.reply(202, b"", {"Location": location, "Range": "0-0"})
            return
        upload_id = rest
        upload = self.uploads.get(upload_id)
        state = seen.query.get("_state", [""])[0]
        if upload is None or state != f"{upload_id}.{upload.state}":
            h.json(404, error("BLOB_UPLOAD_INVALID", f"stale or unknown session state {state!r}"))
            return
        if seen.method == "DELETE":
            del self.uploads[upload_id]
            h.reply(204)
            return
        upload.data += seen.body
        if seen.method == "PATCH":
            location = self.session_url(upload_id, upload, seen.path)
            h.reply(202, b"", {"Location": location, "Range": f"0-{len(upload.data) - 1}"})
            return
        if seen.method == "PUT":
            digest = seen.query.get("digest", [""])[0]
            if sha256(bytes(upload.data)) != digest:
                h.json(400, error("DIGEST_INVALID", "provided digest did not match content"))
                return
            del self.uploads[upload_id]
            self.blobs[digest] = bytes(upload.data)
            self.repo_blobs.setdefault(upload.repo, set()).add(digest)
            h.reply(
                201,
                b"",
                {"Location": f"/v2/{upload.repo}/blobs/{digest}", "Docker-Content-Digest": digest},
            )
            return
        h.reply(405)

    def _manifest(self, h: Handler, seen: Seen, repo: str, ref: str) -> None:
        if seen.method == "PUT":
            media_type = seen.headers.get("Content-Type", "")
            doc = json.loads(seen.body)
            if doc.get("mediaType", media_type) != media_type:
                h.json(400, error("MANIFEST_INVALID", "media type mismatch"))
                return
            for entry in doc.get("manifests", []):
                if (repo, entry["digest"]) not in self.manifests:
                    h.json(400, error("MANIFEST_BLOB_UNKNOWN", "blob unknown to registry"))
                    return
            digest = self.add_manifest(repo, seen.body, media_type, None if ":" in ref else ref)
            headers = {
                "Docker-Content-Digest": digest,
                "Location": f"/v2/{repo}/manifests/{digest}",
            }
            subject = doc.get("subject")
            if self.referrers_api and self.send_subject_header and subject:
                headers["OCI-Subject"] = subject["digest"]
            h.reply(201, b"", headers)
            return
        if seen.method == "DELETE":
            self.manifests.pop((repo, ref), None)
            h.reply(202)
            return
        found = self.manifests.get((repo, ref))
        if found is None or found[1] not in seen.headers.get("Accept", ""):
            h.json(404, error("MANIFEST_UNKNOWN"))
            return
        body, media_type = found
        h.reply(200, body, {"Content-Type": media_type, "Docker-Content-Digest": sha256(body)})

    def _referrers(self, h: Handler, seen: Seen, repo: str, subject: str) -> None:
        entries = []
        for (r, ref), (body, media_type) in sorted(self.manifests.items()):
            if r != repo or not ref.startswith("sha256:"):
                continue
            doc = json.loads(body)
            if doc.get("subject", {}).get("digest") != subject:
                continue
            entry: dict[str, Any] = {"mediaType": media_type, "digest": ref, "size": len(body)}
            kind = doc.get("artifactType") or doc.get("config", {}).get("mediaType")
            if kind:
                entry["artifactType"] = kind
            if doc.get("annotations"):
                entry["annotations"] = doc["annotations"]
            entries.append(entry)
        start = int(seen.query.get("page", ["0"])[0])
        headers = {"Content-Type": OCI_INDEX}
        if self.page_size:
            if start + self.page_size < len(entries):
                nxt = f"/v2/{repo}/referrers/{subject}?page={start + self.page_size}"
                headers["Link"] = f'<{nxt}>; rel="next"'
            entries = entries[start : start + self.page_size]
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        h.reply(200, compact(index), headers)


def error(code: str, message: str = "") -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message or code.lower()}]}


class Handler(QuietHandler):
    def _dispatch(self) -> None:
        assert "chunked" not in self.headers.get("Transfer-Encoding", "")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        seen = Seen(self.command, parts.path, parse_qs(parts.query), dict(self.headers), body)
        self.server.registry.handle(self, seen)  # type: ignore[attr-defined]

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        self.reply_json(status, doc, headers, compact=True)


@pytest.fixture
def reg() -> Iterator[PushRegistry]:
    server = PushRegistry()
    yield server
    server.stop()


@pytest.fixture
def upload_host() -> Iterator[PushRegistry]:
    server = PushRegistry()
    yield server
    server.stop()


def methods(reg: PushRegistry) -> list[str]:
    return [s.method for s in reg.requests()]


# --------------------------------------------------------------------------- blobs


def test_small_blob_is_one_put_with_the_body(reg: PushRegistry) -> None:
    data = b"hello blob\n" * 10
    digest = upload_blob(reg.client(), "team/app", data, chunk_size=1024)
    assert digest == sha256(data)
    assert reg.blobs[digest] == data
    assert methods(reg) == ["HEAD", "POST", "PUT"]
    put = reg.requests("PUT")[0]
    assert put.body == data
    assert put.query["digest"] == [digest]
    assert put.headers["Content-Type"] == "application/octet-stream"
    assert put.headers["Content-Length"] == str(len(data))
    assert blob_exists(reg.client(), "team/app", digest)
    assert not blob_exists(reg.client(), "team/other", digest)


def test_blob_of_exactly_chunk_size_is_still_monolithic(reg: PushRegistry) -> None:
    data = bytes(range(256)) * 4
    upload_blob(reg.client(), "r", data, chunk_size=len(data))
    assert methods(reg) == ["HEAD", "POST", "PUT"]


def test_large_blob_goes_in_patch_chunks_then_an_empty_put(reg: PushRegistry) -> None:
    data = bytes(i % 251 for i in range(2500))
    digest = upload_blob(reg.client(), "team/app", data, chunk_size=1000)
    assert reg.blobs[digest] == data
    assert methods(reg) == ["HEAD", "POST", "PATCH", "PATCH", "PATCH", "PUT"]
    patches = reg.requests("PATCH")
    assert [p.headers["Content-Range"] for p in patches] == ["0-999", "1000-1999", "2000-2499"]
    assert [len(p.body) for p in patches] == [1000, 1000, 500]
    assert all(p.headers["Content-Type"] == "application/octet-stream" for p in patches)
    assert reg.requests("PUT")[0].body == b""
    assert reg.requests("PUT")[0].headers["Content-Length"] == "0"


def test_empty_blob(reg: PushRegistry) -> None:
    digest = upload_blob(reg.client(), "r", b"")
    assert digest == sha256(b"")
    assert reg.blobs[digest] == b""
    assert reg.requests("PUT")[0].headers["Content-Length"] == "0"


@pytest.mark.parametrize("style", ["absolute", "path", "relative", "cycle"])
def test_every_latest_location_is_followed(reg: PushRegistry, style: str) -> None:
    reg.location_style = style
    data = bytes(i % 13 for i in range(10_000))
    digest = upload_blob(reg.client(), "deep/name/space", data, chunk_size=999)
    assert reg.blobs[digest] == data
    states = [s.query["_state"][0] for s in reg.requests() if "_state" in s.query]
    assert states == [f"u1.{n}" for n in range(1, len(states) + 1)]  # each from the last answer


def test_buffers_are_accepted_and_sent_without_copies(reg: PushRegistry) -> None:
    data = bytearray(b"abc" * 5000)
    digest = upload_blob(reg.client(), "r", memoryview(data), chunk_size=4096)
    assert reg.blobs[digest] == bytes(data)
    assert upload_blob(reg.client(), "r2", data) == digest


def test_existing_blob_is_not_uploaded(reg: PushRegistry) -> None:
    digest = reg.add_blob("r", b"already here")
    assert upload_blob(reg.client(), "r", b"already here") == digest
    assert methods(reg) == ["HEAD"]


def test_mount_201_is_the_whole_upload(reg: PushRegistry) -> None:
    digest = reg.add_blob("base/src", b"shared layer")
    assert upload_blob(reg.client(), "app/dst", b"shared layer", mount_from="base/src") == digest
    assert methods(reg) == ["HEAD", "POST"]
    post = reg.requests("POST")[0]
    assert post.query == {"mount": [digest], "from": ["base/src"]}
    assert digest in reg.repo_blobs["app/dst"]


def test_mount_202_continues_with_that_session(reg: PushRegistry) -> None:
    data = b"not in the source" * 100
    digest = upload_blob(reg.client(), "app/dst", data, mount_from="base/src", chunk_size=500)
    assert reg.blobs[digest] == data
    posts = reg.requests("POST")
    assert len(posts) == 1 and posts[0].query["mount"] == [digest]
    assert methods(reg)[-1] == "PUT" and "PATCH" in methods(reg)


def test_mount_refused_for_lack_of_access_falls_back_to_an_upload(reg: PushRegistry) -> None:
    reg.add_blob("secret/src", b"private layer")

    def refuse_mounts(h: Handler, seen: Seen) -> bool:
        if seen.method == "POST" and "mount" in seen.query:
            h.json(403, error("DENIED", "requested access to the resource is denied"))
            return True
        return False

    reg.hook = refuse_mounts
    digest = upload_blob(reg.client(), "app/dst", b"private layer", mount_from="secret/src")
    assert digest in reg.repo_blobs["app/dst"]
    assert [(s.method, bool(s.query)) for s in reg.requests("POST")] == [
        ("POST", True),
        ("POST", False),
    ]


def test_mount_from_the_same_repository_is_a_plain_upload(reg: PushRegistry) -> None:
    upload_blob(reg.client(), "r", b"x", mount_from="r")
    assert reg.requests("POST")[0].query == {}


def test_given_digest_must_match_the_data(reg: PushRegistry) -> None:
    with pytest.raises(IntegrityError, match="not sha256:"):
        upload_blob(reg.client(), "r", b"data", digest=sha256(b"other"))
    assert reg.requests() == []
    with pytest.raises(ValueError, match="invalid digest"):
        upload_blob(reg.client(), "r", b"data", digest="sha256:XYZ")
    assert upload_blob(reg.client(), "r", b"data", digest=sha256(b"data")) == sha256(b"data")


def test_registry_reporting_another_digest_is_an_integrity_error(reg: PushRegistry) -> None:
    def lie(h: Handler, seen: Seen) -> bool:
        if seen.method == "PUT":
            h.reply(201, b"", {"Docker-Content-Digest": sha256(b"something else")})
            return True
        return False

    reg.hook = lie
    with pytest.raises(IntegrityError, match="registry stored it as"):
        upload_blob(reg.client(), "r", b"payload")


def test_registry_refusing_the_digest_is_a_registry_error_and_the_session_is_dropped(
    reg: PushRegistry,
) -> None:
    def corrupt(h: Handler, seen: Seen) -> bool:
        if seen.method == "PATCH":
            seen.body = seen.body[::-1]  # the registry stores other bytes
        return False

    reg.hook = corrupt
    with pytest.raises(RegistryError, match="DIGEST_INVALID") as info:
        upload_blob(reg.client(), "r", b"0123456789" * 30, chunk_size=100)
    assert info.value.status == 400
    deletes = reg.requests("DELETE")
    assert len(deletes) == 1 and deletes[0].query["_state"] == ["u1.4"]  # the latest session
    assert reg.uploads == {}


def test_range_disagreeing_with_what_was_sent_is_an_error(reg: PushRegistry) -> None:
    def short(h: Handler, seen: Seen) -> bool:
        if seen.method == "PATCH":
            upload = reg.uploads[seen.path.rsplit("/", 1)[1]]
            location = reg.session_url(seen.path.rsplit("/", 1)[1], upload, seen.path)
            h.reply(202, b"", {"Location": location, "Range": "0-10"})
            return True
        return False

    reg.hook = short
    with pytest.raises(RegistryError, match="holds bytes 0-10 of the upload, expected 0-99"):
        upload_blob(reg.client(), "r", b"z" * 300, chunk_size=100)


def test_upload_without_location_is_an_error(reg: PushRegistry) -> None:
    def no_location(h: Handler, seen: Seen) -> bool:
        if seen.method == "POST":
            h.reply(202)
            return True
        return False

    reg.hook = no_location
    with pytest.raises(RegistryError, match="without a Location"):
        upload_blob(reg.client(), "r", b"data")


def test_bad_arguments(reg: PushRegistry) -> None:
    client = reg.client()
    with pytest.raises(ValueError, match="chunk_size"):
        upload_blob(client, "r", b"x", chunk_size=0)
    with pytest.raises(ValueError, match="repository"):
        upload_blob(client, "Upper/Case", b"x")
    with pytest.raises(ValueError, match="repository"):
        upload_blob(client, "r", b"x", mount_from="../etc")
    with pytest.raises(ValueError, match="neither a tag nor a digest"):
        put_manifest(client, "r", "bad/tag", b"{}", OCI_MANIFEST)
    assert reg.requests() == []


def test_bodies_are_resent_after_a_basic_challenge(reg: PushRegistry) -> None:
    reg.basic = True
    client = reg.client(auth=(USER, PASSWORD))
    body = compact({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
    assert put_manifest(client, "r", "v1", body, OCI_INDEX) == sha256(body)
    puts = reg.requests("PUT")
    assert [p.body for p in puts] == [body, body]  # refused without credentials, then sent
    assert reg.manifests[("r", "v1")] == (body, OCI_INDEX)
    data = b"q" * 5000
    assert reg.blobs[upload_blob(client, "r", data, chunk_size=2048)] == data


def test_wrong_password_is_an_auth_error_without_the_password(reg: PushRegistry) -> None:
    reg.basic = True
    wrong = "wrong-pw-Xy7"
    with pytest.raises(AuthenticationError) as info:
        upload_blob(reg.client(auth=(USER, wrong)), "r", b"data")
    assert info.value.status == 401
    assert wrong not in str(info.value) and PASSWORD not in str(info.value)


def test_upload_session_on_another_host_gets_no_credentials(
    reg: PushRegistry, upload_host: PushRegistry
) -> None:
    reg.basic = True
    reg.upload_host = upload_host
    data = b"w" * 3000
    digest = upload_blob(reg.client(auth=(USER, PASSWORD)), "r", data, chunk_size=1000)
    assert upload_host.blobs[digest] == data
    assert [s.method for s in upload_host.requests()] == ["PATCH", "PATCH", "PATCH", "PUT"]
    assert all("Authorization" not in s.headers for s in upload_host.requests())
    assert any("Authorization" in s.headers for s in reg.requests())


# --------------------------------------------------------------------------- manifests


def test_put_manifest_sends_content_type_and_returns_the_digest(reg: PushRegistry) -> None:
    body = compact({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
    digest = put_manifest(reg.client(), "r", "latest", body, OCI_INDEX)
    assert digest == sha256(body)
    put = reg.requests("PUT")[0]
    assert put.headers["Content-Type"] == OCI_INDEX and put.body == body
    assert put_manifest(reg.client(), "r", digest, body, OCI_INDEX) == digest
    fetched = get_manifest_optional(reg.client(), "r", "latest")
    assert fetched is not None and fetched.body == body and fetched.digest == digest
    assert get_manifest_optional(reg.client(), "r", "missing") is None


def test_put_manifest_by_digest_checks_the_body(reg: PushRegistry) -> None:
    with pytest.raises(IntegrityError):
        put_manifest(reg.client(), "r", sha256(b"other"), b"{}", OCI_INDEX)
    assert reg.requests() == []


def test_put_manifest_digest_header_mismatch(reg: PushRegistry) -> None:
    def lie(h: Handler, seen: Seen) -> bool:
        h.reply(201, b"", {"Docker-Content-Digest": sha256(b"nope")})
        return True

    reg.hook = lie
    with pytest.raises(IntegrityError):
        put_manifest(reg.client(), "r", "v1", b"{}", OCI_INDEX)


def test_put_manifest_refused_maps_the_status(reg: PushRegistry) -> None:
    body = compact({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
    with pytest.raises(RegistryError, match="MANIFEST_INVALID") as info:
        put_manifest(reg.client(), "r", "v1", body, OCI_MANIFEST)
    assert info.value.status == 400


# --------------------------------------------------------------------------- referrers


def push_image(reg: PushRegistry, repo: str = "app") -> str:
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(b"c"),
            "size": 1,
        },
        "layers": [],
    }
    return reg.add_manifest(repo, compact(manifest), OCI_MANIFEST, "v1")


def artifact(
    subject: str,
    *,
    config_type: str = SOCI_V1,
    artifact_type: str | None = None,
    annotations: dict[str, str] | None = None,
    salt: str = "",
) -> bytes:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": EMPTY_DIGEST, "size": 2},
        "layers": [
            {
                "mediaType": "application/octet-stream",
                "digest": sha256(salt.encode()),
                "size": len(salt),
            }
        ],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 123},
        "annotations": annotations or {"com.amazon.soci.build-tool-identifier": "seekoci-test"},
    }
    if artifact_type:
        doc["artifactType"] = artifact_type
    return compact(doc)


def tag_index(reg: PushRegistry, repo: str, subject: str) -> dict[str, Any] | None:
    found = reg.manifests.get((repo, referrers_tag(subject)))
    return None if found is None else json.loads(found[0])


def test_referrers_tag() -> None:
    hexa = "ab" * 32
    assert referrers_tag(f"sha256:{hexa}") == f"sha256-{hexa}"
    long = "cd" * 64
    tag = referrers_tag(f"sha512:{long}")
    assert tag == f"sha512-{long[:64]}" and len(tag) <= 128
    with pytest.raises(ValueError):
        referrers_tag("sha256:short")
    with pytest.raises(ValueError):
        referrers_tag("latest")


def test_push_referrer_without_api_creates_then_extends_the_tag(reg: PushRegistry) -> None:
    subject = push_image(reg)
    client = reg.client()
    first = push_referrer(client, "app", artifact(subject, salt="1"), OCI_MANIFEST)
    index = tag_index(reg, "app", subject)
    assert index == {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": first,
                "size": len(artifact(subject, salt="1")),
                "artifactType": SOCI_V1,
                "annotations": {"com.amazon.soci.build-tool-identifier": "seekoci-test"},
            }
        ],
    }
    assert reg.manifests[("app", referrers_tag(subject))][1] == OCI_INDEX
    second = push_referrer(
        client, "app", artifact(subject, salt="2"), OCI_MANIFEST, annotations={"k": "v"}
    )
    listed = list_referrers(client, "app", subject)
    assert [d.digest for d in listed] == [first, second]
    assert listed[1].annotations == {"k": "v"} and listed[1].artifact_type == SOCI_V1
    # the manifest itself went up by digest
    assert reg.manifests[("app", second)][0] == artifact(subject, salt="2")


def test_push_referrer_keeps_other_tools_entries_untouched(reg: PushRegistry) -> None:
    subject = push_image(reg)
    other_body = compact(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {},
            "layers": [],
            "subject": {"digest": subject},
        }
    )
    other = reg.add_manifest("app", other_body, OCI_MANIFEST)
    foreign_entry = {
        "mediaType": OCI_MANIFEST,
        "digest": other,
        "size": len(other_body),
        "artifactType": "application/vnd.dev.sigstore.bundle+json",
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
        "x-unknown-field": [1, 2, {"nested": True}],
    }
    existing = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [foreign_entry],
        "annotations": {"made-by": "another tool"},
    }
    reg.add_manifest("app", compact(existing), OCI_INDEX, referrers_tag(subject))
    mine = push_referrer(reg.client(), "app", artifact(subject), OCI_MANIFEST)
    index = tag_index(reg, "app", subject)
    assert index is not None
    assert index["annotations"] == {"made-by": "another tool"}
    assert index["manifests"][0] == foreign_entry
    assert [m["digest"] for m in index["manifests"]] == [other, mine]


def test_pushing_the_same_referrer_twice_does_not_rewrite_the_tag(reg: PushRegistry) -> None:
    subject = push_image(reg)
    body = artifact(subject)
    push_referrer(reg.client(), "app", body, OCI_MANIFEST)
    reg.reset()
    push_referrer(reg.client(), "app", body, OCI_MANIFEST)
    tag_puts = [s for s in reg.requests("PUT") if s.path.endswith(referrers_tag(subject))]
    assert tag_puts == []
    index = tag_index(reg, "app", subject)
    assert index is not None and len(index["manifests"]) == 1


def test_stale_tag_entries_are_dropped_when_the_registry_refuses_them(reg: PushRegistry) -> None:
    subject = push_image(reg)
    client = reg.client()
    gone = push_referrer(client, "app", artifact(subject, salt="gone"), OCI_MANIFEST)
    kept = push_referrer(client, "app", artifact(subject, salt="kept"), OCI_MANIFEST)
    del reg.manifests[("app", gone)]  # deleted since: the old index names a missing manifest
    new = push_referrer(client, "app", artifact(subject, salt="new"), OCI_MANIFEST)
    assert [d.digest for d in list_referrers(client, "app", subject)] == [kept, new]


def test_push_referrer_with_api_leaves_the_tag_alone(reg: PushRegistry) -> None:
    reg.referrers_api = True
    subject = push_image(reg)
    digest = push_referrer(reg.client(), "app", artifact(subject), OCI_MANIFEST)
    assert tag_index(reg, "app", subject) is None
    assert [s.method for s in reg.requests()] == ["PUT"]  # OCI-Subject said it all
    listed = list_referrers(reg.client(), "app", subject)
    assert [(d.digest, d.artifact_type) for d in listed] == [(digest, SOCI_V1)]


def test_api_without_subject_header_is_detected_by_a_referrers_get(reg: PushRegistry) -> None:
    reg.referrers_api = True
    reg.send_subject_header = False
    subject = push_image(reg)
    push_referrer(reg.client(), "app", artifact(subject), OCI_MANIFEST)
    assert tag_index(reg, "app", subject) is None
    assert [s.method for s in reg.requests()] == ["PUT", "GET"]


def test_list_referrers_without_api_or_tag_is_empty(reg: PushRegistry) -> None:
    subject = push_image(reg)
    assert list_referrers(reg.client(), "app", subject) == []
    gets = [s.path for s in reg.requests("GET")]
    assert gets == [f"/v2/app/referrers/{subject}", f"/v2/app/manifests/{referrers_tag(subject)}"]


def test_list_referrers_prefers_the_api_over_the_tag(reg: PushRegistry) -> None:
    subject = push_image(reg)
    stale = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    reg.add_manifest("app", compact(stale), OCI_INDEX, referrers_tag(subject))
    reg.referrers_api = True
    digest = reg.add_manifest("app", artifact(subject), OCI_MANIFEST)
    assert [d.digest for d in list_referrers(reg.client(), "app", subject)] == [digest]
    assert all("/manifests/" not in s.path for s in reg.requests())


@pytest.mark.parametrize("api", [True, False])
def test_artifact_type_filter(reg: PushRegistry, api: bool) -> None:
    reg.referrers_api = api
    subject = push_image(reg)
    client = reg.client()
    soci = push_referrer(client, "app", artifact(subject), OCI_MANIFEST)
    sig = push_referrer(
        client,
        "app",
        artifact(subject, config_type=OCI_EMPTY, artifact_type="application/vnd.example.sig"),
        OCI_MANIFEST,
    )
    plain = push_referrer(
        client, "app", artifact(subject, config_type=OCI_EMPTY, salt="p"), OCI_MANIFEST
    )
    by_type = {
        kind: [d.digest for d in list_referrers(client, "app", subject, artifact_type=kind)]
        for kind in (SOCI_V1, "application/vnd.example.sig", OCI_EMPTY, "none/such")
    }
    assert by_type == {
        SOCI_V1: [soci],
        "application/vnd.example.sig": [sig],
        OCI_EMPTY: [plain],
        "none/such": [],
    }
    assert len(list_referrers(client, "app", subject)) == 3


def test_referrers_api_pages_are_followed(reg: PushRegistry) -> None:
    reg.referrers_api = True
    reg.page_size = 2
    subject = push_image(reg)
    digests = {
        reg.add_manifest("app", artifact(subject, salt=str(i)), OCI_MANIFEST) for i in range(5)
    }
    listed = list_referrers(reg.client(), "app", subject)
    assert {d.digest for d in listed} == digests and len(listed) == 5
    assert len(reg.requests("GET")) == 3


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (404, b"404 page not found\n", "text/plain"),
        (200, b"<html>a portal</html>", "text/html"),
        (200, b'{"errors": []}', "application/json"),
        (405, b"", "text/plain"),
        (500, b"oops", "text/plain"),
    ],
)
def test_anything_but_an_index_from_the_api_means_no_api(
    reg: PushRegistry, status: int, body: bytes, content_type: str
) -> None:
    subject = push_image(reg)
    push_referrer(reg.client(), "app", artifact(subject), OCI_MANIFEST)

    def odd(h: Handler, seen: Seen) -> bool:
        if "/referrers/" in seen.path:
            h.reply(status, body, {"Content-Type": content_type})
            return True
        return False

    reg.hook = odd
    before = len(reg.seen)
    assert len(list_referrers(reg.client(), "app", subject)) == 1
    # a 5xx gets one retry, not the whole budget, before the tag schema is tried
    api_calls = [x for x in reg.seen[before:] if "/referrers/" in x.path]
    assert len(api_calls) == (2 if status >= 500 else 1)


def test_rate_limited_referrers_api_is_raised(reg: PushRegistry) -> None:
    subject = push_image(reg)

    def limited(h: Handler, seen: Seen) -> bool:
        h.json(429, error("TOOMANYREQUESTS"))
        return True

    reg.hook = limited
    with pytest.raises(RegistryError) as info:
        list_referrers(reg.client(), "app", subject)
    assert info.value.status == 429


def test_referrers_tag_holding_something_else_is_a_format_error(reg: PushRegistry) -> None:
    subject = push_image(reg)
    image = reg.manifests[("app", subject)]
    reg.manifests[("app", referrers_tag(subject))] = image
    with pytest.raises(FormatError, match="not an index"):
        list_referrers(reg.client(), "app", subject)
    with pytest.raises(FormatError):
        push_referrer(reg.client(), "app", artifact(subject), OCI_MANIFEST)


def test_push_referrer_checks_its_manifest(reg: PushRegistry) -> None:
    subject = push_image(reg)
    client = reg.client()
    no_subject = compact(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {}, "layers": []}
    )
    with pytest.raises(ValueError, match="no subject"):
        push_referrer(client, "app", no_subject, OCI_MANIFEST)
    with pytest.raises(ValueError, match="artifact_type"):
        push_referrer(client, "app", artifact(subject), OCI_MANIFEST, artifact_type="other/type")
    with pytest.raises(ValueError, match="mediaType"):
        push_referrer(client, "app", artifact(subject), OCI_INDEX)
    with pytest.raises(ValueError, match="JSON"):
        push_referrer(client, "app", b"\xff not json", OCI_MANIFEST)
    assert reg.requests() == []
    # the listed type, given explicitly, is fine
    push_referrer(client, "app", artifact(subject), OCI_MANIFEST, artifact_type=SOCI_V1)


def test_digest_reported_in_another_algorithm_is_checked_against_the_bytes(
    reg: PushRegistry,
) -> None:
    body = compact({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
    by_sha512 = "sha512:" + hashlib.sha512(body).hexdigest()
    assert put_manifest(reg.client(), "r", by_sha512, body, OCI_INDEX) == by_sha512
    assert reg.requests("PUT")[0].path == f"/v2/r/manifests/{by_sha512}"

    def other_content(h: Handler, seen: Seen) -> bool:
        h.reply(201, b"", {"Docker-Content-Digest": sha256(b"other content")})
        return True

    reg.hook = other_content
    with pytest.raises(IntegrityError):
        put_manifest(reg.client(), "r", by_sha512, body, OCI_INDEX)
