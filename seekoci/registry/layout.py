"""OCI image layout directories (``oci:PATH[:TAG|@DIGEST]``), read like a registry.

A layout is ``oci-layout`` (a version marker), ``index.json`` (the entry points, tagged with the
``org.opencontainers.image.ref.name`` annotation) and content-addressed ``blobs/<alg>/<hex>``.
Every manifest and config read from it is verified against its digest, exactly as from a
registry: a layout copied around by hand is no more trustworthy than the network.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .. import _json
from ..errors import FormatError, ImageNotFoundError, IntegrityError
from ..source import FileSource
from .digest import digest_problem, verify_digest
from .manifest import (
    MAX_MANIFEST_SIZE,
    MEDIA_TYPE_OCI_INDEX,
    Descriptor,
    ManifestDocument,
    parse_manifest,
)
from .reference import DEFAULT_TAG, LayoutReference

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"


class LayoutStore:
    """Manifests and blobs of one OCI image layout directory."""

    def __init__(self, reference: LayoutReference) -> None:
        self.reference = reference
        self.path = reference.path
        where = str(reference)
        if not os.path.isdir(self.path):
            raise ImageNotFoundError(f"{where}: no such OCI layout directory")
        marker = self._read_json(
            os.path.join(self.path, "oci-layout"), where=where, missing_ok=True
        )
        if marker is None:
            raise ImageNotFoundError(f"{where}: not an OCI image layout (no oci-layout file)")
        version = marker.get("imageLayoutVersion")
        if not isinstance(version, str) or not version.startswith("1."):
            raise FormatError(f"{where}: unsupported imageLayoutVersion {version!r}")
        index = self._read_json(os.path.join(self.path, "index.json"), where=where)
        assert index is not None
        raw = index.get("manifests")
        if not isinstance(raw, list):
            raise FormatError(f"{where}: index.json has no manifests list")
        self._raw_entries: list[Any] = raw
        self.entries = [Descriptor.from_json(item, where=f"{where} index.json") for item in raw]

    def __repr__(self) -> str:
        return f"LayoutStore({self.path!r})"

    @staticmethod
    def _read_json(path: str, *, where: str, missing_ok: bool = False) -> dict[str, Any] | None:
        try:
            with open(path, "rb") as handle:
                data = _json.loads(handle.read(MAX_MANIFEST_SIZE + 1))
        except FileNotFoundError:
            if missing_ok:
                return None
            raise FormatError(f"{where}: layout has no {os.path.basename(path)}") from None
        except (OSError, ValueError) as exc:
            raise FormatError(f"{where}: cannot read {os.path.basename(path)}") from exc
        if not isinstance(data, dict):
            raise FormatError(f"{where}: {os.path.basename(path)} is not a JSON object")
        return data

    # -- entry points -----------------------------------------------------------------------

    def root(self) -> tuple[ManifestDocument, str]:
        """The document the reference points at, and the canonical reference to report.

        No tag and no digest: the only manifest if there is exactly one, else ``latest``.
        Several entries sharing a tag (one per platform, as some tools write them) are read as
        an index of those entries.
        """
        ref = self.reference
        if ref.digest is not None:
            hint = next((e.media_type for e in self.entries if e.digest == ref.digest), None)
            return self._document(ref.digest, hint, where=str(ref)), str(ref)
        tag = ref.tag
        if tag is None and len(self.entries) == 1:
            entry = self.entries[0]
            name = entry.annotations.get(REF_NAME_ANNOTATION)
            shown = LayoutReference(self.path, name, None) if name and "/" not in name else None
            shown = shown or LayoutReference(self.path, None, entry.digest)
            return self.child(entry, where=str(shown)), str(shown)
        tag = tag or DEFAULT_TAG
        where = str(LayoutReference(self.path, tag, None))
        picked = self._tagged(tag)
        if not picked:
            tags = sorted({e.annotations.get(REF_NAME_ANNOTATION, "") for e in self.entries} - {""})
            listing = ", ".join(tags) if tags else "none"
            raise ImageNotFoundError(f"{where}: no manifest tagged {tag!r} (tags: {listing})")
        if len(picked) == 1:
            return self.child(self.entries[picked[0]], where=where), where
        synthetic = {"manifests": [self._raw_entries[i] for i in picked]}
        return ManifestDocument(MEDIA_TYPE_OCI_INDEX, synthetic, None), where

    def _tagged(self, tag: str) -> list[int]:
        """Positions of the entries carrying ``tag``.

        Exact ``ref.name`` first; else a full reference ending in ``:tag`` (containerd and
        some exporters store ``docker.io/library/alpine:3.19`` there).
        """
        names = [e.annotations.get(REF_NAME_ANNOTATION) for e in self.entries]
        exact = [i for i, name in enumerate(names) if name == tag]
        if exact:
            return exact
        return [
            i
            for i, name in enumerate(names)
            if name and name.endswith(f":{tag}") and "/" not in name.rsplit(":", 1)[1]
        ]

    def child(self, entry: Descriptor, *, where: str) -> ManifestDocument:
        """The manifest or index an index entry points to."""
        return self._document(entry.digest, entry.media_type or None, where=where)

    def _document(self, digest: str, hint: str | None, *, where: str) -> ManifestDocument:
        body = self._read_blob(digest, where=where, limit=MAX_MANIFEST_SIZE)
        if len(body) > MAX_MANIFEST_SIZE:
            raise FormatError(
                f"{where}: manifest {digest} is larger than {MAX_MANIFEST_SIZE} bytes"
            )
        verify_digest(body, digest, what=where)
        return parse_manifest(body, media_type_hint=hint, digest=digest, where=where)

    # -- blobs ------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> str:
        """``PATH/blobs/<alg>/<hex>``; the digest is validated first, so no path escapes."""
        problem = digest_problem(digest)
        if problem is not None:
            raise FormatError(f"{self.reference}: bad blob digest {digest!r}: {problem}")
        algorithm, encoded = digest.split(":", 1)
        return os.path.join(self.path, "blobs", algorithm, encoded)

    def _read_blob(self, digest: str, *, where: str, limit: int) -> bytes:
        """Up to ``limit + 1`` bytes of a blob, so callers can tell "too long" from "exact"."""
        path = self.blob_path(digest)
        try:
            with open(path, "rb") as handle:
                data = handle.read(limit + 1)
        except FileNotFoundError:
            raise ImageNotFoundError(f"{where}: blob {digest} missing from the layout") from None
        except OSError as exc:
            raise FormatError(f"{where}: cannot read blob {digest}: {exc.strerror}") from exc
        return data

    def fetch_blob(
        self, descriptor: Descriptor, *, use: Callable[[bytes], object] | None = None
    ) -> bytes:
        """A whole (small) blob, verified against its descriptor, then ``use(blob)``."""
        where = f"{self.reference} blob {descriptor.digest}"
        data = self._read_blob(descriptor.digest, where=where, limit=descriptor.size)
        if len(data) != descriptor.size:
            raise IntegrityError(
                f"{where}: has {len(data)} bytes, descriptor says {descriptor.size}"
            )
        verify_digest(data, descriptor.digest, what=where)
        if use is not None:
            use(data)
        return data

    def blob_source(self, descriptor: Descriptor) -> FileSource:
        """The blob file as a range source (``pread``; thread-safe)."""
        path = self.blob_path(descriptor.digest)
        try:
            source = FileSource(path, name=descriptor.digest)
        except FileNotFoundError:
            raise ImageNotFoundError(
                f"{self.reference}: blob {descriptor.digest} missing from the layout"
            ) from None
        if source.size != descriptor.size:
            source.close()
            raise IntegrityError(
                f"{self.reference} blob {descriptor.digest}: file has {source.size} bytes, "
                f"descriptor says {descriptor.size}"
            )
        return source

    def close(self) -> None:
        """Nothing to release: every blob source owns its own file descriptor."""
