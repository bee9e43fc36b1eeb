"""Credentials, and finding them where ``docker login`` put them.

Lookup order for a registry, as the Docker CLI does it: ``credHelpers[registry]``, then a
credential stored in the file's ``auths``, then the ``credsStore`` helper. A helper that fails
or does not know the server means "no credentials" (anonymous access is then tried), never an
error: a broken keychain must not stop reading a public image.

Secrets never appear in a repr, a message or a log line.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import _json
from .reference import DOCKER_HUB

log = logging.getLogger("seekoci.registry")

#: Keys under which Docker Hub credentials may be stored.
DOCKER_HUB_KEYS = (
    "https://index.docker.io/v1/",
    "index.docker.io",
    "docker.io",
    "registry-1.docker.io",
)
#: The server name credential helpers know Docker Hub by.
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
#: Username a credential helper returns when the secret is an identity (refresh) token.
IDENTITY_TOKEN_USERNAME = "<token>"
HELPER_TIMEOUT_SECONDS = 30
_HELPER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Credentials:
    """A username with a password, or an identity token (an OAuth2 refresh token).

    The secret fields are excluded from ``repr``.
    """

    username: str
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)


def docker_config_path() -> str:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    directory = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return os.path.join(directory, "config.json")


def _hostname(key: str) -> str:
    """A config key as a bare ``host[:port]`` (keys may be URLs with a path)."""
    key = key.strip().lower()
    for prefix in ("https://", "http://"):
        key = key.removeprefix(prefix)
    return key.split("/", 1)[0]


def _keys_for(registry: str) -> tuple[str, ...]:
    if registry == DOCKER_HUB:
        return tuple(_hostname(key) for key in DOCKER_HUB_KEYS)
    return (_hostname(registry),)


def load_docker_credentials(registry: str) -> Credentials | None:
    """Credentials for ``registry`` from the Docker client config, or None."""
    path = docker_config_path()
    try:
        with open(path, encoding="utf-8") as handle:
            config = _json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable Docker config %s (%s)", path, type(exc).__name__)
        return None
    if not isinstance(config, dict):
        return None
    return credentials_from_config(config, registry)


def credentials_from_config(config: Mapping[str, Any], registry: str) -> Credentials | None:
    """Apply Docker's lookup order to a parsed ``config.json``."""
    wanted = _keys_for(registry)
    server = DOCKER_HUB_SERVER if registry == DOCKER_HUB else registry
    helpers = config.get("credHelpers")
    if isinstance(helpers, Mapping):
        for key, helper in helpers.items():
            if isinstance(key, str) and isinstance(helper, str) and _hostname(key) in wanted:
                return run_credential_helper(helper, key)
    auths = config.get("auths")
    matching_keys: list[str] = []
    if isinstance(auths, Mapping):
        for key, entry in auths.items():
            if isinstance(key, str) and _hostname(key) in wanted:
                matching_keys.append(key)
                found = _from_auth_entry(entry, key)
                if found is not None:
                    return found
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        for candidate in [server, *(k for k in matching_keys if k != server)]:
            found = run_credential_helper(store, candidate)
            if found is not None:
                return found
    return None


def _from_auth_entry(entry: object, key: str) -> Credentials | None:
    if not isinstance(entry, Mapping):
        return None
    username = entry.get("username") or ""
    password = entry.get("password") or ""
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=False).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            log.warning("ignoring malformed 'auth' entry for %s in the Docker config", key)
            decoded = ""
        if ":" in decoded:
            username, password = decoded.split(":", 1)
    token = entry.get("identitytoken")
    if not isinstance(username, str) or not isinstance(password, str):
        return None
    if isinstance(token, str) and token:
        return Credentials(username=username, identity_token=token)
    if username or password:
        return Credentials(username=username, password=password)
    return None


def run_credential_helper(helper: str, server: str) -> Credentials | None:
    """Ask ``docker-credential-<helper> get`` for ``server``; None if it cannot say."""
    if not _HELPER_NAME_RE.match(helper):
        log.warning("ignoring credential helper with an invalid name %r", helper)
        return None
    import shutil  # not at import: few reads run a helper
    import subprocess

    program = shutil.which(f"docker-credential-{helper}")
    if program is None:
        log.debug("credential helper docker-credential-%s not found on PATH", helper)
        return None
    try:
        result = subprocess.run(
            [program, "get"],
            input=server.encode("utf-8"),
            capture_output=True,
            timeout=HELPER_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("credential helper %s failed to run (%s)", helper, type(exc).__name__)
        return None
    if result.returncode != 0:
        # Typically "credentials not found in native keychain": anonymous access follows.
        log.debug("credential helper %s has no credentials for %s", helper, server)
        return None
    try:
        answer = _json.loads(result.stdout)
    except ValueError:
        log.debug("credential helper %s answered something that is not JSON", helper)
        return None
    if not isinstance(answer, Mapping):
        return None
    username, secret = answer.get("Username"), answer.get("Secret")
    if not isinstance(username, str) or not isinstance(secret, str) or not secret:
        return None
    if username == IDENTITY_TOKEN_USERNAME:
        return Credentials(username="", identity_token=secret)
    return Credentials(username=username, password=secret)
