"""Reference parsing: Docker's normalisation rules and OCI layout references."""

from __future__ import annotations

import os

import pytest

from seekoci.errors import InvalidReferenceError
from seekoci.registry import LayoutReference, Reference, parse_reference

D256 = "sha256:" + "a" * 64
D512 = "sha512:" + "b" * 128

VALID = [
    # text, registry, repository, tag, digest, canonical
    ("alpine", "docker.io", "library/alpine", "latest", None, "docker.io/library/alpine:latest"),
    ("alpine:3.19", "docker.io", "library/alpine", "3.19", None, None),
    ("library/alpine", "docker.io", "library/alpine", "latest", None, None),
    ("bitnami/redis:7", "docker.io", "bitnami/redis", "7", None, None),
    ("docker.io/alpine", "docker.io", "library/alpine", "latest", None, None),
    ("index.docker.io/alpine", "docker.io", "library/alpine", "latest", None, None),
    ("docker://alpine:edge", "docker.io", "library/alpine", "edge", None, None),
    ("docker://ghcr.io/a/b:1", "ghcr.io", "a/b", "1", None, "ghcr.io/a/b:1"),
    ("ghcr.io/owner/repo", "ghcr.io", "owner/repo", "latest", None, None),
    ("quay.io/a/b/c/d:v1.2.3", "quay.io", "a/b/c/d", "v1.2.3", None, None),
    ("localhost/foo", "localhost", "foo", "latest", None, "localhost/foo:latest"),
    ("localhost:5000/foo/bar:x", "localhost:5000", "foo/bar", "x", None, None),
    ("127.0.0.1:5000/img", "127.0.0.1:5000", "img", "latest", None, None),
    ("[::1]:5000/img:t", "[::1]:5000", "img", "t", None, "[::1]:5000/img:t"),
    ("host.example:443/x_y/z-w.v:T_1", "host.example:443", "x_y/z-w.v", "T_1", None, None),
    ("registry:5000/a", "registry:5000", "a", "latest", None, None),
    ("localhost:5000", "docker.io", "library/localhost", "5000", None, None),
    (
        f"alpine@{D256}",
        "docker.io",
        "library/alpine",
        None,
        D256,
        f"docker.io/library/alpine@{D256}",
    ),
    (
        f"alpine:3@{D256}",
        "docker.io",
        "library/alpine",
        "3",
        D256,
        f"docker.io/library/alpine:3@{D256}",
    ),
    (f"r.io:1/a@{D512}", "r.io:1", "a", None, D512, None),
    ("a__b/c---d", "docker.io", "a__b/c---d", "latest", None, None),
    ("UPPER.example/lower", "UPPER.example", "lower", "latest", None, None),
]


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest", "canonical"), VALID)
def test_valid_references(text, registry, repository, tag, digest, canonical):
    ref = parse_reference(text)
    assert ref == Reference(registry, repository, tag, digest)
    if canonical is not None:
        assert str(ref) == canonical
    # The canonical form parses back to the same reference.
    assert parse_reference(str(ref)) == ref


INVALID = [
    "",
    "docker://",
    "Alpine",
    "library/Alpine",
    "foo/Bar:1",
    "alpine:",
    "alpine:-tag",
    "alpine:" + "t" * 129,
    "alpine@sha256:abc",
    "alpine@sha256:" + "A" * 64,
    "alpine@md5:" + "a" * 32,
    "alpine@" + "a" * 64,
    "a//b",
    "/alpine",
    "alpine/",
    "a..b/c",
    "-x.io/a",
    "x.io:port/a",
    "with space",
    "x.io/a" + "/b" * 200,
    "a_-b",
]


@pytest.mark.parametrize("text", INVALID)
def test_invalid_references(text):
    with pytest.raises(InvalidReferenceError):
        parse_reference(text)


def test_invalid_reference_is_a_value_error():
    with pytest.raises(ValueError, match="lowercase"):
        parse_reference("docker.io/Library/alpine")


def test_non_string_reference():
    with pytest.raises(InvalidReferenceError):
        parse_reference(42)  # type: ignore[arg-type]


def test_api_host_of_docker_hub():
    assert parse_reference("alpine").api_host == "registry-1.docker.io"  # type: ignore[union-attr]
    assert parse_reference("ghcr.io/a/b").api_host == "ghcr.io"  # type: ignore[union-attr]


def test_manifest_reference_prefers_digest():
    ref = parse_reference(f"alpine:3@{D256}")
    assert isinstance(ref, Reference)
    assert ref.manifest_reference == D256
    assert parse_reference("alpine:3").manifest_reference == "3"  # type: ignore[union-attr]


LAYOUT = [
    ("oci:/srv/img", "/srv/img", None, None),
    ("oci:/srv/img:v1", "/srv/img", "v1", None),
    (f"oci:/srv/img@{D256}", "/srv/img", None, D256),
    ("oci:/mnt/a:b/layout", "/mnt/a:b/layout", None, None),
    ("oci:/mnt/a:b/layout:tag", "/mnt/a:b/layout", "tag", None),
    ("oci:/srv/img:1.0-rc", "/srv/img", "1.0-rc", None),
]


@pytest.mark.parametrize(("text", "path", "tag", "digest"), LAYOUT)
def test_layout_references(text, path, tag, digest):
    ref = parse_reference(text)
    assert ref == LayoutReference(path, tag, digest)
    assert parse_reference(str(ref)) == ref


def test_layout_relative_path_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ref = parse_reference("oci:./img:t")
    assert ref == LayoutReference(os.path.join(str(tmp_path), "img"), "t", None)
    assert str(ref) == f"oci:{tmp_path}/img:t"


@pytest.mark.parametrize("text", ["oci:", "oci::tag", "oci:/x:", "oci:/x@sha256:123"])
def test_invalid_layout_references(text):
    with pytest.raises(InvalidReferenceError):
        parse_reference(text)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("::bad::", "empty tag after ':'"),
        ("a b", "bad repository name 'a b'"),  # not 'library/a b': what the user typed
        ("Ubuntu", "bad repository name 'Ubuntu' (repository names must be lowercase)"),
        ("a/B/c:1", "bad repository name 'B' in 'a/B/c'"),
        ("x:t@sha256:12", "digest"),
        (":tag", "no repository name"),
        ("bad_host:5000/r", "bad registry 'bad_host:5000'"),
    ],
)
def test_invalid_reference_messages_quote_what_was_typed(text, problem):
    with pytest.raises(InvalidReferenceError) as caught:
        parse_reference(text)
    message = str(caught.value)
    assert message.startswith(f"invalid reference {text!r}: ")
    assert problem in message
    assert "library/" not in message
