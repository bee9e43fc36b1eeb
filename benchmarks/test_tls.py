"""Verified HTTPS connections: one TLS context per CA bundle, against urllib3's own.

urllib3 makes a TLS context for every connection it opens and loads the CA bundle into it
(certifi's ~150 certificates); seekoci's sessions share one context per bundle
(:mod:`seekoci.registry.tls`). Here a local HTTPS server runs in a process of its own,
with a certificate from a throwaway CA; clients verify it with certifi's bundle plus that
CA (``REQUESTS_CA_BUNDLE``, as a user with a private CA sets it). In fresh client
processes, alternating, four threads open four verified connections at once: through
``new_session()``, and through a session whose adapter is requests' own. The figure is
the client process's CPU from the first request to the last answer (the server's is not
in it), median of the rounds. Writes ``docs/performance-tls.md``
(``SEEKOCI_BENCH_TLS_REPORT`` names another file). The loopback benchmarks speak plain
HTTP (as seekoci does to a loopback registry) and never see this.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import statistics
import subprocess
import sys
from pathlib import Path

import certifi
import pytest
from benchkit import REPO_ROOT, run_script
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PAGE = Path(os.environ.get("SEEKOCI_BENCH_TLS_REPORT", REPO_ROOT / "docs" / "performance-tls.md"))
ROUNDS = 7
THREADS = 4

pytestmark = pytest.mark.benchmark(group="tls")

SERVER = """
import ssl, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        time.sleep(0.2)  # the threads' requests overlap: one connection each
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"""

CLIENT = """
import json, sys, threading, time
import requests, requests.adapters
from seekoci.registry.transport import new_session
kind, url, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "seekoci":
    session = new_session()
else:
    session = requests.Session()
    session.mount("https://", requests.adapters.HTTPAdapter(pool_maxsize=16))
start = threading.Barrier(threads)
bodies = []
def get():
    start.wait()
    bodies.append(session.get(url, timeout=60).content)
workers = [threading.Thread(target=get) for _ in range(threads)]
cpu, wall = time.process_time(), time.perf_counter()
for w in workers:
    w.start()
for w in workers:
    w.join()
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
assert bodies == [b"ok"] * threads, bodies
pool = next(iter(session.get_adapter(url).poolmanager.pools._container.values()))
print(json.dumps({"cpu_s": cpu, "wall_s": wall, "connections": pool.num_connections}))
"""


def _pki(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA, a certificate it signed for 127.0.0.1 (and its key), and the bundle: certifi's
    certificates and that CA's."""
    now = dt.datetime.now(dt.timezone.utc)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("bench CA"))
        .issuer_name(name("bench CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("bench server"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path, bundle = tmp / "server.pem", tmp / "server-key.pem", tmp / "bundle.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    bundle.write_bytes(
        Path(certifi.where()).read_bytes() + ca.public_bytes(serialization.Encoding.PEM)
    )
    return cert_path, key_path, bundle


def test_verified_connections_share_one_tls_context(tmp_path: Path, monkeypatch) -> None:
    cert, key, bundle = _pki(tmp_path)
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(cert), str(key)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        url = f"https://127.0.0.1:{int(server.stdout.readline())}/v2/"
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))  # the clients inherit it
        runs: dict[str, list[dict[str, float]]] = {"seekoci": [], "requests": []}
        for _ in range(ROUNDS):
            for kind, found in runs.items():
                doc, _wall = run_script(CLIENT, kind, url, str(THREADS))
                assert doc["connections"] == THREADS, doc  # one connection a thread
                found.append(doc)
    finally:
        server.kill()
        server.wait()
    cpu = {k: statistics.median(r["cpu_s"] for r in v) for k, v in runs.items()}
    wall = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
    ranges = {k: (min(r["cpu_s"] for r in v), max(r["cpu_s"] for r in v)) for k, v in runs.items()}
    saved = (cpu["requests"] - cpu["seekoci"]) / (THREADS - 1) * 1e3
    page = "\n".join(
        [
            "# Performance: verified TLS connections",
            "",
            "Generated by `nox -s bench` (`benchmarks/test_tls.py`); do not edit by hand. "
            f"{THREADS} threads of a fresh client process open {THREADS} verified HTTPS "
            "connections at once to a local server in another process (a certificate from a "
            "throwaway CA; the bundle: certifi's and that CA's, through `REQUESTS_CA_BUNDLE`), "
            "with seekoci's session (one TLS context per CA bundle, `seekoci.registry.tls`) "
            "and with requests' own adapter (urllib3 loads the bundle into a new context for "
            f"every connection), alternating, {ROUNDS} rounds each. CPU of the client process "
            "from the first request to the last answer.",
            "",
            "| session | CPU, median | CPU, range | wall, median |",
            "|---|---:|---:|---:|",
            *(
                f"| {label} | {cpu[k] * 1e3:.1f} ms | {ranges[k][0] * 1e3:.1f}-"
                f"{ranges[k][1] * 1e3:.1f} ms | {wall[k] * 1e3:.1f} ms |"
                for k, label in (
                    ("seekoci", "seekoci (`new_session()`)"),
                    ("requests", "requests' own `HTTPAdapter`"),
                )
            ),
            "",
            f"Each connection after the first costs {saved:.1f} ms of CPU less "
            f"({cpu['requests'] / cpu['seekoci']:.2f}x the CPU with requests' own adapter).",
            "",
        ]
    )
    PAGE.write_text(page)
    print("\n" + page)
