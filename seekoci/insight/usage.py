"""``du`` over the merged tree, and the per-layer pass behind ``layer_usage`` and ``bloat``.

Everything here works from the layers' tables of contents (``Layer.entries()``): an index
loaded from the cache or read from the registry, never a layer's file data.
"""

from __future__ import annotations

import errno
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import FormatError
from ..formats.pages import PagedEntries
from ..formats.tar import TarEntry
from ..tree import OPAQUE_MARKER, WHITEOUT_PREFIX, Node, Tree
from .results import LayerUsage, LayerUsageList, Usage, UsageList

if TYPE_CHECKING:
    from ..image import Image
    from ..layer import Layer


def entries_of(layer: Layer, *, digests: bool = False) -> Sequence[TarEntry]:
    """Every entry of a layer; with ``digests``, its files' content digests loaded too, in
    the same fetch as the entry pages of an index read by range (they are stored beside the
    pages, and only comparisons of content need them)."""
    if digests:
        try:
            entries = layer.index().entries
            if isinstance(entries, PagedEntries):
                entries.load_all(digests=True)
        except FormatError:
            pass  # no digests then (compared by bytes); layer.entries() decides about the rest
    return layer.entries()


def ensure_digest(layer: Layer, entry: TarEntry) -> None:
    """Load the digest of one file found by a lookup (its page's digests), if the index
    has it."""
    if entry.sha256 is not None or entry.type != "file":
        return
    try:
        entries = layer.index().entries
        if isinstance(entries, PagedEntries):
            entries.load_digests_for(entry)
    except FormatError:
        pass  # compared by bytes instead


def norm_path(path: str) -> str:
    return posixpath.normpath("/" + path.lstrip("/")).replace("//", "/")


def _join(dirpath: str, name: str) -> str:
    return dirpath.rstrip("/") + "/" + name


def inode_of(node: Node) -> Node | None:
    """The node holding the data of a regular file or hard link (None for anything else and
    for hard links to nothing)."""
    if node.children is not None or node.entry is None:
        return None
    if node.entry.type == "file":
        return node
    if node.entry.type == "hardlink":
        return node.target
    return None


def walk_nodes(start: Node, path: str) -> Iterator[tuple[str, Node, int]]:
    """Every node under ``start`` (itself first) as (path, node, depth below start), parents
    before children, names sorted; symlinks are not followed."""
    todo: list[tuple[str, Node, int]] = [(path, start, 0)]
    while todo:
        here, node, depth = todo.pop()
        yield here, node, depth
        if node.children is not None:
            for name in sorted(node.children, reverse=True):
                todo.append((_join(here, name), node.children[name], depth + 1))


def du(img: Image, top: str = "/", depth: int = 1) -> UsageList:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth must be a non-negative integer, not {depth!r}")
    tree = img.tree()
    start = tree.resolve(top)
    if start.children is None:
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", top)
    top_path = norm_path(top)
    paths: list[str] = []
    sizes: list[int] = []
    counts: list[int] = []
    first: dict[int, tuple[int, tuple[int, ...]]] = {}  # inode -> (size, rows) seen once
    shared: dict[int, tuple[int, set[int]]] = {}  # inode seen at several paths
    # id(node) -> the result rows (directories within `depth`) that count what it holds;
    # set by its parent, which the walk visits first
    parent_rows: dict[int, tuple[int, ...]] = {id(start): ()}
    for path, node, level in walk_nodes(start, top_path):
        rows = parent_rows.pop(id(node))
        if node.children is not None:
            if level <= depth:
                paths.append(path)
                sizes.append(0)
                counts.append(0)
                rows = (*rows, len(paths) - 1)
            for child in node.children.values():
                parent_rows[id(child)] = rows
            continue
        inode = inode_of(node)
        if inode is None:
            continue
        assert inode.entry is not None
        key = id(inode)
        if key in shared:
            shared[key][1].update(rows)
        elif key in first:
            size, before = first.pop(key)
            shared[key] = (size, {*before, *rows})
        else:
            first[key] = (inode.entry.size, rows)
    for size, rows in first.values():
        for r in rows:
            sizes[r] += size
            counts[r] += 1
    for size, row_set in shared.values():
        for r in row_set:
            sizes[r] += size
            counts[r] += 1
    result = UsageList(
        sorted(
            (Usage(p, s, c) for p, s, c in zip(paths, sizes, counts, strict=True)),
            key=lambda u: u.path,
        )
    )
    result.top = top_path
    return result


# -- the layer pass ---------------------------------------------------------------------------


def is_whiteout(name: str) -> bool:
    return name.rpartition("/")[2].startswith(WHITEOUT_PREFIX)


@dataclass
class StoredFile:
    """A regular file some layer stores (every copy, hidden or not)."""

    path: str
    entry: TarEntry
    layer: Layer
    visible: bool = True


@dataclass
class LayerPass:
    """Layers applied one by one: what each adds, replaces and deletes, and which stored
    files the merged image still shows."""

    usage: LayerUsageList
    tree: Tree
    stored: list[StoredFile] = field(default_factory=list)

    def hidden(self) -> list[StoredFile]:
        return [f for f in self.stored if not f.visible]


def history_lines(config: dict[str, Any], count: int) -> list[str]:
    """The ``created_by`` of each layer from the config's history (entries marked
    ``empty_layer`` made no layer); blanks when the history does not line up."""
    history = config.get("history")
    if not isinstance(history, list):
        return [""] * count
    lines = [
        str(h.get("created_by", "") or h.get("comment", ""))
        for h in history
        if isinstance(h, dict) and not h.get("empty_layer")
    ]
    return lines if len(lines) == count else [""] * count


def _same_meta(a: TarEntry, b: TarEntry) -> bool:
    return (a.mode & 0o7777, a.uid, a.gid) == (b.mode & 0o7777, b.uid, b.gid)


def layer_pass(img: Image, *, digests: bool = False) -> LayerPass:
    tree = Tree()
    history = history_lines(img.config, len(img.layers))
    rows = []
    stored: list[StoredFile] = []
    for layer, created_by in zip(img.layers, history, strict=True):
        key = layer.digest or layer.name
        entries = entries_of(layer, digests=digests)
        last: dict[str, TarEntry] = {}
        whiteouts: list[str] = []
        for entry in entries:
            if entry.unsafe or ".." in entry.name.split("/"):
                continue
            if is_whiteout(entry.name):
                whiteouts.append(entry.name)
                continue
            if entry.type == "file":
                stored.append(StoredFile("/" + entry.name, entry, layer))
            if entry.name:
                last[entry.name] = entry
        added = modified = deleted = 0
        for name, entry in last.items():
            below = tree.lookup(name)
            if below is None:
                added += 1
            elif below.children is not None and entry.type == "dir":
                if below.entry is not None and not _same_meta(below.entry, entry):
                    modified += 1
            else:
                modified += 1
        for name in whiteouts:
            parent, _, base = name.rpartition("/")
            if base == OPAQUE_MARKER:
                node = tree.lookup(parent)
                if node is not None and node.children is not None:
                    prefix = parent + "/" if parent else ""
                    deleted += sum(1 for child in node.children if prefix + child not in last)
                continue
            target = (parent + "/" if parent else "") + base[len(WHITEOUT_PREFIX) :]
            if target not in last and tree.lookup(target) is not None:
                deleted += 1
        tree.apply_layer(entries, key)
        files = sum(1 for e in last.values() if e.type == "file")
        rows.append(
            (layer, key, files, added, modified, deleted, created_by),
        )
    # which stored files the merged image shows: as themselves or through a hard link
    # (an entry's offset and name: in a TOC layer's payload offsets an empty file's entry
    # has the offset of the file after it)
    shown: set[tuple[str, int, str]] = set()
    for _path, node, _depth in walk_nodes(tree.root, "/"):
        inode = inode_of(node)
        if inode is not None and inode.entry is not None:
            shown.add((inode.layer, inode.entry.header_offset, inode.entry.name))
    hidden_by_layer: dict[str, int] = {}
    for f in stored:
        key = f.layer.digest or f.layer.name
        if (key, f.entry.header_offset, f.entry.name) not in shown:
            f.visible = False
            hidden_by_layer[key] = hidden_by_layer.get(key, 0) + f.entry.size
    usage = LayerUsageList(
        LayerUsage(
            digest=key,
            size=layer.size,
            uncompressed_size=layer.uncompressed_size,
            files=files,
            added=added,
            modified=modified,
            deleted=deleted,
            hidden_bytes=hidden_by_layer.get(key, 0),
            created_by=created_by,
        )
        for layer, key, files, added, modified, deleted, created_by in rows
    )
    return LayerPass(usage=usage, tree=tree, stored=stored)


def layer_usage(img: Image) -> LayerUsageList:
    return layer_pass(img).usage
