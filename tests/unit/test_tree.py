"""Trees over tar entries: the merged view (whiteouts, opaque directories, hard links),
symlink resolution inside the image root, and walk() with os.walk as the oracle."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from layers import (
    CI,
    Entry,
    build_tar,
    compress_layer,
    dir,
    file,
    hardlink,
    opaque,
    symlink,
    whiteout,
)

import seekoci
from seekoci.cache import MemoryCache
from seekoci.formats.tar import TarEntry, TarScanner
from seekoci.image import Image
from seekoci.source import BytesSource
from seekoci.tree import MAX_SYMLINKS, Node, Tree


def entries(*declared: Entry) -> list[TarEntry]:
    scanner = TarScanner(name="tree test")
    scanner.feed(build_tar(declared))
    scanner.finish()
    return scanner.entries


def merged(*layers: Sequence[Entry]) -> Tree:
    return Tree.merged((f"layer{i}", entries(*layer)) for i, layer in enumerate(layers))


def size_of(tree: Tree, path: str) -> int:
    node = tree.resolve(path)
    assert node.entry is not None
    return node.entry.size


# --------------------------------------------------------------------------- whiteouts


def test_a_whiteout_deletes_a_lower_file_and_is_not_listed() -> None:
    tree = merged([file("etc/a", b"1"), file("etc/b", b"2")], [whiteout("etc/a")])
    assert tree.listdir("/etc") == ["b"]
    with pytest.raises(FileNotFoundError):
        tree.resolve("/etc/a")


def test_a_whiteout_deletes_a_lower_directory_tree() -> None:
    tree = merged([file("d/e/f", b"1"), file("keep", b"")], [whiteout("d")])
    assert tree.listdir("/") == ["keep"]


@pytest.mark.parametrize("whiteout_first", [True, False])
def test_a_whiteout_does_not_hide_its_own_layer(whiteout_first: bool) -> None:
    upper = [whiteout("a"), file("a", b"new")]
    if not whiteout_first:
        upper.reverse()
    tree = merged([file("a", b"old!")], upper)
    assert tree.listdir("/") == ["a"]
    assert size_of(tree, "/a") == 3
    assert tree.resolve("/a").layer == "layer1"


@pytest.mark.parametrize("marker_first", [True, False])
def test_an_opaque_directory_hides_only_lower_contents(marker_first: bool) -> None:
    upper = [opaque("d"), file("d/new", b"")]
    if not marker_first:
        upper.reverse()
    tree = merged([file("d/old", b""), file("d/sub/deep", b""), file("other", b"")], upper)
    assert tree.listdir("/d") == ["new"]
    assert tree.listdir("/") == ["d", "other"]


def test_a_later_layer_adds_into_an_opaque_directory() -> None:
    tree = merged([file("d/a", b"")], [opaque("d")], [file("d/b", b"")])
    assert tree.listdir("/d") == ["b"]


def test_whiteouts_of_missing_paths_are_harmless() -> None:
    tree = merged([file("a", b"")], [whiteout("nope"), whiteout("x/y/z"), opaque("q")])
    names = tree.listdir("/")
    assert "a" in names and not any(n.startswith(".wh.") for n in names)


def test_a_file_replaces_a_directory_and_back() -> None:
    tree = merged([file("p/child", b"")], [file("p", b"now a file")])
    assert tree.resolve("/p").type == "file"
    tree = merged([file("p", b"a file")], [file("p/child", b"")])
    assert tree.resolve("/p").is_dir and tree.listdir("/p") == ["child"]


def test_a_single_layer_tree_keeps_whiteouts_as_entries() -> None:
    tree = Tree.from_entries(entries(whiteout("a"), opaque("d")), layer="L")
    assert tree.listdir("/") == [".wh.a", "d"]
    assert tree.listdir("/d") == [".wh..wh..opq"]


# --------------------------------------------------------------------------- symlinks

LINKS = [
    dir("etc"),
    file("etc/hosts", b"hosts"),
    dir("usr/lib"),
    file("usr/lib/libc.so", b"libc"),
    symlink("lib", "usr/lib"),
    symlink("abs", "/etc/hosts"),
    symlink("usr/lib/up", "../../../../../etc"),
    symlink("loop1", "loop2"),
    symlink("loop2", "loop1"),
    symlink("self", "self"),
    symlink("dangling", "nowhere"),
    symlink("tofile", "etc/hosts"),
    symlink("empty", ""),
]


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/lib/libc.so", "usr/lib/libc.so"),
        ("/abs", "etc/hosts"),
        ("/usr/lib/up/hosts", "etc/hosts"),  # `..` stops at the root
        ("/../../../etc/hosts", "etc/hosts"),
        ("/lib/../lib/libc.so", "usr/lib/libc.so"),  # `..` after a symlink: its target's parent
        ("lib/./libc.so", "usr/lib/libc.so"),
        ("/tofile", "etc/hosts"),
    ],
)
def test_symlinks_resolve_inside_the_root(path: str, target: str) -> None:
    tree = merged(LINKS)
    assert tree.resolve(path) is tree.lookup(target)


def test_the_last_symlink_is_kept_when_asked() -> None:
    tree = merged(LINKS)
    node = tree.resolve("/lib", follow_symlinks=False)
    assert node.type == "symlink" and node.entry is not None and node.entry.linkname == "usr/lib"
    # links in the middle of a path are always followed
    assert tree.resolve("/lib/libc.so", follow_symlinks=False).type == "file"


def test_a_trailing_slash_names_a_directory_in_a_path_and_in_a_link() -> None:
    # as the kernel has it: ENOTDIR for a file named with a trailing "/" or "/.", a ".."
    # after a file, or a link whose target ends so and names a file
    slashed = [symlink("slashed-file", "etc/hosts/"), symlink("slashed-dir", "usr/lib/.")]
    tree = merged([*LINKS, *slashed])
    for path in ("/etc/hosts/", "/etc/hosts/.", "/etc/hosts/..", "/tofile/", "/slashed-file"):
        with pytest.raises(NotADirectoryError):
            tree.resolve(path)
    assert tree.resolve("/slashed-file", follow_symlinks=False).type == "symlink"  # (lstat)
    assert tree.resolve("/slashed-dir") is tree.lookup("usr/lib")
    assert tree.resolve("/lib/") is tree.lookup("usr/lib")
    assert tree.resolve("/lib/", follow_symlinks=False) is tree.lookup("usr/lib")


@pytest.mark.parametrize("path", ["/loop1", "/self", "/loop2/x"])
def test_a_symlink_loop_is_eloop(path: str) -> None:
    with pytest.raises(OSError) as info:
        merged(LINKS).resolve(path)
    assert info.value.errno == errno.ELOOP


def test_forty_symlinks_resolve_and_forty_one_do_not() -> None:
    chain = [symlink(f"s{i}", f"s{i + 1}") for i in range(MAX_SYMLINKS + 1)]
    tree = merged([file(f"s{MAX_SYMLINKS + 1}", b"end"), *chain])
    assert tree.resolve(f"/s{1}").type == "file"  # 40 links
    with pytest.raises(OSError) as info:
        tree.resolve("/s0")  # 41 links
    assert info.value.errno == errno.ELOOP


@pytest.mark.parametrize("path", ["/etc/hosts/x", "/tofile/x", "/abs/x"])
def test_a_file_is_not_a_directory(path: str) -> None:
    tree = merged(LINKS)
    with pytest.raises(NotADirectoryError) as info:
        tree.resolve(path)
    assert info.value.errno == errno.ENOTDIR


def test_listing_a_file_is_not_a_directory() -> None:
    with pytest.raises(NotADirectoryError):
        merged(LINKS).listdir("/etc/hosts")


@pytest.mark.parametrize("path", ["/missing", "/etc/missing", "/dangling", "/empty"])
def test_missing_paths(path: str) -> None:
    with pytest.raises(FileNotFoundError) as info:
        merged(LINKS).resolve(path)
    assert info.value.errno == errno.ENOENT


# --------------------------------------------------------------------------- walk

WALK_TREE = [
    dir("a"),
    dir("a/b"),
    file("a/b/f1", b"1"),
    file("a/f2", b"2"),
    dir("a/empty"),
    symlink("a/to_b", "b"),
    symlink("a/to_f2", "f2"),
    symlink("a/dangling", "nope"),
    symlink("a/loop", "loop"),
    dir("z"),
    symlink("z/up", "../a"),
    file("z/b/deep/x", b"x"),  # implied directories
]


def materialise(declared: list[Entry], root: Path) -> None:
    for e in declared:
        path = root / e.name
        path.parent.mkdir(parents=True, exist_ok=True)
        if e.type == "dir":
            path.mkdir(exist_ok=True)
        elif e.type == "file":
            path.write_bytes(e.data)
        elif e.type == "symlink":
            os.symlink(e.linkname, path)


def os_walk(root: Path, top: str) -> list[tuple[str, list[str], list[str]]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root / top.lstrip("/")):
        dirnames.sort()
        rel = "/" + os.path.relpath(dirpath, root).replace(os.sep, "/")
        out.append(("/" if rel == "/." else rel, dirnames[:], sorted(filenames)))
    return out


@pytest.mark.parametrize("top", ["/", "/a", "/z", "/a/to_b", "/a/f2", "/missing"])
def test_walk_is_os_walk(top: str, tmp_path: Path) -> None:
    materialise(WALK_TREE, tmp_path)
    tree = merged(WALK_TREE)
    assert list(tree.walk(top)) == os_walk(tmp_path, top)


# --------------------------------------------------------------------------- hard links


def test_a_hard_link_points_at_its_target_node() -> None:
    tree = merged(
        [file("a", b"old"), file("b", b"bbb")],
        [hardlink("h", "a"), hardlink("chain", "h"), hardlink("gone", "missing")],
        [file("a", b"replaced later")],
    )
    h = tree.resolve("/h")
    assert isinstance(h.target, Node) and h.target.entry is not None
    assert h.target.layer == "layer0" and h.target.entry.size == 3  # the file linked then
    assert tree.resolve("/chain").target is h.target
    assert tree.resolve("/gone").target is None


# --------------------------------------------------------------------------- the image view


def image_of(*layers: Sequence[Entry], producer: str = "python") -> Image:
    objs = []
    for declared in layers:
        blob = compress_layer(build_tar(declared), producer)
        objs.append(
            seekoci.Layer(
                BytesSource(blob),
                cache=MemoryCache(),
                digest="sha256:" + hashlib.sha256(blob).hexdigest(),
                span_size=4096,
            )
        )
    return Image(
        reference="test", digest="", platform="linux/amd64", config={}, manifest={}, layers=objs
    )


def test_the_image_reads_a_hard_link_to_a_lower_layer() -> None:
    layers = ([file("a", b"payload")], [hardlink("b", "a")])
    img = image_of(*layers)
    assert img.read_bytes("/b") == b"payload"  # before anything built the merged tree
    info = image_of(*layers).stat("/b")
    assert (info.type, info.size, info.linkname) == ("file", 7, "/a")


def test_a_hard_link_reads_the_file_stored_before_it() -> None:
    # tar semantics (GNU tar, Python's tarfile): a link is to the member of that name that
    # came before it; a later member of the same name replaces the name, not the link
    layers = ([file("x", b"linked"), hardlink("h", "x"), file("x", b"")],)
    assert image_of(*layers).read_bytes("/h") == b"linked"
    tree_img = image_of(*layers)
    tree_img.tree()
    assert tree_img.read_bytes("/h") == b"linked"
    assert image_of(*layers).layers[0].open("h").read() == b"linked"


def test_the_image_applies_whiteouts_without_building_the_tree() -> None:
    layers = (
        [file("d/x", b"lower"), file("e/y", b"y"), file("keep", b"k")],
        [opaque("d"), whiteout("e"), file("d/z", b"z")],
    )
    img = image_of(*layers)
    with pytest.raises(FileNotFoundError):
        img.open("/d/x")
    with pytest.raises(FileNotFoundError):
        image_of(*layers).read_bytes("/e/y")
    assert image_of(*layers).read_bytes("/keep") == b"k"
    assert image_of(*layers).read_bytes("/d/z") == b"z"


# a small vocabulary, so that layers collide on names
PATHS = ["a", "d/x", "d/y", "d/e/z", "e"]
DIRS = ["d", "d/e", "e"]


def with_parent(entry: Entry) -> list[Entry]:
    """A whiteout or opaque marker comes with its directory, as real layers have it."""
    parent = entry.name.rpartition("/")[0]
    return [dir(parent), entry] if parent else [entry]


layer_entries = st.one_of(
    st.builds(file, st.sampled_from(PATHS), st.binary(min_size=1, max_size=20)).map(lambda e: [e]),
    st.builds(dir, st.sampled_from(DIRS)).map(lambda e: [e]),
    st.builds(whiteout, st.sampled_from([*PATHS, "d/e"])).map(with_parent),
    st.builds(opaque, st.sampled_from(DIRS)).map(with_parent),
    # a link to a file of its own layer, named for the link (links into lower layers and to a
    # name stored twice have explicit tests)
    st.tuples(st.sampled_from(["h", "d/h"]), st.binary(max_size=9)).map(
        lambda t: [file(t[0] + ".target", t[1]), hardlink(t[0], t[0] + ".target")]
    ),
)
a_layer = st.lists(layer_entries, max_size=5).map(lambda groups: [e for g in groups for e in g])


def model_of(layers: list[list[Entry]]) -> dict[str, bytes | None]:
    """Overlay semantics written out plainly: path -> file bytes (None for a directory)."""
    state: dict[str, bytes | None] = {}

    def drop(path: str) -> None:
        for p in [p for p in state if p == path or p.startswith(path + "/")]:
            del state[p]

    for declared in layers:
        for e in declared:  # whiteouts first: they only hide what lower layers made
            parent, _, base = e.name.rpartition("/")
            if base == ".wh..wh..opq":
                for p in [p for p in state if p.startswith(parent + "/")]:
                    del state[p]
            elif base.startswith(".wh."):
                drop(f"{parent}/{base[4:]}".lstrip("/"))
        for e in declared:
            if e.name.rpartition("/")[2].startswith(".wh."):
                continue
            parts = e.name.split("/")
            for i in range(1, len(parts)):  # parents become directories
                ancestor = "/".join(parts[:i])
                if state.get(ancestor, b"") is not None:
                    drop(ancestor)
                    state[ancestor] = None
            if e.type == "dir":
                if state.get(e.name, b"") is not None:
                    drop(e.name)
                    state[e.name] = None
            elif e.type == "file":
                drop(e.name)
                state[e.name] = e.data
            elif e.type == "hardlink":
                target = state.get(e.linkname)
                drop(e.name)
                if isinstance(target, bytes):
                    state[e.name] = target
                else:
                    state[e.name] = b"<dangling>"
    return state


@CI
@given(layers=st.lists(a_layer, min_size=1, max_size=4))
def test_the_image_agrees_with_an_overlay_model(layers: list[list[Entry]]) -> None:
    model = model_of(layers)
    for path in sorted({*PATHS, "d", "d/e", "h", "d/h"}):
        img = image_of(*layers)  # fresh: no merged tree yet
        expected = model.get(path, b"<missing>")
        if expected == b"<dangling>":
            with pytest.raises(FileNotFoundError):
                img.read_bytes("/" + path)
        elif expected == b"<missing>":
            with pytest.raises((FileNotFoundError, NotADirectoryError)):
                img.read_bytes("/" + path)
            assert not image_of(*layers).exists("/" + path)
        elif expected is None:
            with pytest.raises(IsADirectoryError):
                img.read_bytes("/" + path)
        else:
            assert img.read_bytes("/" + path) == expected, path
            tree_img = image_of(*layers)
            tree_img.tree()  # the same answer through the merged tree
            assert tree_img.read_bytes("/" + path) == expected, path


# --------------------------------------------------------------------------- building


class _WalkEveryName(Tree):
    """A tree that finds each entry's directory from the root, as before the shortcut."""

    def _insert(
        self, entry: TarEntry, layer: str, *, link_in: Tree | None, last: tuple[str, Node] | None
    ) -> tuple[str, Node] | None:
        super()._insert(entry, layer, link_in=link_in, last=None)
        return None


def _shape(tree: Tree) -> list[tuple[object, ...]]:
    """Every node: path, type, entry (by identity), layer(s), hard-link target."""
    nodes: dict[int, str] = {}
    out: list[tuple[object, ...]] = []
    todo = [("", tree.root)]
    while todo:
        path, node = todo.pop()
        nodes[id(node)] = path
        out.append((path, node.type, id(node.entry), node.layer, node.layers, node.target))
        for name, child in sorted((node.children or {}).items()):
            todo.append((f"{path}/{name}", child))
    return [(*row[:5], None if row[5] is None else nodes.get(id(row[5]))) for row in out]


_PART = st.sampled_from(["a", "b", "c", ".", "..", "", ".wh.a", ".wh..wh..opq"])
_ENTRY = st.tuples(
    st.lists(_PART, min_size=1, max_size=4).map("/".join),
    st.sampled_from(["dir", "file", "symlink", "hardlink"]),
    st.booleans(),
)


@given(layers=st.lists(st.lists(_ENTRY, max_size=12), min_size=1, max_size=3))
def test_entries_go_where_a_walk_from_the_root_puts_them(
    layers: list[list[tuple[str, str, bool]]],
) -> None:
    """A layer's entries are put in the directory of the entry before without a walk from
    the root when they share it; names that replace that directory, climb out of it or are
    odd (``a/./b``, ``a//b``, ``a/..``) must give the tree a walk for each name gives."""
    made = [
        (
            f"layer{i}",
            [
                TarEntry(name, kind, 0, 0o644, 0, 0, 0.0, linkname="a/b", unsafe=unsafe and i == 0)
                for name, kind, unsafe in entries
            ],
        )
        for i, entries in enumerate(layers)
    ]
    assert _shape(Tree.merged(made)) == _shape(_WalkEveryName.merged(made))
    one = made[0][1]
    assert _shape(Tree.from_entries(one, layer="L")) == _shape(
        _WalkEveryName.from_entries(one, layer="L")
    )
