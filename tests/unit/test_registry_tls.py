"""HTTPS connections that verify share one TLS context per CA bundle (seekoci.registry.tls).

A local HTTPS server with certificates from a throwaway CA; the bundle is given as a user
gives one, through ``REQUESTS_CA_BUNDLE``."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import requests.utils
from cryptography import x509
from tlscerts import LOOPBACK, make_ca, make_server_cert

from seekoci.errors import RegistryError
from seekoci.registry.tls import shared_context
from seekoci.registry.transport import HttpClient, new_session


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA (its certificate is the bundle), a server certificate it signed for 127.0.0.1,
    one it signed for another host name, and one from a CA the bundle does not hold."""
    ours = make_ca(tmp_path, "our-ca")
    theirs = make_ca(tmp_path, "their-ca")
    good = make_server_cert(tmp_path, ours, LOOPBACK, "good")
    elsewhere = make_server_cert(tmp_path, ours, [x509.DNSName("registry.example")], "elsewhere")
    stranger = make_server_cert(tmp_path, theirs, LOOPBACK, "stranger")
    return {
        "bundle": ours[2],
        "good_cert": good[0],
        "good_key": good[1],
        "elsewhere_cert": elsewhere[0],
        "elsewhere_key": elsewhere[1],
        "stranger_cert": stranger[0],
        "stranger_key": stranger[1],
    }


@contextmanager
def tls_server(cert: Path, key: Path, *, delay: float = 0.0) -> Iterator[tuple[str, list[str]]]:
    """An HTTPS server answering ``ok`` to every GET (after ``delay``: requests overlap);
    yields its URL and the ALPN protocol each connection settled on."""
    alpn: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            alpn.append(str(self.request.selected_alpn_protocol()))
            time.sleep(delay)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2", "http/1.1"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/v2/", alpn
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _pools(session: requests.Session, url: str) -> list[object]:
    return list(session.get_adapter(url).poolmanager.pools._container.values())


def test_connections_that_verify_share_one_context_loaded_once(pki, monkeypatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki["bundle"]))
    loads: list[object] = []
    load = ssl.SSLContext.load_verify_locations

    def counted(self: ssl.SSLContext, *args: object, **kwargs: object) -> None:
        loads.append(args or kwargs)
        load(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    session = new_session()
    with tls_server(pki["good_cert"], pki["good_key"], delay=0.3) as (url, alpn):
        start = threading.Barrier(4)
        bodies: list[bytes] = []

        def get() -> None:
            start.wait()
            response = session.get(url, timeout=30)
            bodies.append(response.content)

        threads = [threading.Thread(target=get) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert bodies == [b"ok"] * 4
        (pool,) = _pools(session, url)
        assert pool.num_connections >= 2  # type: ignore[attr-defined]
        assert pool.conn_kw["ssl_context"] is shared_context(str(pki["bundle"]))  # type: ignore[attr-defined]
    # urllib3 alone loads the bundle into a new context for every connection
    assert len(loads) == 1
    assert set(alpn) == {"http/1.1"}


@pytest.mark.parametrize("server", ["stranger", "elsewhere"])
def test_a_certificate_the_bundle_or_the_host_name_does_not_vouch_for_is_refused(
    pki, monkeypatch, server: str
) -> None:
    # stranger: signed by a CA the bundle does not hold; elsewhere: for another host name
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki["bundle"]))
    client = HttpClient(new_session())
    with (
        tls_server(pki[f"{server}_cert"], pki[f"{server}_key"]) as (url, _),
        pytest.raises(RegistryError, match="certificate verification failed"),
    ):
        client.send("GET", url)
    # the same host and bundle, a certificate that names it: the context is fine
    with tls_server(pki["good_cert"], pki["good_key"]) as (url, _):
        assert client.send("GET", url).content == b"ok"


def test_the_shared_context_never_verifies_less(pki) -> None:
    context = shared_context(str(pki["bundle"]))
    assert context is not None
    assert context is shared_context(str(pki["bundle"]))
    with pytest.raises(ValueError, match="always verifies"):
        context.verify_mode = ssl.CERT_NONE
    with pytest.raises(ValueError, match="always checks host names"):
        context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED  # what urllib3 sets on every connection
    context.set_alpn_protocols(["h2", "http/1.1"])  # a no-op once in use
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert not context.hostname_checks_common_name
    with tls_server(pki["good_cert"], pki["good_key"]) as (url, alpn):
        session = requests.Session()
        session.mount("https://", new_session().get_adapter(url))
        assert session.get(url, verify=str(pki["bundle"]), timeout=30).content == b"ok"
    assert alpn == ["http/1.1"]


def test_a_request_that_does_not_verify_keeps_urllib3s_own_context(pki) -> None:
    session = new_session()
    with tls_server(pki["stranger_cert"], pki["stranger_key"]) as (url, _):
        with pytest.warns(Warning):  # urllib3's InsecureRequestWarning
            assert session.get(url, verify=False, timeout=30).content == b"ok"
        (pool,) = _pools(session, url)
        assert "ssl_context" not in pool.conn_kw  # type: ignore[attr-defined]


def test_the_default_bundle_and_an_unreadable_one(tmp_path) -> None:
    default = shared_context(str(requests.utils.DEFAULT_CA_BUNDLE_PATH))
    assert default is not None and default.cert_store_stats()["x509_ca"] > 50
    assert shared_context(str(tmp_path / "missing.pem")) is None
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    assert shared_context(str(tmp_path / "junk.pem")) is None


@pytest.mark.parametrize(
    ("proxy", "shared"),
    [(None, True), ("http://proxy.example:3128", True), ("proxy.example:3128", True),
     ("https://proxy.example:3128", False)],
)  # fmt: skip
def test_through_an_https_proxy_a_pool_keeps_urllib3s_own_context(
    pki, proxy: str | None, shared: bool
) -> None:
    # urllib3 verifies an https:// proxy with the pool's CA bundle: a pool with a shared
    # context names none (the proxy would be checked against the system's store)
    adapter = new_session().get_adapter("https://registry.example/")
    request = requests.Request("GET", "https://registry.example/v2/").prepare()
    proxies = {"https": proxy} if proxy else None
    pool = adapter.get_connection_with_tls_context(request, str(pki["bundle"]), proxies)
    context = pool.conn_kw.get("ssl_context")
    assert (context is shared_context(str(pki["bundle"]))) is shared
    if not shared:
        adapter.cert_verify(pool, request.url, str(pki["bundle"]), None)
        assert context is None and pool.ca_certs == str(pki["bundle"])


def test_a_bundle_that_changes_gets_a_new_context(pki, tmp_path, monkeypatch) -> None:
    bundle = tmp_path / "changing.pem"
    bundle.write_bytes(pki["bundle"].read_bytes())
    first = shared_context(str(bundle))
    assert first is not None and first is shared_context(str(bundle))
    bundle.write_bytes(pki["bundle"].read_bytes() + pki["good_cert"].read_bytes())
    second = shared_context(str(bundle))
    assert second is not None and second is not first  # (urllib3 would load it again)
    assert second.cert_store_stats()["x509"] == 2
    # a relative path means the file where it is asked for, as urllib3 opens it
    monkeypatch.chdir(tmp_path)
    assert shared_context("changing.pem") is second
