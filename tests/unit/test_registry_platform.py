"""Choosing a platform out of an image index, and the host's default platform."""

from __future__ import annotations

import pytest

from seekoci.errors import InvalidReferenceError, PlatformNotFoundError
from seekoci.registry import Descriptor, Platform, host_platform
from seekoci.registry.platform import select_entry


def entry(n: int, platform: str | None, **annotations: str) -> Descriptor:
    plat = None
    if platform is not None:
        parts = platform.split("/")
        plat = {"os": parts[0], "architecture": parts[1]}
        if len(parts) == 3:
            plat["variant"] = parts[2]
    return Descriptor(
        media_type="application/vnd.oci.image.manifest.v1+json",
        digest="sha256:" + f"{n:x}" * 64,
        size=100 + n,
        annotations=dict(annotations),
        platform=plat,
    )


ATTESTATION = {"vnd.docker.reference.type": "attestation-manifest"}

INDEX = [
    entry(1, "linux/amd64"),
    entry(2, "linux/arm64/v8"),
    entry(3, "linux/arm/v6"),
    entry(4, "linux/arm/v7"),
    entry(5, "linux/s390x"),
    entry(6, "unknown/unknown", **ATTESTATION),
    entry(7, "unknown/unknown"),
    entry(8, "linux/ppc64le", **ATTESTATION),
]


def pick(wanted: str, *, required: bool, entries: list[Descriptor] = INDEX) -> int:
    platform = Platform.parse(wanted)
    chosen = select_entry(entries, platform, variant_required=required, where="test-ref")
    return entries.index(chosen) + 1


@pytest.mark.parametrize(
    ("wanted", "required", "expected"),
    [
        ("linux/amd64", False, 1),
        ("linux/arm64", True, 2),  # v8 is arm64's default variant
        ("linux/arm64/v8", True, 2),
        ("linux/aarch64", True, 2),  # uname spelling
        ("linux/arm/v6", True, 3),
        ("linux/arm/v7", True, 4),
        ("linux/arm", False, 4),  # bare arm means v7
        ("linux/armhf", True, 4),
        ("linux/s390x", False, 5),
        ("linux/x86_64", False, 1),
        ("LINUX/AMD64", False, 1),
    ],
)
def test_select_platform(wanted, required, expected):
    assert pick(wanted, required=required) == expected


def test_variant_preferred_not_required_when_guessed():
    entries = [entry(1, "linux/arm/v6"), entry(2, "linux/amd64")]
    assert pick("linux/arm/v7", required=False, entries=entries) == 1
    with pytest.raises(PlatformNotFoundError):
        pick("linux/arm/v7", required=True, entries=entries)


def test_exact_variant_wins_over_first_listed():
    entries = [entry(1, "linux/arm/v6"), entry(2, "linux/arm/v7")]
    assert pick("linux/arm/v7", required=False, entries=entries) == 2


def test_attestations_are_never_selected():
    with pytest.raises(PlatformNotFoundError) as caught:
        pick("unknown/unknown", required=False)
    # and attestation-annotated entries with a real-looking platform are skipped too
    with pytest.raises(PlatformNotFoundError):
        pick("linux/ppc64le", required=False)
    assert "unknown/unknown" not in caught.value.available


def test_missing_platform_names_the_available_ones():
    with pytest.raises(PlatformNotFoundError) as caught:
        pick("windows/amd64", required=False)
    err = caught.value
    assert err.available == [
        "linux/amd64",
        "linux/arm64/v8",
        "linux/arm/v6",
        "linux/arm/v7",
        "linux/s390x",
    ]
    assert "linux/arm64/v8" in str(err) and "windows/amd64" in str(err) and "test-ref" in str(err)
    assert isinstance(err, LookupError)


def test_single_unlabelled_entry_is_used():
    entries = [entry(1, None), entry(2, "unknown/unknown", **ATTESTATION)]
    assert pick("linux/amd64", required=True, entries=entries) == 1


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "a/b/c/d", ""])
def test_bad_platform_strings(text):
    with pytest.raises(InvalidReferenceError):
        Platform.parse(text)


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ("x86_64", "linux/amd64"),
        ("AMD64", "linux/amd64"),
        ("aarch64", "linux/arm64/v8"),
        ("arm64", "linux/arm64/v8"),
        ("armv7l", "linux/arm/v7"),
        ("armv6l", "linux/arm/v6"),
        ("i686", "linux/386"),
        ("i386", "linux/386"),
        ("ppc64le", "linux/ppc64le"),
        ("s390x", "linux/s390x"),
        ("riscv64", "linux/riscv64"),
    ],
)
def test_host_platform(monkeypatch, machine, expected):
    monkeypatch.setattr("seekoci.registry.platform._machine", lambda: machine)
    assert str(host_platform()) == expected
