"""Indexes published in the registry next to an image: seekoci's own, and AWS SOCI's.

Lookup order for a layer (see :class:`seekoci.layer.Layer`): the local cache, then a
seekoci index artifact, then a SOCI index, then an index repository (``index_repo``:
seekoci/indexrepo.py), then a build. This module finds the published ones -- once per
image, on the first layer that needs an index; in an index repository once per layer -- and
turns them into :class:`~seekoci.formats.index.LayerIndex` objects:

* **native**: an OCI artifact (``artifactType`` :data:`NATIVE_ARTIFACT_TYPE`) whose
  ``subject`` is the image manifest, one index blob per layer. The blob is read by range:
  its header, table of contents and span table in one or two requests, checked against
  the metadata digest in the (digest-verified) artifact manifest; then only the windows a
  read needs, each checked against its span record.
* **SOCI**: a v2 index named by the image manifest's ``com.amazon.soci.index-digest``
  annotation, else a v1 index found through the referrers API or referrers tag. A layer's
  zTOC is fetched whole and checked against its digest.

Trust: a published index is trusted like the repository that holds it. Span digests prove
that the compressed bytes fetched are the ones the index describes; only a build reads a
whole layer and checks it against the layer digest (docs/trust.md).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import FormatError, IntegrityError, SeekociError
from .formats.index import HEADER_SIZE, LayerIndex, parse_header, parse_lazy
from .formats.pages import ReadMany
from .source import RangeSource

if TYPE_CHECKING:
    from .cache import Cache
    from .indexrepo import IndexRepository
    from .registry.client import RegistryClient
    from .registry.manifest import Descriptor
    from .registry.resolve import ResolvedImage

log = logging.getLogger("seekoci")

NATIVE_ARTIFACT_TYPE = "application/vnd.seekoci.index.v1"
#: the media type of the index blobs pushed (index format 6), and the ones read
NATIVE_BLOB_MEDIA_TYPE = "application/vnd.seekoci.index.layer.v6"
NATIVE_BLOB_MEDIA_TYPES = (NATIVE_BLOB_MEDIA_TYPE, "application/vnd.seekoci.index.layer.v5")
ANN_LAYER_DIGEST = "dev.seekoci.layer.digest"
ANN_LAYER_MEDIA_TYPE = "dev.seekoci.layer.media-type"
ANN_SPAN_SIZE = "dev.seekoci.span-size"
ANN_METADATA_SIZE = "dev.seekoci.index.metadata-size"
ANN_METADATA_DIGEST = "dev.seekoci.index.metadata-digest"
ANN_BUILD_TOOL = "dev.seekoci.build-tool"

SOCI_INDEX_V1 = "application/vnd.amazon.soci.index.v1+json"
SOCI_INDEX_V2 = "application/vnd.amazon.soci.index.v2+json"
SOCI_ANN_INDEX_DIGEST = "com.amazon.soci.index-digest"
SOCI_ANN_LAYER_DIGEST = "com.amazon.soci.image-layer-digest"
SOCI_ANN_LAYER_MEDIA_TYPE = "com.amazon.soci.image-layer-mediaType"
SOCI_ANN_SPAN_SIZE = "com.amazon.soci.span-size"
SOCI_ANN_BUILD_TOOL = "com.amazon.soci.build-tool-identifier"

#: A published zTOC larger than this is refused (SOCI's are ~0.8% of a layer).
MAX_ZTOC_SIZE = 1 << 30


def _parallel(source: RangeSource) -> ReadMany:
    """Several ranges of an index blob at once (pages a lookup needs, on separate
    connections), not one round trip after another."""

    def read_many(ranges: list[tuple[int, int]]) -> list[bytes]:
        if len(ranges) == 1:
            return [source.read_range(*ranges[0])]
        from .spans import _background

        futures = [_background().submit(source.read_range, *r) for r in ranges]
        return [f.result() for f in futures]

    return read_many


@dataclass
class _Published:
    kind: str  # "native" or "soci"
    blob: Descriptor
    artifact: str  # digest of the manifest that listed it
    #: the index repository that holds it (None: the image's own repository)
    repo: IndexRepository | None = None


class RemoteIndexes:
    """The published indexes of one image: in its registry repository (when it is in a
    registry), then in an index repository (``index_repo``, looked up by layer digest)."""

    def __init__(
        self,
        resolved: ResolvedImage,
        cache: Cache | None = None,
        *,
        index_repo: IndexRepository | None = None,
    ) -> None:
        from .registry.resolve import RegistryStore

        self._resolved = resolved
        self._cache = cache
        self._lock = threading.Lock()
        self._found: dict[str, list[_Published]] | None = None
        self._soci_pending: list[str] = []
        #: an index repository looked in after the image's own referrers
        self.index_repo = index_repo
        self._in_registry = isinstance(resolved.store, RegistryStore)
        self._repo_found: dict[str, list[_Published]] = {}
        self._repo_lock = threading.Lock()

    @property
    def _client(self) -> RegistryClient:
        return self._resolved.store.client  # type: ignore[attr-defined,no-any-return]

    @property
    def _repository(self) -> str:
        return str(self._resolved.store.reference.repository)  # type: ignore[attr-defined]

    # -- discovery --------------------------------------------------------------------------
    def _discover(self) -> dict[str, list[_Published]]:
        """One referrers listing per image; native artifact manifests are read right away
        (they name their layers), SOCI index manifests only for layers no native index
        covers."""
        with self._lock:
            if self._found is not None:
                return self._found
            found: dict[str, list[_Published]] = {}
            try:
                referrers = self._referrers() if self._in_registry else []
            except SeekociError as exc:
                log.info("seekoci: no published indexes for %s: %s", self._resolved.digest, exc)
                referrers = []
            natives = [d for d in referrers if d.artifact_type == NATIVE_ARTIFACT_TYPE]
            socis = [d.digest for d in referrers if d.artifact_type == SOCI_INDEX_V1]
            v2 = self._resolved.manifest.get("annotations", {}).get(SOCI_ANN_INDEX_DIGEST)
            if isinstance(v2, str) and self._in_registry:
                socis.insert(0, v2)  # the snapshotter looks for v2 first
            for ref in natives:
                try:
                    self._add_native(found, ref.digest)
                except SeekociError as exc:
                    log.warning("seekoci: index artifact %s unusable: %s", ref.digest, exc)
            self._soci_pending = socis
            self._found = found
            return found

    def _referrers(self) -> list[Descriptor]:
        from .registry.referrers import list_referrers

        return list_referrers(self._client, self._repository, self._resolved.digest)

    def _manifest(self, digest: str) -> dict[str, Any]:
        from .registry.manifest import parse_manifest

        where = f"{self._resolved.reference} index artifact {digest}"
        fetched = self._client.get_manifest(self._repository, digest, where=where)
        doc = parse_manifest(fetched.body, media_type_hint=None, digest=digest, where=where)
        return doc.data

    def _layers_of(self, manifest: dict[str, Any], where: str) -> list[Descriptor]:
        from .registry.manifest import Descriptor

        raw = manifest.get("layers")
        if not isinstance(raw, list):
            raise FormatError(f"{where}: no layers")
        return [Descriptor.from_json(item, where=where) for item in raw]

    def _add_native(self, found: dict[str, list[_Published]], digest: str) -> None:
        manifest = self._manifest(digest)
        for blob in self._layers_of(manifest, digest):
            layer = blob.annotations.get(ANN_LAYER_DIGEST)
            if blob.media_type in NATIVE_BLOB_MEDIA_TYPES and layer:
                found.setdefault(layer, []).append(_Published("native", blob, digest))

    def _load_soci_manifests(self) -> None:
        """Read the SOCI index manifests found by discovery (once, when first needed)."""
        with self._lock:
            pending, self._soci_pending = self._soci_pending, []
            assert self._found is not None
            for digest in pending:
                try:
                    manifest = self._manifest(digest)
                    config = manifest.get("config", {})
                    if not isinstance(config, dict) or config.get("mediaType") not in (
                        SOCI_INDEX_V1,
                        SOCI_INDEX_V2,
                    ):
                        continue
                    for blob in self._layers_of(manifest, digest):
                        layer = blob.annotations.get(SOCI_ANN_LAYER_DIGEST)
                        if layer:
                            self._found.setdefault(layer, []).append(
                                _Published("soci", blob, digest)
                            )
                except SeekociError as exc:
                    log.warning("seekoci: SOCI index %s unusable: %s", digest, exc)

    def _in_index_repo(self, layer_digest: str) -> list[_Published]:
        """What the index repository holds for a layer (asked once per layer)."""
        repo = self.index_repo
        if repo is None:
            return []
        with self._repo_lock:
            known = self._repo_found.get(layer_digest)
        if known is None:
            artifact, blobs = repo.find(layer_digest)  # a network wait: not under the lock
            known = [_Published("native", blob, artifact, repo) for blob in blobs]
            with self._repo_lock:
                self._repo_found[layer_digest] = known
        return known

    def forget_index_repo(self, layer_digest: str) -> None:
        """Look in the index repository again next time (something was published there)."""
        with self._repo_lock:
            self._repo_found.pop(layer_digest, None)

    def describe(self, layer_digest: str) -> list[str]:
        """What is published for a layer (``native``/``soci``), for ``inspect``; an index in
        the index repository counts as ``native``."""
        self._discover()
        self._load_soci_manifests()
        found = [p.kind for p in self._discover().get(layer_digest, [])]
        return found + [p.kind for p in self._in_index_repo(layer_digest)]

    # -- loading ----------------------------------------------------------------------------
    def load(
        self, layer_digest: str, *, media_type: str, blob_size: int
    ) -> tuple[LayerIndex, str] | None:
        """The best published index of a layer and its kind, or None."""
        remembered = self._remembered(layer_digest, blob_size)
        if remembered is not None:
            return remembered, "native"
        found = self._discover()
        if not any(p.kind == "native" for p in found.get(layer_digest, [])):
            self._load_soci_manifests()
        own = sorted(found.get(layer_digest, []), key=lambda p: p.kind != "native")
        for published in self._candidates(own, layer_digest):
            try:
                if published.kind == "native":
                    index = self._load_native(published, layer_digest)
                else:
                    index = self._load_soci(published, layer_digest, media_type, blob_size)
            except SeekociError as exc:
                log.warning(
                    "seekoci: published %s index of layer %s unusable: %s",
                    published.kind, layer_digest, exc,
                )  # fmt: skip
                continue
            if index.blob_size != blob_size:
                log.warning("seekoci: published index of %s is for another size", layer_digest)
                continue
            if published.kind == "native" and self._cache is not None:
                where = published.repo.where() if published.repo is not None else self._where()
                if where is not None:
                    self._cache.save_published(
                        layer_digest, {**where, "blob": published.blob.to_json()}
                    )
            return index, published.kind
        return None

    def _candidates(self, own: list[_Published], layer_digest: str) -> Iterator[_Published]:
        """The image's own published indexes, then (only if none of them served) the index
        repository's."""
        yield from own
        yield from self._in_index_repo(layer_digest)

    def _where(self) -> dict[str, str] | None:
        if not self._in_registry:
            return None
        store = self._resolved.store
        return {
            "registry": str(store.reference.registry),  # type: ignore[attr-defined]
            "repository": self._repository,
        }

    def _remembered(self, layer_digest: str, blob_size: int) -> LayerIndex | None:
        """A native index this cache saw published for the layer in this same repository:
        no discovery, and its metadata from the span cache (checked against its digest)."""
        from .registry.manifest import Descriptor

        doc = self._cache.load_published(layer_digest) if self._cache is not None else None
        if not doc:
            return None
        seen_in = {k: doc.get(k) for k in ("registry", "repository")}
        repo = self.index_repo
        if seen_in == self._where():
            repo = None
        elif repo is None or seen_in != repo.where():
            return None
        try:
            blob = Descriptor.from_json(doc.get("blob"), where="remembered index")
            index = self._load_native(_Published("native", blob, "", repo), layer_digest)
        except SeekociError as exc:
            log.info("seekoci: remembered index of %s unusable: %s", layer_digest, exc)
            return None
        return index if index.blob_size == blob_size else None

    def _source(self, published: _Published) -> RangeSource:
        if published.repo is not None:
            return published.repo.blob_source(published.blob)
        return self._resolved.blob_source(published.blob)

    def _load_native(self, published: _Published, layer_digest: str) -> LayerIndex:
        blob = published.blob
        where = f"published index {blob.digest} of layer {layer_digest}"
        if published.repo is not None:
            where += f" in index repository {published.repo.name}"
        try:
            size = int(blob.annotations[ANN_METADATA_SIZE])
            digest = blob.annotations[ANN_METADATA_DIGEST]
        except (KeyError, ValueError):
            raise FormatError(f"{where}: no metadata size/digest annotations") from None
        if not HEADER_SIZE <= size <= blob.size:
            raise FormatError(f"{where}: metadata size {size} out of range")
        # the annotation gives the size of the index's header and directory: one request
        # (or none: the span cache keeps it by its digest); entry pages, span pages and
        # records come later, by range, each checked against the directory
        source = self._source(published)
        wanted = digest.partition(":")[2]
        head = self._cache.load_span(wanted) if self._cache is not None and wanted else None
        if head is None:
            head = source.read_range(0, size)
        parse_header(head, where=where)
        if "sha256:" + hashlib.sha256(head).hexdigest() != digest:
            raise IntegrityError(f"{where}: header and directory do not match their digest")
        if self._cache is not None:
            self._cache.save_span(wanted, head)
        return parse_lazy(
            head,
            source.read_range,
            read_many=_parallel(source),
            expected_digest=layer_digest,
            where=where,
        )

    def _load_soci(
        self, published: _Published, layer_digest: str, media_type: str, blob_size: int
    ) -> LayerIndex:
        from .formats.ztoc import decode_ztoc, ztoc_to_layer_index

        blob = published.blob
        if blob.size > MAX_ZTOC_SIZE:
            raise FormatError(f"zTOC {blob.digest} of layer {layer_digest} is too large")
        data = self._resolved.fetch_blob(blob)  # verified against its digest
        ztoc = decode_ztoc(data)
        return ztoc_to_layer_index(
            ztoc,
            layer_digest=layer_digest,
            media_type=media_type,
            blob_size=blob_size,
            raw_checkpoints=ztoc.checkpoints,
        )
