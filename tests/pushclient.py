"""A minimal OCI distribution client for tests: push images built by ``imagebuilder``.

Speaks just enough of the distribution API to put test data into a real registry and read
manifests back, with Basic and bearer-token auth::

    digest = push_image("http://127.0.0.1:5000", "team/app", "v1", img, auth=("u", "p"))

Uploads follow the registry's protocol exactly: ``POST /v2/R/blobs/uploads/`` opens a session,
chunks are ``PATCH``-ed to the latest ``Location`` and ``PUT ?digest=`` closes it. This module
is test tooling: it knows nothing of seekoci and never imports it.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import urljoin

import requests
from imagebuilder import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Image,
    Index,
    sha256_digest,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

#: Blobs larger than this are sent as several PATCH chunks before the closing PUT.
CHUNK_SIZE = 8 << 20

MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class PushError(RuntimeError):
    """The registry refused something the test wanted to store or fetch."""


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``'Bearer realm="x",service="y"'`` → ``("bearer", {"realm": "x", "service": "y"})``."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM.findall(rest))


class RegistryClient:
    """One registry, one set of credentials (``(username, password)`` or None)."""

    def __init__(self, base_url: str, auth: tuple[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.session = requests.Session()
        self._authorization: str | None = None
        self.tokens_fetched = 0

    # ------------------------------------------------------------------ auth

    def _basic_header(self) -> str:
        if self.auth is None:
            raise PushError(f"{self.base_url} asks for Basic credentials and none were given")
        user, password = self.auth
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def _fetch_token(self, params: Mapping[str, str]) -> str:
        query: list[tuple[str, str]] = []
        if "service" in params:
            query.append(("service", params["service"]))
        for scope in params.get("scope", "").split():
            query.append(("scope", scope))
        headers = {}
        if self.auth is not None:
            query.append(("account", self.auth[0]))
            headers["Authorization"] = self._basic_header()
        resp = self.session.get(params["realm"], params=query, headers=headers, timeout=30)
        if resp.status_code != 200:
            raise PushError(f"token service {params['realm']} said {resp.status_code}")
        body = resp.json()
        self.tokens_fetched += 1
        return str(body.get("token") or body["access_token"])

    def _answer_challenge(self, resp: requests.Response) -> None:
        scheme, params = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
        if scheme == "basic":
            self._authorization = self._basic_header()
        elif scheme == "bearer":
            self._authorization = "Bearer " + self._fetch_token(params)
        else:
            raise PushError(f"{resp.request.method} {resp.url}: 401 without a usable challenge")

    def request(
        self, method: str, url: str, *, headers: Mapping[str, str] | None = None, **kwargs: object
    ) -> requests.Response:
        """Send a request (path or absolute URL), answering one auth challenge if needed."""
        full = url if url.startswith(("http://", "https://")) else self.base_url + url
        for attempt in range(2):
            hdrs = dict(headers or {})
            if self._authorization:
                hdrs["Authorization"] = self._authorization
            resp = self.session.request(
                method, full, headers=hdrs, timeout=60, allow_redirects=False, **kwargs
            )
            if resp.status_code != 401 or attempt:
                return resp
            self._answer_challenge(resp)
        raise AssertionError("unreachable")

    @staticmethod
    def _check(resp: requests.Response, *expected: int) -> requests.Response:
        if resp.status_code not in expected:
            raise PushError(
                f"{resp.request.method} {resp.url}: {resp.status_code} {resp.text[:500]!r}"
            )
        return resp

    # ------------------------------------------------------------------ blobs

    def blob_exists(self, repo: str, digest: str) -> bool:
        resp = self.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        return resp.status_code == 200

    def push_blob(self, repo: str, data: bytes, *, chunk_size: int = CHUNK_SIZE) -> str:
        """Upload ``data`` (skipped if the repository already has it); returns its digest."""
        digest = sha256_digest(data)
        if self.blob_exists(repo, digest):
            return digest
        resp = self._check(self.request("POST", f"/v2/{repo}/blobs/uploads/"), 202)
        location = urljoin(self.base_url + "/", resp.headers["Location"])
        rest = data
        if len(data) > chunk_size:
            start = 0
            while len(rest) > chunk_size:
                chunk, rest = rest[:chunk_size], rest[chunk_size:]
                resp = self.request(
                    "PATCH",
                    location,
                    data=chunk,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{start}-{start + len(chunk) - 1}",
                    },
                )
                self._check(resp, 202)
                location = urljoin(location, resp.headers["Location"])
                start += len(chunk)
        resp = self.request(
            "PUT",
            location,
            params={"digest": digest},
            data=rest,
            headers={"Content-Type": "application/octet-stream"},
        )
        self._check(resp, 201)
        return digest

    def get_blob(self, repo: str, digest: str, *, byte_range: str | None = None) -> bytes:
        headers = {"Range": f"bytes={byte_range}"} if byte_range else None
        resp = self.request("GET", f"/v2/{repo}/blobs/{digest}", headers=headers)
        return self._check(resp, 200, 206).content

    # ------------------------------------------------------------------ manifests

    def push_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str:
        """PUT a manifest (raw bytes, stored as given) under a tag or digest."""
        resp = self.request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            data=body,
            headers={"Content-Type": media_type},
        )
        self._check(resp, 201)
        return resp.headers.get("Docker-Content-Digest") or sha256_digest(body)

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str, str]:
        """(body, content type, Docker-Content-Digest) of a manifest."""
        resp = self.request(
            "GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
        )
        self._check(resp, 200)
        return (
            resp.content,
            resp.headers.get("Content-Type", ""),
            resp.headers.get("Docker-Content-Digest", ""),
        )

    def push_blobs(self, repo: str, blobs: Iterable[bytes]) -> None:
        for data in blobs:
            self.push_blob(repo, data)

    def push(self, repo: str, tag: str, target: Image | Index) -> str:
        """Push an image or index (every blob and manifest) and tag it; returns its digest."""
        self.push_blobs(repo, target.blobs().values())
        if isinstance(target, Index):
            for img in target.images:
                self.push_manifest(repo, img.digest, img.manifest_bytes, img.media_type)
        digest = self.push_manifest(repo, tag, target.manifest_bytes, target.media_type)
        if digest != target.digest:
            raise PushError(f"registry stored {repo}:{tag} as {digest}, expected {target.digest}")
        return digest


def push_image(
    registry_url: str,
    repo: str,
    tag: str,
    target: Image | Index,
    auth: tuple[str, str] | None = None,
) -> str:
    """Push ``target`` to ``registry_url`` as ``repo:tag``; returns the manifest digest."""
    return RegistryClient(registry_url, auth).push(repo, tag, target)


def push_raw_manifest(
    registry_url: str,
    repo: str,
    reference: str,
    body: bytes,
    media_type: str,
    auth: tuple[str, str] | None = None,
) -> str:
    """Store arbitrary manifest bytes (the registry validates them as ``media_type``)."""
    return RegistryClient(registry_url, auth).push_manifest(repo, reference, body, media_type)


__all__ = [
    "MANIFEST_ACCEPT",
    "PushError",
    "RegistryClient",
    "parse_challenge",
    "push_image",
    "push_raw_manifest",
]
