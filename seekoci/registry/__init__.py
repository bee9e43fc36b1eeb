"""Registries and OCI layouts: references, auth, manifests and blob range reads.

This package knows nothing of layer formats: it turns a reference into one platform's
manifest, config and layer descriptors (:func:`resolve_image`), and a layer descriptor into a
:class:`~seekoci.source.RangeSource` (:meth:`ResolvedImage.blob_source`).

Module map: ``reference`` (parsing), ``platform`` (choosing from an index), ``manifest``
(media types, descriptors), ``digest``, ``transport`` (HTTP, redirects, error mapping),
``credentials`` (Docker config), ``auth`` (challenges, tokens), ``client`` (the distribution
API), ``blobs`` (range sources), ``layout`` (OCI layout directories), ``resolve`` (the walk),
``push`` (blob uploads, manifest PUTs), ``referrers`` (the referrers API and tag schema).
"""

from __future__ import annotations

from .blobs import HTTPRangeSource, RegistryBlobSource, URLSource, open_url_source
from .client import RegistryClient
from .credentials import Credentials
from .manifest import (
    IMAGE_MANIFEST_MEDIA_TYPES,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP,
    MEDIA_TYPE_DOCKER_LAYER_GZIP,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_EMPTY,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_LAYER,
    MEDIA_TYPE_OCI_LAYER_GZIP,
    MEDIA_TYPE_OCI_LAYER_ZSTD,
    MEDIA_TYPE_OCI_MANIFEST,
    Descriptor,
)
from .platform import Platform, host_platform
from .push import blob_exists, put_manifest, upload_blob
from .reference import LayoutReference, Reference, parse_reference
from .referrers import list_referrers, push_referrer, referrers_tag
from .resolve import ResolvedImage, resolve_image

__all__ = [
    "IMAGE_MANIFEST_MEDIA_TYPES",
    "INDEX_MEDIA_TYPES",
    "MANIFEST_MEDIA_TYPES",
    "MEDIA_TYPE_DOCKER_CONFIG",
    "MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP",
    "MEDIA_TYPE_DOCKER_LAYER_GZIP",
    "MEDIA_TYPE_DOCKER_MANIFEST",
    "MEDIA_TYPE_DOCKER_MANIFEST_LIST",
    "MEDIA_TYPE_OCI_CONFIG",
    "MEDIA_TYPE_OCI_EMPTY",
    "MEDIA_TYPE_OCI_INDEX",
    "MEDIA_TYPE_OCI_LAYER",
    "MEDIA_TYPE_OCI_LAYER_GZIP",
    "MEDIA_TYPE_OCI_LAYER_ZSTD",
    "MEDIA_TYPE_OCI_MANIFEST",
    "Credentials",
    "Descriptor",
    "HTTPRangeSource",
    "LayoutReference",
    "Platform",
    "Reference",
    "RegistryBlobSource",
    "RegistryClient",
    "ResolvedImage",
    "URLSource",
    "blob_exists",
    "host_platform",
    "list_referrers",
    "open_url_source",
    "parse_reference",
    "push_referrer",
    "put_manifest",
    "referrers_tag",
    "resolve_image",
    "upload_blob",
]
