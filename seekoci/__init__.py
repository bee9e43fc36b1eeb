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
from typing import TYPE_CHECKING, Any

from .artifact import make_layer
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
    TensorNotFoundError,
)
from .image import Image
from .layer import DEFAULT_SPAN_SIZE, Layer
from .source import FileSource, RangeSource

if TYPE_CHECKING:
    from .fileinfo import FileInfo

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
    "TensorNotFoundError",
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
    index_repo: str | None = None,
) -> Image:
    """Open an image in a registry (``[REGISTRY/]REPO[:TAG][@DIGEST]``) or an OCI layout
    directory (``oci:PATH[:TAG|@DIGEST]``). Only the manifest and config are fetched now;
    layers are indexed and read on demand.

    ``index_repo``: a repository ``REGISTRY/REPO`` holding indexes of layers published with
    ``seekoci index REF --push --to REGISTRY/REPO`` (for images you cannot push to), looked
    up by layer digest after the image's own published indexes; default
    ``$SEEKOCI_INDEX_REPO``, else none (docs/publishing.md).

    ``timeout``: seconds one request may wait for the next byte (default
    ``$SEEKOCI_TIMEOUT``, else 30); ``retries``: attempts after the first for one request
    (default ``$SEEKOCI_RETRIES``, else 5). See docs/reliability.md."""
    from .registry import resolve_image

    options: dict[str, Any] = {
        "platform": platform,
        "cache_dir": cache_dir,
        "insecure": insecure,
        "span_size": span_size,
        "index_repo": index_repo,
        "timeout": timeout,
        "retries": retries,
    }
    cache = open_cache(cache_dir)
    found: list[Any] = []

    def on_manifest(store: Any, digest: str, manifest: dict[str, Any]) -> None:
        # published indexes are looked for while the config is fetched (not after)
        remote = _remote_indexes(store, digest, manifest, cache, index_repo, insecure=insecure)
        if remote is not None:
            remote.start()
        found.append(remote)

    resolved = resolve_image(
        ref,
        platform=platform,
        auth=auth,
        insecure=insecure,
        blobs=cache.content_store(),
        on_manifest=on_manifest,
        timeout=timeout,
        retries=retries,
    )
    remote = found[-1] if found else None
    layers = [
        make_layer(
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
    # imported once the image is resolved: a first read's discovery of published indexes
    # (started by on_manifest) is on the wire meanwhile
    from ._reopen import LayerOrigin, image_origin

    image.origin = image_origin(resolved, auth=auth, options=options)
    for layer in layers:
        layer.origin = LayerOrigin(digest=layer.digest, image=image.origin)
    return image


def _remote_indexes(
    store: Any,
    digest: str,
    manifest: dict[str, Any],
    cache: Any,
    index_repo: str | None,
    *,
    insecure: bool | None,
) -> Any:
    """Published indexes live next to an image in a registry (not a layout), or in an
    index repository (for any image)."""
    from .indexrepo import IndexRepository, index_repo_from_env
    from .registry.resolve import RegistryStore
    from .remote import RemoteIndexes

    name = index_repo if index_repo is not None else index_repo_from_env()
    repo = IndexRepository.for_store(name, store, insecure=insecure) if name else None
    in_registry = isinstance(store, RegistryStore)
    if not in_registry and repo is None:
        return None
    reference = str(store.reference) if in_registry else digest
    return RemoteIndexes(
        store,
        digest=digest,
        manifest=manifest,
        reference=reference,
        cache=cache,
        index_repo=repo,
        in_registry=in_registry,
    )


def open_layer(
    source: str | os.PathLike[str] | RangeSource,
    *,
    media_type: str | None = None,
    digest: str | None = None,
    cache_dir: CacheDir = None,
    span_size: int = DEFAULT_SPAN_SIZE,
    gzidx: str | os.PathLike[str] | bytes | None = None,
) -> Layer:
    """Open one layer blob: a local path, an ``http(s)://`` URL served with Range support,
    or any :class:`RangeSource`. Without ``digest`` nothing is verified against a layer
    digest and the index stays in memory (it is saved only for a digest that verified).
    The format (gzip, zstd, tar; eStargz, zstd:chunked) is detected from the bytes.

    ``gzidx``: a GZIDX checkpoint index of the blob (indexed_gzip, rapidgzip, ratarmount; a
    path or its bytes) to read the layer through: checked against the blob by one pass now
    (:func:`seekoci.gzidx.import_gzidx`)."""
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
    layer = make_layer(  # a media type that names no tar (a GGUF, a raw weight) is a plain file
        src,
        cache=open_cache(cache_dir),
        digest=digest,
        media_type=media_type,
        size=None,
        annotations=None,
        span_size=span_size,
    )
    if isinstance(source, (str, os.PathLike)):  # a RangeSource object cannot be reopened
        from ._reopen import LayerOrigin, Secret

        text = os.fspath(source)
        where = text if text.startswith(("http://", "https://")) else os.path.abspath(text)
        layer.origin = LayerOrigin(
            digest=digest,
            source=Secret(where),
            options={
                "media_type": media_type,
                "cache_dir": os.fspath(cache_dir)
                if isinstance(cache_dir, os.PathLike)
                else cache_dir,
                "span_size": span_size,
            },
        )
    if gzidx is not None:
        from .gzidx import import_gzidx

        if not isinstance(gzidx, bytes):
            with open(gzidx, "rb") as f:
                gzidx = f.read()
        import_gzidx(layer, gzidx)
    return layer


#: Submodules that are part of the interface (imported on first use: ``seekoci.models``).
_PUBLIC_MODULES = ("insight", "models", "soci")


def __getattr__(name: str) -> object:
    if name == "FileInfo":  # what stat() gives: its module loads with the first stat()
        from .fileinfo import FileInfo

        return FileInfo
    if name in _PUBLIC_MODULES:
        import importlib

        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """``dir(seekoci)``: the public names, the public submodules and the module's dunders,
    not the imports and helpers it needs for itself (``os``, ``Any``, ``annotations``, its
    private modules)."""
    from importlib.util import find_spec

    modules = {m for m in _PUBLIC_MODULES if find_spec(f"{__name__}.{m}") is not None}
    dunders = {n for n in globals() if n.startswith("__") and n.endswith("__")}
    return sorted({*__all__, *modules, *dunders})
