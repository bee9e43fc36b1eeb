"""A client for one registry's distribution API: transport choice, auth, status mapping.

One client owns one ``requests.Session`` (connections are reused across manifest, config and
every range read of every layer) and one :class:`Authenticator` (tokens are shared by all
threads reading from the registry).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, cast
from urllib.parse import urlsplit

import requests

from ..errors import AuthenticationError, ImageNotFoundError, IntegrityError, RegistryError
from .auth import Authenticator
from .credentials import Credentials, load_docker_credentials
from .digest import compute_digest, digest_problem, verify_digest
from .manifest import MANIFEST_MEDIA_TYPES, MAX_MANIFEST_SIZE
from .reference import registry_api_host
from .retry import Attempts, RetryPolicy
from .transport import (
    HttpClient,
    TransferStats,
    error_detail,
    is_loopback,
    is_timeout,
    is_transient,
    new_session,
    read_body,
    retry_after_seconds,
    split_host_port,
)

log = logging.getLogger("seekoci.registry")

INSECURE_REGISTRIES_ENV = "SEEKOCI_INSECURE_REGISTRIES"

#: How to reach a registry: URL scheme and whether to verify certificates.
Transport = tuple[str, bool]
HTTPS: Transport = ("https", True)
HTTPS_UNVERIFIED: Transport = ("https", False)
HTTP: Transport = ("http", True)


def insecure_registries() -> set[str]:
    """``host[:port]`` entries of ``$SEEKOCI_INSECURE_REGISTRIES`` (lowercase)."""
    raw = os.environ.get(INSECURE_REGISTRIES_ENV, "")
    return {item.strip().lower() for item in raw.split(",") if item.strip()}


def transport_plan(registry: str, api_host: str, insecure: bool | None) -> tuple[Transport, ...]:
    """The transports to try, in order (Docker's rules).

    Loopback: plain HTTP. Declared insecure (``insecure=True`` or listed in the environment,
    unless ``insecure=False``): HTTPS without verification, then plain HTTP. Else HTTPS.
    """
    host, _ = split_host_port(api_host)
    if is_loopback(host):
        return (HTTP,)
    if insecure is None:
        listed = insecure_registries()
        names = {registry.lower(), api_host.lower(), host.lower()}
        insecure = bool(names & listed)
    return (HTTPS_UNVERIFIED, HTTP) if insecure else (HTTPS,)


@dataclass(frozen=True)
class FetchedManifest:
    """A manifest body verified against ``digest``, with the server's ``Content-Type``."""

    body: bytes
    media_type: str | None
    digest: str


class RegistryClient:
    """Speaks the distribution API to one registry.

    ``auth``: None to look credentials up in the Docker config (lazily, on the first
    challenge), or ``(username, password)``. ``timeout`` and ``retries``: see
    :mod:`~seekoci.registry.retry` (None: from the environment, else the defaults).
    """

    def __init__(
        self,
        registry: str,
        *,
        auth: tuple[str, str] | None = None,
        insecure: bool | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        plan: tuple[Transport, ...] | None = None,
    ) -> None:
        self.registry = registry
        self.api_host = registry_api_host(registry)
        self._plan = plan or transport_plan(registry, self.api_host, insecure)
        self._transport: Transport | None = self._plan[0] if len(self._plan) == 1 else None
        self._transport_lock = threading.Lock()
        unverified = frozenset({self.api_host} if HTTPS_UNVERIFIED in self._plan else set())
        self.policy = RetryPolicy.resolve(timeout, retries)
        self._http = HttpClient(new_session(), policy=self.policy, unverified_netlocs=unverified)
        load: Callable[[], Credentials | None]
        if auth is not None:
            username, password = _check_auth(auth)
            fixed = Credentials(username=username, password=password)
            load = lambda: fixed  # noqa: E731
        else:
            load = lambda: load_docker_credentials(registry)  # noqa: E731
        self._auth = Authenticator(
            registry, self._http, load, plain_http_credentials_ok=len(self._plan) > 1
        )

    def __repr__(self) -> str:
        return f"RegistryClient({self.registry!r})"

    def close(self) -> None:
        """Close pooled connections."""
        self._http.session.close()

    # -- requests ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        scope: str,
        what: str,
        headers: Mapping[str, str] | None = None,
        stats: TransferStats | None = None,
        body: bytes | memoryview | None = None,
        attempts: Attempts | None = None,
    ) -> requests.Response:
        """Send an authenticated API request (``path`` starts with ``/v2/``).

        Returns the response (streamed) unless it is an auth failure, which raises
        AuthenticationError: a 401 is answered once (a new token or Basic credentials) and a
        second 401 or a 403 is final. Other statuses are left to the caller. ``body`` (PUT,
        PATCH) is sent again as is when a challenge is answered. GET and HEAD are retried
        within ``attempts`` (a new budget named by ``what`` if None).
        """
        if attempts is None:
            attempts = self.policy.begin(what)
        authorization = self._auth.authorization(scope)
        response = self._send(method, path, headers, authorization, stats, body, attempts)
        if response.status_code == 401 and self._from_registry(response):
            challenge = response.headers.get("WWW-Authenticate")
            response.close()
            try:
                authorization = self._auth.answer_challenge(challenge, scope, authorization)
            except AuthenticationError as exc:  # said of the registry: say which request too
                raise AuthenticationError(f"{what}: {exc}", status=exc.status) from exc.__cause__
            response = self._send(method, path, headers, authorization, stats, body, attempts)
            if response.status_code == 401 and self._from_registry(response):
                detail = error_detail(response)
                raise AuthenticationError(
                    f"{what}: {self.registry} refused access (401"
                    + (f", {detail}" if detail else "")
                    + "); the repository may not exist or may need credentials",
                    status=401,
                )
        if response.status_code == 403 and self._from_registry(response):
            detail = error_detail(response)
            raise AuthenticationError(
                f"{what}: {self.registry} denied access (403"
                + (f", {detail}" if detail else "")
                + ")",
                status=403,
            )
        return response

    def request_url(
        self,
        method: str,
        url: str,
        *,
        scope: str,
        what: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | memoryview | None = None,
    ) -> requests.Response:
        """Send a request to an absolute URL the registry handed out (an upload ``Location``,
        a ``Link`` to the next page).

        On the registry's own host it goes through :meth:`request` (auth, and the scheme we
        already use: a registry behind a TLS proxy often names itself ``http://``); anywhere
        else it is sent without credentials.
        """
        parts = urlsplit(url)
        if self._is_own_host(url):
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            return self.request(method, path, scope=scope, what=what, headers=headers, body=body)
        return self._http.send(method, url, headers=headers, data=_as_data(body))

    def _is_own_host(self, url: str) -> bool:
        parts = urlsplit(url)
        host, port = split_host_port(self.api_host)
        try:
            their_port = parts.port
        except ValueError:
            return False
        if (parts.hostname or "").lower() != host.lower():
            return False
        if their_port == port:
            return True
        ours = port or (443 if (self._transport or self._plan[0])[0] == "https" else 80)
        theirs = their_port or (443 if parts.scheme.lower() == "https" else 80)
        return ours == theirs

    def _from_registry(self, response: requests.Response) -> bool:
        """True if the answer came from the registry itself, not from where it redirected."""
        return urlsplit(response.url).netloc.lower() == self.api_host.lower()

    def _url(self, transport: Transport, path: str) -> str:
        return f"{transport[0]}://{self.api_host}{path}"

    def _send(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None,
        authorization: str | None,
        stats: TransferStats | None,
        body: bytes | memoryview | None = None,
        attempts: Attempts | None = None,
    ) -> requests.Response:
        transport = self._transport
        if transport is not None:
            return self._http.send(
                method,
                self._url(transport, path),
                headers=headers,
                authorization=authorization,
                stats=stats,
                data=_as_data(body),
                attempts=attempts,
            )
        # First contact with an insecure registry: find out whether it speaks HTTPS. One thread
        # probes; the others wait for its answer instead of probing too.
        with self._transport_lock:
            if self._transport is None:
                last: RegistryError | None = None
                for candidate in self._plan:
                    try:
                        response = self._http.send(
                            method,
                            self._url(candidate, path),
                            headers=headers,
                            authorization=authorization,
                            stats=stats,
                            data=_as_data(body),
                            # a probe: each transport once (a TLS error means "try plain HTTP")
                            attempts=RetryPolicy(self.policy.timeout, 0).begin(path),
                        )
                    except RegistryError as exc:
                        if exc.status is not None:
                            raise
                        last = exc
                        continue
                    log.debug("%s reached over %s", self.registry, candidate[0])
                    self._transport = candidate
                    return response
                assert last is not None
                raise last
        return self._send(method, path, headers, authorization, stats, body, attempts)

    # -- manifests and blobs ----------------------------------------------------------------

    def get_small(
        self,
        path: str,
        *,
        scope: str,
        what: str,
        limit: int,
        headers: Mapping[str, str] | None = None,
        check: Callable[[requests.Response, bytes], None] | None = None,
        where_status: str | None = None,
        hasher: Callable[[], Any] | None = None,
    ) -> tuple[requests.Response, bytes]:
        """GET a small document whole (a manifest, a config): the response (closed) and at
        most ``limit + 1`` bytes of its body.

        A body cut or broken in transit is fetched again within the request's retry budget;
        so is one that ``check`` rejects with IntegrityError, once (a byte damaged on the way
        is not the document's fault; a second mismatch is). ``hasher()`` gives a fresh
        hashlib object for each attempt, fed the body as it arrives (``check`` finds it
        where ``hasher`` put it).
        """
        attempts = self.policy.begin(what)
        refetched = False
        while True:
            response = self.request(
                "GET", path, scope=scope, what=what, headers=headers, attempts=attempts
            )
            check_status(response, where=where_status or what)
            try:
                fed = hasher() if hasher is not None else None
                body = read_body(response, limit=limit, what=what, hasher=fed)
                if check is not None:
                    check(response, body)
            except IntegrityError as exc:
                if refetched or not attempts.can_retry():
                    raise
                refetched = True
                attempts.retry(str(exc).split(": ", 1)[-1], cause=exc.__cause__ or exc)
                continue
            except RegistryError as exc:
                if not is_transient(exc):
                    raise
                reason = str(exc).split(": ", 1)[-1]
                if is_timeout(exc):
                    attempts.waited(attempts.wait(), reason, exc.__cause__ or exc)
                attempts.retry(reason, cause=exc.__cause__ or exc)
                continue
            return response, body

    def get_manifest(self, repository: str, reference: str, *, where: str) -> FetchedManifest:
        """Fetch a manifest or index by tag or digest, verified (see module docs).

        By digest the body must hash to it; by tag we compute sha256 ourselves and, when the
        registry sends ``Docker-Content-Digest``, insist that it agrees.
        """
        by_digest = digest_problem(reference) is None

        def check(response: requests.Response, body: bytes) -> None:
            if len(body) > MAX_MANIFEST_SIZE:
                raise RegistryError(f"{where}: manifest larger than {MAX_MANIFEST_SIZE} bytes")
            if by_digest:
                verify_digest(body, reference, what=where)
                return
            claimed = response.headers.get("Docker-Content-Digest", "").strip()
            if claimed:
                if digest_problem(claimed) is not None:
                    raise IntegrityError(
                        f"{where}: registry sent a malformed Docker-Content-Digest"
                    )
                verify_digest(body, claimed, what=where)

        response, body = self.get_small(
            f"/v2/{repository}/manifests/{reference}",
            scope=pull_scope(repository),
            what=where,
            where_status=f"{where}: manifest",
            headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)},
            limit=MAX_MANIFEST_SIZE,
            check=check,
        )
        content_type = response.headers.get("Content-Type")
        if by_digest:
            return FetchedManifest(body, content_type, reference)
        digest = compute_digest(body)
        claimed = response.headers.get("Docker-Content-Digest", "").strip()
        if claimed.startswith("sha256:"):
            digest = claimed
        return FetchedManifest(body, content_type, digest)

    def get_blob(
        self,
        repository: str,
        digest: str,
        *,
        headers: Mapping[str, str] | None = None,
        stats: TransferStats | None = None,
        attempts: Attempts | None = None,
    ) -> requests.Response:
        """GET a blob (following redirects); the caller checks the status and reads the body."""
        return self.request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            scope=pull_scope(repository),
            what=f"{self.registry}/{repository} blob {digest}",
            headers=headers,
            stats=stats,
            attempts=attempts,
        )


def pull_scope(repository: str) -> str:
    """The token scope for reading ``repository``."""
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    """The token scope for writing to ``repository`` (reads included, as uploads check first)."""
    return f"repository:{repository}:pull,push"


def _as_data(body: bytes | memoryview | None) -> Mapping[str, str] | None:
    # HttpClient.send annotates ``data`` for token-service forms; requests sends bytes and
    # buffers (memoryview slices of a large blob, uncopied) as the raw body just the same.
    # An empty buffer would go out chunked: send no body (Content-Length: 0) instead.
    if body is None or len(body) == 0:
        return None
    return cast("Mapping[str, str]", body)


def check_status(
    response: requests.Response, *, where: str, expected: tuple[int, ...] = (200,)
) -> None:
    """Return if the status is ``expected``; else raise what it means (closing the response)."""
    if response.status_code not in expected:
        raise_for_status(response, where=where)


def raise_for_status(response: requests.Response, *, where: str) -> NoReturn:
    """Raise the error an unwanted status means (404: ImageNotFoundError, 401/403: auth...)."""
    status = response.status_code
    detail = error_detail(response)
    suffix = f" ({detail})" if detail else ""
    if status == 404:
        raise ImageNotFoundError(f"{where} not found (404){suffix}", status=404)
    if status in (401, 403):
        raise AuthenticationError(f"{where}: access denied ({status}){suffix}", status=status)
    if status == 429:
        wait = retry_after_seconds(response.headers.get("Retry-After"))
        asks = f", it asks to wait {wait:.0f} s" if wait is not None else ""
        raise RegistryError(f"{where}: rate limited by the server (429{asks}){suffix}", status=429)
    raise RegistryError(f"{where}: unexpected HTTP status {status}{suffix}", status=status)


def _check_auth(auth: object) -> tuple[str, str]:
    if (
        not isinstance(auth, tuple)
        or len(auth) != 2
        or not all(isinstance(part, str) for part in auth)
    ):
        raise TypeError("auth must be None or a (username, password) tuple of strings")
    return auth[0], auth[1]
