"""Pickling images and layers (Dask, multiprocessing): what travels is how to open them again.

An :class:`~seekoci.Image` pickles as the arguments it was opened with, its reference pinned
to the platform manifest's digest (``REGISTRY/REPO@sha256:…``, ``oci:PATH@sha256:…``); the
process that unpickles it opens it again -- a manifest and a config fetch -- and so reads
exactly the bytes the first one did, even if the tag has moved since. A
:class:`~seekoci.Layer` pickles as its image's arguments plus its digest (a layer of
:func:`~seekoci.open_layer` as its path or URL and the arguments given). Nothing fetched or
indexed in memory travels: the other process finds indexes where any reader does (its
cache directory, the registry, an index repository).

Credentials given explicitly (``auth=``, or user info in a layer URL) travel inside the
pickle, or the other process could not open the image; ``auth=None`` means each process
reads its own Docker config. They never appear in a ``repr`` (docs/pickling.md).
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .image import Image
    from .layer import Layer


class Secret:
    """A value that pickles as itself but never shows in a ``repr`` (credentials)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "Secret(<hidden>)" if self.value is not None else "Secret(None)"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Secret, (self.value,))


@dataclass(frozen=True)
class ImageOrigin:
    """How to open an image again: ``open_image(pinned, auth=…, **options)``."""

    pinned: str
    #: what ``img.reference`` said (the tag the user asked for), restored after the re-open
    reference: str
    digest: str
    #: what ``img.platform`` said: the pinned manifest is opened as it is (no platform
    #: asked for), since an index entry may name a variant its config does not repeat
    platform: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    auth: Secret = field(default_factory=lambda: Secret(None))


@dataclass(frozen=True)
class LayerOrigin:
    """How to open a layer again: within an image (``image``) or from ``source`` alone."""

    digest: str | None
    image: ImageOrigin | None = None
    #: an ``open_layer`` source: an absolute path or a URL (its user info hidden in the repr)
    source: Secret = field(default_factory=lambda: Secret(None))
    options: dict[str, Any] = field(default_factory=dict)


def pinned_reference(resolved: Any) -> str:
    """The reference of exactly this platform manifest, whatever tag it was reached by."""
    from .registry.reference import LayoutReference, Reference
    from .registry.resolve import RegistryStore

    store = resolved.store
    ref = store.reference
    if isinstance(store, RegistryStore):
        assert isinstance(ref, Reference)
        return str(Reference(ref.registry, ref.repository, None, resolved.digest))
    assert isinstance(ref, LayoutReference)
    return str(LayoutReference(ref.path, None, resolved.digest))


def image_origin(
    resolved: Any, *, auth: tuple[str, str] | None, options: dict[str, Any]
) -> ImageOrigin:
    options = {**options, "platform": None}
    cache_dir = options.get("cache_dir")
    if isinstance(cache_dir, os.PathLike):
        options["cache_dir"] = os.fspath(cache_dir)
    return ImageOrigin(
        pinned=pinned_reference(resolved),
        reference=resolved.reference,
        digest=resolved.digest,
        platform=resolved.platform,
        options=options,
        auth=Secret(auth),
    )


#: Images re-opened from an origin object still alive, by the origin's id: within one
#: unpickling, an image and its layers (or several layers of one image) share one origin
#: object (pickle's memo), so they come back as one image opened once, not one per layer.
#: Weak: an entry lives only as long as its image (which holds its origin, so the id
#: cannot be reused meanwhile).
_reopened: weakref.WeakValueDictionary[int, Image] = weakref.WeakValueDictionary()
_reopened_lock = threading.Lock()


def reopen_image(origin: ImageOrigin) -> Image:
    """Unpickling an Image: open it again from its pinned reference."""
    from . import open_image
    from .errors import IntegrityError

    with _reopened_lock:
        known = _reopened.get(id(origin))
    if known is not None and known.origin is origin:
        return known
    img = open_image(origin.pinned, auth=origin.auth.value, **origin.options)  # not locked
    if img.digest != origin.digest:  # a pinned reference is verified on the way: cannot happen
        raise IntegrityError(f"{origin.pinned}: re-opened as {img.digest}")
    img.reference = origin.reference
    img.platform = origin.platform or img.platform
    img.origin = origin
    for layer in img.layers:
        layer.origin = LayerOrigin(digest=layer.digest, image=origin)
    with _reopened_lock:
        known = _reopened.get(id(origin))
        if known is not None and known.origin is origin:
            return known  # another thread re-opened it meanwhile: one image
        _reopened[id(origin)] = img
    return img


def reopen_layer(origin: LayerOrigin) -> Layer:
    """Unpickling a Layer: its image opened again and the layer of that digest, or its
    ``open_layer`` source opened again."""
    from . import open_layer

    if origin.image is not None:
        img = reopen_image(origin.image)
        for layer in img.layers:
            if layer.digest == origin.digest:
                return layer
        from .errors import FormatError

        raise FormatError(f"{origin.image.pinned}: has no layer {origin.digest}")
    return open_layer(origin.source.value, digest=origin.digest, **origin.options)


def reduce_image(img: Image) -> tuple[Any, ...]:
    origin = img.origin
    if origin is None:
        raise TypeError(
            f"cannot pickle {img!r}: only images from seekoci.open_image() can be opened again"
        )
    return (reopen_image, (origin,))


def reduce_layer(layer: Layer) -> tuple[Any, ...]:
    origin = layer.origin
    if origin is None:
        raise TypeError(
            f"cannot pickle {layer!r}: only layers of open_image() images and layers opened "
            "by open_layer() from a path or URL can be opened again"
        )
    return (reopen_layer, (origin,))
