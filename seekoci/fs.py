"""A read-only fsspec filesystem over an image's merged view (``pip install seekoci[fsspec]``).

    fs = fsspec.filesystem("seekoci", ref="python:3.12-slim", platform="linux/amd64")
    fs.ls("/etc"); fs.cat_file("/etc/os-release"); fs.open("/usr/bin/python3", "rb")

    pandas.read_csv("seekoci://ghcr.io/org/data:1.0//srv/data/table.csv")

URLs are ``seekoci://REF//PATH``: the first ``//`` after the reference separates it from the
absolute path inside the image (a reference never contains ``//``). Registered through the
``fsspec.specs`` entry point; it uses only seekoci's public API.

File objects are seekoci's own (:meth:`seekoci.Image.open`), not fsspec's buffered file with a
block cache on top: seekoci already reads whole verified spans and keeps them in memory, a
second cache would only copy bytes. Instances are cached by fsspec per set of arguments, so
every ``seekoci://REF//...`` URL of one reference shares one opened image.
"""

from __future__ import annotations

import datetime
import inspect
from collections.abc import Iterator
from typing import Any

from fsspec.spec import AbstractFileSystem

from . import open_image
from .fileinfo import FileInfo
from .image import Image

PROTOCOL = "seekoci"
_PREFIX = PROTOCOL + "://"
#: seekoci's FileInfo.type -> fsspec's "type" (fsspec knows file, directory, link, other)
_TYPES = {"file": "file", "dir": "directory", "symlink": "link"}
#: keyword arguments that go to open_image rather than to fsspec's base class
_OPEN_IMAGE_KWARGS = frozenset(inspect.signature(open_image).parameters) - {"ref"}


def split_url(url: str) -> tuple[str, str]:
    """``seekoci://REF//PATH`` -> ``(REF, "/PATH")``; a bare path has the reference ``""``.

    ``seekoci://REF`` alone is the image's root; ``seekoci:///PATH`` names a path of a
    filesystem whose reference was given as ``ref=``.
    """
    rest = url[len(_PREFIX) :] if url.startswith(_PREFIX) else url
    if not url.startswith(_PREFIX) or rest.startswith("/"):
        return "", _normalize(rest)
    ref, sep, path = rest.partition("//")
    return ref, _normalize(path if sep else "")


def _normalize(path: str) -> str:
    return "/" + "/".join(p for p in path.split("/") if p not in ("", "."))


class SeekociFileSystem(AbstractFileSystem):  # type: ignore[misc]
    """fsspec view of one image. Keyword arguments that :func:`seekoci.open_image` takes
    (``platform``, ``auth``, ``cache_dir``, ``insecure``, ...) go to it; ``image=`` wraps an
    already opened :class:`seekoci.Image` instead of a reference."""

    protocol = PROTOCOL
    root_marker = "/"

    def __init__(self, ref: str | None = None, *, image: Image | None = None, **kwargs: Any):
        image_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _OPEN_IMAGE_KWARGS}
        super().__init__(**kwargs)
        if image is None:
            if not ref:
                raise ValueError(
                    "the seekoci filesystem needs ref= (an image reference) or a "
                    "seekoci://REF//PATH URL"
                )
            image = open_image(ref, **image_kwargs)
        self.image = image
        self.ref = ref or image.reference

    # -- paths ------------------------------------------------------------------------------
    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        return split_url(str(path))[1]

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        ref = split_url(path)[0]
        return {"ref": ref} if ref else {}

    def unstrip_protocol(self, name: str) -> str:
        if name.startswith(_PREFIX):
            return name
        return f"{_PREFIX}{self.ref}/{_normalize(name)}"

    # -- metadata ---------------------------------------------------------------------------
    def _entry(self, path: str, info: FileInfo, *, islink: bool = False) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": path,
            "size": info.size if info.type != "dir" else 0,
            "type": _TYPES.get(info.type, "other"),
            "mode": info.st_mode,
            "mtime": info.mtime,
            "uid": info.uid,
            "gid": info.gid,
            "layer": info.layer,
            "islink": islink,
        }
        if info.linkname:
            entry["destination"] = info.linkname
        return entry

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """Like fsspec's local filesystem: symlinks followed (``islink`` says it was one,
        ``destination`` names its target); a dangling symlink is ``type: "link"``."""
        path = self._strip_protocol(path)
        own = self.image.stat(path, follow_symlinks=False)
        if own.type != "symlink":
            return self._entry(path, own)
        try:
            target = self.image.stat(path)
        except OSError:  # dangling, a loop, or leaving through a non-directory
            return self._entry(path, own, islink=True)
        entry = self._entry(path, target, islink=True)
        entry["destination"] = own.linkname
        return entry

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        info = self.info(path)
        if info["type"] != "directory":
            return [info] if detail else [path]
        base = path.rstrip("/")
        names = [f"{base}/{name}" for name in self.image.listdir(path)]
        return [self.info(name) for name in names] if detail else names

    def modified(self, path: str) -> datetime.datetime:
        """The entry's mtime (symlinks followed), as an aware UTC datetime."""
        return datetime.datetime.fromtimestamp(self.info(path)["mtime"], datetime.timezone.utc)

    def exists(self, path: str, **kwargs: Any) -> bool:
        try:
            self.info(path)
        except OSError:
            return False
        return True

    def walk(
        self,
        path: str,
        maxdepth: int | None = None,
        topdown: bool = True,
        on_error: Any = "omit",
        **kwargs: Any,
    ) -> Iterator[tuple[str, Any, Any]]:
        """Like :meth:`seekoci.Image.walk` (symlinks to directories are listed with the
        directories, never descended into: ``/usr/bin/X11 -> .`` cannot loop)."""
        if maxdepth is not None and maxdepth < 1:
            raise ValueError("maxdepth must be at least 1")
        detail = kwargs.pop("detail", False)
        top = self._strip_protocol(path)
        try:
            if self.info(top)["type"] != "directory":
                return
        except OSError as exc:
            if on_error == "raise":
                raise
            if callable(on_error):
                on_error(exc)
            return
        depth_of_top = top.rstrip("/").count("/")
        results: list[tuple[str, Any, Any]] = []
        for dirpath, dirnames, filenames in self.image.walk(top):
            depth = dirpath.rstrip("/").count("/") - depth_of_top + 1
            if maxdepth is not None and depth >= maxdepth:
                # list this level but go no deeper
                dirnames_kept = list(dirnames)
                dirnames[:] = []
            else:
                dirnames_kept = dirnames
            base = dirpath.rstrip("/")
            if detail:
                dirs: Any = {n: self.info(f"{base}/{n}") for n in dirnames_kept}
                files: Any = {n: self.info(f"{base}/{n}") for n in filenames}
            else:
                dirs, files = dirnames_kept, list(filenames)
            if not topdown:
                results.append((dirpath, dirs, files))
                continue
            yield dirpath, dirs, files
            if detail:  # the caller may prune the walk by deleting from ``dirs``
                dirnames[:] = [n for n in dirnames if n in dirs]
        yield from reversed(results)

    def find(
        self,
        path: str,
        maxdepth: int | None = None,
        withdirs: bool = False,
        detail: bool = False,
        **kwargs: Any,
    ) -> Any:
        path = self._strip_protocol(path)
        out: dict[str, dict[str, Any]] = {}
        try:
            top = self.info(path)
        except OSError:
            return {} if detail else []
        if top["type"] != "directory":
            out[path] = top
        else:
            if withdirs and path != "/":
                out[path] = top
            for _, dirs, files in self.walk(path, maxdepth, detail=True):
                if withdirs:
                    out.update({info["name"]: info for info in dirs.values()})
                out.update({info["name"]: info for info in files.values()})
        names = sorted(out)
        return {name: out[name] for name in names} if detail else names

    # -- bytes ------------------------------------------------------------------------------
    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if mode != "rb":
            raise NotImplementedError("the seekoci filesystem is read-only (mode 'rb' only)")
        return self.image.open(self._strip_protocol(path))

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        with self.image.open(self._strip_protocol(path)) as f:
            return _read_slice(f, start, end)

    def cat_ranges(
        self,
        paths: list[str],
        starts: int | list[int | None] | None,
        ends: int | list[int | None] | None,
        max_gap: int | None = None,
        on_error: str = "return",
        **kwargs: Any,
    ) -> list[Any]:
        """Byte ranges of files, each file opened once however many ranges it has (so the
        spans it shares between ranges are fetched once)."""
        if not isinstance(paths, list):
            raise TypeError("paths must be a list")
        starts_list = starts if isinstance(starts, list) else [starts] * len(paths)
        ends_list = ends if isinstance(ends, list) else [ends] * len(paths)
        if len(starts_list) != len(paths) or len(ends_list) != len(paths):
            raise ValueError("paths, starts and ends must have the same length")
        out: list[Any] = [None] * len(paths)
        by_path: dict[str, list[int]] = {}
        for i, p in enumerate(paths):
            by_path.setdefault(self._strip_protocol(p), []).append(i)
        for p, positions in by_path.items():
            try:
                with self.image.open(p) as f:
                    for i in positions:
                        out[i] = _read_slice(f, starts_list[i], ends_list[i])
            except Exception as exc:
                if on_error != "return":
                    raise
                for i in positions:
                    if out[i] is None:
                        out[i] = exc
        return out


def _read_slice(f: Any, start: int | None, end: int | None) -> bytes:
    """Bytes ``[start, end)`` of an open file, with Python's negative-index meaning."""
    size = f.size
    lo = 0 if start is None else (start if start >= 0 else max(size + start, 0))
    hi = size if end is None else (min(end, size) if end >= 0 else max(size + end, 0))
    if hi <= lo:
        return b""
    f.seek(lo)
    data: bytes = f.read(hi - lo)
    return data
