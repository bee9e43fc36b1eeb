"""Transport choice (loopback, insecure registries), redirects, URL redaction, Retry-After."""

from __future__ import annotations

import datetime as dt
import os
import ssl
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from seekoci.errors import RegistryError
from seekoci.registry import RegistryClient, resolve_image
from seekoci.registry.client import HTTP, HTTPS, HTTPS_UNVERIFIED, transport_plan
from seekoci.registry.transport import (
    HttpClient,
    is_loopback,
    new_session,
    redact_url,
    retry_after_seconds,
)

pytestmark = pytest.mark.usefixtures("isolated_docker_config")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("[::1]", True),
        ("::1", True),
        ("10.0.0.1", False),
        ("localhost.example.com", False),
        ("registry", False),
        ("[fe80::1]", False),
    ],
)
def test_is_loopback(host, expected):
    assert is_loopback(host) is expected


@pytest.mark.parametrize(
    ("registry", "insecure", "env", "expected"),
    [
        ("localhost:5000", None, "", (HTTP,)),
        ("127.0.0.1:5000", False, "", (HTTP,)),
        ("[::1]:5000", None, "", (HTTP,)),
        ("ghcr.io", None, "", (HTTPS,)),
        ("myreg:5000", True, "", (HTTPS_UNVERIFIED, HTTP)),
        ("myreg:5000", None, "other:1, myreg:5000", (HTTPS_UNVERIFIED, HTTP)),
        ("myreg:5000", None, "myreg", (HTTPS_UNVERIFIED, HTTP)),
        ("myreg:5000", None, "myreg:5001", (HTTPS,)),
        ("myreg:5000", False, "myreg:5000", (HTTPS,)),
        ("docker.io", None, "registry-1.docker.io", (HTTPS_UNVERIFIED, HTTP)),
    ],
)
def test_transport_plan(monkeypatch, registry, insecure, env, expected):
    monkeypatch.setenv("SEEKOCI_INSECURE_REGISTRIES", env)
    api_host = "registry-1.docker.io" if registry == "docker.io" else registry
    assert transport_plan(registry, api_host, insecure) == expected


def test_insecure_registry_falls_back_to_plain_http(fake_registry):
    fake_registry.add_image("img", tags=("x",), layers=(b"payload",))
    client = RegistryClient(fake_registry.netloc, plan=(HTTPS_UNVERIFIED, HTTP))
    fetched = client.get_manifest("img", "x", where="img:x")
    assert fetched.digest.startswith("sha256:")
    assert client._transport == HTTP
    # the probe is done once: later requests go straight to plain HTTP
    client.get_manifest("img", "x", where="img:x")
    client.close()


def test_insecure_registry_that_is_down(monkeypatch):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = RegistryClient(f"127.0.0.1:{port}", plan=(HTTPS_UNVERIFIED, HTTP))
    with pytest.raises(RegistryError, match="cannot connect"):
        client.get_manifest("img", "x", where="img:x")
    assert client._transport is None


def test_redirect_loop_is_an_error(blob_server):
    def loop(h, request):
        h.reply(302, b"", {"Location": request.path})
        return True

    blob_server.hook = loop
    with pytest.raises(RegistryError, match="redirects"):
        HttpClient(new_session()).send("GET", f"{blob_server.url}/x")


def test_relative_redirect_and_303(blob_server):
    blob_server.files["/final"] = b"done"

    def see_other(h, request):
        if request.path == "/start":
            h.reply(303, b"", {"Location": "final"})
            return True
        return False

    blob_server.hook = see_other
    response = HttpClient(new_session()).send("POST", f"{blob_server.url}/start", data={"a": "b"})
    assert response.status_code == 200 and response.content == b"done"
    assert [(r.method, r.path) for r in blob_server.requests] == [
        ("POST", "/start"),
        ("GET", "/final"),
    ]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:pw@host.example/v2/x?sig=abc", "https://host.example/v2/x?…"),
        ("http://127.0.0.1:5000/a/b", "http://127.0.0.1:5000/a/b"),
        ("https://[::1]:443/p#frag", "https://[::1]:443/p"),
        ("http://[bad/", "<unparsable URL>"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        (" 0 ", 0.0),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_retry_after(value, expected):
    assert retry_after_seconds(value) == expected


def test_registry_error_body_is_summarised(fake_registry):
    def error(h, request):
        h.reply_json(
            400,
            {
                "errors": [
                    {"code": "NAME_INVALID", "message": "invalid repository name " + "x" * 500}
                ]
            },
        )
        return True

    fake_registry.hook = error
    with pytest.raises(RegistryError, match="NAME_INVALID") as caught:
        resolve_image(f"{fake_registry.netloc}/img:x")
    assert caught.value.status == 400
    assert len(str(caught.value)) < 400


def self_signed_context(tmp_path) -> ssl.SSLContext:
    """A server TLS context with a throwaway self-signed certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "seekoci insecure test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


INSECURE_CLIENT = """
import sys
from seekoci.registry import RegistryClient
from seekoci.registry.client import HTTP, HTTPS_UNVERIFIED
client = RegistryClient(sys.argv[1], plan=(HTTPS_UNVERIFIED, HTTP))
for _ in range(3):
    client.get_manifest("img", "x", where="img:x")
assert client._transport == HTTPS_UNVERIFIED, client._transport
print("ok")
"""


def test_insecure_registry_warns_once_and_urllib3_never(fake_registry, tmp_path):
    """urllib3 warns about every unverified HTTPS request, two lines of warning dump each;
    seekoci says it once, in one line, and only for the host declared insecure."""
    fake_registry.add_image("img", tags=("x",), layers=(b"payload",))
    server = fake_registry._server
    server.socket = self_signed_context(tmp_path).wrap_socket(server.socket, server_side=True)
    env = {**os.environ, "PYTHONWARNINGS": "always"}  # show every warning there is
    done = subprocess.run(
        [sys.executable, "-c", INSECURE_CLIENT, fake_registry.netloc],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    lines = done.stderr.splitlines()
    assert "InsecureRequestWarning" not in done.stderr
    assert len(lines) == 1, lines
    assert "insecure registry" in lines[0] and fake_registry.netloc in lines[0]
