"""Manifests, image indexes and descriptors (OCI image-spec and Docker schema 2).

Parsing is strict about what we rely on (digests, sizes, media types) and lenient about the
rest, so that a manifest from any mainstream tool is read, and a broken one fails here with a
FormatError naming the reference instead of somewhere deep in a layer read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import _json
from ..errors import FormatError
from .digest import digest_problem

MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_TYPE_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_TYPE_OCI_EMPTY = "application/vnd.oci.empty.v1+json"
MEDIA_TYPE_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_TYPE_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

# Schema 1 (signed JWS manifests) is long deprecated and carries no layer sizes: refused.
_SCHEMA1_MEDIA_TYPES = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)

#: Single-image manifest media types.
IMAGE_MANIFEST_MEDIA_TYPES = (MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST)
#: Multi-platform index media types.
INDEX_MEDIA_TYPES = (MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST)
#: Everything sent in ``Accept`` when fetching a manifest. The distribution registry answers
#: 404 for an OCI manifest unless ``Accept`` names the OCI types.
MANIFEST_MEDIA_TYPES = INDEX_MEDIA_TYPES + IMAGE_MANIFEST_MEDIA_TYPES

#: Largest manifest we accept (registries cap them at 4 MiB; this leaves a margin).
MAX_MANIFEST_SIZE = 8 << 20


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor: what a manifest says about a blob it points to.

    Hashable (by media type, digest, size and artifact type) so that it can key caches; the
    dict and list fields take part in equality only.
    """

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict, hash=False)
    platform: dict[str, Any] | None = field(default=None, hash=False)
    artifact_type: str | None = None
    urls: list[str] = field(default_factory=list, hash=False)

    @classmethod
    def from_json(cls, data: object, *, where: str) -> Descriptor:
        """Validate a descriptor object from a manifest; FormatError naming ``where`` if bad."""
        if not isinstance(data, Mapping):
            raise FormatError(f"{where}: descriptor is not an object")
        media_type = data.get("mediaType", "")
        digest = data.get("digest")
        size = data.get("size")
        if not isinstance(media_type, str):
            raise FormatError(f"{where}: descriptor mediaType is not a string")
        if not isinstance(digest, str):
            raise FormatError(f"{where}: descriptor has no digest")
        problem = digest_problem(digest)
        if problem is not None:
            raise FormatError(f"{where}: descriptor digest {digest!r}: {problem}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise FormatError(f"{where}: descriptor {digest} has no valid size")
        annotations = data.get("annotations") or {}
        if not isinstance(annotations, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise FormatError(f"{where}: descriptor {digest} has malformed annotations")
        platform = data.get("platform")
        if platform is not None and not isinstance(platform, Mapping):
            raise FormatError(f"{where}: descriptor {digest} has a malformed platform")
        artifact_type = data.get("artifactType")
        urls = data.get("urls") or []
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise FormatError(f"{where}: descriptor {digest} has malformed urls")
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            annotations=dict(annotations),
            platform=dict(platform) if platform is not None else None,
            artifact_type=artifact_type if isinstance(artifact_type, str) else None,
            urls=list(urls),
        )

    def to_json(self) -> dict[str, Any]:
        """The descriptor as a manifest writes it (what :meth:`from_json` reads back)."""
        doc: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                               "size": self.size}  # fmt: skip
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        if self.platform is not None:
            doc["platform"] = dict(self.platform)
        if self.artifact_type is not None:
            doc["artifactType"] = self.artifact_type
        if self.urls:
            doc["urls"] = list(self.urls)
        return doc


@dataclass(frozen=True)
class ManifestDocument:
    """A parsed manifest or index, with the digest it was verified against (None if synthetic)."""

    media_type: str
    data: dict[str, Any]
    digest: str | None
    #: length of the manifest's bytes (for descriptors pointing at it, e.g. a subject)
    size: int = 0

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_MEDIA_TYPES

    def entries(self, *, where: str) -> list[Descriptor]:
        """The ``manifests`` of an index."""
        raw = self.data.get("manifests")
        if not isinstance(raw, list):
            raise FormatError(f"{where}: index has no manifests list")
        return [Descriptor.from_json(item, where=where) for item in raw]

    def config(self, *, where: str) -> Descriptor:
        """The config descriptor of an image manifest."""
        return Descriptor.from_json(self.data.get("config"), where=f"{where} (config)")

    def layers(self, *, where: str) -> list[Descriptor]:
        """The layer descriptors of an image manifest, base layer first."""
        raw = self.data.get("layers")
        if not isinstance(raw, list):
            raise FormatError(f"{where}: manifest has no layers list")
        return [
            Descriptor.from_json(item, where=f"{where} (layer {i})") for i, item in enumerate(raw)
        ]


def parse_manifest(
    body: bytes, *, media_type_hint: str | None, digest: str | None, where: str
) -> ManifestDocument:
    """Parse a manifest or index body already verified against ``digest``.

    The media type comes from the document's own ``mediaType`` field, else from the hint
    (``Content-Type`` or the descriptor that pointed here), else from its shape: OCI made the
    field optional in early versions.
    """
    try:
        data = _json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"{where}: manifest is not valid JSON") from exc
    if not isinstance(data, dict):
        raise FormatError(f"{where}: manifest is not a JSON object")
    hint = (media_type_hint or "").split(";", 1)[0].strip().lower()
    if data.get("schemaVersion") == 1 or hint in _SCHEMA1_MEDIA_TYPES:
        raise FormatError(f"{where}: Docker schema 1 manifests are not supported")
    declared = data.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise FormatError(f"{where}: manifest mediaType is not a string")
    media_type = declared or (hint if hint in MANIFEST_MEDIA_TYPES else None)
    if media_type is None:
        if "manifests" in data:
            media_type = MEDIA_TYPE_OCI_INDEX
        elif "config" in data and "layers" in data:
            media_type = MEDIA_TYPE_OCI_MANIFEST
        else:
            raise FormatError(f"{where}: cannot tell what kind of manifest this is")
    if media_type in _SCHEMA1_MEDIA_TYPES:
        raise FormatError(f"{where}: Docker schema 1 manifests are not supported")
    if media_type not in MANIFEST_MEDIA_TYPES:
        raise FormatError(f"{where}: unsupported manifest media type {media_type!r}")
    if data.get("schemaVersion", 2) != 2:
        raise FormatError(f"{where}: unsupported schemaVersion {data.get('schemaVersion')!r}")
    return ManifestDocument(media_type=media_type, data=data, digest=digest, size=len(body))
