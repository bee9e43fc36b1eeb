"""Blob range reads over HTTP: Range/Content-Range checks, redirects, streaming, error mapping."""

from __future__ import annotations

import http.client
import random
import socket
import ssl
import threading
import time

import pytest
import requests
import urllib3
import urllib3.exceptions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seekoci.errors import (
    FormatError,
    ImageNotFoundError,
    IntegrityError,
    InvalidReferenceError,
    RegistryError,
    SeekociError,
)
from seekoci.registry import blobs, open_url_source, resolve_image, transport
from seekoci.registry.blobs import URLSource
from seekoci.registry.retry import RetryPolicy
from seekoci.registry.transport import HttpClient, new_session
from seekoci.source import RangeSource

pytestmark = pytest.mark.usefixtures("isolated_docker_config")


DATA = bytes(random.Random(7).randrange(256) for _ in range(200_000))


def layer_source(reg, data=DATA, **auth):
    reg.add_image("blobs/test", tags=("x",), layers=(data,))
    img = resolve_image(f"{reg.netloc}/blobs/test:x", **auth)
    return img.blob_source(img.layers[0])


def test_registry_blob_source_reads_ranges(fake_registry):
    source = layer_source(fake_registry)
    assert isinstance(source, RangeSource)
    assert source.size == len(DATA)
    assert source.name in fake_registry.blobs
    assert source.read_range(0, 10) == DATA[:10]
    assert source.read_range(1000, 5000) == DATA[1000:6000]
    assert source.read_range(len(DATA) - 3, 100) == DATA[-3:]  # short only past the end
    assert source.read_range(len(DATA), 10) == b""
    assert source.read_range(5, 0) == b""
    requests_before = source.requests
    assert source.read_range(len(DATA) + 5, 10) == b""
    assert source.requests == requests_before  # nothing to fetch, no request
    ranges = [r.headers.get("Range") for r in fake_registry.requests if "/blobs/" in r.path]
    assert "bytes=1000-5999" in ranges
    assert source.bytes_read == 10 + 5000 + 3
    assert source.requests == 3
    with pytest.raises(ValueError):
        source.read_range(-1, 3)


def test_iter_from_streams_in_one_request(fake_registry):
    source = layer_source(fake_registry)
    assert b"".join(source.iter_from(0, chunk_size=8192)) == DATA
    assert b"".join(source.iter_from(123_456)) == DATA[123_456:]
    assert list(source.iter_from(len(DATA))) == []
    blob_requests = [r for r in fake_registry.requests if "/blobs/" in r.path]
    assert [r.headers.get("Range") for r in blob_requests[-2:]] == [None, "bytes=123456-"]
    assert source.requests == 2
    assert source.bytes_read == len(DATA) + len(DATA) - 123_456


def test_iter_from_can_be_closed_early(fake_registry):
    source = layer_source(fake_registry)
    stream = source.iter_from(10, chunk_size=1000)
    assert next(stream) == DATA[10:1010]
    stream.close()
    assert source.read_range(0, 4) == DATA[:4]  # the session is still usable


def test_concurrent_range_reads(fake_registry):
    source = layer_source(fake_registry)
    errors: list[BaseException] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(25):
                offset, length = rng.randrange(len(DATA)), rng.randrange(1, 20_000)
                assert source.read_range(offset, length) == DATA[offset : offset + length]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert source.requests == 200


def test_redirect_drops_authorization(fake_registry, blob_server):
    fake_registry.auth.mode = "bearer"
    fake_registry.blob_redirect = blob_server
    source = layer_source(fake_registry)
    assert len(blob_server.requests) == 1  # the config blob, fetched while resolving
    assert source.read_range(100, 50) == DATA[100:150]
    assert b"".join(source.iter_from(199_000)) == DATA[199_000:]
    assert len(blob_server.requests) == 3
    for request in blob_server.requests:
        assert "Authorization" not in request.headers
        assert request.query == {"X-Signature": ["sig-123"]}
    assert [r.headers.get("Range") for r in blob_server.requests] == [
        None,
        "bytes=100-149",
        "bytes=199000-",
    ]
    registry_blob_gets = [r for r in fake_registry.requests if "/blobs/" in r.path]
    assert registry_blob_gets[-1].headers["Authorization"].startswith("Bearer ")
    assert source.requests == 4  # two registry GETs, two redirect hops


def test_redirect_within_the_same_origin_keeps_authorization(fake_registry):
    fake_registry.auth.mode = "basic"

    def moved(h, request):
        if request.path.startswith("/moved"):
            request.path = request.path.removeprefix("/moved")
            return False
        if "/blobs/" in request.path and request.headers.get("Authorization"):
            h.reply(302, b"", {"Location": "/moved" + request.path})
            return True
        return False

    fake_registry.hook = moved
    fake_registry.add_image("blobs/test", tags=("x",), layers=(DATA,))
    img = resolve_image(f"{fake_registry.netloc}/blobs/test:x", auth=("alice", "s3cret-PASSWORD"))
    assert img.blob_source(img.layers[0]).read_range(0, 3) == DATA[:3]
    moved_requests = [
        r for r in fake_registry.requests if r.path.startswith("/v2/") and "blobs" in r.path
    ]
    assert moved_requests and all(r.headers.get("Authorization") for r in moved_requests[-2:])


def test_server_ignoring_range(fake_registry, monkeypatch, caplog):
    source = layer_source(fake_registry)
    fake_registry.honour_range = False
    with pytest.raises(RegistryError, match="does not honour range requests") as caught:
        source.read_range(10, 10)
    assert caught.value.status == 200
    assert fake_registry.netloc in str(caught.value)
    # offset 0 streams the whole blob with a plain GET: 200 is right there
    assert b"".join(source.iter_from(0)) == DATA
    # a forward stream from near the start reads up to its offset, with one warning
    with caplog.at_level("WARNING", logger="seekoci.registry"):
        assert b"".join(source.iter_from(10)) == DATA[10:]
        assert b"".join(source.iter_from(20)) == DATA[20:]
    warned = [r for r in caplog.records if "ignores range requests" in r.getMessage()]
    assert len(warned) == 1
    monkeypatch.setattr(blobs, "MAX_SKIP_BYTES", 5)
    with pytest.raises(RegistryError, match="does not honour range requests"):
        next(source.iter_from(10))


@pytest.mark.parametrize(
    "content_range",
    [
        "bytes 0-9/200000",
        "bytes 10-19/9999",
        "bytes 10-20/200000",
        "bytes */200000",
        "garbage",
        "bytes 10-19",
    ],
)
def test_content_range_mismatch(fake_registry, content_range):
    source = layer_source(fake_registry)
    fake_registry.content_range = content_range
    with pytest.raises(RegistryError, match="Content-Range"):
        source.read_range(10, 10)


def test_unknown_total_in_content_range_is_accepted(fake_registry):
    source = layer_source(fake_registry)
    fake_registry.content_range = "bytes 10-19/*"
    assert source.read_range(10, 10) == DATA[10:20]


def asked_range(request) -> tuple[int, int]:
    first, _, last = request.headers["Range"].removeprefix("bytes=").partition("-")
    return int(first), int(last) if last else len(DATA) - 1


def blob_ranges(reg) -> list[str | None]:
    return [r.headers.get("Range") for r in reg.requests if "/blobs/" in r.path]


def cut_body(times: int | None, *, drop: bool):
    """A hook that sends half the range asked for (``times`` times, None: always), either as
    a body shorter than its Content-Length (``drop``: then closing the connection) or as a
    206 that claims the whole range but has fewer bytes."""
    served = []

    def hook(h, request):
        if "/blobs/" not in request.path or "Range" not in request.headers:
            return False
        if times is not None and len(served) >= times:
            return False
        served.append(1)
        first, last = asked_range(request)
        half = DATA[first : first + (last - first + 1) // 2]
        h.send_response(206)
        h.send_header("Content-Range", f"bytes {first}-{last}/{len(DATA)}")
        h.send_header("Content-Length", str(last - first + 1))
        h.end_headers()
        h.wfile.write(half)
        h.wfile.flush()
        h.close_connection = True
        if drop:
            h.connection.shutdown(socket.SHUT_RDWR)
        return True

    return hook


@pytest.mark.parametrize("read", ["read_range", "read_buffer"])
@pytest.mark.parametrize("drop", [False, True], ids=["short", "dropped"])
def test_cut_bodies_resume_where_they_stopped(fake_registry, drop, read):
    source = layer_source(fake_registry)
    fake_registry.hook = cut_body(2, drop=drop)
    before = len(blob_ranges(fake_registry))
    assert getattr(source, read)(1000, 4000) == DATA[1000:5000]
    # each retry asks only for what is still missing
    assert blob_ranges(fake_registry)[before:] == [
        "bytes=1000-4999",
        "bytes=3000-4999",
        "bytes=4000-4999",
    ]
    fake_registry.hook = cut_body(2, drop=drop)
    assert b"".join(source.iter_from(100_000)) == DATA[100_000:]
    assert blob_ranges(fake_registry)[-3:] == ["bytes=100000-", "bytes=150000-", "bytes=175000-"]


def test_a_range_read_into_its_buffer_is_not_copied(fake_registry):
    source = layer_source(fake_registry)
    buffer = source.read_buffer(1000, 150_000)
    assert isinstance(buffer, bytearray) and buffer == DATA[1000:151_000]
    assert isinstance(source.read_range(1000, 10), bytes)  # read_range's callers get bytes
    assert source.read_buffer(len(DATA), 10) == b""


@pytest.mark.parametrize("drop", [False, True], ids=["short", "dropped"])
def test_cut_bodies_every_time_fail_after_the_retries(fake_registry, drop, monkeypatch):
    monkeypatch.setenv("SEEKOCI_RETRIES", "2")
    source = layer_source(fake_registry)
    fake_registry.hook = cut_body(None, drop=drop)
    with pytest.raises(RegistryError, match=r"bytes 10-19: .*gave up after 3 attempts") as caught:
        source.read_range(10, 10)
    assert caught.value.__cause__ is not None
    with pytest.raises(RegistryError, match="3 attempts"):
        b"".join(source.iter_from(10))


def test_blob_not_found_and_server_error(fake_registry):
    source = layer_source(fake_registry)
    fake_registry.blobs.clear()
    with pytest.raises(ImageNotFoundError):
        source.read_range(0, 1)

    def fail(h, request):
        h.reply(502, b"bad gateway")
        return True

    fake_registry.hook = fail
    with pytest.raises(RegistryError) as caught:
        source.read_range(0, 1)
    assert caught.value.status == 502


def test_rate_limit_with_short_retry_after_is_retried(fake_registry):
    source = layer_source(fake_registry)
    answered = []

    def limited(h, request):
        if "/blobs/" in request.path and len(answered) < 1:
            answered.append(1)
            h.reply(429, b"", {"Retry-After": "0"})
            return True
        return False

    fake_registry.hook = limited
    assert source.read_range(0, 4) == DATA[:4]

    def always_limited(h, request):
        h.reply(429, b"")
        return True

    fake_registry.hook = always_limited
    with pytest.raises(RegistryError, match="429") as caught:
        source.read_range(0, 4)
    assert caught.value.status == 429


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connection_refused():
    port = free_port()
    with pytest.raises(RegistryError, match="cannot connect") as caught:
        resolve_image(f"127.0.0.1:{port}/x:y")
    assert caught.value.status is None
    assert isinstance(caught.value.__cause__, requests.ConnectionError)
    with pytest.raises(RegistryError):
        open_url_source(f"http://127.0.0.1:{port}/blob")


def test_read_timeout(blob_server):
    blob_server.files["/slow"] = DATA

    def slow(h, request):
        time.sleep(0.5)
        return False

    blob_server.hook = slow
    client = HttpClient(new_session(), policy=RetryPolicy(timeout=0.1))
    with pytest.raises(RegistryError, match="timed out"):
        URLSource(f"{blob_server.url}/slow", http=client)


# -- plain URLs ---------------------------------------------------------------------------------


def test_url_source_size_from_head(blob_server):
    blob_server.files["/dir/blob.tar.gz"] = DATA
    source = open_url_source(f"{blob_server.url}/dir/blob.tar.gz")
    assert source.size == len(DATA)
    assert source.read_range(5, 5) == DATA[5:10]
    assert [r.method for r in blob_server.requests] == ["HEAD", "GET"]
    assert source.name == f"{blob_server.url}/dir/blob.tar.gz"
    source.close()


def test_url_source_size_from_content_range_when_head_fails(blob_server):
    blob_server.files["/blob"] = DATA
    blob_server.head_status = 403
    source = open_url_source(f"{blob_server.url}/blob?sig=SECRET-SIG")
    assert source.size == len(DATA)
    assert [(r.method, r.headers.get("Range")) for r in blob_server.requests] == [
        ("HEAD", None),
        ("GET", "bytes=0-0"),
    ]
    assert "SECRET-SIG" not in source.name and "SECRET-SIG" not in repr(source)
    assert b"".join(source.iter_from(199_990)) == DATA[199_990:]


def test_url_source_empty_blob(blob_server):
    blob_server.files["/empty"] = b""
    blob_server.head_status = 405
    source = open_url_source(f"{blob_server.url}/empty")
    assert source.size == 0
    assert source.read_range(0, 10) == b""
    assert list(source.iter_from()) == []


def test_url_source_ignoring_range(blob_server):
    blob_server.files["/blob"] = DATA
    blob_server.honour_range = False
    source = open_url_source(f"{blob_server.url}/blob")
    with pytest.raises(RegistryError, match="does not honour range requests"):
        source.read_range(1, 1)
    blob_server.head_status = 403
    with pytest.raises(RegistryError, match="does not honour range requests"):
        open_url_source(f"{blob_server.url}/blob")


def test_url_source_user_info_becomes_basic_auth(blob_server):
    blob_server.files["/blob"] = DATA
    source = open_url_source(f"http://bob:pa%40ss@{blob_server.netloc}/blob")
    assert source.read_range(0, 2) == DATA[:2]
    assert "bob" not in source.name and "pa" not in source.name.split("/")[-1]
    assert all(r.headers["Authorization"] == "Basic Ym9iOnBhQHNz" for r in blob_server.requests)


def test_url_source_not_found_and_bad_scheme(blob_server):
    with pytest.raises(ImageNotFoundError):
        open_url_source(f"{blob_server.url}/missing")
    with pytest.raises(InvalidReferenceError):
        open_url_source("ftp://example.invalid/blob")
    with pytest.raises(InvalidReferenceError):
        open_url_source("/local/path")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    reads=st.lists(st.tuples(st.integers(0, len(DATA) + 10), st.integers(0, 70_000)), max_size=6)
)
def test_random_reads_match_the_bytes(blob_server, reads):
    blob_server.files["/h"] = DATA
    source = open_url_source(f"{blob_server.url}/h")
    for offset, length in reads:
        assert source.read_range(offset, length) == DATA[offset : offset + length]
    source.close()


# -- no lower-level exception escapes -----------------------------------------------------------


def transport_exception_types() -> list[type[BaseException]]:
    found: set[type[BaseException]] = {
        http.client.IncompleteRead,
        http.client.RemoteDisconnected,
        ConnectionResetError,
        ConnectionRefusedError,
        TimeoutError,
        socket.timeout,
        ssl.SSLError,
    }
    for module in (requests.exceptions, urllib3.exceptions):
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, Exception)
                and not issubclass(value, Warning)
            ) and issubclass(value, (requests.RequestException, urllib3.exceptions.HTTPError)):
                found.add(value)
    return sorted(found, key=lambda t: f"{t.__module__}.{t.__qualname__}")


def make(exc_type: type[BaseException]) -> BaseException:
    exc = exc_type.__new__(exc_type)  # some constructors need odd arguments; args are enough
    exc.args = ("simulated failure http://user:Pa55@host/x?sig=SIGNATURE",)
    return exc


EXCEPTION_TYPES = transport_exception_types()


def test_the_exception_list_is_not_trivially_small():
    assert len(EXCEPTION_TYPES) > 40


@pytest.mark.parametrize("exc_type", EXCEPTION_TYPES, ids=lambda t: t.__name__)
def test_no_transport_exception_escapes(fake_registry, blob_server, monkeypatch, exc_type):
    source = layer_source(fake_registry)
    blob_server.files["/blob"] = DATA
    url_source = open_url_source(f"{blob_server.url}/blob")

    def failing(*args, **kwargs):
        raise make(exc_type)

    read_range = lambda: source.read_range(0, 10)  # noqa: E731
    stream_all = lambda: b"".join(source.iter_from(0))  # noqa: E731
    stream_tail = lambda: b"".join(source.iter_from(5))  # noqa: E731
    url_read = lambda: url_source.read_range(0, 10)  # noqa: E731
    url_open = lambda: open_url_source(f"{blob_server.url}/blob")  # noqa: E731
    resolve = lambda: resolve_image(f"{fake_registry.netloc}/blobs/test:x")  # noqa: E731
    # Each patch with the calls that go through the patched function.
    cases = [
        (
            "requests.Session.request",
            [read_range, stream_all, stream_tail, url_read, url_open, resolve],
        ),
        (
            "urllib3.response.HTTPResponse.read urllib3.response.HTTPResponse.read1",
            [stream_all, stream_tail],
        ),
        # a small document of a declared length is received whole under urllib3
        ("seekoci.registry.transport._read_whole", [resolve]),
        # range reads receive under urllib3, straight from the socket into their buffer
        ("seekoci.registry.blobs._receive", [read_range, url_read]),
    ]
    for patch_targets, calls in cases:
        with monkeypatch.context() as patched:
            for patch_target in patch_targets.split():
                patched.setattr(patch_target, failing)
            for call in calls:
                with pytest.raises(RegistryError) as caught:
                    call()
                assert caught.value.__cause__ is not None
                assert "Pa55" not in str(caught.value) and "SIGNATURE" not in str(caught.value)


def _whole_blob_hook(times: int | None, answer):
    """A hook that answers whole-blob GETs (no Range) with ``answer(handler, blob bytes)``,
    ``times`` times (None: always); other requests go to the fake registry."""
    served = []

    def hook(h, request):
        if "/blobs/" not in request.path or "Range" in request.headers:
            return False
        if times is not None and len(served) >= times:
            return False
        served.append(1)
        answer(h, h.server.owner.blobs[request.path.rpartition("/")[2]])
        return True

    return hook


def _cut_small_body(times: int | None, *, drop: bool):
    """The full Content-Length, half the body, then a close (``drop``: the socket shut
    down)."""

    def cut(h, data):
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data[: len(data) // 2])
        h.wfile.flush()
        h.close_connection = True
        if drop:
            h.connection.shutdown(socket.SHUT_RDWR)

    return _whole_blob_hook(times, cut)


def _small_blob(reg, data: bytes):
    from seekoci.registry.client import RegistryClient
    from seekoci.registry.manifest import Descriptor

    descriptor = Descriptor.from_json(reg.add_blob(data), where="test")
    return RegistryClient(reg.netloc), descriptor


def test_a_whole_small_blob_is_one_read_on_a_kept_connection(fake_registry, monkeypatch):
    data = random.Random(3).randbytes(3_000_000)
    client, descriptor = _small_blob(fake_registry, data)
    ports = []

    def note_connection(h, request):
        ports.append(h.client_address[1])
        return False

    fake_registry.hook = note_connection
    reads = []
    real_read_whole = transport._read_whole

    def read_whole(inner, length):
        reads.append(length)
        return real_read_whole(inner, length)

    monkeypatch.setattr(transport, "_read_whole", read_whole)
    for _ in range(3):
        assert blobs.fetch_blob(client, "blobs/small", descriptor) == data
    assert reads == [len(data)] * 3  # each body in one read, not in pieces joined
    assert len(ports) >= 3 and len(set(ports[-3:])) == 1, "the connection was not kept"


@pytest.mark.parametrize("drop", [False, True], ids=["short", "dropped"])
def test_a_small_blob_cut_short_is_fetched_again(fake_registry, drop):
    data = bytes(range(256)) * 400
    client, descriptor = _small_blob(fake_registry, data)
    fake_registry.hook = _cut_small_body(1, drop=drop)
    assert blobs.fetch_blob(client, "blobs/small", descriptor) == data
    gets = [p for p in fake_registry.paths("GET") if p.endswith(descriptor.digest)]
    assert len(gets) == 2


@pytest.mark.parametrize("drop", [False, True], ids=["short", "dropped"])
def test_a_small_blob_always_cut_short_fails_naming_it(fake_registry, drop, monkeypatch):
    monkeypatch.setenv("SEEKOCI_RETRIES", "2")
    data = bytes(range(256)) * 400
    client, descriptor = _small_blob(fake_registry, data)
    fake_registry.hook = _cut_small_body(None, drop=drop)
    with pytest.raises(RegistryError, match=f"blob {descriptor.digest}.*3 attempts"):
        blobs.fetch_blob(client, "blobs/small", descriptor)


def test_a_body_longer_than_the_limit_is_read_only_to_the_limit(fake_registry):
    from seekoci.registry.transport import read_body

    data = b"x" * 5000
    digest = fake_registry.add_blob(data)["digest"]
    session = new_session()
    response = session.get(f"{fake_registry.url}/v2/blobs/small/blobs/{digest}", stream=True)
    assert read_body(response, limit=1000, what="a body") == data[:1001]
    response = session.get(f"{fake_registry.url}/v2/blobs/small/blobs/{digest}", stream=True)
    assert read_body(response, limit=5000, what="a body") == data


def _flip_small_body(times: int | None):
    """The blob with its first byte flipped."""
    return _whole_blob_hook(times, lambda h, data: h.reply(200, bytes([data[0] ^ 1]) + data[1:]))


def test_use_runs_on_the_body_while_it_is_verified(fake_registry):
    data = random.Random(5).randbytes(1_000_000)
    client, descriptor = _small_blob(fake_registry, data)
    seen = []
    threads = []

    def use(body):
        threads.append(threading.current_thread().name)
        seen.append(body)

    assert blobs.fetch_blob(client, "blobs/small", descriptor, use=use) == data
    assert seen == [data]
    assert threads == [threading.current_thread().name]  # on the caller's thread


def test_use_of_a_damaged_body_is_run_again_on_the_refetched_one(fake_registry):
    data = random.Random(6).randbytes(100_000)
    client, descriptor = _small_blob(fake_registry, data)
    fake_registry.hook = _flip_small_body(1)
    seen = []
    assert blobs.fetch_blob(client, "blobs/small", descriptor, use=seen.append) == data
    assert [body == data for body in seen] == [False, True]


def test_use_cannot_make_a_wrong_body_right(fake_registry):
    data = random.Random(7).randbytes(100_000)
    client, descriptor = _small_blob(fake_registry, data)
    fake_registry.hook = _flip_small_body(None)
    seen = []
    with pytest.raises(IntegrityError, match=f"blob {descriptor.digest}: content has digest"):
        blobs.fetch_blob(client, "blobs/small", descriptor, use=seen.append)
    assert len(seen) == 2 and data not in seen  # the body, then the refetched body

    def refuse(body):
        raise FormatError("not a zTOC")

    # what use says of a wrong body does not matter: the body was not the blob
    with pytest.raises(IntegrityError):
        blobs.fetch_blob(client, "blobs/small", descriptor, use=refuse)


def test_an_error_use_raises_on_the_right_body_is_raised(fake_registry):
    data = random.Random(8).randbytes(100_000)
    client, descriptor = _small_blob(fake_registry, data)

    def refuse(body):
        raise FormatError("not a zTOC")

    with pytest.raises(FormatError, match="not a zTOC"):
        blobs.fetch_blob(client, "blobs/small", descriptor, use=refuse)
    gets = [p for p in fake_registry.paths("GET") if p.endswith(descriptor.digest)]
    assert len(gets) == 1  # a good body is not fetched again


def test_a_declared_length_is_not_allocated_before_its_bytes_come(fake_registry):
    # the manifest claims a config of 10**11 bytes and the blob's answer declares as much,
    # then sends two: one read of the declared length was a MemoryError out of open_image
    from conftest import OCI_CONFIG, OCI_MANIFEST, sha256

    claimed = 10**11
    config = {"mediaType": OCI_CONFIG, "digest": sha256(b"{}"), "size": claimed}
    fake_registry.add_manifest(
        "big", {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": []},
        tags=("v1",),
    )  # fmt: skip

    def lying_length(h, request):
        if "/blobs/" not in request.path:
            return False
        h.send_response(200)
        h.send_header("Content-Length", str(claimed))
        h.end_headers()
        h.wfile.write(b"{}")
        h.close_connection = True
        return True

    fake_registry.hook = lying_length
    ref = f"{fake_registry.netloc}/big:v1"  # (its config is fetched with the image)
    with pytest.raises(SeekociError, match="connection broken"), resolve_image(ref) as img:
        img.config  # noqa: B018
