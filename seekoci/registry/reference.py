"""Image references: ``[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`` and ``oci:PATH[:TAG|@DIGEST]``.

Registry references follow Docker's normalisation so that what works with ``docker pull``
works here: no registry means ``docker.io``, a one-component repository on docker.io lives
under ``library/``, and no tag or digest means ``latest``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import InvalidReferenceError
from .digest import digest_problem

DOCKER_HUB = "docker.io"
#: Where docker.io's registry API really answers.
DOCKER_HUB_API_HOST = "registry-1.docker.io"
DEFAULT_TAG = "latest"
LAYOUT_PREFIX = "oci:"

# One path component of a repository name (distribution's reference grammar): lowercase
# alphanumerics joined by '.', '_', '__' or runs of '-'.
_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_HOST_LABEL = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_REGISTRY_RE = re.compile(
    rf"^(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?$"
)
_MAX_NAME_LENGTH = 255


@dataclass(frozen=True)
class Reference:
    """A normalised reference to an image in a registry.

    ``registry`` is the name users write (``docker.io``), not necessarily the host the API is
    served from (see :attr:`api_host`). When both ``tag`` and ``digest`` are set the digest is
    what gets pulled; the tag is kept because users expect to see it.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def api_host(self) -> str:
        """``host[:port]`` of the registry API (docker.io is served by registry-1.docker.io)."""
        return registry_api_host(self.registry)

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def manifest_reference(self) -> str:
        """What goes after ``/manifests/`` in the API: the digest if pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


@dataclass(frozen=True)
class LayoutReference:
    """A reference into an OCI image layout directory on disk (``oci:PATH[:TAG|@DIGEST]``).

    ``path`` is absolute. Neither tag nor digest means: the only manifest, else ``latest``
    (decided when the layout is read, since it depends on ``index.json``).
    """

    path: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        text = LAYOUT_PREFIX + self.path
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


AnyReference = Reference | LayoutReference


def registry_api_host(registry: str) -> str:
    """Host[:port] that serves the API of ``registry``."""
    return DOCKER_HUB_API_HOST if registry == DOCKER_HUB else registry


def parse_reference(text: str) -> Reference | LayoutReference:
    """Parse and normalise an image reference; raise InvalidReferenceError if it is malformed."""
    if not isinstance(text, str):
        raise InvalidReferenceError(
            f"an image reference must be a string, not {type(text).__name__}"
        )
    if text.startswith(LAYOUT_PREFIX):
        return _parse_layout(text, text[len(LAYOUT_PREFIX) :])
    return _parse_registry(text)


def _parse_registry(text: str) -> Reference:
    """Parse ``[docker://][REGISTRY/]REPOSITORY[:TAG][@DIGEST]``. Messages quote what the
    user typed (``text`` and its parts as written), never the normalised name."""

    def bad(problem: str) -> InvalidReferenceError:
        return InvalidReferenceError(f"invalid reference {text!r}: {problem}")

    rest = text.removeprefix("docker://")
    if not rest:
        raise bad("empty")
    name, at, digest_text = rest.partition("@")
    digest: str | None = None
    if at:
        problem = digest_problem(digest_text)
        if problem is not None:
            raise bad(f"digest {problem}")
        digest = digest_text
    tag: str | None = None
    colon = name.rfind(":")
    # "host:5000/repo" has a colon, but it belongs to the registry: a tag never contains '/'.
    if colon > name.rfind("/"):
        tag = name[colon + 1 :]
        name = name[:colon]
        if not tag:
            raise bad("empty tag after ':'")
        if not _TAG_RE.match(tag):
            raise bad(f"bad tag {tag!r} (letters, digits, '_', '.', '-'; at most 128)")
    if not name:
        raise bad("no repository name")
    registry, repository = _split_registry(name)
    if not _REGISTRY_RE.match(registry):
        raise bad(f"bad registry {registry!r}")
    typed_repository = repository
    if registry == "index.docker.io":
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    for component in typed_repository.split("/"):
        if not _COMPONENT_RE.match(component):
            hint = " (repository names must be lowercase)" if component.lower() != component else ""
            what = f"{component!r} in {typed_repository!r}" if "/" in typed_repository else ""
            raise bad(f"bad repository name {what or repr(typed_repository)}{hint}")
    if len(registry) + 1 + len(repository) > _MAX_NAME_LENGTH:
        raise bad("name too long")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry=registry, repository=repository, tag=tag, digest=digest)


def _split_registry(name: str) -> tuple[str, str]:
    """Split off the registry: the first component, if it looks like a host (Docker's rule)."""
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        return first, rest
    return DOCKER_HUB, name


def _parse_layout(text: str, rest: str) -> LayoutReference:
    digest: str | None = None
    at = rest.rfind("@")
    if at >= 0 and "/" not in rest[at:] and ":" in rest[at:]:
        problem = digest_problem(rest[at + 1 :])
        if problem is not None:
            raise InvalidReferenceError(f"invalid reference {text!r}: digest {problem}")
        digest = rest[at + 1 :]
        rest = rest[:at]
    tag: str | None = None
    colon = rest.rfind(":")
    # A colon followed by a '/' is part of the path ("oci:/mnt/a:b/layout"); a tag has no '/'.
    if colon >= 0 and "/" not in rest[colon:]:
        tag = rest[colon + 1 :]
        rest = rest[:colon]
        if not tag or any(ch.isspace() for ch in tag):
            raise InvalidReferenceError(f"invalid reference {text!r}: bad tag {tag!r}")
    if not rest:
        raise InvalidReferenceError(f"invalid reference {text!r}: no path")
    return LayoutReference(path=os.path.abspath(rest), tag=tag, digest=digest)
