"""Auth: WWW-Authenticate parsing, Basic, bearer tokens, Docker config, credential secrecy."""

from __future__ import annotations

import base64
import json
import logging
import threading

import pytest

from seekoci.errors import AuthenticationError, RegistryError
from seekoci.registry import Credentials, RegistryClient, resolve_image
from seekoci.registry.auth import Challenge, parse_www_authenticate
from seekoci.registry.credentials import credentials_from_config, load_docker_credentials

pytestmark = pytest.mark.usefixtures("isolated_docker_config")


# -- WWW-Authenticate ---------------------------------------------------------------------------

CHALLENGES = [
    ('Basic realm="registry"', [Challenge("basic", {"realm": "registry"})]),
    ("basic realm=x", [Challenge("basic", {"realm": "x"})]),
    (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/alpine:pull"',
        [
            Challenge(
                "bearer",
                {
                    "realm": "https://auth.docker.io/token",
                    "service": "registry.docker.io",
                    "scope": "repository:library/alpine:pull",
                },
            )
        ],
    ),
    (
        'Bearer realm="https://a/t", scope="repository:dst:pull,push repository:src:pull", '
        'error="insufficient_scope"',
        [
            Challenge(
                "bearer",
                {
                    "realm": "https://a/t",
                    "scope": "repository:dst:pull,push repository:src:pull",
                    "error": "insufficient_scope",
                },
            )
        ],
    ),
    (
        'Bearer  scope = "a,b" ,  REALM="x\\"y" , error=invalid_token',
        [Challenge("bearer", {"scope": "a,b", "realm": 'x"y', "error": "invalid_token"})],
    ),
    (
        'Basic realm="a", Bearer realm="b",service="s"',
        [Challenge("basic", {"realm": "a"}), Challenge("bearer", {"realm": "b", "service": "s"})],
    ),
    ("Negotiate", [Challenge("negotiate", {})]),
    ("Negotiate, Basic realm=r", [Challenge("negotiate", {}), Challenge("basic", {"realm": "r"})]),
    ("", []),
    ('Bearer realm="unterminated', [Challenge("bearer", {"realm": "unterminated"})]),
]


@pytest.mark.parametrize(("header", "expected"), CHALLENGES)
def test_parse_www_authenticate(header, expected):
    assert parse_www_authenticate(header) == expected


@pytest.mark.parametrize(
    "header", ["=", ",,,", 'x="', "a b c = d", "Bearer realm=", "Negotiate abc=="]
)
def test_parse_www_authenticate_never_hangs_on_garbage(header):
    parse_www_authenticate(header)


# -- Basic --------------------------------------------------------------------------------------


def test_basic_auth(fake_registry):
    fake_registry.auth.mode = "basic"
    fake_registry.add_image("private", tags=("x",), layers=(b"secret layer",))
    img = resolve_image(f"{fake_registry.netloc}/private:x", auth=("alice", "s3cret-PASSWORD"))
    assert img.blob_source(img.layers[0]).read_range(0, 6) == b"secret"
    # After the first challenge the client sends Basic up front: one 401 in total.
    statuses = [r.headers.get("Authorization", "").split(" ")[0] for r in fake_registry.requests]
    assert statuses.count("") == 1


def test_basic_auth_wrong_password(fake_registry):
    fake_registry.auth.mode = "basic"
    fake_registry.add_image("private", tags=("x",))
    with pytest.raises(AuthenticationError) as caught:
        resolve_image(f"{fake_registry.netloc}/private:x", auth=("alice", "wrong"))
    assert caught.value.status == 401


def test_basic_auth_without_credentials(fake_registry):
    fake_registry.auth.mode = "basic"
    fake_registry.add_image("private", tags=("x",))
    with pytest.raises(AuthenticationError, match="username and password"):
        resolve_image(f"{fake_registry.netloc}/private:x")


def test_auth_must_be_a_pair(fake_registry):
    with pytest.raises(TypeError):
        resolve_image(f"{fake_registry.netloc}/x", auth="alice:pw")  # type: ignore[arg-type]


# -- Bearer -------------------------------------------------------------------------------------


def test_anonymous_bearer_flow(fake_registry):
    fake_registry.auth.mode = "bearer"
    fake_registry.add_image("pub/img", tags=("x",), layers=(b"hello world",))
    img = resolve_image(f"{fake_registry.netloc}/pub/img:x")
    assert img.blob_source(img.layers[0]).read_range(6, 5) == b"world"
    tokens = [r for r in fake_registry.requests if r.path == "/token"]
    assert len(tokens) == 1  # cached for the scope
    assert tokens[0].query == {"service": ["fake-registry"], "scope": ["repository:pub/img:pull"]}
    assert "Authorization" not in tokens[0].headers  # anonymous


@pytest.mark.parametrize("token_field", ["token", "access_token"])
def test_bearer_with_credentials(fake_registry, token_field):
    fake_registry.auth.mode = "bearer"
    fake_registry.auth.token_needs_credentials = True
    fake_registry.auth.token_field = token_field
    fake_registry.add_image("priv", tags=("x",))
    resolve_image(f"{fake_registry.netloc}/priv:x", auth=("alice", "s3cret-PASSWORD"))
    token_request = next(r for r in fake_registry.requests if r.path == "/token")
    assert token_request.headers["Authorization"].startswith("Basic ")
    with pytest.raises(AuthenticationError) as caught:
        resolve_image(f"{fake_registry.netloc}/priv:x", auth=("alice", "nope"))
    assert caught.value.status == 401


def test_expired_token_is_refreshed_once(fake_registry):
    fake_registry.auth.mode = "bearer"
    fake_registry.add_image("img", tags=("x",), layers=(b"0123456789",))
    img = resolve_image(f"{fake_registry.netloc}/img:x")
    source = img.blob_source(img.layers[0])
    assert source.read_range(0, 2) == b"01"
    fake_registry.auth.valid_tokens.clear()  # every token issued so far expires
    assert source.read_range(2, 2) == b"23"
    assert len(fake_registry.auth.issued) == 2
    assert source.read_range(4, 2) == b"45"
    assert len(fake_registry.auth.issued) == 2  # the new token is reused


def test_second_refusal_is_an_authentication_error(fake_registry):
    fake_registry.auth.mode = "bearer"
    fake_registry.add_image("img", tags=("x",), layers=(b"0123456789",))
    img = resolve_image(f"{fake_registry.netloc}/img:x")
    source = img.blob_source(img.layers[0])
    issued_before = len(fake_registry.auth.issued)
    # Tokens stop being accepted at all (access revoked): one refresh, then give up.

    class NeverValid(set):
        def add(self, item):
            pass

    fake_registry.auth.valid_tokens = NeverValid()
    with pytest.raises(AuthenticationError) as caught:
        source.read_range(0, 1)
    assert caught.value.status == 401
    assert len(fake_registry.auth.issued) == issued_before + 1


def test_forbidden_is_an_authentication_error(fake_registry):
    fake_registry.add_image("img", tags=("x",))

    def forbid(h, request):
        h.reply_json(403, {"errors": [{"code": "DENIED", "message": "requested access is denied"}]})
        return True

    fake_registry.hook = forbid
    with pytest.raises(AuthenticationError, match="DENIED") as caught:
        resolve_image(f"{fake_registry.netloc}/img:x")
    assert caught.value.status == 403


def test_token_fetched_once_by_many_threads(fake_registry):
    fake_registry.auth.mode = "bearer"
    fake_registry.add_image("img", tags=("x",), layers=(bytes(range(256)) * 64,))
    img = resolve_image(f"{fake_registry.netloc}/img:x")
    source = img.blob_source(img.layers[0])
    fake_registry.auth.valid_tokens.clear()
    errors: list[BaseException] = []

    def reader(offset: int) -> None:
        try:
            for i in range(10):
                start = (offset * 97 + i * 31) % 16000
                assert (
                    source.read_range(start, 100) == (bytes(range(256)) * 64)[start : start + 100]
                )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    # One token at resolve time, then one refresh shared by all eight threads.
    assert len(fake_registry.auth.issued) == 2
    assert source.requests >= 80


@pytest.mark.parametrize("answer", [b"not json", b"[" * 100_000], ids=["garbage", "deep"])
def test_a_token_service_answer_that_is_not_json(fake_registry, answer):
    fake_registry.auth.mode = "bearer"
    fake_registry.add_image("img", tags=("x",))

    def garbled_token_service(h, request):
        if request.path.startswith("/token"):
            h.reply(200, answer)
            return True
        return False

    fake_registry.hook = garbled_token_service
    with pytest.raises(RegistryError, match="token service answer is not valid JSON"):
        resolve_image(f"{fake_registry.netloc}/img:x")


def test_token_service_failure(fake_registry):
    fake_registry.auth.mode = "bearer"
    fake_registry.add_image("img", tags=("x",))

    def broken_token_service(h, request):
        if request.path == "/token":
            h.reply(500, b"oops")
            return True
        return False

    fake_registry.hook = broken_token_service
    with pytest.raises(RegistryError) as caught:
        resolve_image(f"{fake_registry.netloc}/img:x")
    assert caught.value.status == 500
    assert not isinstance(caught.value, AuthenticationError)


# -- Docker config ------------------------------------------------------------------------------


def write_config(directory, doc):
    (directory / "config.json").write_text(json.dumps(doc))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_config_auths_base64(fake_registry, isolated_docker_config):
    fake_registry.auth.mode = "basic"
    fake_registry.add_image("private", tags=("x",))
    write_config(
        isolated_docker_config,
        {"auths": {fake_registry.netloc: {"auth": b64("alice:s3cret-PASSWORD")}}},
    )
    assert resolve_image(f"{fake_registry.netloc}/private:x").digest


def test_config_auths_username_password_with_url_key(fake_registry, isolated_docker_config):
    fake_registry.auth.mode = "bearer"
    fake_registry.auth.token_needs_credentials = True
    fake_registry.add_image("private", tags=("x",))
    key = f"http://{fake_registry.netloc}/v1/"
    write_config(
        isolated_docker_config,
        {"auths": {key: {"username": "alice", "password": "s3cret-PASSWORD"}}},
    )
    assert resolve_image(f"{fake_registry.netloc}/private:x").digest


def test_config_identity_token_uses_oauth_refresh(fake_registry, isolated_docker_config):
    fake_registry.auth.mode = "bearer"
    fake_registry.auth.refresh_token = "REFRESH-abc"
    fake_registry.add_image("private", tags=("x",))
    write_config(
        isolated_docker_config,
        {"auths": {fake_registry.netloc: {"auth": b64("alice:"), "identitytoken": "REFRESH-abc"}}},
    )
    assert resolve_image(f"{fake_registry.netloc}/private:x").digest
    post = next(r for r in fake_registry.requests if r.path == "/token")
    assert post.method == "POST"
    form = dict(pair.split("=", 1) for pair in post.body.decode().split("&"))
    assert form["grant_type"] == "refresh_token" and form["service"] == "fake-registry"


HELPER = """#!/bin/sh
read server
if [ "$server" = "{server}" ]; then
  echo '{{"ServerURL": "{server}", "Username": "{user}", "Secret": "{secret}"}}'
else
  echo "credentials not found in native keychain" >&2
  exit 1
fi
"""


def test_config_cred_helper(fake_registry, isolated_docker_config, install_executable):
    fake_registry.auth.mode = "basic"
    fake_registry.add_image("private", tags=("x",))
    install_executable(
        "docker-credential-test",
        HELPER.format(server=fake_registry.netloc, user="alice", secret="s3cret-PASSWORD"),
    )
    write_config(
        isolated_docker_config,
        {
            "credHelpers": {fake_registry.netloc: "test"},
            "auths": {fake_registry.netloc: {"auth": b64("alice:wrong")}},
        },
    )
    assert resolve_image(f"{fake_registry.netloc}/private:x").digest


def test_config_creds_store_identity_token(isolated_docker_config, install_executable):
    install_executable(
        "docker-credential-store",
        HELPER.format(server="https://index.docker.io/v1/", user="<token>", secret="IDTOKEN"),
    )
    write_config(
        isolated_docker_config,
        {"credsStore": "store", "auths": {"https://index.docker.io/v1/": {}}},
    )
    creds = load_docker_credentials("docker.io")
    assert creds == Credentials(username="", identity_token="IDTOKEN")
    assert load_docker_credentials("ghcr.io") is None  # helper says "not found": anonymous


def test_failing_or_missing_helper_means_anonymous(
    fake_registry, isolated_docker_config, install_executable
):
    fake_registry.auth.mode = "bearer"
    fake_registry.add_image("pub", tags=("x",))
    install_executable("docker-credential-broken", "#!/bin/sh\nexit 3\n")
    install_executable("docker-credential-garbage", "#!/bin/sh\necho not-json\n")
    deep = "#!/bin/sh\nhead -c 100000 /dev/zero | tr '\\0' '['\n"  # deeper than json follows
    install_executable("docker-credential-deep", deep)
    for helper in ("broken", "garbage", "deep", "absent", "../evil"):
        write_config(isolated_docker_config, {"credHelpers": {fake_registry.netloc: helper}})
        assert resolve_image(f"{fake_registry.netloc}/pub:x").digest


@pytest.mark.parametrize(
    "key", ["https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io"]
)
def test_docker_hub_keys(key):
    config = {"auths": {key: {"username": "u", "password": "p"}, "ghcr.io": {"auth": b64("g:h")}}}
    assert credentials_from_config(config, "docker.io") == Credentials("u", "p")
    assert credentials_from_config(config, "ghcr.io") == Credentials("g", "h")
    assert credentials_from_config(config, "quay.io") is None


def test_unreadable_config_is_ignored(isolated_docker_config):
    (isolated_docker_config / "config.json").write_text("{not json")
    assert load_docker_credentials("docker.io") is None


def test_docker_config_falls_back_to_home(tmp_path, monkeypatch):
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".docker").mkdir()
    write_config(tmp_path / ".docker", {"auths": {"r.example": {"auth": b64("x:y")}}})
    assert load_docker_credentials("r.example") == Credentials("x", "y")


# -- secrecy ------------------------------------------------------------------------------------

SECRET = "Pa55-very-SECRET-value"


def secret_forms() -> list[str]:
    return [SECRET, b64(f"alice:{SECRET}"), b64(f"bob:{SECRET}")]


def assert_no_secret(exc: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    texts = [caplog.text] + [str(e) for e in chain[:1]] + [repr(e) for e in chain[:1]]
    for text in texts:
        for form in [*secret_forms(), "TOKEN-"]:
            assert form not in text


def test_credentials_never_in_messages_or_logs(fake_registry, caplog, isolated_docker_config):
    caplog.set_level(logging.DEBUG)
    fake_registry.add_image("private", tags=("x",))
    # Basic with a wrong password.
    fake_registry.auth.mode = "basic"
    with pytest.raises(AuthenticationError) as caught:
        resolve_image(f"{fake_registry.netloc}/private:x", auth=("alice", SECRET))
    assert_no_secret(caught.value, caplog)
    # Token service refusing credentials read from the Docker config.
    fake_registry.auth.mode = "bearer"
    fake_registry.auth.token_needs_credentials = True
    write_config(
        isolated_docker_config, {"auths": {fake_registry.netloc: {"auth": b64(f"bob:{SECRET}")}}}
    )
    with pytest.raises(AuthenticationError) as caught:
        resolve_image(f"{fake_registry.netloc}/private:x")
    assert_no_secret(caught.value, caplog)
    # Tokens issued, then refused for good.
    fake_registry.auth.token_needs_credentials = False
    img = resolve_image(f"{fake_registry.netloc}/private:x", auth=("alice", SECRET))
    fake_registry.auth.valid_tokens.clear()
    fake_registry.auth.refresh_token = None

    def refuse_tokens(h, request):
        if request.path == "/token":
            h.reply_json(401, {"error": f"bad {request.headers.get('Authorization')}"})
            return True
        return False

    fake_registry.hook = refuse_tokens
    with pytest.raises(AuthenticationError) as caught:
        img.blob_source(img.layers[0]).read_range(0, 1)
    assert_no_secret(caught.value, caplog)
    # Nothing secret in the objects users might print either.
    assert SECRET not in repr(Credentials("alice", SECRET, SECRET))
    client = RegistryClient(fake_registry.netloc, auth=("alice", SECRET))
    assert SECRET not in repr(client) and SECRET not in repr(client._auth)
    assert SECRET not in repr(img) and SECRET not in repr(img.blob_source(img.layers[0]))
    client.close()


def test_known_bearer_realm_fetches_tokens_for_new_scopes_up_front(fake_registry):
    fake_registry.auth.mode = "bearer"
    fake_registry.add_image("repo-a", tags=("x",))
    fake_registry.add_image("repo-b", tags=("x",))
    client = RegistryClient(fake_registry.netloc)
    client.get_manifest("repo-a", "x", where="a")
    client.get_manifest("repo-b", "x", where="b")
    scopes = [r.query["scope"] for r in fake_registry.requests if r.path == "/token"]
    assert scopes == [["repository:repo-a:pull"], ["repository:repo-b:pull"]]
    refused = [
        r
        for r in fake_registry.requests
        if r.path.startswith("/v2/") and "Authorization" not in r.headers
    ]
    assert len(refused) == 1  # only the very first request met a challenge
    client.close()
