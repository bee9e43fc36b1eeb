"""seekoci: read single files out of container images in a registry without pulling them.

>>> import seekoci
>>> img = seekoci.open_image("python:3.12-slim")            # doctest: +SKIP
>>> img.read_bytes("/etc/os-release")                          # doctest: +SKIP

Only the compressed bytes around the file travel: a layer's index (tar table of contents
and decompressor checkpoints) is built once, kept in the cache directory, and then every
read is a range request of about one span, verified against that span's digest.
"""

from __future__ import annotations

import os
from typing import Any

from .cache import open_cache
from .errors import (
    AuthenticationError,
    FormatError,
    ImageNotFoundError,
    IntegrityError,
    InvalidReferenceError,
    PlatformNotFoundError,
    RegistryError,
    SeekociError,
)
from .fileinfo import FileInfo
from .image import Image
from .layer import DEFAULT_SPAN_SIZE, Layer
from .source import FileSource, RangeSource

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_SPAN_SIZE",
    "AuthenticationError",
    "FileInfo",
    "FormatError",
    "Image",
    "ImageNotFoundError",
    "IntegrityError",
    "InvalidReferenceError",
    "Layer",
    "PlatformNotFoundError",
    "RangeSource",
    "RegistryError",
    "SeekociError",
    "__version__",
    "open_image",
    "open_layer",
]

CacheDir = str | os.PathLike[str] | bool | None


def open_image(
    ref: str,
    *,
    platform: str | None = None,
    auth: tuple[str, str] | None = None,
    cache_dir: CacheDir = None,
    insecure: bool | None = None,
    span_size: int = DEFAULT_SPAN_SIZE,
    timeout: float | None = None,
    retries: int | None = None,
) -> Image:
    """Open an image in a registry (``[REGISTRY/]REPO[:TAG][@DIGEST]``) or an OCI layout
    directory (``oci:PATH[:TAG|@DIGEST]``). Only the manifest and config are fetched now;
    layers are indexed and read on demand.

    ``timeout``: seconds one request may wait for the next byte (default
    ``$SEEKOCI_TIMEOUT``, else 30); ``retries``: attempts after the first for one request
    (default ``$SEEKOCI_RETRIES``, else 5). See docs/reliability.md."""
    from .registry import resolve_image

    resolved = resolve_image(
        ref, platform=platform, auth=auth, insecure=insecure, timeout=timeout, retries=retries
    )
    cache = open_cache(cache_dir)
    remote = _remote_indexes(resolved, cache)
    layers = [
        Layer(
            resolved.blob_source(desc),
            cache=cache,
            digest=desc.digest,
            media_type=desc.media_type,
            size=desc.size,
            annotations=desc.annotations,
            span_size=span_size,
        )
        for desc in resolved.layers
    ]
    for layer in layers:
        layer.remote = remote
    image = Image(
        reference=resolved.reference,
        digest=resolved.digest,
        platform=resolved.platform,
        config=resolved.config,
        manifest=resolved.manifest,
        layers=layers,
    )
    image.resolved = resolved
    return image


def _remote_indexes(resolved: Any, cache: Any) -> Any:
    """Published indexes can only live next to an image in a registry (not a layout)."""
    from .registry.resolve import RegistryStore
    from .remote import RemoteIndexes

    return RemoteIndexes(resolved, cache) if isinstance(resolved.store, RegistryStore) else None


def open_layer(
    source: str | os.PathLike[str] | RangeSource,
    *,
    media_type: str | None = None,
    digest: str | None = None,
    cache_dir: CacheDir = None,
    span_size: int = DEFAULT_SPAN_SIZE,
) -> Layer:
    """Open one layer blob: a local path, an ``http(s)://`` URL served with Range support,
    or any :class:`RangeSource`. Without ``digest`` nothing is verified against a layer
    digest and the index stays in memory (it is saved only for a digest that verified)."""
    src: RangeSource
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        from .registry import open_url_source

        src = open_url_source(source)
    elif isinstance(source, (str, os.PathLike)):
        try:
            src = FileSource(source)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise FormatError(f"cannot read layer {os.fspath(source)!r}: {exc}") from exc
    else:
        src = source
    return Layer(
        src,
        cache=open_cache(cache_dir),
        digest=digest,
        media_type=media_type,
        span_size=span_size,
    )
