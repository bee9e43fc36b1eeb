"""From a reference string to one platform's manifest, config and layers.

The same walk serves registries and OCI layouts: start at what the reference names, descend
through image indexes choosing the platform, stop at an image manifest, fetch and verify its
config. Only where the bytes come from differs (:class:`ImageStore`).

Whatever is fetched by digest (manifests, the config, small blobs such as SOCI zTOCs) can be
kept in a :class:`BlobStore` handed in by the caller -- the cache directory, which this
package never imports -- so a second open of a digest reference asks the registry nothing,
and of a tag reference only for the manifest the tag names now.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from .. import _json
from ..errors import FormatError, IntegrityError, PlatformNotFoundError
from ..source import RangeSource
from .blobs import RegistryBlobSource, fetch_blob
from .client import RegistryClient
from .digest import digest_problem, verify_digest
from .layout import LayoutStore
from .manifest import (
    MANIFEST_MEDIA_TYPES,
    MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_OCI_CONFIG,
    Descriptor,
    ManifestDocument,
    parse_manifest,
)
from .platform import Platform, host_platform, matches, select_entry
from .reference import LayoutReference, Reference, parse_reference
from .retry import RetryPolicy

#: Indexes pointing at indexes: real images use one level, layouts sometimes two.
MAX_INDEX_DEPTH = 4
#: Blobs fetched whole larger than this are not kept in the blob store (a zTOC is ~3% of
#: its layer: this keeps those of layers up to ~8 GB).
MAX_STORED_BLOB = 256 << 20
#: A config holding more JSON values than this is refused: real ones hold hundreds (a
#: history of a thousand steps: ~10k), and 64 MB of ``{},`` is 1.7 GB once parsed.
MAX_CONFIG_VALUES = 1 << 22


class BlobStore(Protocol):
    """Content-addressed bytes kept between runs: ``get`` returns bytes that match
    ``digest`` or None; ``put`` may keep them (or not; ``verified``: the caller has just
    checked them against ``digest``). Callers verify what ``get`` gives again, so a
    damaged store costs a refetch, never wrong bytes."""

    def get(self, digest: str) -> bytes | None: ...

    def put(self, digest: str, data: bytes, *, verified: bool = False) -> None: ...


#: Config media types that must hold an image config (a JSON object); "" for old manifests
_IMAGE_CONFIG_MEDIA_TYPES = ("", MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_DOCKER_CONFIG)


class ImageStore(Protocol):
    """Where an image's manifests and blobs come from (a registry repository or a layout)."""

    def root(self) -> tuple[ManifestDocument, str]:
        """The document the reference names, and the canonical reference string to report."""
        ...

    def child(self, entry: Descriptor, *, where: str) -> ManifestDocument:
        """The manifest or index an index entry points to, verified."""
        ...

    def fetch_blob(
        self, descriptor: Descriptor, *, use: Callable[[bytes], object] | None = None
    ) -> bytes:
        """A whole small blob, verified; ``use(body)`` is run on it (while it is being
        verified, where the store can): what it makes of the body is good once this
        returns."""
        ...

    def blob_source(self, descriptor: Descriptor) -> RangeSource: ...

    def close(self) -> None: ...


class RegistryStore:
    """One repository of a registry as an :class:`ImageStore` (``blobs``: where manifests
    and small blobs fetched by digest are kept between runs)."""

    def __init__(
        self, client: RegistryClient, reference: Reference, blobs: BlobStore | None = None
    ) -> None:
        self.client = client
        self.reference = reference
        self.blobs = blobs

    def _stored(self, digest: str) -> bytes | None:
        if self.blobs is None or digest_problem(digest) is not None:
            return None
        data = self.blobs.get(digest)
        if data is None:
            return None
        try:
            verify_digest(data, digest, what="stored blob")
        except (ValueError, IntegrityError):
            return None
        return data

    def _keep(self, digest: str, data: bytes, *, verified: bool = False) -> None:
        if self.blobs is not None and len(data) <= MAX_STORED_BLOB:
            self.blobs.put(digest, data, verified=verified)

    def manifest_bytes(self, digest: str, *, where: str) -> bytes:
        """A manifest by digest, verified: from the blob store, else the registry."""
        stored = self._stored(digest)
        if stored is not None:
            return stored
        fetched = self.client.get_manifest(self.reference.repository, digest, where=where)
        self._keep(digest, fetched.body)
        return fetched.body

    def root(self) -> tuple[ManifestDocument, str]:
        where = str(self.reference)
        pinned = self.reference.digest
        stored = self._stored(pinned) if pinned is not None else None
        if pinned is not None and stored is not None:
            doc = parse_manifest(stored, media_type_hint=None, digest=pinned, where=where)
            return doc, where
        fetched = self.client.get_manifest(
            self.reference.repository, self.reference.manifest_reference, where=where
        )
        self._keep(fetched.digest, fetched.body)
        doc = parse_manifest(
            fetched.body, media_type_hint=fetched.media_type, digest=fetched.digest, where=where
        )
        return doc, where

    def child(self, entry: Descriptor, *, where: str) -> ManifestDocument:
        hint = entry.media_type if entry.media_type in MANIFEST_MEDIA_TYPES else None
        body = self._stored(entry.digest)
        if body is None:
            fetched = self.client.get_manifest(self.reference.repository, entry.digest, where=where)
            self._keep(entry.digest, fetched.body)
            body, hint = fetched.body, hint or fetched.media_type
        return parse_manifest(body, media_type_hint=hint, digest=entry.digest, where=where)

    def fetch_blob(
        self, descriptor: Descriptor, *, use: Callable[[bytes], object] | None = None
    ) -> bytes:
        stored = self._stored(descriptor.digest)
        if stored is not None and len(stored) == descriptor.size:
            if use is not None:
                use(stored)
            return stored
        data = fetch_blob(self.client, self.reference.repository, descriptor, use=use)
        self._keep(descriptor.digest, data, verified=True)  # fetch_blob checked it
        return data

    def blob_source(self, descriptor: Descriptor) -> RegistryBlobSource:
        return RegistryBlobSource(self.client, self.reference.repository, descriptor)

    def close(self) -> None:
        self.client.close()


class ResolvedImage:
    """One platform's image: manifest, config, layer descriptors, and access to their blobs."""

    def __init__(
        self,
        *,
        reference: str,
        digest: str,
        platform: str,
        media_type: str,
        manifest: dict[str, Any],
        config_descriptor: Descriptor,
        config: dict[str, Any],
        layers: list[Descriptor],
        index_digest: str | None,
        store: ImageStore,
        manifest_size: int = 0,
    ) -> None:
        self.reference = reference
        #: Digest of the platform manifest.
        self.digest = digest
        self.platform = platform
        #: Media type of the platform manifest (OCI or Docker schema 2).
        self.media_type = media_type
        self.manifest = manifest
        self.config_descriptor = config_descriptor
        self.config = config
        #: Layer descriptors, base layer first.
        self.layers = layers
        #: Digest of the index the platform manifest was chosen from (None if there was none).
        self.index_digest = index_digest
        #: Length of the platform manifest's bytes.
        self.manifest_size = manifest_size
        self._store = store

    @property
    def store(self) -> ImageStore:
        """Where the manifests and blobs come from (a registry repository or a layout)."""
        return self._store

    def blob_source(self, descriptor: Descriptor) -> RangeSource:
        """A thread-safe range source over a layer blob (HTTP ranges or a local file)."""
        return self._store.blob_source(descriptor)

    def fetch_blob(self, descriptor: Descriptor) -> bytes:
        """A whole small blob, verified against ``descriptor`` (IntegrityError if not)."""
        return self._store.fetch_blob(descriptor)

    def close(self) -> None:
        """Release connections (blob sources made from this image stop working)."""
        self._store.close()

    def __enter__(self) -> ResolvedImage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"ResolvedImage({self.reference!r}, platform={self.platform!r}, digest={self.digest!r})"
        )


def resolve_image(
    ref: str | Reference | LayoutReference,
    *,
    platform: str | None = None,
    auth: tuple[str, str] | None = None,
    insecure: bool | None = None,
    blobs: BlobStore | None = None,
    on_manifest: Callable[[ImageStore, str, dict[str, Any]], None] | None = None,
    timeout: float | None = None,
    retries: int | None = None,
) -> ResolvedImage:
    """Resolve ``ref`` to one platform's image (see the package docs for the rules).

    ``blobs`` keeps manifests and the config by digest (see :class:`BlobStore`).
    ``on_manifest(store, digest, manifest)`` is called as soon as the platform manifest is
    known, before its config is fetched: a caller can start work that needs only the
    manifest (finding published indexes) at the same time. ``timeout`` and ``retries``
    bound every request to the registry (:class:`~seekoci.registry.retry.RetryPolicy`;
    checked for a layout too)."""
    policy = RetryPolicy.resolve(timeout, retries)
    parsed = ref if isinstance(ref, (Reference, LayoutReference)) else parse_reference(ref)
    wanted = host_platform() if platform is None else Platform.parse(platform)
    explicit = platform is not None
    store: ImageStore
    if isinstance(parsed, LayoutReference):
        store = LayoutStore(parsed)
    else:
        client = RegistryClient(
            parsed.registry,
            auth=auth,
            insecure=insecure,
            timeout=policy.timeout,
            retries=policy.retries,
        )
        store = RegistryStore(client, parsed, blobs)
    try:
        return _walk(store, wanted, explicit=explicit, on_manifest=on_manifest)
    except BaseException:
        store.close()
        raise


def _walk(
    store: ImageStore,
    wanted: Platform,
    *,
    explicit: bool,
    on_manifest: Callable[[ImageStore, str, dict[str, Any]], None] | None = None,
) -> ResolvedImage:
    doc, reference = store.root()
    variant_required = explicit and wanted.variant is not None
    index_digest: str | None = None
    chosen: Platform | None = None
    where = reference
    depth = 0
    while doc.is_index:
        depth += 1
        if depth > MAX_INDEX_DEPTH:
            raise FormatError(f"{reference}: image indexes nested more than {MAX_INDEX_DEPTH} deep")
        if index_digest is None:
            index_digest = doc.digest
        entry = select_entry(
            doc.entries(where=where), wanted, variant_required=variant_required, where=where
        )
        chosen = Platform.from_json(entry.platform) or chosen
        where = f"{reference}@{entry.digest}"
        doc = store.child(entry, where=where)
    assert doc.digest is not None  # only a layout's synthetic top-level index lacks one
    if on_manifest is not None:
        on_manifest(store, doc.digest, doc.data)
    config_descriptor = doc.config(where=where)
    layers = doc.layers(where=where)
    config = _parse_config(
        store.fetch_blob(config_descriptor),
        where=where,
        # an artifact's config (ORAS, model artifacts) may be anything; only an image's must
        # be a JSON object
        strict=config_descriptor.media_type in _IMAGE_CONFIG_MEDIA_TYPES,
    )
    found = Platform.from_json(config)
    if chosen is None:
        # A single-platform image is used as it is, unless a platform was asked for and the
        # config says it is another one (a config that names none, as an artifact's, says
        # nothing against it)
        if (
            explicit
            and found is not None
            and not matches(found, wanted, variant_required=variant_required)
        ):
            raise PlatformNotFoundError(
                f"{reference}: image is for {found}, not {wanted}", available=[str(found)]
            )
        chosen = found
    return ResolvedImage(
        reference=reference,
        digest=doc.digest,
        platform=str(chosen) if chosen is not None else "unknown/unknown",
        media_type=doc.media_type,
        manifest=doc.data,
        config_descriptor=config_descriptor,
        config=config,
        layers=layers,
        index_digest=index_digest,
        store=store,
        manifest_size=doc.size,
    )


def _parse_config(body: bytes, *, where: str, strict: bool = True) -> dict[str, Any]:
    """The config as a dict; an artifact's config that is not a JSON object is ``{}``."""
    try:
        data = _json.loads(body, max_values=MAX_CONFIG_VALUES)
    except (UnicodeDecodeError, ValueError) as exc:
        if not strict:
            return {}
        raise FormatError(f"{where}: image config is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        if not strict:
            return {}
        raise FormatError(f"{where}: image config is not a JSON object")
    return data
