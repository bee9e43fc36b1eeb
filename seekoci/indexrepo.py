"""Index repositories: layer indexes published into a repository you own, by layer digest.

For an image you cannot push to (a public base image), ``seekoci index REF --push --to
REGISTRY/REPO`` publishes each layer's index into ``REGISTRY/REPO``; readers that pass
``index_repo="REGISTRY/REPO"`` (or set ``$SEEKOCI_INDEX_REPO``) find it there. A layer is
found by its digest alone, so the index of a base layer serves every image built on it.

The scheme (docs/publishing.md): the tag ``<algorithm>-<hex>.seekoci`` of a layer digest
``<algorithm>:<hex>`` (``sha256-3f…9a.seekoci``: 79 characters, within the 128 a tag may
have) names an OCI artifact manifest -- ``artifactType`` ``application/vnd.seekoci.index.v1``,
the empty config, one layer: the index blob with the same annotations as an index published
next to an image. There is no ``subject``: the layer's image is not in that repository, and a
layer is not a manifest a subject could name.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from .errors import FormatError, InvalidReferenceError, SeekociError

if TYPE_CHECKING:
    from .registry.client import RegistryClient
    from .registry.manifest import Descriptor
    from .source import RangeSource

log = logging.getLogger("seekoci")

INDEX_REPO_ENV = "SEEKOCI_INDEX_REPO"
#: what follows ``<algorithm>-<hex>`` in an index repository's tag of a layer
TAG_SUFFIX = ".seekoci"


def index_repo_from_env() -> str | None:
    """``$SEEKOCI_INDEX_REPO``, or None when unset or empty."""
    return os.environ.get(INDEX_REPO_ENV, "").strip() or None


def layer_tag(layer_digest: str) -> str:
    """The tag of a layer's index in an index repository: ``sha256:<hex>`` ->
    ``sha256-<hex>.seekoci``."""
    from .registry.digest import digest_problem

    problem = digest_problem(layer_digest)
    if problem is not None:
        raise ValueError(f"invalid layer digest {layer_digest!r}: {problem}")
    algorithm, encoded = layer_digest.split(":", 1)
    return f"{algorithm}-{encoded}{TAG_SUFFIX}"


def parse_index_repo(name: str) -> tuple[str, str]:
    """``REGISTRY/REPO`` -> (registry, repository), Docker's normalisation applied; a tag or
    digest is refused (the index repository is looked up by layer digest)."""
    from .registry.reference import LayoutReference, parse_reference

    text = name.strip().removeprefix("docker://")
    last = text.rsplit("/", 1)[-1]
    if not text or "@" in text or ":" in last:
        raise InvalidReferenceError(
            f"index repository {name!r}: give REGISTRY/REPO, without a tag or digest"
        )
    parsed = parse_reference(text)
    if isinstance(parsed, LayoutReference):
        raise InvalidReferenceError(f"index repository {name!r}: must be in a registry")
    return parsed.registry, parsed.repository


class IndexRepository:
    """One index repository, with the registry client that reads (and pushes) it."""

    def __init__(self, registry: str, repository: str, client: RegistryClient) -> None:
        self.registry = registry
        self.repository = repository
        self.client = client
        self._lock = threading.Lock()
        #: why the repository could not be read (refused, unreachable): asked no more
        self._unusable: str | None = None

    @classmethod
    def open(
        cls,
        name: str,
        *,
        client: RegistryClient | None = None,
        insecure: bool | None = None,
    ) -> IndexRepository:
        """``client``: the image's own, reused when the repository is on the same registry
        (its credentials and connections); else a new client with the Docker config's
        credentials for that registry, or anonymous tokens."""
        from .registry.client import RegistryClient

        registry, repository = parse_index_repo(name)
        if client is None or client.registry != registry:
            client = RegistryClient(registry, auth=None, insecure=insecure)
        return cls(registry, repository, client)

    @classmethod
    def for_image(cls, name: str, resolved: Any, *, insecure: bool | None) -> IndexRepository:
        return cls.for_store(name, resolved.store, insecure=insecure)

    @classmethod
    def for_store(cls, name: str, store: Any, *, insecure: bool | None) -> IndexRepository:
        """The index repository ``name`` for an image in ``store`` (whose registry client,
        and so its credentials, serve a repository on the same registry)."""
        from .registry.resolve import RegistryStore

        client = store.client if isinstance(store, RegistryStore) else None
        return cls.open(name, client=client, insecure=insecure)

    def __repr__(self) -> str:
        return f"IndexRepository({self.name!r})"

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def where(self) -> dict[str, str]:
        """Identifies this repository in the cache's record of where an index was found."""
        return {"registry": self.registry, "repository": self.repository}

    def find(self, layer_digest: str) -> tuple[str, list[Descriptor]]:
        """The artifact manifest digest under the layer's tag and its index blobs of that
        layer; ``("", [])`` when the repository has none (or cannot be read: logged)."""
        from .registry.manifest import Descriptor, parse_manifest
        from .registry.push import get_manifest_optional
        from .remote import ANN_LAYER_DIGEST, NATIVE_ARTIFACT_TYPE, NATIVE_BLOB_MEDIA_TYPES

        tag = layer_tag(layer_digest)
        where = f"index repository {self.name}:{tag}"
        with self._lock:
            if self._unusable is not None:
                return "", []
        try:
            fetched = get_manifest_optional(self.client, self.repository, tag, where=where)
        except SeekociError as exc:
            # a refused login or an unreachable registry: say so once, then build as if
            # nothing were published instead of waiting on it for every layer
            with self._lock:
                first = self._unusable is None
                self._unusable = str(exc)
            if first:
                log.warning("seekoci: index repository %s unusable: %s", self.name, exc)
            return "", []
        if fetched is None:
            return "", []
        try:
            doc = parse_manifest(
                fetched.body, media_type_hint=fetched.media_type, digest=fetched.digest, where=where
            ).data
            if doc.get("artifactType") != NATIVE_ARTIFACT_TYPE:
                raise FormatError(f"{where}: not a seekoci index artifact")
            raw = doc.get("layers")
            if not isinstance(raw, list):
                raise FormatError(f"{where}: no layers")
            blobs = [Descriptor.from_json(item, where=where) for item in raw]
        except SeekociError as exc:
            log.info("seekoci: %s unusable: %s", where, exc)
            return "", []
        found = [
            b
            for b in blobs
            if b.media_type in NATIVE_BLOB_MEDIA_TYPES
            and b.annotations.get(ANN_LAYER_DIGEST) == layer_digest
        ]
        return fetched.digest, found

    def blob_source(self, descriptor: Descriptor) -> RangeSource:
        from .registry.blobs import RegistryBlobSource

        return RegistryBlobSource(self.client, self.repository, descriptor)

    def close(self) -> None:
        self.client.close()
