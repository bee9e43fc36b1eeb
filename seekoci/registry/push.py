"""Writing to a registry: blob uploads (monolithic, chunked, cross-repository mounts), manifests.

The upload protocol as registries speak it (distribution spec, "Pushing blobs")::

    HEAD  /v2/R/blobs/D                            200: already there, nothing to do
    POST  /v2/R/blobs/uploads/?mount=D&from=S      201: mounted; 202: an upload session
    POST  /v2/R/blobs/uploads/                     202, Location: the session URL
    PATCH <Location>      (a chunk, Content-Range) 202, Location: the next session URL
    PUT   <Location>&digest=D  (last bytes, if any) 201 Created

Every answer may move the session: the next request always goes to the latest ``Location``
(absolute or relative; distribution keeps its state in a signed ``_state`` query parameter).
A one-shot ``POST ?digest=`` with the body is not used: distribution 2.8 ignores it.

Large blobs are sent in ``chunk_size`` pieces as memoryview slices of the caller's buffer, so
nothing is copied. Errors go through the client's status mapping (RegistryError with
``.status``, AuthenticationError); a digest the registry reports that is not the one we sent
is an IntegrityError.
"""

from __future__ import annotations

import hashlib
import logging
import re
from urllib.parse import urlencode, urljoin

import requests

from ..errors import AuthenticationError, ImageNotFoundError, IntegrityError, RegistryError
from .client import (
    FetchedManifest,
    RegistryClient,
    check_status,
    pull_scope,
    push_scope,
    raise_for_status,
)
from .digest import digest_problem, verify_digest
from .manifest import MANIFEST_MEDIA_TYPES

log = logging.getLogger("seekoci.registry")

#: Blobs up to this size go in one PUT; larger ones as PATCH chunks of this size.
DEFAULT_CHUNK_SIZE = 8 << 20
_OCTET_STREAM = "application/octet-stream"

# distribution's reference grammar: path components and tags.
_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# What a PATCH answer says the session holds: "0-<last>" (some servers write "bytes=0-<last>").
_RANGE_RE = re.compile(r"^\s*(?:bytes=)?(\d+)-(\d+)\s*$")

#: What ``upload_blob`` accepts: anything exposing a contiguous byte buffer.
Buffer = bytes | bytearray | memoryview


# -- checks ------------------------------------------------------------------------------------


def check_repository(repository: str) -> None:
    """ValueError unless ``repository`` is a valid repository path (``team/app``)."""
    if not repository or not all(_COMPONENT_RE.match(c) for c in repository.split("/")):
        raise ValueError(f"invalid repository name {repository!r}")


def _check_digest(digest: str) -> None:
    problem = digest_problem(digest)
    if problem is not None:
        raise ValueError(f"invalid digest {digest!r}: {problem}")


def _check_reference(reference: str) -> None:
    if digest_problem(reference) is not None and not _TAG_RE.match(reference):
        raise ValueError(f"{reference!r} is neither a tag nor a digest")


def _check_reported_digest(
    response: requests.Response, view: memoryview, digest: str, *, where: str
) -> None:
    """IntegrityError if the registry's ``Docker-Content-Digest`` names other content.

    A digest in another algorithm than ours (a registry naming everything by sha256) is
    checked against the bytes themselves.
    """
    claimed = response.headers.get("Docker-Content-Digest", "").strip()
    if not claimed or claimed == digest:
        return
    algorithm = claimed.split(":", 1)[0]
    same_bytes = (
        digest_problem(claimed) is None
        and algorithm != digest.split(":", 1)[0]
        and _buffer_digest(view, algorithm) == claimed
    )
    if not same_bytes:
        response.close()
        raise IntegrityError(f"{where}: registry stored it as {claimed[:80]!r}, sent {digest}")


def _buffer_digest(view: memoryview, algorithm: str) -> str:
    return f"{algorithm}:{hashlib.new(algorithm, view).hexdigest()}"


# -- blobs -------------------------------------------------------------------------------------


def blob_exists(client: RegistryClient, repository: str, digest: str) -> bool:
    """True if ``repository`` has the blob (``HEAD /v2/R/blobs/D`` answers 200, 404: False)."""
    check_repository(repository)
    _check_digest(digest)
    return _blob_exists(client, repository, digest, scope=pull_scope(repository))


def _blob_exists(client: RegistryClient, repository: str, digest: str, *, scope: str) -> bool:
    where = f"{client.registry}/{repository} blob {digest}"
    response = client.request("HEAD", f"/v2/{repository}/blobs/{digest}", scope=scope, what=where)
    status = response.status_code
    if status == 404:
        response.close()
        return False
    check_status(response, where=where)
    response.close()
    return True


def upload_blob(
    client: RegistryClient,
    repository: str,
    data: Buffer,
    *,
    digest: str | None = None,
    mount_from: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> str:
    """Store ``data`` as a blob of ``repository``; returns its digest.

    ``digest`` (default: sha256 of ``data``) is checked against the bytes before anything is
    sent. Nothing is uploaded if the repository already has the blob. With ``mount_from`` the
    registry is first asked to mount it from that repository (201: done); when it cannot
    (202), the session it opened is used for a normal upload. A mount refused for lack of
    access to ``mount_from`` falls back to a plain upload too.
    """
    check_repository(repository)
    if mount_from is not None:
        check_repository(mount_from)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, not {chunk_size}")
    view = memoryview(data).cast("B")
    if digest is None:
        digest = _buffer_digest(view, "sha256")
    else:
        _check_digest(digest)
        actual = _buffer_digest(view, digest.split(":", 1)[0])
        if actual != digest:
            raise IntegrityError(f"blob for {repository}: data has digest {actual}, not {digest}")
    where = f"{client.registry}/{repository} blob {digest}"
    # HEAD with the pull scope: under token auth the registry's challenge for it names pull
    # only, and the token it gets would otherwise be cached under the push scope.
    if _blob_exists(client, repository, digest, scope=pull_scope(repository)):
        log.debug("%s: already there", where)
        return digest
    scope = push_scope(repository)
    location = _open_session(client, repository, view, digest, mount_from, scope=scope, where=where)
    if location is None:
        return digest
    session = _Session(client, location, scope, where)
    try:
        session.send(view, digest, chunk_size)
    except Exception:
        session.cancel()
        raise
    return digest


def _open_session(
    client: RegistryClient,
    repository: str,
    view: memoryview,
    digest: str,
    mount_from: str | None,
    *,
    scope: str,
    where: str,
) -> str | None:
    """The URL of a new upload session, or None if the blob was mounted from ``mount_from``."""
    uploads = f"/v2/{repository}/blobs/uploads/"
    if mount_from is not None and mount_from != repository:
        query = urlencode({"mount": digest, "from": mount_from})
        try:
            response = client.request("POST", f"{uploads}?{query}", scope=scope, what=where)
        except AuthenticationError as exc:
            # Mounting also needs pull access to mount_from: without it, upload the bytes.
            log.debug("%s: mount from %s refused (%s), uploading", where, mount_from, exc.status)
        else:
            if response.status_code == 201:
                _check_reported_digest(response, view, digest, where=where)
                response.close()
                log.debug("%s: mounted from %s", where, mount_from)
                return None
            check_status(response, where=f"{where}: mount", expected=(202,))
            return _location(response, where=where)
    response = client.request("POST", uploads, scope=scope, what=where)
    check_status(response, where=f"{where}: upload", expected=(202,))
    return _location(response, where=where)


def _location(response: requests.Response, *, where: str, previous: str | None = None) -> str:
    """The absolute session URL a response names (relative to the URL it answered)."""
    location = response.headers.get("Location", "").strip()
    response.close()
    if not location:
        if previous is not None:
            return previous
        raise RegistryError(f"{where}: registry opened an upload without a Location")
    return urljoin(response.url, location)


def _with_digest(location: str, digest: str) -> str:
    separator = "&" if "?" in location else "?"
    return location + separator + urlencode({"digest": digest})


class _Session:
    """An open upload session: where to send next (the latest ``Location``) and how."""

    def __init__(self, client: RegistryClient, location: str, scope: str, where: str) -> None:
        self.client = client
        self.location = location
        self.scope = scope
        self.where = where

    def send(self, view: memoryview, digest: str, chunk_size: int) -> None:
        """One PUT with the bytes if they fit in a chunk, else PATCH chunks and an empty PUT."""
        headers = {"Content-Type": _OCTET_STREAM}
        size = len(view)
        last: memoryview | None = view
        if size > chunk_size:
            for start in range(0, size, chunk_size):
                chunk = view[start : start + chunk_size]
                end = start + len(chunk) - 1
                response = self.client.request_url(
                    "PATCH",
                    self.location,
                    scope=self.scope,
                    what=self.where,
                    headers={**headers, "Content-Range": f"{start}-{end}"},
                    body=chunk,
                )
                where = f"{self.where}: chunk {start}-{end}"
                check_status(response, where=where, expected=(202, 204))
                _check_range(response, end, where=where)
                self.location = _location(response, where=where, previous=self.location)
            last = None
        response = self.client.request_url(
            "PUT",
            _with_digest(self.location, digest),
            scope=self.scope,
            what=self.where,
            headers=headers,
            body=last,
        )
        check_status(response, where=f"{self.where}: upload", expected=(201, 204))
        _check_reported_digest(response, view, digest, where=self.where)
        response.close()
        log.debug("%s: uploaded %d bytes", self.where, size)

    def cancel(self) -> None:
        """Best effort: tell the registry to drop the failed session."""
        try:
            response = self.client.request_url(
                "DELETE", self.location, scope=self.scope, what=self.where
            )
            response.close()
        except RegistryError:
            log.debug("%s: could not cancel the upload session", self.where)


def _check_range(response: requests.Response, end: int, *, where: str) -> None:
    """A registry that says it holds other than bytes ``0-end`` lost or duplicated a chunk."""
    match = _RANGE_RE.match(response.headers.get("Range", ""))
    if match is not None and (int(match.group(1)), int(match.group(2))) != (0, end):
        response.close()
        raise RegistryError(
            f"{where}: registry holds bytes {match.group(1)}-{match.group(2)} of the upload, "
            f"expected 0-{end}",
            status=response.status_code,
        )


# -- manifests ---------------------------------------------------------------------------------


def put_manifest(
    client: RegistryClient, repository: str, reference: str, body: bytes, media_type: str
) -> str:
    """PUT a manifest or index under a tag or its digest; returns the body's digest.

    ``media_type`` goes in ``Content-Type`` (registries refuse OCI manifests without it). By
    digest, the body must hash to it. When the registry answers with
    ``Docker-Content-Digest``, it must be the body's digest (else IntegrityError).
    """
    return put_manifest_response(client, repository, reference, body, media_type)[0]


def put_manifest_response(
    client: RegistryClient, repository: str, reference: str, body: bytes, media_type: str
) -> tuple[str, requests.structures.CaseInsensitiveDict[str]]:
    """:func:`put_manifest`, also returning the response headers (``OCI-Subject``...)."""
    check_repository(repository)
    _check_reference(reference)
    if not media_type:
        raise ValueError("a manifest needs a media type")
    separator = "@" if digest_problem(reference) is None else ":"
    where = f"{client.registry}/{repository}{separator}{reference}"
    if separator == "@":
        verify_digest(body, reference, what=where)
        digest = reference
    else:
        digest = _buffer_digest(memoryview(body), "sha256")
    response = client.request(
        "PUT",
        f"/v2/{repository}/manifests/{reference}",
        scope=push_scope(repository),
        what=where,
        headers={"Content-Type": media_type},
        body=body,
    )
    check_status(response, where=f"{where}: manifest", expected=(200, 201, 202, 204))
    _check_reported_digest(response, memoryview(body), digest, where=where)
    headers = response.headers
    response.close()
    return digest, headers


def get_manifest_optional(
    client: RegistryClient, repository: str, reference: str, *, where: str | None = None
) -> FetchedManifest | None:
    """:meth:`RegistryClient.get_manifest`, or None when the registry answers 404."""
    check_repository(repository)
    _check_reference(reference)
    separator = "@" if digest_problem(reference) is None else ":"
    where = where or f"{client.registry}/{repository}{separator}{reference}"
    try:
        return client.get_manifest(repository, reference, where=where)
    except ImageNotFoundError:
        return None


def manifest_exists(
    client: RegistryClient, repository: str, digest: str, *, media_type: str | None = None
) -> bool:
    """True if ``repository`` has the manifest ``digest`` (HEAD 200; 404: False)."""
    check_repository(repository)
    _check_digest(digest)
    where = f"{client.registry}/{repository}@{digest}"
    accept = list(MANIFEST_MEDIA_TYPES)
    if media_type and media_type not in accept:
        accept.append(media_type)
    response = client.request(
        "HEAD",
        f"/v2/{repository}/manifests/{digest}",
        scope=pull_scope(repository),
        what=where,
        headers={"Accept": ", ".join(accept)},
    )
    if response.status_code == 404:
        response.close()
        return False
    if response.status_code != 200:
        raise_for_status(response, where=where)
    response.close()
    return True


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "blob_exists",
    "check_repository",
    "get_manifest_optional",
    "manifest_exists",
    "put_manifest",
    "put_manifest_response",
    "upload_blob",
]
