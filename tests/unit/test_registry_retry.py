"""The retry budget: settings from keywords and the environment, backoff, the overall
deadline, and what is (not) retried, against the fake registry."""

from __future__ import annotations

import logging
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import urllib3.exceptions

import seekoci
from seekoci.errors import ImageNotFoundError, RegistryError
from seekoci.registry import resolve_image, retry
from seekoci.registry.retry import RetryPolicy
from seekoci.registry.transport import (
    HttpClient,
    is_timeout,
    is_transient,
    new_session,
    transport_errors,
)

pytestmark = pytest.mark.usefixtures("isolated_docker_config")

DATA = bytes(range(256)) * 400


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """time.sleep on the test's own thread, recorded instead of slept. (The patch is of
    the time module, which every thread shares: a thread an earlier test left behind -- an
    image's background discovery of published indexes can retry against that test's
    stopped registry -- sleeps for real, not into this test's record.)"""
    waited: list[float] = []
    mine = threading.get_ident()
    real_sleep = retry.time.sleep

    def sleep(seconds: float) -> None:
        if threading.get_ident() == mine:
            waited.append(seconds)
        else:
            real_sleep(seconds)

    monkeypatch.setattr(retry.time, "sleep", sleep)
    return waited


def source(reg):
    reg.add_image("retry/test", tags=("x",), layers=(DATA,))
    img = resolve_image(f"{reg.netloc}/retry/test:x")
    return img.blob_source(img.layers[0])


def blob_gets(reg) -> int:
    return sum(1 for r in reg.requests if "/blobs/" in r.path and r.method == "GET")


def failing(status: int, times: int | None, headers: dict[str, str] | None = None):
    answered: list[int] = []

    def hook(h, request):
        if "/blobs/" not in request.path or (times is not None and len(answered) >= times):
            return False
        answered.append(status)
        h.reply(status, b"no", headers or {})
        return True

    return hook


# --------------------------------------------------------------------------- settings


def test_defaults_and_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("SEEKOCI_TIMEOUT", raising=False)
    monkeypatch.delenv("SEEKOCI_RETRIES", raising=False)
    assert RetryPolicy.resolve() == RetryPolicy(30.0, 5)
    monkeypatch.setenv("SEEKOCI_TIMEOUT", "2.5")
    monkeypatch.setenv("SEEKOCI_RETRIES", "0")
    assert RetryPolicy.resolve() == RetryPolicy(2.5, 0)
    assert RetryPolicy.resolve(timeout=7, retries=3) == RetryPolicy(7.0, 3)  # keywords win


@pytest.mark.parametrize("value", ["soon", "-1", "0", "1e999999", "nan"])
def test_a_bad_environment_value_is_ignored_with_a_warning(monkeypatch, caplog, value) -> None:
    monkeypatch.setenv("SEEKOCI_TIMEOUT", value)
    monkeypatch.setenv("SEEKOCI_RETRIES", "many")
    with caplog.at_level(logging.WARNING, logger="seekoci.registry"):
        policy = RetryPolicy.resolve()
    assert policy == RetryPolicy(30.0, 5)
    assert any("SEEKOCI_RETRIES" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"timeout": 0}, ValueError),
        ({"timeout": -1}, ValueError),
        ({"timeout": "30"}, TypeError),
        ({"retries": -1}, ValueError),
        ({"retries": 1.5}, TypeError),
        ({"retries": True}, TypeError),
    ],
)
def test_bad_keywords_are_refused_before_any_request(fake_registry, kwargs, error) -> None:
    fake_registry.add_image("retry/test", tags=("x",))
    with pytest.raises(error):
        seekoci.open_image(f"{fake_registry.netloc}/retry/test:x", cache_dir=False, **kwargs)
    assert fake_registry.requests == []


def test_open_image_passes_them_to_the_client(fake_registry) -> None:
    fake_registry.add_image("retry/test", tags=("x",))
    img = seekoci.open_image(
        f"{fake_registry.netloc}/retry/test:x", cache_dir=False, timeout=4, retries=2
    )
    assert img.resolved.store.client.policy == RetryPolicy(4.0, 2)


# --------------------------------------------------------------------------- the budget


def test_backoff_doubles_with_jitter_and_a_cap(sleeps) -> None:
    attempts = RetryPolicy(timeout=30, retries=8).begin("x")
    for _ in range(8):
        attempts.retry("HTTP 503")
    with pytest.raises(RegistryError, match=r"x: HTTP 503 \(gave up after 9 attempts\)"):
        attempts.retry("HTTP 503")
    for n, waited in enumerate(sleeps):
        full = min(retry.BACKOFF_MAX_SECONDS, retry.BACKOFF_BASE_SECONDS * 2**n)
        assert full / 2 <= waited <= full


def test_silence_adds_up_to_the_deadline() -> None:
    attempts = RetryPolicy(timeout=10, retries=5).begin("registry/x blob y")
    assert attempts.wait() == 5  # half of it per attempt
    attempts.waited(5, "read timed out")
    assert attempts.wait() == 5
    attempts.received()  # a byte: the silence is over
    attempts.waited(5, "read timed out")
    with pytest.raises(RegistryError, match="registry/x blob y: no answer for 10 s"):
        attempts.waited(5, "read timed out")


def test_an_attempt_with_no_retry_after_it_waits_for_all_the_silence_left(sleeps) -> None:
    # retries=0: the one attempt is the request; it may wait all of timeout for a byte
    assert RetryPolicy(timeout=10, retries=0).begin("x").wait() == 10
    attempts = RetryPolicy(timeout=10, retries=1).begin("x")
    assert attempts.wait() == 5
    attempts.waited(4, "read timed out")  # (a connection reset after 4 s of silence)
    attempts.retry("connection reset")
    assert attempts.wait() == 6  # the last attempt: what is left of the 10 s
    with pytest.raises(RegistryError, match="x: no answer for 10 s"):
        attempts.waited(6, "read timed out")


def test_with_no_retries_a_server_slower_than_half_the_timeout_is_waited_for(
    fake_registry, monkeypatch
) -> None:
    monkeypatch.setenv("SEEKOCI_TIMEOUT", "1")
    monkeypatch.setenv("SEEKOCI_RETRIES", "0")
    src = source(fake_registry)

    def slow(h, request) -> bool:
        if "/blobs/" in request.path:
            time.sleep(0.7)  # (before: given up at 0.5 s, RegistryError)
        return False

    fake_registry.hook = slow
    assert src.read_range(10, 100) == DATA[10:110]


def test_a_request_never_retried_waits_for_all_of_the_timeout() -> None:
    # a POST (a token refresh, a push) is never sent twice: its one attempt is the request
    class Slow(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            time.sleep(0.7)  # (before: given up at 0.5 s with retries left)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = HttpClient(new_session(), policy=RetryPolicy(timeout=1.0, retries=5))
        url = f"http://127.0.0.1:{server.server_address[1]}/token"
        response = client.send("POST", url, data={"grant_type": "refresh_token"})
        assert response.status_code == 200 and response.content == b"ok"
    finally:
        server.shutdown()
        server.server_close()


def test_five_503s_then_the_bytes(fake_registry, sleeps) -> None:
    src = source(fake_registry)
    fake_registry.hook = failing(503, 5)
    before = blob_gets(fake_registry)
    assert src.read_range(10, 100) == DATA[10:110]
    assert blob_gets(fake_registry) - before == 6
    assert len(sleeps) == 5


def test_retry_after_is_honoured_and_capped(fake_registry, sleeps) -> None:
    src = source(fake_registry)
    fake_registry.hook = failing(429, 1, {"Retry-After": "7"})
    assert src.read_range(0, 10) == DATA[:10]
    assert sleeps == [7.0]
    # a server asking for more than seekoci waits gets no retry at all
    fake_registry.hook = failing(429, None, {"Retry-After": "3600"})
    before = blob_gets(fake_registry)
    with pytest.raises(RegistryError, match="429, it asks to wait 3600 s") as caught:
        src.read_range(0, 10)
    assert caught.value.status == 429
    assert blob_gets(fake_registry) - before == 1


@pytest.mark.parametrize("status", [400, 404, 405, 416, 501])
def test_other_client_errors_are_not_retried(fake_registry, sleeps, status) -> None:
    src = source(fake_registry)
    fake_registry.hook = failing(status, None)
    before = blob_gets(fake_registry)
    with pytest.raises(RegistryError) as caught:
        src.read_range(0, 10)
    assert caught.value.status == status
    assert isinstance(caught.value, ImageNotFoundError) == (status == 404)
    assert blob_gets(fake_registry) - before == 1
    assert sleeps == []


def test_uploads_are_not_retried(blob_server, sleeps) -> None:
    blob_server.hook = lambda h, request: h.reply(503, b"busy") or True
    response = HttpClient(new_session()).send("POST", f"{blob_server.url}/upload")
    assert response.status_code == 503
    assert len(blob_server.requests) == 1 and sleeps == []


def test_an_expired_redirect_goes_back_for_a_fresh_one(fake_registry, blob_server, sleeps):
    src = source(fake_registry)
    digest = src.name
    blob_server.files[f"/store/{digest}"] = DATA
    signatures = iter(range(1, 100))
    expired = {1}

    def redirect(h, request):
        if "/blobs/" in request.path:
            h.reply(
                307, b"", {"Location": f"{blob_server.url}/store/{digest}?sig={next(signatures)}"}
            )
            return True
        return False

    def storage(h, request):
        if int(request.query["sig"][0]) in expired:
            h.reply(403, b"<Error>Request has expired</Error>")
            return True
        return False

    fake_registry.hook = redirect
    blob_server.hook = storage
    assert src.read_range(100, 50) == DATA[100:150]
    assert [r.query["sig"] for r in blob_server.requests] == [["1"], ["2"]]
    assert not any("Authorization" in r.headers for r in blob_server.requests)
    # expired every time: back to the registry twice, then the 403 is the answer
    expired.update(range(100))
    with pytest.raises(RegistryError) as caught:
        src.read_range(100, 50)
    assert caught.value.status == 403
    assert len(blob_server.requests) == 2 + 3


def mapped(exc: BaseException) -> RegistryError:
    """``exc`` as transport_errors maps it."""
    try:
        with transport_errors("GET http://host/x"):
            raise exc
    except RegistryError as err:
        return err
    raise AssertionError("not mapped")


@pytest.mark.parametrize(
    ("exc", "transient", "timeout"),
    [
        (ConnectionResetError(104, "Connection reset by peer"), True, False),
        (requests.exceptions.ChunkedEncodingError("cut"), True, False),
        (requests.exceptions.ReadTimeout("slow"), True, True),
        (urllib3.exceptions.NewConnectionError(None, "refused"), True, False),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), True, False),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), False, False),
        (ssl.SSLError(1, "wrong version number"), False, False),
        (requests.exceptions.InvalidURL("no host"), False, False),
        (requests.exceptions.TooManyRedirects("loop"), False, False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_what_is_worth_another_attempt(exc, transient, timeout) -> None:
    err = mapped(exc)
    assert is_transient(err) is transient
    assert is_timeout(err) is timeout
