"""Platforms (``os/arch[/variant]``) and choosing one manifest out of an image index.

Names are normalised the way containerd does before comparing, because indexes in the wild
disagree: ``linux/arm64`` and ``linux/arm64/v8`` are the same platform, and so are
``linux/arm`` and ``linux/arm/v7``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidReferenceError, PlatformNotFoundError
from .manifest import Descriptor

# Architecture spellings (uname -m, Debian) -> (GOARCH, implied variant).
_ARCH_ALIASES: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "aarch64": ("arm64", None),
    "armv8l": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armhf": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armel": ("arm", "v6"),
    "armv5l": ("arm", "v5"),
    "i386": ("386", None),
    "i486": ("386", None),
    "i586": ("386", None),
    "i686": ("386", None),
}

# Docker's default for the host's architecture (platform.machine() -> os/arch/variant).
_HOST_DEFAULTS: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}

#: Annotation Docker buildx puts on attestation manifests inside an index.
_ATTESTATION_ANNOTATION = "vnd.docker.reference.type"


@dataclass(frozen=True)
class Platform:
    """An ``os/architecture[/variant]`` triple."""

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``os/arch[/variant]``; raise InvalidReferenceError (a ValueError) if malformed."""
        parts = text.split("/") if isinstance(text, str) else []
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidReferenceError(f"invalid platform {text!r}: expected os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Platform | None:
        """The platform of an index entry or image config (``os``/``architecture``/``variant``)."""
        if not data:
            return None
        os_name, arch, variant = data.get("os"), data.get("architecture"), data.get("variant")
        if not isinstance(os_name, str) or not isinstance(arch, str) or not os_name or not arch:
            return None
        return cls(os_name, arch, variant if isinstance(variant, str) and variant else None)

    def normalized(self) -> Platform:
        """Canonical spelling: GOARCH names, arm64's v8 dropped, bare arm meaning v7."""
        arch, variant = self.architecture.lower(), (self.variant or "").lower() or None
        alias = _ARCH_ALIASES.get(arch)
        if alias is not None:
            arch, implied = alias
            variant = variant or implied
        if arch == "arm64" and variant == "v8":
            variant = None
        elif arch == "arm" and variant is None:
            variant = "v7"
        return Platform(self.os.lower(), arch, variant)

    def is_attestation_marker(self) -> bool:
        """True for buildx's ``unknown/unknown`` placeholder used on attestation manifests."""
        return self.os == "unknown" and self.architecture == "unknown"


def host_platform() -> Platform:
    """``linux/<host arch>[/variant]``, the platform Docker would pull on this machine."""
    machine = _machine().lower()
    arch, variant = _HOST_DEFAULTS.get(machine, (machine or "amd64", None))
    return Platform("linux", arch, variant)


def _machine() -> str:
    """``uname -m``: what ``platform.machine()`` reads, without its ~2 ms import."""
    if hasattr(os, "uname"):
        return os.uname().machine
    import platform  # pragma: no cover - Windows

    return platform.machine()  # pragma: no cover


def is_attestation(entry: Descriptor) -> bool:
    """Attestation (SBOM, provenance) manifests are not images: never select them."""
    if _ATTESTATION_ANNOTATION in entry.annotations:
        return True
    found = Platform.from_json(entry.platform)
    return found is not None and found.is_attestation_marker()


def available_platforms(entries: Sequence[Descriptor]) -> list[str]:
    """Distinct platform strings of the image entries of an index, in index order."""
    names: list[str] = []
    for entry in entries:
        found = Platform.from_json(entry.platform)
        if found is not None and not is_attestation(entry) and str(found) not in names:
            names.append(str(found))
    return names


def select_entry(
    entries: Sequence[Descriptor], wanted: Platform, *, variant_required: bool, where: str
) -> Descriptor:
    """Pick the index entry for ``wanted``.

    A variant the user named must match; a variant we only guessed from the host (or none at
    all) is a preference: exact match first, else any variant of the same os/arch.
    """
    images = [entry for entry in entries if not is_attestation(entry)]
    target = wanted.normalized()
    same_arch: list[Descriptor] = []
    for entry in images:
        found = Platform.from_json(entry.platform)
        if found is None:
            continue
        norm = found.normalized()
        if norm.os == target.os and norm.architecture == target.architecture:
            if norm.variant == target.variant:
                return entry
            same_arch.append(entry)
    if same_arch and not variant_required:
        return same_arch[0]
    # An index whose only image entry carries no platform at all (some tools write that):
    # there is nothing to choose between, the caller checks the config instead.
    unlabeled = [entry for entry in images if Platform.from_json(entry.platform) is None]
    if len(images) == 1 and unlabeled:
        return unlabeled[0]
    available = available_platforms(entries)
    listing = ", ".join(available) if available else "none"
    raise PlatformNotFoundError(
        f"{where}: no manifest for platform {wanted}; available platforms: {listing}",
        available=available,
    )


def matches(found: Platform, wanted: Platform, *, variant_required: bool) -> bool:
    """Whether an image whose config says ``found`` satisfies a request for ``wanted``."""
    a, b = found.normalized(), wanted.normalized()
    if (a.os, a.architecture) != (b.os, b.architecture):
        return False
    return a.variant == b.variant or not variant_required
