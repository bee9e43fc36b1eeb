"""Authentication: htpasswd (Basic) and token registries, Docker's config.json, bad passwords."""

from __future__ import annotations

import base64
import json
import traceback
from pathlib import Path

import pytest
from imagebuilder import file, image, layer, text_bytes

import seekoci

pytestmark = pytest.mark.integration

HELLO = b"behind a login\n"


def auth_image(name: str):
    return image(
        layer(file("auth/hello.txt", HELLO)),
        layer(file("auth/data.bin", text_bytes(name, 200_000)), producer="pigz"),
    )


@pytest.fixture(scope="module")
def basic_pushed(basic_registry):
    img = auth_image("basic")
    basic_registry.push("auth/basic", "v1", img)
    return img, basic_registry.ref("auth/basic", "v1")


@pytest.fixture(scope="module")
def token_pushed(token_registry):
    public, private = auth_image("token-public"), auth_image("token-private")
    token_registry.push("auth/public", "v1", public)
    token_registry.push("private/auth", "v1", private)
    return {
        "public": (public, token_registry.ref("auth/public", "v1")),
        "private": (private, token_registry.ref("private/auth", "v1")),
    }


def write_docker_config(directory: Path, host: str, username: str, password: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    (directory / "config.json").write_text(json.dumps({"auths": {host: {"auth": token}}}))


def everything_said_about(exc: BaseException) -> str:
    """The message, repr and whole chained traceback text of an exception."""
    return "\n".join(
        [str(exc), repr(exc), *traceback.format_exception(type(exc), exc, exc.__traceback__)]
    )


def check_reads(img, expected) -> None:
    assert img.digest == expected.digest
    assert img.read_bytes("/auth/hello.txt") == HELLO
    assert img.read_bytes("/auth/data.bin") == expected.layers[1].entries[0].data


# --------------------------------------------------------------------------- Basic


def test_basic_auth_with_explicit_credentials(basic_pushed, basic_registry, cache_dir) -> None:
    expected, ref = basic_pushed
    img = seekoci.open_image(ref, auth=basic_registry.credentials, cache_dir=cache_dir)
    check_reads(img, expected)


def test_basic_auth_from_docker_config(
    basic_pushed, basic_registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected, ref = basic_pushed
    config_dir = tmp_path / "docker"
    write_docker_config(
        config_dir, basic_registry.host, basic_registry.username, basic_registry.password
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))
    img = seekoci.open_image(ref, cache_dir=tmp_path / "cache")
    check_reads(img, expected)


def test_basic_auth_without_credentials_is_refused(basic_pushed, cache_dir) -> None:
    _, ref = basic_pushed
    with pytest.raises(seekoci.AuthenticationError) as excinfo:
        seekoci.open_image(ref, cache_dir=cache_dir).read_bytes("/auth/hello.txt")
    assert isinstance(excinfo.value, seekoci.RegistryError)
    # which registry, and which repository and reference were asked for
    message = str(excinfo.value)
    assert "requires a username and password" in message, message
    registry, _, rest = ref.partition("/")
    assert registry in message and rest.split(":")[0] in message, message


def test_basic_auth_wrong_password(basic_pushed, basic_registry, cache_dir) -> None:
    _, ref = basic_pushed
    wrong = "wrong-" + basic_registry.password[::-1]
    with pytest.raises(seekoci.AuthenticationError) as excinfo:
        seekoci.open_image(ref, auth=(basic_registry.username, wrong), cache_dir=cache_dir)
    assert excinfo.value.status == 401
    said = everything_said_about(excinfo.value)
    assert wrong not in said
    assert basic_registry.password not in said
    assert base64.b64encode(f"{basic_registry.username}:{wrong}".encode()).decode() not in said


def test_wrong_password_in_docker_config(
    basic_pushed, basic_registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, ref = basic_pushed
    wrong = "cfg-wrong-" + basic_registry.password
    config_dir = tmp_path / "docker"
    write_docker_config(config_dir, basic_registry.host, basic_registry.username, wrong)
    monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))
    with pytest.raises(seekoci.AuthenticationError) as excinfo:
        seekoci.open_image(ref, cache_dir=tmp_path / "cache")
    assert wrong not in everything_said_about(excinfo.value)


# --------------------------------------------------------------------------- token


def test_token_anonymous_pull(token_pushed, token_registry, cache_dir) -> None:
    expected, ref = token_pushed["public"]
    before = token_registry.tokens_issued
    img = seekoci.open_image(ref, cache_dir=cache_dir)
    check_reads(img, expected)
    assert token_registry.tokens_issued > before, "no token was asked for"
    anonymous = token_registry.token_service.records[before:]
    assert all(r.account == "" for r in anonymous)


def test_token_is_reused_across_reads(token_pushed, token_registry, cache_dir) -> None:
    expected, ref = token_pushed["public"]
    img = seekoci.open_image(ref, cache_dir=cache_dir)
    img.read_bytes("/auth/hello.txt")
    before = token_registry.tokens_issued
    for offset in range(0, 200_000, 20_000):
        with img.open("/auth/data.bin") as f:
            f.seek(offset)
            assert f.read(100) == expected.layers[1].entries[0].data[offset : offset + 100]
    assert img.read_bytes("/auth/hello.txt") == HELLO
    # A token lives for 300 s: eleven more reads must not ask for eleven more tokens.
    assert token_registry.tokens_issued - before <= 1


def test_token_credentialed_pull(token_pushed, token_registry, cache_dir) -> None:
    expected, ref = token_pushed["private"]
    before = token_registry.tokens_issued
    img = seekoci.open_image(ref, auth=token_registry.credentials, cache_dir=cache_dir)
    check_reads(img, expected)
    records = token_registry.token_service.records[before:]
    assert records and all(r.account == token_registry.username for r in records)


def test_token_credentials_from_docker_config(
    token_pushed, token_registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected, ref = token_pushed["private"]
    config_dir = tmp_path / "docker"
    write_docker_config(
        config_dir, token_registry.host, token_registry.username, token_registry.password
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))
    check_reads(seekoci.open_image(ref, cache_dir=tmp_path / "cache"), expected)


def test_token_private_repo_refuses_anonymous(token_pushed, cache_dir) -> None:
    _, ref = token_pushed["private"]
    with pytest.raises(seekoci.AuthenticationError):
        seekoci.open_image(ref, cache_dir=cache_dir).read_bytes("/auth/hello.txt")


def test_token_wrong_password(token_pushed, token_registry, cache_dir) -> None:
    _, ref = token_pushed["private"]
    wrong = "nope-" + token_registry.password
    refused_before = token_registry.token_service.refused
    with pytest.raises(seekoci.AuthenticationError) as excinfo:
        seekoci.open_image(ref, auth=(token_registry.username, wrong), cache_dir=cache_dir)
    assert token_registry.token_service.refused > refused_before
    said = everything_said_about(excinfo.value)
    assert wrong not in said
    assert token_registry.password not in said
