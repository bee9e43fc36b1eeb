"""Fixtures that start real registries for the integration tests.

Session-scoped, each a ``docker-registry`` on a free 127.0.0.1 port with its own storage
directory, stopped (SIGTERM, wait) when the session ends:

* ``registry``: no auth.
* ``basic_registry``: htpasswd auth with a bcrypt hash; ``.username``, ``.password``,
  ``.credentials``.
* ``token_registry``: token auth backed by an in-process :class:`servers.TokenService`
  (``.token_service``; anonymous pull except under ``private/``, Basic-authenticated
  push/pull); ``.username``, ``.password``, ``.credentials``, ``.tokens_issued``.

All three are :class:`servers.RegistryServer` objects: ``.url``, ``.host``, ``.port``,
``.root`` (storage), ``.ref(repo, tag)``, ``.push(repo, tag, image)``, ``.client()``,
``.blob_path(digest)``, ``.tamper_blob(digest, offset, data)``, ``.blob_url(repo, digest)``.

``counting_proxy(registry)`` starts a :class:`servers.CountingProxy` in front of a registry for
one test. Every test also runs with ``SEEKOCI_CACHE_DIR``, ``XDG_CACHE_HOME`` and
``DOCKER_CONFIG`` pointed at empty temporary directories, so nothing reads or writes the
user's own caches and credentials.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# tests/ holds the shared builders (imagebuilder, pushclient): make them importable however
# pytest was started.
_TESTS_DIR = str(Path(__file__).resolve().parent.parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from .servers import CountingProxy, RegistryServer, TokenService  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _hermetic_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep seekoci away from the user's caches and Docker credentials."""
    env = tmp_path / "_env"
    for name, sub in (
        ("SEEKOCI_CACHE_DIR", "seekoci-cache"),
        ("XDG_CACHE_HOME", "xdg-cache"),
        ("DOCKER_CONFIG", "docker-config"),
    ):
        (env / sub).mkdir(parents=True)
        monkeypatch.setenv(name, str(env / sub))
    monkeypatch.delenv("SEEKOCI_INSECURE_REGISTRIES", raising=False)


def _start(server: RegistryServer) -> Iterator[RegistryServer]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    yield from _start(RegistryServer(tmp_path_factory.mktemp("registry")))


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    username, password = "alice", "pw-" + secrets.token_urlsafe(12)
    server = RegistryServer(
        tmp_path_factory.mktemp("basic-registry"),
        htpasswd_users={username: password},
        credentials=(username, password),
    )
    yield from _start(server)


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    workdir = tmp_path_factory.mktemp("token-registry")
    username, password = "bob", "tok-" + secrets.token_urlsafe(12)
    service = TokenService(workdir, {username: password})
    server = RegistryServer(workdir, token_service=service, credentials=(username, password))
    try:
        yield from _start(server)
    finally:
        service.stop()


@pytest.fixture
def counting_proxy() -> Iterator[Callable[[RegistryServer], CountingProxy]]:
    """Factory: ``counting_proxy(registry, delay=0.0) -> CountingProxy`` (stopped after the
    test; ``delay`` seconds added to every request)."""
    proxies: list[CountingProxy] = []

    def make(server: RegistryServer, delay: float = 0.0) -> CountingProxy:
        proxy = CountingProxy(server.url, delay=delay)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"
