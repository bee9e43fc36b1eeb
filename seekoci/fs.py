"""A read-only fsspec filesystem over an image's merged view (``pip install seekoci[fsspec]``).

    fs = fsspec.filesystem("seekoci", ref="python:3.12-slim", platform="linux/amd64")
    fs.ls("/etc"); fs.cat_file("/etc/os-release"); fs.open("/usr/bin/python3", "rb")

Registered through the ``fsspec.specs`` entry point. It uses only seekoci's public API.
"""

from __future__ import annotations

from typing import Any

from fsspec.spec import AbstractFileSystem

from . import open_image
from .fileinfo import FileInfo
from .image import Image

_TYPES = {"file": "file", "dir": "directory"}


class SeekociFileSystem(AbstractFileSystem):  # type: ignore[misc]
    """fsspec view of one image. Extra keyword arguments go to :func:`seekoci.open_image`."""

    protocol = "seekoci"
    root_marker = "/"
    #: no process-global instance cache: every filesystem() call opens the image it names
    cachable = False

    def __init__(self, ref: str | None = None, *, image: Image | None = None, **kwargs: Any):
        fs_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in ("skip_instance_cache",)}
        super().__init__(**fs_kwargs)
        if image is None:
            if ref is None:
                raise ValueError("seekoci filesystem needs ref= (an image reference)")
            image = open_image(ref, **kwargs)
        self.image = image

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        if path.startswith("seekoci://"):
            path = path[len("seekoci://") :]
        return "/" + "/".join(p for p in path.split("/") if p not in ("", "."))

    def _entry(self, path: str, info: FileInfo) -> dict[str, Any]:
        return {
            "name": path,
            "size": info.size,
            "type": _TYPES.get(info.type, "other"),
            "mode": info.st_mode,
            "mtime": info.mtime,
            "uid": info.uid,
            "gid": info.gid,
            "layer": info.layer,
            "islink": False,
        }

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        entry = self._entry(path, self.image.stat(path))
        try:
            entry["islink"] = self.image.stat(path, follow_symlinks=False).type == "symlink"
        except OSError:
            pass
        return entry

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        info = self.image.stat(path)
        if info.type != "dir":
            return [self._entry(path, info)] if detail else [path]
        base = path.rstrip("/")
        names = [f"{base}/{name}" for name in self.image.listdir(path)]
        if not detail:
            return names
        out = []
        for name in names:
            try:
                out.append(self.info(name))
            except OSError:  # a dangling symlink: list it as what it is
                link = self.image.stat(name, follow_symlinks=False)
                out.append({**self._entry(name, link), "type": "other", "islink": True})
        return out

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if mode != "rb":
            raise NotImplementedError("the seekoci filesystem is read-only")
        return self.image.open(self._strip_protocol(path))

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        with self.image.open(self._strip_protocol(path)) as f:
            size = f.size
            lo = 0 if start is None else (start if start >= 0 else max(size + start, 0))
            hi = size if end is None else (end if end >= 0 else max(size + end, 0))
            if hi <= lo:
                return b""
            f.seek(lo)
            return f.read(hi - lo)
