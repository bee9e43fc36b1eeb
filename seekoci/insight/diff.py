"""``diff``: what changed between two images, without opening the layers they share.

Two images built from the same base share a prefix of layers (same digests, same order):
the merged state after that prefix is the same on both sides, so only paths that the
layers above it touch can differ. Those upper layers are applied on each side to a small
*overlay state* (entries by path, plus the regions of the base they hide by whiteouts and
opaque directories); the shared prefix is consulted only for paths one side touches and the
other does not, by lookups in its layers' indexes (a page each in a published index), and
listed in full only under a directory one side deletes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..formats.tar import TarEntry, normalize_name
from ..tree import OPAQUE_MARKER, WHITEOUT_PREFIX, Tree
from .results import Change, ChangeList
from .usage import ensure_digest, entries_of, is_whiteout, walk_nodes

if TYPE_CHECKING:
    from ..image import Image
    from ..layer import Layer

#: bytes compared at a time when two files have no digests to compare
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Found:
    """What a side shows at a path: the entry and the layer that stores it (``entry`` None:
    a directory implied by deeper names)."""

    entry: TarEntry | None
    layer: Layer | None

    @property
    def type(self) -> str:
        return "dir" if self.entry is None else self.entry.type


_DIR = Found(None, None)


class _Base:
    """The merged view of the shared layers, answered by lookups (or, when a whole subtree
    is needed, by merging those layers once)."""

    def __init__(self, layers: Sequence[Layer]) -> None:
        self.layers = list(layers)
        self._tree: Tree | None = None
        self._by_key = {layer.digest or layer.name: layer for layer in self.layers}

    def tree(self) -> Tree:
        if self._tree is None:
            self._tree = Tree.merged(
                (layer.digest or layer.name, layer.entries()) for layer in self.layers
            )
        return self._tree

    def _from_tree(self, name: str) -> Found | None:
        node = self.tree().lookup(name)
        if node is None:
            return None
        if node.entry is None:
            return _DIR
        if node.entry.type == "hardlink":
            target = node.target
            if target is None or target.entry is None:
                return None
            return Found(target.entry, self._by_key[target.layer])
        return Found(node.entry, self._by_key[node.layer])

    def get(self, name: str) -> Found | None:
        if not self.layers:
            return None
        if self._tree is not None:
            return self._from_tree(name)
        parts = name.split("/")
        for layer in reversed(self.layers):
            entry = layer.find(name)
            if entry is not None:
                if entry.type == "hardlink":  # its target may be anywhere below
                    return self._from_tree(name)
                return Found(entry, layer)
            if layer.find(OPAQUE_MARKER) is not None:
                return None
            for i in range(len(parts)):
                prefix = "/".join(parts[:i])
                prefix = prefix + "/" if prefix else ""
                if layer.find(prefix + WHITEOUT_PREFIX + parts[i]) is not None:
                    return None
                if i < len(parts) - 1:
                    ancestor = prefix + parts[i]
                    above = layer.find(ancestor)
                    if above is not None and above.type != "dir":
                        return self._from_tree(name)  # a symlink or file in the way
                    if layer.find(ancestor + "/" + OPAQUE_MARKER) is not None:
                        return None
        return None

    def under(self, name: str) -> list[str]:
        """Every path below directory ``name`` in the base (not ``name`` itself)."""
        if not self.layers:
            return []
        node = self.tree().lookup(name)
        if node is None or node.children is None:
            return []
        start = "/" + name if name else "/"
        return [normalize_name(p) for p, _, depth in walk_nodes(node, start) if depth > 0]


@dataclass
class _Side:
    """One image's layers above the shared prefix, applied to an overlay state."""

    entries: dict[str, tuple[TarEntry, Layer]] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)  # base content at and under these hidden
    opaque: set[str] = field(default_factory=set)  # base content under these hidden

    def apply(self, layer: Layer) -> None:
        entries = [
            e
            for e in entries_of(layer, digests=True)
            if not e.unsafe and ".." not in e.name.split("/")
        ]
        deleted: set[str] = set()
        opaque: set[str] = set()
        for entry in entries:  # whiteouts hide what is below, before this layer adds
            if not is_whiteout(entry.name):
                continue
            parent, _, base = entry.name.rpartition("/")
            if base == OPAQUE_MARKER:
                opaque.add(parent)
            else:
                deleted.add((parent + "/" if parent else "") + base[len(WHITEOUT_PREFIX) :])
        if deleted or opaque:
            self.deleted |= deleted
            self.opaque |= opaque
            # one pass over what the layers below put here (not one per whiteout)
            for name in [n for n in self.entries if _under(n, deleted, opaque)]:
                del self.entries[name]
        for entry in entries:
            # (a file replacing a directory hides its contents: state() looks at ancestors)
            if entry.name and not is_whiteout(entry.name):
                self.entries[entry.name] = (entry, layer)

    def hides_base(self, name: str) -> bool:
        parts = name.split("/")
        if "" in self.opaque:
            return True
        for i in range(1, len(parts) + 1):
            a = "/".join(parts[:i])
            if a in self.deleted:
                return True
            if i < len(parts):
                if a in self.opaque:
                    return True
                upper = self.entries.get(a)
                if upper is not None and upper[0].type != "dir":
                    return True
        return False

    def state(self, name: str, base: _Base) -> Found | None:
        upper = self.entries.get(name)
        parts = name.split("/")
        for i in range(1, len(parts)):  # an upper non-directory in the way hides it all
            above = self.entries.get("/".join(parts[:i]))
            if above is not None and above[0].type != "dir":
                return None
        if upper is not None:
            entry, layer = upper
            if entry.type == "hardlink":
                return self._link_target(entry, base)
            return Found(entry, layer)
        if self.hides_base(name):
            return None
        return base.get(name)

    def _link_target(self, link: TarEntry, base: _Base) -> Found | None:
        target = normalize_name(link.linkname)
        upper = self.entries.get(target)
        if upper is not None and upper[0].type == "file":
            return Found(*upper)
        if upper is None and not self.hides_base(target):
            found = base.get(target)
            if found is not None and found.type == "file":
                return found
        return None

    def base_regions(self) -> list[str]:
        return sorted(self.deleted | self.opaque)


def _under(name: str, deleted: set[str], opaque: set[str]) -> bool:
    """Whether ``name`` is a deleted path, below one, or below an opaque directory."""
    if "" in opaque or name in deleted:
        return True
    parts = name.split("/")
    for i in range(1, len(parts)):
        ancestor = "/".join(parts[:i])
        if ancestor in deleted or ancestor in opaque:
            return True
    return False


def _size(found: Found | None) -> int | None:
    if found is None:
        return None
    return found.entry.size if found.entry is not None and found.entry.type == "file" else 0


def _same_bytes(a: Found, b: Found) -> bool:
    assert a.entry is not None and b.entry is not None and a.layer and b.layer
    ensure_digest(a.layer, a.entry)  # found by a lookup in a shared layer: its page's digests
    ensure_digest(b.layer, b.entry)
    if a.entry.sha256 is not None and b.entry.sha256 is not None:
        return a.entry.sha256 == b.entry.sha256
    with a.layer.open_entry(a.entry) as fa, b.layer.open_entry(b.entry) as fb:
        while True:
            x, y = fa.read(_READ_CHUNK), fb.read(_READ_CHUNK)
            if x != y:
                return False
            if not x:
                return True


def same(a: Found, b: Found) -> bool:
    """True when two paths show the same thing: type, mode, link target, content."""
    if a.type != b.type:
        return False
    ea, eb = a.entry, b.entry
    if ea is None or eb is None:
        return ea is eb
    if ea is eb:
        return True
    if ea.mode & 0o7777 != eb.mode & 0o7777:
        return False
    if ea.type == "symlink":
        return ea.linkname == eb.linkname
    if ea.type in ("char", "block"):
        return (ea.devmajor, ea.devminor) == (eb.devmajor, eb.devminor)
    if ea.type != "file":
        return True
    if ea.size != eb.size:
        return False
    if a.layer is b.layer and ea.header_offset == eb.header_offset:
        return True
    return ea.size == 0 or _same_bytes(a, b)


def diff(img_a: Image, img_b: Image) -> ChangeList:
    la, lb = img_a.layers, img_b.layers
    shared = 0
    while (
        shared < min(len(la), len(lb))
        and la[shared].digest is not None
        and la[shared].digest == lb[shared].digest
    ):
        shared += 1
    base = _Base(la[:shared])
    side_a, side_b = _Side(), _Side()
    for layer in la[shared:]:
        side_a.apply(layer)
    for layer in lb[shared:]:
        side_b.apply(layer)
    names = set(side_a.entries) | set(side_b.entries)
    for side in (side_a, side_b):
        for region in side.base_regions():
            found = base.get(region) if region else _DIR
            if region == "" or (found is not None and found.type == "dir"):
                names.update(base.under(region))
            elif found is not None:
                names.add(region)
    changes = []
    for name in sorted(names):
        a = side_a.state(name, base)
        b = side_b.state(name, base)
        if a is None and b is None:
            continue
        if a is not None and b is not None:
            if a.type == "dir" and b.type == "dir":
                continue
            if same(a, b):
                continue
            kind = "modified"
        elif a is None:
            assert b is not None
            if b.type == "dir":
                continue
            kind = "added"
        else:
            if a.type == "dir":
                continue
            kind = "removed"
        changes.append(Change("/" + name, kind, _size(a), _size(b)))
    return ChangeList(sorted(changes, key=lambda c: c.path))
