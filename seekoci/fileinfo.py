"""FileInfo: what ``stat`` returns."""

from __future__ import annotations

import stat as _stat
from dataclasses import dataclass, field

from .formats.tar import TarEntry

_MODE_BITS = {
    "file": _stat.S_IFREG,
    "hardlink": _stat.S_IFREG,
    "dir": _stat.S_IFDIR,
    "symlink": _stat.S_IFLNK,
    "char": _stat.S_IFCHR,
    "block": _stat.S_IFBLK,
    "fifo": _stat.S_IFIFO,
}


@dataclass(frozen=True)
class FileInfo:
    """Metadata of one path. ``mode`` holds permission bits (with setuid/setgid/sticky);
    :attr:`st_mode` adds the file-type bits for code that wants ``os.stat`` semantics."""

    path: str
    type: str
    size: int
    mode: int
    mtime: float
    uid: int
    gid: int
    linkname: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)
    layer: str = ""
    uname: str = ""
    gname: str = ""
    devmajor: int = 0
    devminor: int = 0

    @property
    def st_mode(self) -> int:
        return _MODE_BITS.get(self.type, 0) | self.mode

    def is_dir(self) -> bool:
        return self.type == "dir"

    def is_file(self) -> bool:
        return self.type == "file"

    def is_symlink(self) -> bool:
        return self.type == "symlink"

    def _repr_html_(self) -> str:
        """A table of this path's metadata, for Jupyter."""
        from .html import fileinfo_table

        return fileinfo_table(self)


def entry_info(
    entry: TarEntry, path: str, layer: str, *, type_: str | None = None, size: int | None = None
) -> FileInfo:
    return FileInfo(
        path=path,
        type=type_ or entry.type,
        size=entry.size if size is None else size,
        mode=entry.mode & 0o7777,
        mtime=entry.mtime,
        uid=entry.uid,
        gid=entry.gid,
        linkname=entry.linkname,
        xattrs=dict(entry.xattrs),
        layer=layer,
        uname=entry.uname,
        gname=entry.gname,
        devmajor=entry.devmajor,
        devminor=entry.devminor,
    )
