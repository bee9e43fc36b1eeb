"""Layers that are plain files, not tars: ORAS pushes, Docker model artifacts, ModelPack.

An OCI artifact may carry its files as the layer blobs themselves: ``oras push r/m:1
model.gguf`` uploads the file's bytes unchanged, names it in the layer's
``org.opencontainers.image.title`` annotation, and (ORAS's default) still calls it
``application/vnd.oci.image.layer.v1.tar``; Docker model artifacts use
``application/vnd.docker.ai.gguf.v3`` and friends; CNCF ModelPack
``application/vnd.cncf.model.weight.v1.raw``. Such a layer shows in the image as one regular
file at the root, ``/TITLE``, read with direct range reads of the blob (no index: the blob
*is* the file). Tar layers of the same artifact merge as usual.

Which layers are files (:func:`is_file_layer`), decided from the manifest alone:

* a title annotation without ORAS's ``io.deis.oras.content.unpack`` (which marks a directory
  pushed as a tar+gzip to be unpacked): a file, whatever the media type says, as ``oras
  pull`` would write it;
* else a media type that does not name a tar (``...tar``, ``...tar+gzip``, ``...tar+zstd``,
  Docker's ``tar.gzip``; an empty one is sniffed as before): a file, named by its
  ``org.cncf.model.filepath`` annotation or else by its digest.

Verification: the layer digest covers the whole blob, so a read of the whole file (and every
read of a blob up to :data:`WHOLE_BLOB_LIMIT`, fetched whole once) is checked against it; a
range read of part of a larger blob cannot be checked on its own and is served as the
registry sent it (over TLS for remote registries); a file object read from start to end in
pieces is checked when its last piece arrives (that piece raises instead). That is what
makes "read the 2 KB header of a 10 GB GGUF" cost 64 KiB.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .build import Tee
from .cache import Cache
from .errors import IntegrityError
from .fileobj import RangeFile
from .formats.index import LayerIndex
from .formats.tar import TarEntry, normalize_name
from .layer import DEFAULT_SPAN_SIZE, Layer, Progress
from .source import RangeSource
from .tree import Tree

if TYPE_CHECKING:
    from .fileinfo import FileInfo

TITLE = "org.opencontainers.image.title"
CREATED = "org.opencontainers.image.created"
MODELPACK_FILEPATH = "org.cncf.model.filepath"
ORAS_UNPACK = "io.deis.oras.content.unpack"
#: Blobs up to this size are fetched whole on first read and verified against their digest.
WHOLE_BLOB_LIMIT = 1 << 20


#: "tar" as a word of a media type: ``...v1.tar``, ``...tar+gzip``, ``...tar.gzip``,
#: ``application/x-tar``, ModelPack's ``...weight.v1.tar+zstd``, Helm's ``...content.v1.tar+gzip``
_TAR_WORD = re.compile(r"(?:^|[./+-])tar(?:$|[.+])")


def _names_a_tar(media_type: str) -> bool:
    return _TAR_WORD.search(media_type.lower().split(";", 1)[0].strip()) is not None


def is_file_layer(media_type: str, annotations: Mapping[str, str]) -> bool:
    """Whether a layer descriptor is a plain file rather than a tar (see the module doc)."""
    if annotations.get(TITLE) and annotations.get(ORAS_UNPACK, "").lower() != "true":
        return True
    return bool(media_type) and not _names_a_tar(media_type)


def file_name(digest: str, annotations: Mapping[str, str]) -> str:
    """The path (without its leading ``/``) a file layer shows at: its title, else its
    ModelPack file path, else its digest. Empty, ``.`` and ``..`` components are dropped, so
    a hostile title cannot climb out of the image root."""
    for key in (TITLE, MODELPACK_FILEPATH):
        parts = [p for p in annotations.get(key, "").split("/") if p not in ("", ".", "..")]
        if parts:
            return "/".join(parts)
    return digest


def _created(annotations: Mapping[str, str]) -> float:
    text = annotations.get(CREATED, "")
    try:
        return _dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else 0.0
    except ValueError:
        return 0.0


class FileLayer(Layer):
    """A layer blob that is one regular file, with the reading surface of :class:`Layer`
    (``find``, ``entries``, ``open``, ``stat``, ``listdir``, ``walk``, ``read_range``)."""

    def __init__(
        self,
        source: RangeSource,
        *,
        cache: Cache,
        digest: str | None = None,
        media_type: str | None = None,
        size: int | None = None,
        annotations: dict[str, str] | None = None,
        span_size: int = DEFAULT_SPAN_SIZE,
    ) -> None:
        super().__init__(
            source,
            cache=cache,
            digest=digest,
            media_type=media_type,
            size=size,
            annotations=annotations,
            span_size=span_size,
        )
        self.file_name = file_name(digest or source.name, self.annotations)
        self.entry = TarEntry(
            self.file_name, "file", self.size, 0o644, 0, 0, _created(self.annotations)
        )
        self._whole: bytes | None = None
        self._whole_lock = threading.Lock()

    # -- identity: nothing to detect, nothing to index ----------------------------------------
    @property
    def compression(self) -> str:
        return "none"

    @property
    def media_type(self) -> str:
        return self._declared_media_type or "application/octet-stream"

    @property
    def format(self) -> str:
        return "file"

    @property
    def index_status(self) -> str:
        """``direct``: read straight from the blob, no index needed."""
        return "direct"

    def published_indexes(self) -> list[str]:
        return []

    @property
    def uncompressed_size(self) -> int:
        return self.size

    @property
    def random_access(self) -> bool:
        return True

    def index(self, progress: Progress | None = None, *, tee: Tee | None = None) -> LayerIndex:
        """A trivial index (one entry, no spans): the blob is its own file."""
        return LayerIndex(
            layer_digest=self.digest or self.name,
            media_type=self.media_type,
            compression="none",
            blob_size=self.size,
            uncompressed_size=self.size,
            span_size=self.span_size,
            spans=[],
            entries=[self.entry],
        )

    def build_index(self, progress: Progress | None = None) -> None:
        return None

    # -- lookups -------------------------------------------------------------------------------
    def find(self, name: str, *, stop: threading.Event | None = None) -> TarEntry | None:
        return self.entry if normalize_name(name) == self.file_name else None

    def complete(self) -> bool:
        return True

    def entries(self) -> Sequence[TarEntry]:
        return [self.entry]

    def tree(self) -> Tree:
        with self._lock:
            if self._tree is None:
                self._tree = Tree.from_entries([self.entry], layer=self.digest or self.name)
            return self._tree

    def open_entry(self, entry: TarEntry, name: str | None = None) -> RangeFile:
        return _SequentiallyVerifiedFile(self, name or "/" + self.file_name)

    def open(self, path: str) -> RangeFile:
        if normalize_name(path) != self.file_name:
            node = self.tree().lookup(path)
            if node is not None and node.is_dir:
                raise IsADirectoryError(errno.EISDIR, f"Is a directory (layer {self.name})", path)
            raise FileNotFoundError(errno.ENOENT, f"No such file in layer {self.name}", path)
        return self.open_entry(self.entry, "/" + self.file_name)

    def stat(self, path: str) -> FileInfo:
        from .fileinfo import FileInfo, entry_info

        node = self.tree().lookup(path)
        if node is None:
            raise FileNotFoundError(errno.ENOENT, f"No such file in layer {self.name}", path)
        if node.entry is None:
            return FileInfo(
                path="/" + normalize_name(path), type="dir", size=0, mode=0o755, mtime=0.0,
                uid=0, gid=0, layer=self.digest or self.name,
            )  # fmt: skip
        return entry_info(node.entry, "/" + normalize_name(path), self.digest or self.name)

    def listdir(self, path: str = "/") -> list[str]:
        return self.tree().listdir(path)

    def walk(self, top: str = "/") -> Iterator[tuple[str, list[str], list[str]]]:
        return self.tree().walk(top)

    # -- bytes ---------------------------------------------------------------------------------
    def read_range(self, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of the blob (= the file)."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be non-negative")
        length = max(0, min(length, self.size - offset))
        if length == 0:
            return b""
        if self.size <= WHOLE_BLOB_LIMIT or (offset == 0 and length == self.size):
            whole = self._verified_whole()
            return whole[offset : offset + length]
        return self.source.read_range(offset, length)

    def _verified_whole(self) -> bytes:
        with self._whole_lock:
            if self._whole is not None:
                return self._whole
        data = self._fetch_verified()
        if self.size <= WHOLE_BLOB_LIMIT:
            with self._whole_lock:
                self._whole = data
        return data

    def _fetch_verified(self) -> bytes:
        if self.digest is None:
            return self.source.read_range(0, self.size)
        algo, _, want = self.digest.partition(":")
        for _attempt in range(2):  # one refetch, as for a span
            data = self.source.read_range(0, self.size)
            try:
                actual = hashlib.new(algo, data).hexdigest()
            except ValueError:  # an algorithm hashlib does not know: nothing to check with
                return data
            if actual == want and len(data) == self.size:
                return data
        raise IntegrityError(
            f"layer {self.digest} (file {self.file_name!r}): blob does not match its digest "
            f"(got {algo}:{actual}) after a refetch"
        )

    def __repr__(self) -> str:
        return f"<seekoci.FileLayer {self.name} /{self.file_name} size={self.size}>"


class _SequentiallyVerifiedFile(RangeFile):
    """A plain-file layer's file object that also checks a read from start to end in pieces
    (``seekoci get``, ``shutil.copyfileobj``) against the layer digest: the piece that
    completes the file raises :class:`IntegrityError` instead of being returned if the whole
    does not match. A seek elsewhere ends the check (that reader reads ranges)."""

    def __init__(self, layer: FileLayer, name: str) -> None:
        super().__init__(layer.read_range, 0, layer.size, name)
        self._layer = layer
        algo, _, self._want = (layer.digest or "").partition(":")
        self._hasher: Any = None
        if layer.size > WHOLE_BLOB_LIMIT and algo in hashlib.algorithms_available:
            self._hasher = hashlib.new(algo)
        self._hashed = 0
        # one reader at a time per file object, as RangeFile's own lock already makes it
        self._check_lock = threading.Lock()

    def read(self, size: int | None = -1) -> bytes:
        with self._check_lock:
            start = self.tell()
            data = super().read(size)
            if self._hasher is None or not data:
                return data
            if start != self._hashed:
                self._hasher = None  # not a sequential read: nothing to check
                return data
            self._hasher.update(data)
            self._hashed += len(data)
            if self._hashed == self.size and self._hasher.hexdigest() != self._want:
                self._hasher = None
                raise IntegrityError(
                    f"layer {self._layer.digest} (file {self._layer.file_name!r}): the bytes "
                    "read do not match the layer digest"
                )
            return data


def make_layer(
    source: RangeSource,
    *,
    cache: Cache,
    digest: str | None,
    media_type: str | None,
    size: int | None,
    annotations: dict[str, str] | None,
    span_size: int = DEFAULT_SPAN_SIZE,
) -> Layer:
    """A :class:`FileLayer` for a plain-file layer descriptor, else a tar :class:`Layer`."""
    cls = FileLayer if is_file_layer(media_type or "", annotations or {}) else Layer
    return cls(
        source,
        cache=cache,
        digest=digest,
        media_type=media_type,
        size=size,
        annotations=annotations,
        span_size=span_size,
    )
