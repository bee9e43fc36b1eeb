"""Declarative container layers and images for tests.

Test data is declared, never hand-built inline::

    base = layer(
        dir("etc"),
        file("etc/passwd", b"root:x:0:0::/root:/bin/sh\\n"),
        symlink("bin", "usr/bin"),
    )
    upper = layer(whiteout("etc/passwd"), opaque("var/cache"), producer="pigz")
    img = image(base, upper, arch="arm64", variant="v8")
    idx = index(img, image(base, arch="amd64"))

Entry names are written into the tar exactly as given (no leading ``/`` is stripped, no
``..`` is cleaned), so hostile layers can be declared too. Everything is deterministic: the
same declaration gives the same bytes, hence the same digests, on every run (except the
``pigz`` and ``gzip`` producers, whose output depends on the installed program's version).

Producers (how a layer's tar is compressed): ``python`` (the gzip module), ``gzip`` (the
``gzip`` program), ``pigz`` (``pigz -p 2``: one member made of independently flushed blocks),
``multi-member`` (the tar cut at arbitrary points, each piece its own gzip member),
``fname`` (one member whose header carries FEXTRA, FNAME and FCOMMENT, written here by hand),
``zstd`` (the zstandard package) and ``none`` (the plain tar).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import itertools
import json
import os
import random
import struct
import subprocess
import tarfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: 2023-11-14T22:13:20Z: a fixed default so that layers are reproducible.
DEFAULT_MTIME = 1_700_000_000

PRODUCERS = ("python", "gzip", "pigz", "multi-member", "fname", "zstd", "none")
GZIP_PRODUCERS = ("python", "gzip", "pigz", "multi-member", "fname")
TAR_FORMATS = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT, "ustar": tarfile.USTAR_FORMAT}

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"

_TAR_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def random_bytes(seed: int | str, size: int) -> bytes:
    """``size`` incompressible bytes, the same for the same seed."""
    return random.Random(seed).randbytes(size)


def text_bytes(seed: int | str, size: int) -> bytes:
    """``size`` bytes of compressible (about 3:1) but never repeating text."""
    rnd = random.Random(seed)
    words = [rnd.randbytes(rnd.randint(1, 6)).hex().encode() for _ in range(4096)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rnd.choices(words, k=64)) + b"\n"
    return bytes(out[:size])


# --------------------------------------------------------------------------- entries


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tar member, as declared."""

    name: str
    type: str
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: float = DEFAULT_MTIME
    linkname: str = ""
    xattrs: Mapping[str, bytes] | None = None
    devmajor: int = 0
    devminor: int = 0
    uname: str = ""
    gname: str = ""

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def path(self) -> str:
        """The absolute path inside the image for a well-behaved name (``a/b/`` → ``/a/b``)."""
        return "/" + self.name.strip("/")


def file(
    name: str,
    data: bytes = b"",
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: float = DEFAULT_MTIME,
    xattrs: Mapping[str, bytes] | None = None,
) -> Entry:
    return Entry(name, "file", bytes(data), mode, uid, gid, mtime, xattrs=xattrs)


def dir(  # shadows the builtin on purpose: the declarative name reads best
    name: str,
    mode: int = 0o755,
    uid: int = 0,
    gid: int = 0,
    mtime: float = DEFAULT_MTIME,
    xattrs: Mapping[str, bytes] | None = None,
) -> Entry:
    return Entry(name, "dir", b"", mode, uid, gid, mtime, xattrs=xattrs)


def symlink(
    name: str, target: str, uid: int = 0, gid: int = 0, mtime: float = DEFAULT_MTIME
) -> Entry:
    return Entry(name, "symlink", b"", 0o777, uid, gid, mtime, linkname=target)


def hardlink(name: str, target: str, mode: int = 0o644, mtime: float = DEFAULT_MTIME) -> Entry:
    """A tar hard link; ``target`` is the tar name of an earlier member."""
    return Entry(name, "hardlink", b"", mode, 0, 0, mtime, linkname=target)


def whiteout(path: str) -> Entry:
    """An OCI whiteout deleting ``path`` from lower layers: ``dir/.wh.base``."""
    parent, _, base = path.strip("/").rpartition("/")
    return file(f"{parent}/.wh.{base}" if parent else f".wh.{base}", b"", mode=0o600)


def opaque(dirpath: str) -> Entry:
    """An opaque whiteout hiding the lower contents of ``dirpath``: ``dir/.wh..wh..opq``."""
    return file(f"{dirpath.strip('/')}/.wh..wh..opq", b"", mode=0o600)


def char(name: str, major: int, minor: int, mode: int = 0o666) -> Entry:
    return Entry(name, "char", b"", mode, devmajor=major, devminor=minor)


def block(name: str, major: int, minor: int, mode: int = 0o660) -> Entry:
    return Entry(name, "block", b"", mode, devmajor=major, devminor=minor)


def fifo(name: str, mode: int = 0o644) -> Entry:
    return Entry(name, "fifo", b"", mode)


# --------------------------------------------------------------------------- tar


def build_tar(entries: Iterable[Entry], tar_format: str = "pax") -> bytes:
    """The tar stream of ``entries`` in the given format (``pax``, ``gnu`` or ``ustar``)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=TAR_FORMATS[tar_format]) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = _TAR_TYPES[e.type]
            info.mode = e.mode
            info.uid, info.gid = e.uid, e.gid
            info.uname, info.gname = e.uname, e.gname
            info.mtime = e.mtime
            info.linkname = e.linkname
            info.devmajor, info.devminor = e.devmajor, e.devminor
            headers: dict[str, str] = {}
            if e.xattrs:
                if tar_format != "pax":
                    raise ValueError(f"{e.name}: xattrs need the pax format")
                # PAX header values are UTF-8 strings; tarfile encodes them back with the
                # surrogateescape handler, so arbitrary bytes survive the round trip.
                headers.update(
                    {
                        f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                        for k, v in e.xattrs.items()
                    }
                )
            if tar_format == "pax" and e.mtime != int(e.mtime):
                headers["mtime"] = str(float(e.mtime))
            info.pax_headers = headers
            if e.type == "file":
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


# --------------------------------------------------------------------------- compression


def _run(argv: Sequence[str], data: bytes) -> bytes:
    return subprocess.run(argv, input=data, capture_output=True, check=True).stdout


def gzip_with_header_fields(
    data: bytes,
    *,
    fname: bytes = b"layer.tar",
    comment: bytes = b"written by tests/imagebuilder.py",
    extra: bytes = b"SK\x04\x00test",
    mtime: int = DEFAULT_MTIME,
    header_crc: bool = False,
) -> bytes:
    """One gzip member whose header has FEXTRA, FNAME and FCOMMENT (and FHCRC if asked).

    RFC 1952 layout: ID1 ID2 CM FLG MTIME(4) XFL OS, then XLEN(2) + extra field, the
    zero-terminated file name, the zero-terminated comment, CRC16 of the header, deflate data,
    then CRC32 and ISIZE of the uncompressed data, all little-endian.
    """
    flags = 0x04 | 0x08 | 0x10 | (0x02 if header_crc else 0)
    header = b"\x1f\x8b\x08" + bytes([flags]) + struct.pack("<I", mtime) + b"\x00\x03"
    header += struct.pack("<H", len(extra)) + extra + fname + b"\x00" + comment + b"\x00"
    if header_crc:
        header += struct.pack("<H", zlib.crc32(header) & 0xFFFF)
    deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = deflater.compress(data) + deflater.flush()
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return header + body + trailer


def split_points(seed: int | str, size: int, pieces: int) -> list[int]:
    """``pieces - 1`` distinct cut offsets in ``(0, size)``, sorted, drawn from ``seed``."""
    if size < pieces:
        return list(range(1, size))
    return sorted(random.Random(seed).sample(range(1, size), pieces - 1))


def compress(data: bytes, producer: str, *, seed: int | str = 0, members: int = 4) -> bytes:
    """Compress a tar stream the way ``producer`` would."""
    if producer == "python":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if producer == "gzip":
        return _run(["gzip", "-c", "-n", "-6"], data)
    if producer == "pigz":
        return _run(["pigz", "-p", "2", "-c", "-n", "-6"], data)
    if producer == "multi-member":
        cuts = [0, *split_points(seed, len(data), members), len(data)]
        return b"".join(
            gzip.compress(data[a:b], compresslevel=6, mtime=0) for a, b in itertools.pairwise(cuts)
        )
    if producer == "fname":
        return gzip_with_header_fields(data)
    if producer == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3).compress(data)
    if producer == "none":
        return data
    raise ValueError(f"unknown producer {producer!r}; known: {', '.join(PRODUCERS)}")


def compression_of(producer: str) -> str:
    """What ``layer.compression`` should say for a producer: gzip, zstd or none."""
    if producer in GZIP_PRODUCERS:
        return "gzip"
    return producer if producer in ("zstd", "none") else "?"


def layer_media_type(producer: str, docker: bool = False) -> str:
    compression = compression_of(producer)
    if docker:
        if compression == "zstd":
            raise ValueError("Docker schema 2 has no zstd layer media type")
        return DOCKER_LAYER + (".gzip" if compression == "gzip" else "")
    return OCI_LAYER + {"gzip": "+gzip", "zstd": "+zstd", "none": ""}[compression]


# --------------------------------------------------------------------------- layers


@dataclasses.dataclass(frozen=True)
class Layer:
    entries: tuple[Entry, ...]
    producer: str
    tar_format: str
    tar: bytes
    blob: bytes
    media_type: str
    #: the layer descriptor's annotations (eStargz / zstd:chunked TOC digests and positions)
    annotations: tuple[tuple[str, str], ...] = ()

    @property
    def digest(self) -> str:
        return sha256_digest(self.blob)

    @property
    def diff_id(self) -> str:
        return sha256_digest(self.tar)

    @property
    def size(self) -> int:
        return len(self.blob)

    @property
    def compression(self) -> str:
        return compression_of(self.producer)

    def entry(self, name: str) -> Entry:
        """The last entry declared under ``name`` (with or without leading/trailing ``/``)."""
        want = name.strip("/")
        for e in reversed(self.entries):
            if e.name.strip("/") == want:
                return e
        raise KeyError(name)

    def descriptor(self) -> dict[str, Any]:
        desc: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest}
        desc["size"] = self.size
        if self.annotations:
            desc["annotations"] = dict(self.annotations)
        return desc

    def tar_offsets(self) -> dict[str, int]:
        """Tar member name → offset of its data in the uncompressed stream."""
        with tarfile.open(fileobj=io.BytesIO(self.tar), mode="r:") as tar:
            return {m.name: m.offset_data for m in tar.getmembers()}


def layer(
    *entries: Entry | Iterable[Entry],
    producer: str = "python",
    tar_format: str = "pax",
    media_type: str | None = None,
    docker: bool = False,
    seed: int | str = 0,
    members: int = 4,
) -> Layer:
    """A layer of ``entries`` (lists of entries are flattened), compressed by ``producer``.

    ``seed`` and ``members`` choose where the ``multi-member`` producer cuts the tar.
    ``media_type`` overrides the media type derived from the producer (and ``docker``).
    """
    flat: list[Entry] = []
    for e in entries:
        if isinstance(e, Entry):
            flat.append(e)
        else:
            flat.extend(e)
    tar = build_tar(flat, tar_format)
    blob = compress(tar, producer, seed=seed, members=members)
    return Layer(
        entries=tuple(flat),
        producer=producer,
        tar_format=tar_format,
        tar=tar,
        blob=blob,
        media_type=media_type or layer_media_type(producer, docker),
    )


# --------------------------------------------------------------------------- images


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode()


@dataclasses.dataclass(frozen=True)
class Image:
    """A single-platform image: layers, config blob and manifest, all as bytes."""

    layers: tuple[Layer, ...]
    config_bytes: bytes
    manifest_bytes: bytes
    media_type: str
    config_media_type: str
    os: str
    architecture: str
    variant: str | None

    @property
    def platform(self) -> str:
        parts = [self.os, self.architecture] + ([self.variant] if self.variant else [])
        return "/".join(parts)

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest_bytes)

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.config_bytes)

    @property
    def config_digest(self) -> str:
        return sha256_digest(self.config_bytes)

    def blobs(self) -> dict[str, bytes]:
        """Every blob the manifest names (config and layers), by digest."""
        out = {self.config_digest: self.config_bytes}
        out.update({lay.digest: lay.blob for lay in self.layers})
        return out

    def manifests(self) -> dict[str, tuple[str, bytes]]:
        """Manifest digest → (media type, bytes): just this one."""
        return {self.digest: (self.media_type, self.manifest_bytes)}

    def descriptor(self, with_platform: bool = True) -> dict[str, Any]:
        desc: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.manifest_bytes),
        }
        if with_platform:
            desc["platform"] = {"architecture": self.architecture, "os": self.os}
            if self.variant:
                desc["platform"]["variant"] = self.variant
        return desc


def image(
    *layers: Layer,
    os: str = "linux",
    arch: str = "amd64",
    variant: str | None = None,
    docker: bool = False,
    config: Mapping[str, Any] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Image:
    """An image of ``layers`` (base first) for ``os/arch[/variant]``.

    ``docker=True`` gives Docker schema 2 media types for the manifest and config (layers keep
    the media type they were built with: build them with ``docker=True`` too).
    ``config`` is merged into the config's ``config`` section (Env, Cmd, Labels, ...).
    """
    cfg: dict[str, Any] = {
        "architecture": arch,
        "os": os,
        "created": "2023-11-14T22:13:20Z",
        "config": {"Env": ["PATH=/usr/bin:/bin"], **(config or {})},
        "rootfs": {"type": "layers", "diff_ids": [lay.diff_id for lay in layers]},
        "history": [{"created_by": f"imagebuilder layer {i}"} for i in range(len(layers))],
    }
    if variant:
        cfg["variant"] = variant
    config_bytes = _canonical_json(cfg)
    config_media_type = DOCKER_CONFIG if docker else OCI_CONFIG
    media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": config_media_type,
            "digest": sha256_digest(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [lay.descriptor() for lay in layers],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    return Image(
        layers=tuple(layers),
        config_bytes=config_bytes,
        manifest_bytes=_canonical_json(manifest),
        media_type=media_type,
        config_media_type=config_media_type,
        os=os,
        architecture=arch,
        variant=variant,
    )


@dataclasses.dataclass(frozen=True)
class Index:
    """A multi-platform image index (or Docker manifest list) over single-platform images."""

    images: tuple[Image, ...]
    manifest_bytes: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest_bytes)

    @property
    def platforms(self) -> list[str]:
        return [img.platform for img in self.images]

    def for_platform(self, platform: str) -> Image:
        for img in self.images:
            if img.platform == platform:
                return img
        raise KeyError(platform)

    def blobs(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for img in self.images:
            out.update(img.blobs())
        return out

    def manifests(self) -> dict[str, tuple[str, bytes]]:
        out: dict[str, tuple[str, bytes]] = {}
        for img in self.images:
            out.update(img.manifests())
        out[self.digest] = (self.media_type, self.manifest_bytes)
        return out


def index(*images: Image, docker: bool = False) -> Index:
    media_type = DOCKER_LIST if docker else OCI_INDEX
    body = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [img.descriptor() for img in images],
    }
    return Index(images=tuple(images), manifest_bytes=_canonical_json(body), media_type=media_type)


def write_oci_layout(path: str | os.PathLike[str], target: Image | Index, tag: str) -> Path:
    """Write ``target`` as an OCI image layout directory with ``tag`` as its ref name.

    Adds to an existing layout (other tags are kept), so several images can share one.
    """
    root = Path(path)
    blob_dir = root / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    blobs = dict(target.blobs())
    blobs.update({d: body for d, (_, body) in target.manifests().items()})
    for digest, data in blobs.items():
        (blob_dir / digest.removeprefix("sha256:")).write_bytes(data)
    index_path = root / "index.json"
    if index_path.exists():
        top = json.loads(index_path.read_text())
    else:
        top = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    ref_key = "org.opencontainers.image.ref.name"
    top["manifests"] = [m for m in top["manifests"] if m.get("annotations", {}).get(ref_key) != tag]
    desc: dict[str, Any] = {
        "mediaType": target.media_type,
        "digest": target.digest,
        "size": len(target.manifest_bytes),
        "annotations": {ref_key: tag},
    }
    top["manifests"].append(desc)
    index_path.write_text(json.dumps(top, indent=2))
    return root


__all__ = [
    "DEFAULT_MTIME",
    "DOCKER_CONFIG",
    "DOCKER_LAYER",
    "DOCKER_LIST",
    "DOCKER_MANIFEST",
    "GZIP_PRODUCERS",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_MANIFEST",
    "PRODUCERS",
    "Entry",
    "Image",
    "Index",
    "Layer",
    "block",
    "build_tar",
    "char",
    "compress",
    "compression_of",
    "dir",
    "fifo",
    "file",
    "gzip_with_header_fields",
    "hardlink",
    "image",
    "index",
    "layer",
    "layer_media_type",
    "opaque",
    "random_bytes",
    "sha256_digest",
    "symlink",
    "text_bytes",
    "whiteout",
    "write_oci_layout",
]
