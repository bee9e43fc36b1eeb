"""Indexes published in the registry next to an image: seekoci's own, and AWS SOCI's.

Lookup order for a layer (see :class:`seekoci.layer.Layer`): the local cache, then a
seekoci index artifact, then a SOCI index, then an index repository (``index_repo``:
seekoci/indexrepo.py, looked up once per layer), then a build. This module finds the published
ones -- once per image, on the first layer that needs an index -- and turns them into
:class:`~seekoci.formats.index.LayerIndex` objects:

* **native**: an OCI artifact (``artifactType`` :data:`NATIVE_ARTIFACT_TYPE`) whose
  ``subject`` is the image manifest, one index blob per layer. The referrers listing
  usually names the blobs itself (:data:`ANN_LAYERS`, with each index's header and
  directory), else the artifact manifest does. The blob is read by range: its header and
  directory (checked against the metadata digest), then only the entry pages, span pages
  and records a read needs, each checked against the directory -- and kept in the cache
  directory by range.
* **SOCI**: a v2 index named by the image manifest's ``com.amazon.soci.index-digest``
  annotation, else a v1 index found through the referrers API or referrers tag. A layer's
  zTOC is fetched whole (those of several layers at once), checked against its digest and
  kept by it, and read lazily (:func:`~seekoci.formats.ztoc.lazy_layer_index`).

Round trips (docs/performance.md): discovery starts in the background as soon as the
manifest is known, the referrers API and tag are asked at once, artifact manifests and
index heads of every layer are fetched together; a remembered index (``published/`` in the
cache) needs no discovery at all.

Trust: a published index is trusted like the repository that holds it. Span digests prove
that the compressed bytes fetched are the ones the index describes; only a build reads a
whole layer and checks it against the layer digest (docs/trust.md).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _json
from ._threads import shared_pool
from .errors import FormatError, IntegrityError, SeekociError
from .formats.index import HEADER_SIZE, LayerIndex, parse_header, parse_lazy
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
#: On the artifact manifest (so in referrers listings too): its layer descriptors as JSON,
#: each with its header and directory (base64, field :data:`ANN_HEAD_FIELD`) when they are
#: small, so a reader needs neither the artifact manifest nor a first range read.
ANN_LAYERS = "dev.seekoci.index.layers"
ANN_HEAD_FIELD = "dev.seekoci.head"
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
#: Base64 bytes of headers listed in :data:`ANN_LAYERS` at most (else descriptors only).
MAX_LISTED_HEADS = 64 << 10

SOCI_INDEX_V1 = "application/vnd.amazon.soci.index.v1+json"
SOCI_INDEX_V2 = "application/vnd.amazon.soci.index.v2+json"
SOCI_ANN_INDEX_DIGEST = "com.amazon.soci.index-digest"
SOCI_ANN_LAYER_DIGEST = "com.amazon.soci.image-layer-digest"
SOCI_ANN_LAYER_MEDIA_TYPE = "com.amazon.soci.image-layer-mediaType"
SOCI_ANN_SPAN_SIZE = "com.amazon.soci.span-size"
SOCI_ANN_BUILD_TOOL = "com.amazon.soci.build-tool-identifier"

#: A published zTOC larger than this is refused (SOCI's are ~0.8% of a layer).
MAX_ZTOC_SIZE = 1 << 30
#: zTOCs of other layers fetched ahead, at the same time as the one a read needs, at most.
MAX_PREFETCH_ZTOC_BYTES = 256 << 20


class _Ztoc:
    """A zTOC fetched and verified, and what reading it for ``layer`` (digest, media type,
    size: the image manifest's, when it was fetched ahead) made of it."""

    __slots__ = ("data", "error", "index", "layer")

    def __init__(self, layer: tuple[str, str, int] | None) -> None:
        self.layer = layer
        self.data = b""
        self.index: LayerIndex | None = None
        self.error: FormatError | None = None


class _CachedRanges:
    """Range reads of an immutable blob (a published index) through the cache directory:
    each range fetched is kept under the blob's digest (with its own sha256), and a later
    read of bytes inside a kept range costs no request. What the ranges hold is checked by
    the index reader against the directory, as for fetched bytes."""

    def __init__(self, source: RangeSource, digest: str, cache: Cache | None) -> None:
        self._source = source
        self._digest = digest
        self._cache = cache

    def _kept(self, offset: int, length: int) -> bytes | None:
        if self._cache is None:
            return None
        try:
            return self._cache.load_range(self._digest, offset, length)
        except ValueError:
            return None

    def _keep(self, offset: int, data: bytes) -> None:
        if self._cache is not None:
            with contextlib.suppress(ValueError):
                self._cache.save_range(self._digest, offset, data)

    def read_range(self, offset: int, length: int) -> bytes:
        kept = self._kept(offset, length)
        if kept is not None:
            return kept
        data = self._source.read_range(offset, length)
        if len(data) == length:
            self._keep(offset, data)
        return data

    def read_many(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Several ranges at once (pages a lookup needs, on separate connections), not one
        round trip after another; kept ones from the cache."""
        out: list[bytes | None] = [self._kept(*r) for r in ranges]
        missing = [i for i, data in enumerate(out) if data is None]
        if len(missing) == 1:
            out[missing[0]] = self.read_range(*ranges[missing[0]])
        elif missing:
            futures = {i: _pool().submit(self.read_range, *ranges[i]) for i in missing}
            for i, future in futures.items():
                out[i] = future.result()
        return [data if data is not None else b"" for data in out]


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    """Fetches that overlap: index pages together, artifact manifests, zTOCs, heads."""
    return shared_pool("seekoci-remote", 8)


def _discovery_pool() -> concurrent.futures.ThreadPoolExecutor:
    # its own pool: discovery waits on fetches submitted to _pool(), never on itself
    return shared_pool("seekoci-discovery", 4)


@dataclass
class _Published:
    kind: str  # "native" or "soci"
    blob: Descriptor
    artifact: str  # digest of the manifest that listed it
    #: the index repository that holds it (None: the image's own repository)
    repo: IndexRepository | None = None


class RemoteIndexes:
    """The published indexes of one image: in its registry repository (when it is in a
    registry), then in an index repository (``index_repo``, looked up by layer digest).

    Discovery (the referrers listing, the artifact manifests it names, the header of each
    native index) runs once, in the background as soon as :meth:`start` is called -- by
    :func:`seekoci.open_image` while the image config is still being fetched -- unless every
    layer's index is already known locally. Everything fetched by digest is kept in the
    cache directory; the referrers listing for :data:`~seekoci.cache.REFERRERS_TTL_ENV`
    seconds (a listing can change: a cached one is only trusted that long, and it is not
    needed at all once a layer's index is cached or remembered).
    """

    def __init__(
        self,
        store: Any,
        *,
        digest: str,
        manifest: dict[str, Any],
        reference: str,
        cache: Cache | None = None,
        index_repo: IndexRepository | None = None,
        in_registry: bool = True,
    ) -> None:
        self._store = store  # a registry.resolve.RegistryStore (or a layout's store)
        self._digest = digest
        self._manifest_doc = manifest
        self._reference = reference
        self._cache = cache
        self._lock = threading.Lock()
        self._discovery: concurrent.futures.Future[dict[str, list[_Published]]] | None = None
        self._soci_loaded: concurrent.futures.Future[None] | None = None
        self._soci_pending: list[str] = []
        self._heads: dict[str, concurrent.futures.Future[bytes]] = {}
        self._ztocs: dict[str, concurrent.futures.Future[_Ztoc]] = {}
        self._ztocs_started: set[str] = set()
        #: an index repository looked in after the image's own referrers
        self.index_repo = index_repo
        self._in_registry = in_registry
        self._repo_found: dict[str, list[_Published]] = {}
        self._repo_lock = threading.Lock()

    @classmethod
    def from_resolved(cls, resolved: ResolvedImage, cache: Cache | None = None) -> RemoteIndexes:
        return cls(
            resolved.store,
            digest=resolved.digest,
            manifest=resolved.manifest,
            reference=resolved.reference,
            cache=cache,
        )

    @property
    def store(self) -> Any:
        """Where the image itself is (its registry client is reused for an index repository
        on the same registry)."""
        return self._store

    @property
    def _client(self) -> RegistryClient:
        return self._store.client  # type: ignore[no-any-return]

    @property
    def _repository(self) -> str:
        return str(self._store.reference.repository)

    def _layer_digests(self) -> list[str]:
        layers = self._manifest_doc.get("layers")
        if not isinstance(layers, list):
            return []
        return [str(d.get("digest")) for d in layers if isinstance(d, dict) and d.get("digest")]

    def _known_locally(self, layer_digest: str) -> bool:
        """An index in the cache directory, or a published one remembered from last time."""
        cache = self._cache
        if cache is None:
            return False
        try:
            path = cache.index_path(layer_digest)
            if path is not None and path.is_file():
                return True
            if path is None and cache.load_index(layer_digest) is not None:
                return True
            doc = cache.load_published(layer_digest)
        except ValueError:
            return False
        return doc is not None and bool(doc) and self._same_place(doc)

    def start(self) -> None:
        """Begin discovery in the background when nothing of this image is known locally
        (a first read: it will need discovery, and the listing then overlaps the config).
        Once any layer's index is cached, discovery waits until a layer asks for it: a
        read that stays within cached layers asks the registry nothing more."""
        if not self._in_registry or any(self._known_locally(d) for d in self._layer_digests()):
            return
        self._future()

    # -- discovery --------------------------------------------------------------------------
    def _future(self) -> concurrent.futures.Future[dict[str, list[_Published]]]:
        with self._lock:
            if self._discovery is None:
                self._discovery = _discovery_pool().submit(self._run_discovery)
            return self._discovery

    def _discover(self) -> dict[str, list[_Published]]:
        if not self._in_registry:  # an OCI layout: only an index repository can help
            return {}
        return self._future().result()

    def _run_discovery(self) -> dict[str, list[_Published]]:
        """One referrers listing per image; native artifact manifests are read right away
        (they name their layers, all at once) and the header of each native index fetched;
        SOCI index manifests too when no native index is listed, else only for layers no
        native index covers."""
        found: dict[str, list[_Published]] = {}
        v2 = self._manifest_doc.get("annotations", {}).get(SOCI_ANN_INDEX_DIGEST)
        v2_manifest = _pool().submit(self._manifest, v2) if isinstance(v2, str) else None
        try:
            referrers = self._referrers()
        except SeekociError as exc:
            log.info("seekoci: no published indexes for %s: %s", self._digest, exc)
            referrers = []
        natives = [d for d in referrers if d.artifact_type == NATIVE_ARTIFACT_TYPE]
        socis = [d.digest for d in referrers if d.artifact_type == SOCI_INDEX_V1]
        if isinstance(v2, str):
            socis.insert(0, v2)  # the snapshotter looks for v2 first
        listed = [d for d in natives if self._add_listed(found, d)]
        manifests = [
            (d.digest, _pool().submit(self._manifest, d.digest)) for d in natives if d not in listed
        ]
        for digest, future in manifests:
            try:
                self._add_native(found, digest, future.result())
            except SeekociError as exc:
                log.warning("seekoci: index artifact %s unusable: %s", digest, exc)
        with self._lock:
            self._soci_pending = socis
        if v2_manifest is not None and not found:
            with contextlib.suppress(BaseException):
                v2_manifest.result()  # in the blob store now: no second fetch
        for layer in self._layer_digests():
            native = next((p for p in found.get(layer, []) if p.kind == "native"), None)
            if native is not None and not self._known_locally(layer):
                self._prefetch_head(native.blob)
        if not found and socis:
            self._load_soci_manifests(found)
        return found

    def _referrers(self) -> list[Descriptor]:
        from .cache import referrers_ttl
        from .registry.manifest import Descriptor
        from .registry.referrers import list_referrers

        cache, ttl = self._cache, referrers_ttl()
        if cache is not None and ttl > 0:
            try:
                kept = cache.load_referrers(self._digest, ttl)
                if kept is not None:
                    return [Descriptor.from_json(d, where="cached referrers") for d in kept]
            except (ValueError, FormatError):
                pass
        found = list_referrers(self._client, self._repository, self._digest, tag_at_once=True)
        if cache is not None:
            with contextlib.suppress(ValueError, OSError):
                cache.save_referrers(self._digest, [d.to_json() for d in found])
        return found

    def _manifest(self, digest: str) -> dict[str, Any]:
        from .registry.manifest import parse_manifest

        where = f"{self._reference} index artifact {digest}"
        body = self._store.manifest_bytes(digest, where=where)
        doc = parse_manifest(body, media_type_hint=None, digest=digest, where=where)
        return doc.data

    def _add_listed(self, found: dict[str, list[_Published]], listing: Descriptor) -> bool:
        """The index blobs an artifact names in its listed annotations (and their heads,
        kept once they match the metadata digest); False if it lists none."""
        import base64

        from .registry.manifest import Descriptor

        raw = listing.annotations.get(ANN_LAYERS)
        if not raw:
            return False
        where = f"referrers listing of {self._digest}: artifact {listing.digest}"
        try:
            items = _json.loads(raw)
            if not isinstance(items, list):
                raise ValueError("not a list")
            blobs = [(Descriptor.from_json(item, where=where), item) for item in items]
        except (ValueError, FormatError) as exc:
            log.info("seekoci: %s: unusable %s annotation: %s", where, ANN_LAYERS, exc)
            return False
        for blob, item in blobs:
            layer = blob.annotations.get(ANN_LAYER_DIGEST)
            if blob.media_type not in NATIVE_BLOB_MEDIA_TYPES or not layer:
                continue
            found.setdefault(layer, []).append(_Published("native", blob, listing.digest))
            head = item.get(ANN_HEAD_FIELD) if isinstance(item, dict) else None
            if isinstance(head, str):
                with contextlib.suppress(ValueError, SeekociError):
                    self._offer_head(blob, base64.b64decode(head, validate=True))
        return True

    def _offer_head(self, blob: Descriptor, head: bytes) -> None:
        """A head that came with the listing: kept if it matches the metadata digest."""
        _size, digest, where = self._head_of(blob, blob.annotations.get(ANN_LAYER_DIGEST, "?"))
        if "sha256:" + hashlib.sha256(head).hexdigest() != digest:
            raise IntegrityError(f"{where}: listed header does not match its digest")
        done: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        done.set_result(head)
        with self._lock:
            self._heads.setdefault(blob.digest, done)
        if self._cache is not None:
            self._cache.save_span(digest.partition(":")[2], head)

    def _layers_of(self, manifest: dict[str, Any], where: str) -> list[Descriptor]:
        from .registry.manifest import Descriptor

        raw = manifest.get("layers")
        if not isinstance(raw, list):
            raise FormatError(f"{where}: no layers")
        return [Descriptor.from_json(item, where=where) for item in raw]

    def _add_native(
        self, found: dict[str, list[_Published]], digest: str, manifest: dict[str, Any]
    ) -> None:
        for blob in self._layers_of(manifest, digest):
            layer = blob.annotations.get(ANN_LAYER_DIGEST)
            if blob.media_type in NATIVE_BLOB_MEDIA_TYPES and layer:
                found.setdefault(layer, []).append(_Published("native", blob, digest))

    def _load_soci_manifests(self, found: dict[str, list[_Published]] | None = None) -> None:
        """Read the SOCI index manifests found by discovery (once, when first needed; all
        at once), then start fetching the zTOCs of the layers no native index covers."""
        found = self._discover() if found is None else found
        with self._lock:  # one reader of them; the others wait for what it found
            loading = self._soci_loaded
            if loading is None:
                loading = self._soci_loaded = concurrent.futures.Future()
                pending, self._soci_pending = self._soci_pending, []
            else:
                pending = None
        if pending is None:
            loading.result()
            return
        try:
            self._read_soci_manifests(found, pending)
        finally:
            loading.set_result(None)

    def _read_soci_manifests(self, found: dict[str, list[_Published]], pending: list[str]) -> None:
        futures = [(d, _pool().submit(self._manifest, d)) for d in pending]
        added: list[tuple[str, _Published]] = []
        for digest, future in futures:
            try:
                manifest = future.result()
                config = manifest.get("config", {})
                if not isinstance(config, dict) or config.get("mediaType") not in (
                    SOCI_INDEX_V1,
                    SOCI_INDEX_V2,
                ):
                    continue
                for blob in self._layers_of(manifest, digest):
                    layer = blob.annotations.get(SOCI_ANN_LAYER_DIGEST)
                    if layer:
                        added.append((layer, _Published("soci", blob, digest)))
            except SeekociError as exc:
                log.warning("seekoci: SOCI index %s unusable: %s", digest, exc)
        with self._lock:
            for layer, published in added:
                found.setdefault(layer, []).append(published)
        self._prefetch_ztocs(found)

    def describe(self, layer_digest: str) -> list[str]:
        """What is published for a layer (``native``/``soci``), for ``inspect``; an index in
        the index repository counts as ``native``."""
        found = self._discover()
        if found:
            self._load_soci_manifests(found)
        with self._lock:
            own = [p.kind for p in found.get(layer_digest, [])]
        return own + [p.kind for p in self._in_index_repo(layer_digest)]

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

    # -- prefetching --------------------------------------------------------------------------
    def _prefetch_head(self, blob: Descriptor) -> None:
        """Fetch a native index's header and directory now, next to the other layers'."""
        with self._lock:
            if blob.digest in self._heads:
                return
            self._heads[blob.digest] = _pool().submit(self._head, blob)

    def _prefetch_ztocs(self, found: dict[str, list[_Published]]) -> None:
        """Fetch the zTOCs of every layer that has only a SOCI index (and no local index),
        all at once: a read through several layers needs each of theirs, and one after
        another they cost a round trip and a transfer each (at most
        :data:`MAX_PREFETCH_ZTOC_BYTES` in all)."""
        budget = MAX_PREFETCH_ZTOC_BYTES
        with self._lock:
            for layer in self._layer_digests():
                published = found.get(layer, [])
                if any(p.kind == "native" for p in published):
                    continue
                soci = next((p for p in published if p.kind == "soci"), None)
                if soci is None or soci.blob.digest in self._ztocs_started:
                    continue
                if soci.blob.size > budget or self._known_locally(layer):
                    continue
                budget -= soci.blob.size
                self._ztocs_started.add(soci.blob.digest)
                self._ztocs[soci.blob.digest] = _pool().submit(
                    self._fetch_ztoc, soci.blob, self._layer_of(layer)
                )

    def _layer_of(self, layer_digest: str) -> tuple[str, str, int] | None:
        """``(digest, media type, size)`` of a layer as the image manifest lists it."""
        layers = self._manifest_doc.get("layers")
        for d in layers if isinstance(layers, list) else ():
            if isinstance(d, dict) and d.get("digest") == layer_digest:
                media_type, size = d.get("mediaType"), d.get("size")
                if isinstance(media_type, str) and type(size) is int:
                    return layer_digest, media_type, size
        return None

    def _fetch_ztoc(self, blob: Descriptor, layer: tuple[str, str, int] | None) -> _Ztoc:
        """The zTOC ``blob``, verified; read for ``layer`` (when given) while its digest is
        computed in another thread (the read is kept only if the digest is right)."""
        fetched = _Ztoc(layer)

        def read(data: bytes) -> None:
            from .formats.ztoc import lazy_layer_index

            assert layer is not None
            fetched.index = fetched.error = None  # a refetch reads the new body
            try:
                fetched.index = lazy_layer_index(
                    data, layer_digest=layer[0], media_type=layer[1], blob_size=layer[2]
                )
            except FormatError as exc:
                fetched.error = exc

        fetched.data = self._store.fetch_blob(blob, use=None if layer is None else read)
        return fetched

    def _ztoc(self, blob: Descriptor, layer: tuple[str, str, int]) -> _Ztoc:
        with self._lock:
            future = self._ztocs.pop(blob.digest, None)
        if future is not None:
            try:
                return future.result()
            except IntegrityError:
                raise  # not the zTOC, twice (fetch_blob refetched it): a third try will not be
            except SeekociError:
                pass  # a transfer that failed in the background is tried once more, here
        return self._fetch_ztoc(blob, layer)

    # -- loading ----------------------------------------------------------------------------
    def load(
        self, layer_digest: str, *, media_type: str, blob_size: int
    ) -> tuple[LayerIndex, str] | None:
        """The best published index of a layer and its kind, or None."""
        remembered = self._remembered(layer_digest, media_type, blob_size)
        if remembered is not None:
            return remembered
        found = self._discover()
        with self._lock:
            listed = list(found.get(layer_digest, []))
        if found and not any(p.kind == "native" for p in listed):
            self._load_soci_manifests(found)
            with self._lock:
                listed = list(found.get(layer_digest, []))
        for published in self._candidates(listed, layer_digest):
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
            where = published.repo.where() if published.repo is not None else self._where()
            if self._cache is not None and where is not None:
                self._cache.save_published(
                    layer_digest,
                    {**where, "kind": published.kind, "blob": published.blob.to_json()},
                )
            return index, published.kind
        return None

    def _candidates(self, own: list[_Published], layer_digest: str) -> Iterator[_Published]:
        """The image's own published indexes (native first), then -- only if none of them
        served -- the index repository's."""
        yield from sorted(own, key=lambda p: p.kind != "native")
        yield from self._in_index_repo(layer_digest)

    def _where(self) -> dict[str, str] | None:
        if not self._in_registry:
            return None
        return {"registry": str(self._store.reference.registry), "repository": self._repository}

    def _place_of(self, doc: dict[str, Any]) -> tuple[bool, IndexRepository | None]:
        """Whether a remembered index was seen here: in the image's own repository (None)
        or in the index repository."""
        seen_in = {k: doc.get(k) for k in ("registry", "repository")}
        if self._in_registry and seen_in == self._where():
            return True, None
        repo = self.index_repo
        if repo is not None and seen_in == repo.where():
            return True, repo
        return False, None

    def _same_place(self, doc: dict[str, Any]) -> bool:
        return self._place_of(doc)[0]

    def _remembered(
        self, layer_digest: str, media_type: str, blob_size: int
    ) -> tuple[LayerIndex, str] | None:
        """A published index this cache saw for the layer in this same repository: no
        discovery, and its bytes from the cache directory (checked as when fetched)."""
        from .registry.manifest import Descriptor

        doc = self._cache.load_published(layer_digest) if self._cache is not None else None
        if not doc:
            return None
        here, repo = self._place_of(doc)
        if not here:
            return None
        kind = doc.get("kind", "native")
        try:
            blob = Descriptor.from_json(doc.get("blob"), where="remembered index")
            published = _Published(str(kind), blob, "", repo)
            if kind == "native":
                index = self._load_native(published, layer_digest)
            elif kind == "soci":
                index = self._load_soci(published, layer_digest, media_type, blob_size)
            else:
                return None
        except SeekociError as exc:
            log.info("seekoci: remembered index of %s unusable: %s", layer_digest, exc)
            return None
        return (index, str(kind)) if index.blob_size == blob_size else None

    def _source(self, blob: Descriptor, repo: IndexRepository | None = None) -> RangeSource:
        if repo is not None:
            return repo.blob_source(blob)
        return self._store.blob_source(blob)  # type: ignore[no-any-return]

    @staticmethod
    def _head_of(blob: Descriptor, layer_digest: str) -> tuple[int, str, str]:
        where = f"published index {blob.digest} of layer {layer_digest}"
        try:
            size = int(blob.annotations[ANN_METADATA_SIZE])
            digest = blob.annotations[ANN_METADATA_DIGEST]
        except (KeyError, ValueError):
            raise FormatError(f"{where}: no metadata size/digest annotations") from None
        if not _SHA256.fullmatch(digest):  # it names a cache file: a digest, nothing else
            raise FormatError(f"{where}: metadata digest {digest[:80]!r} is not a sha256")
        if not HEADER_SIZE <= size <= blob.size:
            raise FormatError(f"{where}: metadata size {size} out of range")
        return size, digest, where

    def _head(self, blob: Descriptor, repo: IndexRepository | None = None) -> bytes:
        """The header and directory of a native index, checked against the metadata digest
        of the (digest-verified) artifact manifest; kept in the cache by that digest."""
        size, digest, where = self._head_of(blob, blob.annotations.get(ANN_LAYER_DIGEST, "?"))
        wanted = digest.partition(":")[2]
        head = self._cache.load_span(wanted) if self._cache is not None and wanted else None
        if head is None:
            head = self._source(blob, repo).read_range(0, size)
        if "sha256:" + hashlib.sha256(head).hexdigest() != digest:
            raise IntegrityError(f"{where}: header and directory do not match their digest")
        if self._cache is not None:
            self._cache.save_span(wanted, head)
        return head

    def _load_native(self, published: _Published, layer_digest: str) -> LayerIndex:
        blob = published.blob
        _size, _digest, where = self._head_of(blob, layer_digest)
        if published.repo is not None:
            where += f" in index repository {published.repo.name}"
        # the annotation gives the size of the index's header and directory: one request
        # (or none: the cache keeps it by its digest); entry pages, span pages and records
        # come later, by range, each checked against the directory (and kept too)
        with self._lock:
            pending = self._heads.pop(blob.digest, None)
        head: bytes | None = None
        if pending is not None:
            with contextlib.suppress(SeekociError):
                head = pending.result()
        if head is None:
            head = self._head(blob, published.repo)
        parse_header(head, where=where)
        ranges = _CachedRanges(self._source(blob, published.repo), blob.digest, self._cache)
        return parse_lazy(
            head,
            ranges.read_range,
            read_many=ranges.read_many,
            expected_digest=layer_digest,
            where=where,
        )

    def _load_soci(
        self, published: _Published, layer_digest: str, media_type: str, blob_size: int
    ) -> LayerIndex:
        from .formats.ztoc import lazy_layer_index

        blob = published.blob
        if blob.size > MAX_ZTOC_SIZE:
            raise FormatError(f"zTOC {blob.digest} of layer {layer_digest} is too large")
        layer = (layer_digest, media_type, blob_size)
        fetched = self._ztoc(blob, layer)  # verified against its digest
        # the checks of decode_ztoc, each entry's when a read uses it (every table's when a
        # listing does): a lookup by name reads the tables it finds
        if fetched.layer == layer:  # read while it was verified
            if fetched.error is not None:
                raise fetched.error
            if fetched.index is not None:
                return fetched.index
        return lazy_layer_index(
            fetched.data, layer_digest=layer_digest, media_type=media_type, blob_size=blob_size
        )
