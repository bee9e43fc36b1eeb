"""Publishing indexes next to an image: ``seekoci index REF --push``.

``native``: seekoci's own index of every layer, as one OCI artifact whose ``subject`` is the
image manifest (found through the referrers API or the referrers tag). Index blobs are laid
out to be read by range (docs/index-format.md).

``soci``: an AWS SOCI v1 index -- zTOCs for every gzip or plain tar layer of at least
``min_layer_size`` bytes (SOCI's default 10 MiB; zstd layers are skipped as SOCI has no
zstd support) and the index manifest the ``soci`` CLI would push, so SOCI-enabled runtimes
use it too. Each layer is streamed once and checked against its digest before its zTOC is
published.

``--to REGISTRY/REPO``: seekoci's index of each layer into an index repository you own, by
layer digest (:func:`publish_layer_index`; seekoci/indexrepo.py), for images you cannot
push to.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import FormatError, IntegrityError
from .formats.index import index_file, parse_header
from .image import Image
from .layer import TOOL, Layer, Progress
from .remote import (
    ANN_BUILD_TOOL,
    ANN_HEAD_FIELD,
    ANN_LAYER_DIGEST,
    ANN_LAYER_MEDIA_TYPE,
    ANN_LAYERS,
    ANN_METADATA_DIGEST,
    ANN_METADATA_SIZE,
    ANN_SPAN_SIZE,
    MAX_LISTED_HEADS,
    NATIVE_ARTIFACT_TYPE,
    NATIVE_BLOB_MEDIA_TYPE,
    SOCI_ANN_BUILD_TOOL,
    SOCI_ANN_LAYER_DIGEST,
    SOCI_ANN_LAYER_MEDIA_TYPE,
    SOCI_ANN_SPAN_SIZE,
    SOCI_INDEX_V1,
)

if TYPE_CHECKING:
    from .indexrepo import IndexRepository

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY_JSON = b"{}"
EMPTY_DIGEST = "sha256:" + hashlib.sha256(EMPTY_JSON).hexdigest()
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
ZTOC_MEDIA_TYPE = "application/octet-stream"
SOCI_DEFAULT_SPAN = 4 << 20
SOCI_MIN_LAYER_SIZE = 10 << 20
SOCI_BUILD_TOOL = f"{TOOL} (SOCI v1 index)"

Report = Callable[[str], None]


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _compact(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


class _Target:
    """The registry repository an image came from, for pushing."""

    def __init__(self, img: Image) -> None:
        from .registry.resolve import RegistryStore

        resolved = img.resolved
        if resolved is None or not isinstance(resolved.store, RegistryStore):
            raise FormatError(f"{img.reference}: indexes can only be pushed to a registry")
        self.resolved = resolved
        self.client = resolved.store.client
        self.repository = resolved.store.reference.repository
        self.subject = {
            "mediaType": resolved.media_type,
            "digest": resolved.digest,
            "size": resolved.manifest_size,
        }

    def upload(self, data: bytes) -> str:
        from .registry.push import upload_blob

        return upload_blob(self.client, self.repository, data, digest=_digest(data))

    def push_referrer(self, manifest: dict[str, Any], artifact_type: str) -> str:
        from .registry.referrers import push_referrer

        return push_referrer(
            self.client,
            self.repository,
            _compact(manifest),
            OCI_MANIFEST,
            artifact_type=artifact_type,
            annotations=manifest.get("annotations"),
        )


def publish_native(
    img: Image, *, progress: Progress | None = None, report: Report | None = None
) -> str:
    """Push seekoci's index of every layer as one artifact; return its manifest digest."""
    target = _Target(img)
    layers = []
    heads: list[str] = []
    for layer in img.layers:
        if layer.format == "file":  # a plain-file layer is read directly: no index
            continue
        index = layer.pass_index(progress)  # an embedded TOC is the blob's own: not ours
        data = index_file(index)
        header = parse_header(data)
        heads.append(base64.b64encode(data[: header.head_end]).decode("ascii"))
        digest = target.upload(data)
        if report:
            report(f"{layer.digest}  native index {digest} ({len(data)} bytes)")
        layers.append(_native_blob(layer, index.span_size, data, digest))
    target.upload(EMPTY_JSON)
    manifest = _native_manifest(layers, heads)
    manifest["subject"] = target.subject
    return target.push_referrer(manifest, NATIVE_ARTIFACT_TYPE)


def _native_blob(layer: Layer, span_size: int, data: bytes, digest: str) -> dict[str, Any]:
    """The descriptor of a layer's index blob in a native index artifact."""
    header = parse_header(data)
    return {
        "mediaType": NATIVE_BLOB_MEDIA_TYPE,
        "digest": digest,
        "size": len(data),
        "annotations": {
            ANN_LAYER_DIGEST: str(layer.digest),
            ANN_LAYER_MEDIA_TYPE: layer.media_type,
            ANN_SPAN_SIZE: str(span_size),
            # what a reader fetches first: header and directory
            ANN_METADATA_SIZE: str(header.head_end),
            ANN_METADATA_DIGEST: _digest(data[: header.head_end]),
        },
    }


def _native_manifest(layers: list[dict[str, Any]], heads: list[str]) -> dict[str, Any]:
    # the layer descriptors again, as an annotation: referrers listings carry a manifest's
    # annotations, so a reader finds the index blobs in the listing, one round trip sooner;
    # with the header and directory of each when they are small (then two sooner)
    listed = layers
    if sum(map(len, heads)) <= MAX_LISTED_HEADS:
        listed = [{**d, ANN_HEAD_FIELD: h} for d, h in zip(layers, heads, strict=True)]
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": NATIVE_ARTIFACT_TYPE,
        "config": {"mediaType": OCI_EMPTY, "digest": EMPTY_DIGEST, "size": len(EMPTY_JSON)},
        "layers": layers,
        "annotations": {
            ANN_BUILD_TOOL: TOOL,
            ANN_LAYERS: json.dumps(listed, separators=(",", ":")),
        },
    }


# -- index repositories (seekoci/indexrepo.py) -------------------------------------------------


def _index_repository(layer: Layer, index_repo: str | IndexRepository | None) -> IndexRepository:
    from .indexrepo import IndexRepository, index_repo_from_env, parse_index_repo

    if isinstance(index_repo, IndexRepository):
        return index_repo
    remote = layer.remote
    own = remote.index_repo if remote is not None else None
    if index_repo is None:
        if own is not None:
            return own
        index_repo = index_repo_from_env()
    if index_repo is None:
        raise ValueError(
            f"layer {layer.name}: no index repository (give one, or open the image with "
            "index_repo= or $SEEKOCI_INDEX_REPO)"
        )
    if own is not None and parse_index_repo(index_repo) == (own.registry, own.repository):
        return own  # the one the image reads from: what is pushed there is found there
    # the image's transport choice (insecure=) applies to a new client too, as in open_image
    origin = layer.origin.image if layer.origin is not None else None
    insecure = origin.options.get("insecure") if origin is not None else None
    if remote is not None:
        return IndexRepository.for_store(index_repo, remote.store, insecure=insecure)
    return IndexRepository.open(index_repo, insecure=insecure)


def publish_layer_index(
    layer: Layer,
    index_repo: str | IndexRepository | None = None,
    *,
    progress: Progress | None = None,
    report: Report | None = None,
    force: bool = False,
) -> str:
    """Publish one layer's index into an index repository (default: the one its image was
    opened with); return the artifact manifest's digest.

    A layer the repository already has an index for is left alone (its artifact's digest is
    returned, nothing is built or pushed) unless ``force``. Otherwise the index is loaded or
    built (:meth:`Layer.index`), its blob uploaded and the artifact pushed under the tag
    ``sha256-<hex>.seekoci`` of the layer digest (docs/publishing.md).
    """
    from .indexrepo import layer_tag
    from .registry.push import put_manifest, upload_blob

    if layer.digest is None:
        raise ValueError(f"layer {layer.name}: only a layer with a digest can be published")
    repo = _index_repository(layer, index_repo)
    if not force:
        artifact, found = repo.find(layer.digest)
        if found:
            if report:
                report(f"{layer.digest}  already in {repo.name} ({artifact})")
            return artifact
    index = layer.pass_index(progress)  # an embedded TOC is the blob's own: not ours
    data = index_file(index)
    digest = upload_blob(repo.client, repo.repository, data, digest=_digest(data))
    upload_blob(repo.client, repo.repository, EMPTY_JSON, digest=EMPTY_DIGEST)
    head = data[: parse_header(data).head_end]
    manifest = _native_manifest(
        [_native_blob(layer, index.span_size, data, digest)],
        [base64.b64encode(head).decode("ascii")],
    )
    body = _compact(manifest)
    tag = layer_tag(layer.digest)
    artifact = put_manifest(repo.client, repo.repository, tag, body, OCI_MANIFEST)
    if layer.remote is not None and layer.remote.index_repo is repo:
        layer.remote.forget_index_repo(layer.digest)
    if report:
        report(f"{layer.digest}  native index {digest} ({len(data)} bytes) -> {repo.name}:{tag}")
    return artifact


def publish_to_index_repo(
    img: Image,
    index_repo: str | IndexRepository | None = None,
    *,
    progress: Progress | None = None,
    report: Report | None = None,
    force: bool = False,
) -> list[str]:
    """:func:`publish_layer_index` for every layer of an image (each distinct layer once);
    the artifact digests, one per layer."""
    repo = _index_repository(img.layers[0], index_repo) if img.layers else None
    done: dict[str, str] = {}
    for layer in img.layers:
        key = str(layer.digest)
        if key not in done:
            done[key] = publish_layer_index(
                layer, repo, progress=progress, report=report, force=force
            )
    return [done[str(layer.digest)] for layer in img.layers]


def publish_soci(
    img: Image,
    *,
    span_size: int = SOCI_DEFAULT_SPAN,
    min_layer_size: int = SOCI_MIN_LAYER_SIZE,
    report: Report | None = None,
) -> str:
    """Push a SOCI v1 index (zTOCs + index manifest with ``subject``); return its digest."""
    from .formats.ztoc import encode_ztoc, ztoc_from_blob

    target = _Target(img)
    layers = []
    for layer in img.layers:
        if layer.format == "file":
            if report:
                report(f"{layer.digest}  skipped: a plain file, read directly")
            continue
        if layer.compression not in ("gzip", "none"):
            if report:
                report(f"{layer.digest}  skipped: {layer.compression} (SOCI has no support)")
            continue
        if layer.size < min_layer_size:
            if report:
                report(f"{layer.digest}  skipped: {layer.size} bytes < {min_layer_size}")
            continue
        blob_hash = hashlib.sha256()

        def chunks(source: Any = layer.source, h: Any = blob_hash) -> Any:
            for chunk in source.iter_from(0):
                h.update(chunk)
                yield chunk

        stream = chunks()
        ztoc = ztoc_from_blob(
            stream, span_size, build_tool_identifier=SOCI_BUILD_TOOL, name=f"layer {layer.digest}"
        )
        for _ in stream:  # whatever the builder did not need still counts for the digest
            pass
        if "sha256:" + blob_hash.hexdigest() != layer.digest:
            raise IntegrityError(f"layer {layer.digest}: blob does not match its digest")
        data = encode_ztoc(ztoc)
        digest = target.upload(data)
        if report:
            report(
                f"{layer.digest}  zTOC {digest} ({len(data)} bytes, {ztoc.max_span_id + 1} spans)"
            )
        layers.append(
            {
                "mediaType": ZTOC_MEDIA_TYPE,
                "digest": digest,
                "size": len(data),
                "annotations": {
                    SOCI_ANN_LAYER_DIGEST: str(layer.digest),
                    SOCI_ANN_LAYER_MEDIA_TYPE: layer.media_type,
                    SOCI_ANN_SPAN_SIZE: str(span_size),
                },
            }
        )
    if not layers:
        raise FormatError(
            f"{img.reference}: no layer qualifies for a SOCI index (gzip or tar, at least "
            f"{min_layer_size} bytes)"
        )
    target.upload(EMPTY_JSON)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": SOCI_INDEX_V1, "digest": EMPTY_DIGEST, "size": len(EMPTY_JSON)},
        "layers": layers,
        "subject": target.subject,
        "annotations": {SOCI_ANN_BUILD_TOOL: SOCI_BUILD_TOOL},
    }
    return target.push_referrer(manifest, SOCI_INDEX_V1)
