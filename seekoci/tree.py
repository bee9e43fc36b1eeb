"""Directory trees over tar entries: one layer as stored, or layers merged as a container
sees them (OCI whiteouts and opaque directories applied), with path resolution that follows
symlinks inside the image root only.
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from .formats.tar import TarEntry, normalize_name

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
#: Linux's limit on symlinks followed in one resolution (MAXSYMLINKS).
MAX_SYMLINKS = 40
#: last name parts that are not a name in their directory
_ODD_PARTS = frozenset({"", ".", ".."})


@dataclass(eq=False, slots=True)
class Node:
    """A path in a tree. ``entry`` is None for directories implied by deeper names."""

    entry: TarEntry | None
    layer: str
    children: dict[str, Node] | None = None
    #: for hard links in a merged tree: the node of the file they link to
    target: Node | None = None
    #: every layer that contributed to this node (upper last) - directories only: None
    #: for the rest (an image's tree has one node per file; no empty list for each)
    layers: list[str] | None = None

    @property
    def type(self) -> str:
        return "dir" if self.entry is None else self.entry.type

    @property
    def is_dir(self) -> bool:
        return self.children is not None


def split_path(path: str) -> list[str]:
    """Components of a POSIX path, ``.`` and empty ones dropped, ``..`` kept."""
    return [p for p in path.split("/") if p not in ("", ".")]


class Tree:
    """A directory tree with lookups, ``listdir`` and ``walk``."""

    def __init__(self, layer: str = "") -> None:
        self.root = Node(None, layer, {}, layers=[])
        #: entries left out because their stored name is absolute or climbs with ``..``
        self.skipped: list[tuple[str, TarEntry]] = []

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def from_entries(cls, entries: Iterable[TarEntry], *, layer: str) -> Tree:
        """One layer as stored: whiteout files are ordinary entries."""
        tree = cls(layer)
        last = None
        for entry in entries:
            last = tree._insert(entry, layer, link_in=None, last=last)
        return tree

    @classmethod
    def merged(cls, layers: Iterable[tuple[str, Sequence[TarEntry]]]) -> Tree:
        """Layers (base first) applied as a container runtime would."""
        tree = cls()
        for layer, entries in layers:
            tree.apply_layer(entries, layer)
        return tree

    def apply_layer(self, entries: Sequence[TarEntry], layer: str) -> None:
        # Whiteouts only hide what lower layers put there (OCI image spec, "Whiteouts"), so
        # they are applied before any entry of the same layer is added.
        for entry in entries:
            if WHITEOUT_PREFIX not in entry.name:  # nearly every entry: one C search
                continue
            parts = entry.name.split("/")
            base = parts[-1]
            if not base.startswith(WHITEOUT_PREFIX):
                continue
            parent = self._walk_nofollow(parts[:-1])
            if parent is None or parent.children is None:
                continue
            if base == OPAQUE_MARKER:
                parent.children.clear()
            else:
                parent.children.pop(base[len(WHITEOUT_PREFIX) :], None)
        last = None
        for entry in entries:
            if WHITEOUT_PREFIX in entry.name and entry.name.rpartition("/")[2].startswith(
                WHITEOUT_PREFIX
            ):
                continue
            last = self._insert(entry, layer, link_in=self, last=last)

    def _walk_nofollow(self, parts: list[str]) -> Node | None:
        node = self.root
        for part in parts:
            if node.children is None:
                return None
            child = node.children.get(part)
            if child is None:
                return None
            node = child
        return node

    def _parent_of(self, entry: TarEntry, layer: str) -> tuple[Node, str] | None:
        """The directory node ``entry`` goes in (implied directories made on the way) and
        its name there; None when it has no place (recorded as skipped) or is the root."""
        parts = split_path(entry.name)
        if entry.unsafe or ".." in parts:
            self.skipped.append((layer, entry))  # no place in a filesystem rooted here
            return None
        if not parts:  # the root directory itself
            if entry.type == "dir":
                self.root.entry = entry
                assert self.root.layers is not None
                self.root.layers.append(layer)
            return None
        node = self.root
        for part in parts[:-1]:
            assert node.children is not None
            child = node.children.get(part)
            if child is None or child.children is None:
                child = Node(None, layer, {}, layers=[layer])
                node.children[part] = child
            node = child
        return node, parts[-1]

    def _insert(
        self, entry: TarEntry, layer: str, *, link_in: Tree | None, last: tuple[str, Node] | None
    ) -> tuple[str, Node] | None:
        """Add ``entry``. ``last``: the directory part of the name of the entry added
        before and its directory node, as this returns it for the next entry."""
        dirname, _, base = entry.name.rpartition("/")
        if last is not None and last[0] == dirname and base not in _ODD_PARTS:
            # the directory of the entry before (a tar lists a directory's entries
            # together): its node, with no walk from the root. Only a name with another
            # directory part can replace that node or one above it, and that resets this.
            if entry.unsafe:
                self.skipped.append((layer, entry))
                return last
            node, name = last[1], base
        else:
            node_found = self._parent_of(entry, layer)
            if node_found is None:  # skipped, or the root itself: no node replaced
                return last
            node, name = node_found
            last = (dirname, node) if name == base else None
        assert node.children is not None
        existing = node.children.get(name)
        if entry.type == "dir":
            if existing is not None and existing.children is not None:
                existing.entry = entry
                existing.layer = layer
                assert existing.layers is not None  # every node with children has its list
                existing.layers.append(layer)
                return last
            node.children[name] = Node(entry, layer, {}, layers=[layer])
            return last
        new = Node(entry, layer)
        if entry.type == "hardlink" and link_in is not None:
            target = link_in._walk_nofollow(split_path(entry.linkname))
            while target is not None and target.target is not None:
                target = target.target
            new.target = target if target is not None and target.type == "file" else None
        node.children[name] = new
        return last

    # -- lookups ----------------------------------------------------------------------------
    def resolve(self, path: str, *, follow_symlinks: bool = True) -> Node:
        """The node at ``path``; symlinks are followed inside this tree (absolute targets
        from its root, ``..`` stops at the root). Raises FileNotFoundError,
        NotADirectoryError or OSError(ELOOP). As in POSIX, a path ending in ``/`` (or
        ``/.``) names a directory (a symlink there is followed), and ``..`` climbs only
        out of a directory."""
        pending = deque(split_path(path))
        must_be_dir = bool(pending) and path.rsplit("/", 1)[-1] in ("", ".")
        stack = [self.root]
        followed = 0
        while pending:
            name = pending.popleft()
            node = stack[-1]
            if node.children is None:
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
            if name == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            child = node.children.get(name)
            if child is None:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            if child.type == "symlink" and (pending or follow_symlinks or must_be_dir):
                followed += 1
                if followed > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, "Too many levels of symbolic links", path)
                assert child.entry is not None
                target = child.entry.linkname
                if not target:
                    raise FileNotFoundError(errno.ENOENT, "Empty symlink target", path)
                if target.startswith("/"):
                    del stack[1:]
                if not pending and target.rsplit("/", 1)[-1] in ("", "."):
                    must_be_dir = True  # the link's target names a directory
                pending.extendleft(reversed(split_path(target)))
                continue
            stack.append(child)
        if must_be_dir and stack[-1].children is None:
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
        return stack[-1]

    def lookup(self, path: str) -> Node | None:
        """The node stored at ``path`` without following symlinks, or None."""
        return self._walk_nofollow(split_path(normalize_name(path)))

    def listdir(self, path: str = "/") -> list[str]:
        node = self.resolve(path)
        if node.children is None:
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
        return sorted(node.children)

    def _is_dir_like(self, dirpath: str, name: str, node: Node) -> bool:
        if node.children is not None:
            return True
        if node.type != "symlink":
            return False
        try:
            return self.resolve(_join(dirpath, name)).children is not None
        except OSError:
            return False

    def walk(self, top: str = "/") -> Iterator[tuple[str, list[str], list[str]]]:
        """Like ``os.walk(top)``: top-down, sorted names, symlinks to directories listed in
        ``dirnames`` but not descended into."""
        try:
            start = self.resolve(top)
        except OSError:
            return
        if start.children is None:
            return
        todo: list[tuple[str, Node]] = [("/" + "/".join(split_path(top)), start)]
        while todo:
            dirpath, node = todo.pop()
            assert node.children is not None
            dirnames: list[str] = []
            filenames: list[str] = []
            for name in sorted(node.children):
                child = node.children[name]
                (dirnames if self._is_dir_like(dirpath, name, child) else filenames).append(name)
            yield dirpath, dirnames, filenames
            # descend (in sorted order) into what is still listed, real directories only
            for name in reversed(dirnames):
                sub = node.children.get(name)
                if sub is not None and sub.children is not None:
                    todo.append((_join(dirpath, name), sub))


def _join(dirpath: str, name: str) -> str:
    return dirpath.rstrip("/") + "/" + name
