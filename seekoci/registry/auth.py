"""Answering registry auth challenges: Basic, and Bearer tokens from a token service.

The flow (distribution's token auth): a request without credentials gets ``401`` with
``WWW-Authenticate: Bearer realm="…",service="…",scope="…"``; we GET the realm with
``service`` and ``scope`` (Basic credentials if we have them, anonymous otherwise) and retry
with ``Authorization: Bearer <token>``. Tokens are cached per scope and refreshed once when a
later request is refused (they expire mid-session). All token state sits behind one lock:
several reader threads hit an expired token at the same moment and only one must fetch.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from .. import _json
from ..errors import AuthenticationError, RegistryError
from .credentials import Credentials
from .transport import HttpClient, is_loopback, read_body, redact_url

log = logging.getLogger("seekoci.registry")

#: Token lifetime assumed when the token service does not say (the distribution default).
DEFAULT_TOKEN_LIFETIME = 60.0
#: Refresh a little before the stated expiry so a token does not die in flight.
EXPIRY_MARGIN_SECONDS = 5.0
MAX_TOKEN_RESPONSE = 1 << 20
_CLIENT_ID = "seekoci"


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header: scheme (lowercase) and its parameters."""

    scheme: str
    params: dict[str, str]


def parse_www_authenticate(value: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value into its challenges (RFC 7235, leniently).

    Handles quoted values containing commas and escapes, several challenges in one header
    (``requests`` joins repeated headers with ", "), parameters in any order, and bare tokens.
    """
    challenges: list[Challenge] = []
    pos, end = 0, len(value)

    def skip(chars: str) -> None:
        nonlocal pos
        while pos < end and value[pos] in chars:
            pos += 1

    def token() -> str:
        nonlocal pos
        start = pos
        while pos < end and value[pos] not in ' \t,="':
            pos += 1
        return value[start:pos]

    def quoted() -> str:
        nonlocal pos
        pos += 1  # opening quote
        out: list[str] = []
        while pos < end and value[pos] != '"':
            if value[pos] == "\\" and pos + 1 < end:
                pos += 1
            out.append(value[pos])
            pos += 1
        pos += 1  # closing quote (or past the end)
        return "".join(out)

    while True:
        skip(" \t,")
        if pos >= end:
            break
        scheme = token()
        if not scheme:
            pos += 1  # stray character: skip it
            continue
        params: dict[str, str] = {}
        while True:
            mark = pos
            skip(" \t,")
            key = token()
            skip(" \t")
            if not key or pos >= end or value[pos] != "=":
                pos = mark  # not a parameter: the next challenge starts here (or the end)
                break
            pos += 1
            skip(" \t")
            params[key.lower()] = quoted() if pos < end and value[pos] == '"' else token()
        challenges.append(Challenge(scheme.lower(), params))
    return challenges


def basic_header(username: str, password: str) -> str:
    """The ``Authorization`` value for Basic credentials."""
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass
class _Token:
    value: str
    expires_at: float

    def fresh(self) -> bool:
        return time.monotonic() < self.expires_at - EXPIRY_MARGIN_SECONDS


class Authenticator:
    """Per-registry auth state: which scheme the registry wants, credentials, cached tokens.

    ``load_credentials`` is called at most once, the first time a challenge needs them, so a
    public registry never triggers a credential helper.
    """

    def __init__(
        self,
        registry: str,
        http: HttpClient,
        load_credentials: Callable[[], Credentials | None],
        *,
        plain_http_credentials_ok: bool = False,
    ) -> None:
        self._registry = registry
        self._http = http
        self._load_credentials = load_credentials
        self._credentials: Credentials | None = None
        self._credentials_loaded = False
        # Basic credentials may go to a plain-HTTP token realm only on loopback or when the
        # user declared the registry insecure: anything else would leak them on the wire.
        self._plain_http_ok = plain_http_credentials_ok
        self._lock = threading.Lock()
        self._scheme: str | None = None
        # realm and service of the registry's Bearer challenge (its scope and error belong to
        # the one request that was refused, not to later ones)
        self._bearer: dict[str, str] = {}
        self._tokens: dict[str, _Token] = {}

    def __repr__(self) -> str:
        return f"Authenticator({self._registry!r}, scheme={self._scheme!r})"

    def authorization(self, scope: str) -> str | None:
        """The ``Authorization`` value to send for a request needing ``scope``, if known.

        Once the registry has shown it uses Bearer tokens, a token for a new scope is fetched
        before the request, saving the 401 round trip.
        """
        with self._lock:
            if self._scheme == "basic":
                return self._basic_locked()
            if self._scheme == "bearer":
                token = self._tokens.get(scope)
                if token is None or not token.fresh():
                    token = self._fetch_token_locked(self._bearer, scope)
                return "Bearer " + token.value
        return None

    def answer_challenge(self, header: str | None, scope: str, used: str | None) -> str:
        """New ``Authorization`` value after a 401 that carried ``header``.

        ``used`` is the value the refused request carried. If another thread has already
        replaced that token, its new token is returned without fetching another.
        """
        challenges = parse_www_authenticate(header or "")
        by_scheme = {challenge.scheme: challenge for challenge in challenges}
        with self._lock:
            bearer = by_scheme.get("bearer")
            if bearer is not None and bearer.params.get("realm"):
                current = self._tokens.get(scope)
                if current is not None and current.fresh() and "Bearer " + current.value != used:
                    return "Bearer " + current.value
                self._scheme = "bearer"
                self._bearer = {k: v for k, v in bearer.params.items() if k in ("realm", "service")}
                token = self._fetch_token_locked(bearer.params, scope)
                return "Bearer " + token.value
            if "basic" in by_scheme:
                self._scheme = "basic"
                header_value = self._basic_locked()
                if header_value is None:
                    raise AuthenticationError(
                        f"{self._registry} requires a username and password (Basic auth)",
                        status=401,
                    )
                if header_value == used:
                    raise AuthenticationError(
                        f"{self._registry} refused the username and password", status=401
                    )
                return header_value
        schemes = ", ".join(sorted(by_scheme)) or "none"
        raise AuthenticationError(
            f"{self._registry} answered 401 with an unsupported challenge (schemes: {schemes})",
            status=401,
        )

    # -- under self._lock -------------------------------------------------------------------

    def _credentials_locked(self) -> Credentials | None:
        if not self._credentials_loaded:
            self._credentials = self._load_credentials()
            self._credentials_loaded = True
        return self._credentials

    def _basic_locked(self) -> str | None:
        creds = self._credentials_locked()
        if creds is None or creds.identity_token or not (creds.username or creds.password):
            return None
        return basic_header(creds.username, creds.password)

    def _fetch_token_locked(self, challenge: Mapping[str, str], scope: str) -> _Token:
        """Get a token for ``scope`` (cached under it), asking for the challenge's scopes if any."""
        realm = challenge.get("realm", "")
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AuthenticationError(
                f"{self._registry}: token realm {redact_url(realm)!r} is not an HTTP(S) URL"
            )
        scopes = challenge.get("scope", "").split() or [scope]
        service = challenge.get("service")
        creds = self._credentials_locked()
        secure_realm = parts.scheme == "https" or is_loopback(parts.hostname) or self._plain_http_ok
        what = f"token request to {redact_url(realm)} for {self._registry}"
        if creds is not None and creds.identity_token and secure_realm:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": creds.identity_token,
                "client_id": _CLIENT_ID,
                "scope": " ".join(scopes),
            }
            if service:
                form["service"] = service
            response = self._http.send("POST", realm, data=form)
        else:
            query = [("scope", s) for s in scopes]
            if service:
                query.insert(0, ("service", service))
            url = realm + ("&" if parts.query else "?") + urlencode(query)
            authorization = None
            if creds is not None and not creds.identity_token and secure_realm:
                authorization = basic_header(creds.username, creds.password)
            elif creds is not None and not secure_realm:
                log.warning(
                    "not sending credentials to plain-HTTP token realm %s", redact_url(realm)
                )
            response = self._http.send("GET", url, authorization=authorization)
        status = response.status_code
        if status in (401, 403):
            response.close()
            who = "the credentials" if creds is not None else "anonymous access"
            raise AuthenticationError(f"{what}: token service refused {who}", status=status)
        if status != 200:
            response.close()
            raise RegistryError(f"{what}: token service answered {status}", status=status)
        body = read_body(response, limit=MAX_TOKEN_RESPONSE, what=what)
        try:
            data = _json.loads(body)
            value = data.get("token") or data.get("access_token")
            lifetime = float(data.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError) as exc:
            raise RegistryError(f"{what}: token service answer is not valid JSON") from exc
        if not isinstance(value, str) or not value:
            raise RegistryError(f"{what}: token service answer has no token")
        log.debug("got a token for %s scope %s (%.0f s)", self._registry, scope, lifetime)
        token = _Token(value, time.monotonic() + max(lifetime, EXPIRY_MARGIN_SECONDS + 1))
        self._tokens[scope] = token
        return token
