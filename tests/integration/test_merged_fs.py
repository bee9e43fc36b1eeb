"""The merged filesystem: whiteouts, opaque dirs, symlinks, hard links, stat, walk, errors."""

from __future__ import annotations

import errno
import posixpath

import pytest
from imagebuilder import (
    DEFAULT_MTIME,
    block,
    char,
    dir,
    fifo,
    file,
    hardlink,
    image,
    layer,
    opaque,
    symlink,
    whiteout,
)

import seekoci

pytestmark = pytest.mark.integration

REPO = "merged/fs"

PASSWD = b"root:x:0:0:seekoci-image-passwd:/root:/bin/sh\n"
TOOL = b"#!/bin/sh\necho setuid tool\n"
LIB = b"\x7fELF not really a library\n"
KEEP = b"kept in the lower layer\n"
CAP = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
LONG_DIR = "long/" + "d" * 120
LONG_NAME = LONG_DIR + "/file-" + "x" * 60

BASE = layer(
    dir("etc"),
    file("etc/passwd", PASSWD),
    file("etc/hosts", b"hosts v1\n"),
    dir("usr"),
    dir("usr/bin"),
    file("usr/bin/tool", TOOL, mode=0o4755),
    file("usr/bin/sgid", b"sgid\n", mode=0o2711),
    dir("tmp", mode=0o1777),
    dir("data"),
    file("data/keep.txt", KEEP),
    file("data/gone.txt", b"deleted by a whiteout\n"),
    file("data/replaced.txt", b"old\n"),
    hardlink("data/hard", "data/keep.txt"),
    dir("opq"),
    file("opq/lower.txt", b"hidden by the opaque marker\n"),
    dir("opq/sub"),
    file("opq/sub/deep.txt", b"deep\n"),
    dir("olddir"),
    file("olddir/x.txt", b"x\n"),
    dir("swap"),
    file("swap/inner.txt", b"inner\n"),
    dir("lib"),
    file("lib/libfoo.so.1", LIB),
    symlink("lib/libfoo.so", "libfoo.so.1"),
    symlink("bin", "usr/bin"),
    symlink("abs-link", "/etc/passwd"),
    symlink("escape", "../../../../etc/passwd"),
    symlink("dangling", "/nonexistent/target"),
    dir("loop"),
    symlink("loop/a", "b"),
    symlink("loop/b", "a"),
    symlink("self", "self"),
    dir("dev"),
    char("dev/null", 1, 3),
    block("dev/sda", 8, 0),
    fifo("dev/fifo"),
    file(
        "xattr.txt", b"with xattrs\n", xattrs={"user.comment": b"hello", "security.capability": CAP}
    ),
    file("frac.txt", b"fractional mtime\n", mtime=1_700_000_000.5),
    file("owned.txt", b"owned\n", mode=0o640, uid=1234, gid=5678),
    file(LONG_NAME, b"a name longer than 100 bytes\n"),
    symlink("long-link", LONG_NAME),
    producer="python",
)

UPPER = layer(
    whiteout("data/gone.txt"),
    file("data/replaced.txt", b"new contents, longer than the old ones\n"),
    file("data/new.txt", b"new\n"),
    opaque("opq"),
    file("opq/upper.txt", b"upper\n"),
    whiteout("olddir"),
    file("swap", b"a file where a directory was\n"),
    file("etc/hosts", b"hosts v2\n"),
    producer="pigz",
    tar_format="gnu",
)

TOP = layer(
    file("etc/hosts", b"hosts v3\n"),
    dir("olddir"),
    file("olddir/again.txt", b"recreated after the whiteout\n"),
    producer="multi-member",
    members=3,
    tar_format="ustar",
)

ROOT_DIRS = ["bin", "data", "dev", "etc", "lib", "long", "loop", "olddir", "opq", "tmp", "usr"]
ROOT_FILES = [
    "abs-link",
    "dangling",
    "escape",
    "frac.txt",
    "long-link",
    "owned.txt",
    "self",
    "swap",
    "xattr.txt",
]


@pytest.fixture(scope="module")
def img(registry, tmp_path_factory: pytest.TempPathFactory):
    registry.push(REPO, "v1", image(BASE, UPPER, TOP))
    return seekoci.open_image(
        registry.ref(REPO, "v1"), cache_dir=tmp_path_factory.mktemp("merged-cache")
    )


def test_whiteout_hides_lower_file(img) -> None:
    assert not img.exists("/data/gone.txt")
    with pytest.raises(FileNotFoundError):
        img.read_bytes("/data/gone.txt")
    with pytest.raises(FileNotFoundError):
        img.stat("/data/gone.txt")
    assert img.listdir("/data") == ["hard", "keep.txt", "new.txt", "replaced.txt"]


def test_whiteout_of_a_directory_then_recreated(img) -> None:
    assert not img.exists("/olddir/x.txt")
    assert img.listdir("/olddir") == ["again.txt"]
    assert img.read_bytes("/olddir/again.txt") == TOP.entry("olddir/again.txt").data


def test_opaque_directory_hides_lower_contents(img) -> None:
    assert img.listdir("/opq") == ["upper.txt"]
    for hidden in ("/opq/lower.txt", "/opq/sub", "/opq/sub/deep.txt"):
        assert not img.exists(hidden), hidden
    assert img.read_bytes("/opq/upper.txt") == UPPER.entry("opq/upper.txt").data


def test_no_whiteout_names_are_visible(img) -> None:
    for dirpath, dirnames, filenames in img.walk("/"):
        for name in dirnames + filenames:
            assert not name.startswith(".wh."), posixpath.join(dirpath, name)


@pytest.mark.parametrize("path", ["/data/.wh.gone.txt", "/.wh.olddir", "/opq/.wh..wh..opq"])
def test_whiteout_files_are_not_there_before_the_tree_is_built(registry, path, tmp_path) -> None:
    # a fresh image answers a file's read or stat without merging every layer (the
    # tree is built by the first listing): a whiteout's name must not be found that way
    ref = registry.ref(REPO, "v1")
    for call in (seekoci.Image.read_bytes, seekoci.Image.stat, seekoci.Image.open):
        fresh = seekoci.open_image(ref, cache_dir=tmp_path)
        with pytest.raises(FileNotFoundError):
            call(fresh, path)
        assert fresh._tree is not None  # (the merged tree answered)
    assert not seekoci.open_image(ref, cache_dir=tmp_path).exists(path)


def test_upper_layers_replace_files(img) -> None:
    new = UPPER.entry("data/replaced.txt").data
    assert img.read_bytes("/data/replaced.txt") == new
    info = img.stat("/data/replaced.txt")
    assert info.size == len(new)
    assert info.layer == UPPER.digest
    assert img.read_bytes("/etc/hosts") == TOP.entry("etc/hosts").data
    assert img.stat("/etc/hosts").layer == TOP.digest
    assert img.stat("/etc/passwd").layer == BASE.digest


def test_a_file_replaces_a_lower_directory(img) -> None:
    assert img.read_bytes("/swap") == UPPER.entry("swap").data
    assert img.stat("/swap").type == "file"
    assert not img.exists("/swap/inner.txt")


def test_listdir_root_is_sorted_and_merged(img) -> None:
    assert img.listdir("/") == sorted(ROOT_DIRS + ROOT_FILES)
    assert img.listdir() == img.listdir("/")


def test_implicit_parent_directories(img) -> None:
    assert img.listdir("/long") == [LONG_DIR.split("/")[1]]
    assert img.stat("/" + LONG_DIR).type == "dir"
    assert img.read_bytes("/" + LONG_NAME) == BASE.entry(LONG_NAME).data


def test_relative_symlinks(img) -> None:
    assert img.read_bytes("/lib/libfoo.so") == LIB
    link = img.stat("/lib/libfoo.so", follow_symlinks=False)
    assert link.type == "symlink"
    assert link.linkname == "libfoo.so.1"
    target = img.stat("/lib/libfoo.so")
    assert (target.type, target.size) == ("file", len(LIB))
    assert img.read_bytes("/long-link") == BASE.entry(LONG_NAME).data


def test_symlinked_directory_in_the_middle_of_a_path(img) -> None:
    assert img.read_bytes("/bin/tool") == TOOL
    assert img.listdir("/bin") == img.listdir("/usr/bin") == ["sgid", "tool"]
    assert img.stat("/bin").type == "dir"
    assert img.stat("/bin", follow_symlinks=False).type == "symlink"


def test_absolute_symlinks_resolve_inside_the_image(img) -> None:
    assert img.read_bytes("/abs-link") == PASSWD
    # ../../../../etc/passwd from / stays at the image root: the image's passwd, not the host's.
    assert img.read_bytes("/escape") == PASSWD
    with img.open("/escape") as f:
        assert f.read() == PASSWD


def test_dangling_symlink(img) -> None:
    with pytest.raises(FileNotFoundError):
        img.read_bytes("/dangling")
    info = img.stat("/dangling", follow_symlinks=False)
    assert (info.type, info.linkname) == ("symlink", "/nonexistent/target")


@pytest.mark.parametrize("path", ["/loop/a", "/loop/b", "/self"])
def test_symlink_loop_raises_eloop(img, path: str) -> None:
    with pytest.raises(OSError) as excinfo:
        img.read_bytes(path)
    assert excinfo.value.errno == errno.ELOOP
    with pytest.raises(OSError) as excinfo:
        img.stat(path)
    assert excinfo.value.errno == errno.ELOOP
    assert img.stat(path, follow_symlinks=False).type == "symlink"


def test_hard_link_is_a_regular_file_in_the_merged_view(img) -> None:
    info = img.stat("/data/hard")
    assert info.type == "file"
    assert info.size == len(KEEP)
    assert info.linkname.lstrip("/") == "data/keep.txt"
    assert img.read_bytes("/data/hard") == KEEP
    with img.open("/data/hard") as f:
        assert f.size == len(KEEP)
        assert f.read() == KEEP


def test_walk_like_os_walk(img) -> None:
    result = list(img.walk("/"))
    dirpaths = [dirpath for dirpath, _, _ in result]
    assert dirpaths[0] == "/"
    top = result[0]
    assert top[1] == ROOT_DIRS
    assert top[2] == ROOT_FILES
    expected_dirs = {
        "/",
        "/data",
        "/dev",
        "/etc",
        "/lib",
        "/long",
        "/" + LONG_DIR,
        "/loop",
        "/olddir",
        "/opq",
        "/tmp",
        "/usr",
        "/usr/bin",
    }
    assert set(dirpaths) == expected_dirs  # /bin is listed, never descended
    assert len(dirpaths) == len(expected_dirs)
    for path in dirpaths[1:]:  # top-down: a parent before its children
        assert dirpaths.index(posixpath.dirname(path)) < dirpaths.index(path)
    walked = {d: (dn, fn) for d, dn, fn in result}
    assert walked["/dev"] == ([], ["fifo", "null", "sda"])
    assert walked["/loop"] == ([], ["a", "b"])
    assert walked["/lib"] == ([], ["libfoo.so", "libfoo.so.1"])
    assert walked["/usr/bin"] == ([], ["sgid", "tool"])


def test_walk_of_a_subtree(img) -> None:
    assert list(img.walk("/usr")) == [("/usr", ["bin"], []), ("/usr/bin", [], ["sgid", "tool"])]


def test_stat_regular_file_fields(img) -> None:
    info = img.stat("/owned.txt")
    declared = BASE.entry("owned.txt")
    assert info.path == "/owned.txt"
    assert info.type == "file"
    assert info.size == len(declared.data)
    assert info.mode == 0o640
    assert (info.uid, info.gid) == (1234, 5678)
    assert isinstance(info.mtime, float)
    assert info.mtime == pytest.approx(DEFAULT_MTIME)
    assert info.linkname == ""
    assert info.xattrs == {}
    assert info.layer == BASE.digest


@pytest.mark.parametrize(
    ("path", "kind", "mode"),
    [
        ("/usr/bin/tool", "file", 0o4755),
        ("/usr/bin/sgid", "file", 0o2711),
        ("/tmp", "dir", 0o1777),
        ("/etc", "dir", 0o755),
        ("/dev/null", "char", 0o666),
        ("/dev/sda", "block", 0o660),
        ("/dev/fifo", "fifo", 0o644),
    ],
)
def test_stat_types_and_special_mode_bits(img, path: str, kind: str, mode: int) -> None:
    info = img.stat(path)
    assert (info.type, info.mode) == (kind, mode)


def test_stat_fractional_mtime_and_xattrs(img) -> None:
    assert img.stat("/frac.txt").mtime == pytest.approx(1_700_000_000.5, abs=1e-6)
    assert img.stat("/xattr.txt").xattrs == {"user.comment": b"hello", "security.capability": CAP}


def test_exists(img) -> None:
    for path in ("/", "/etc", "/etc/passwd", "/bin", "/bin/tool", "/abs-link", "/data/hard"):
        assert img.exists(path) is True, path
    for path in ("/nope", "/etc/nope", "/data/gone.txt", "/opq/lower.txt", "/olddir/x.txt"):
        assert img.exists(path) is False, path


def test_missing_paths_raise_file_not_found(img) -> None:
    with pytest.raises(FileNotFoundError):
        img.read_bytes("/no/such/file")
    with pytest.raises(FileNotFoundError):
        img.open("/etc/nope")
    with pytest.raises(FileNotFoundError):
        img.listdir("/nope")
    with pytest.raises(FileNotFoundError):
        img.stat("/nope", follow_symlinks=False)


def test_a_path_ending_in_a_slash_names_a_directory(registry, img, tmp_path) -> None:
    # as in POSIX: open("/etc/passwd/") is ENOTDIR, a symlink before the slash is followed
    fresh = seekoci.open_image(registry.ref(REPO, "v1"), cache_dir=tmp_path)
    for opened in (fresh, img):  # (the first answers without its tree where it can)
        for path in ("/etc/passwd/", "/etc/passwd/.", "/etc/passwd/.."):
            with pytest.raises(NotADirectoryError):
                opened.read_bytes(path)
            with pytest.raises(NotADirectoryError):
                opened.stat(path)
            assert not opened.exists(path)
    assert img.listdir("/etc/") == img.listdir("/etc")
    assert img.stat("/bin/").type == "dir"
    assert img.stat("/bin/", follow_symlinks=False).type == "dir"
    assert img.stat("/bin", follow_symlinks=False).type == "symlink"
    assert img.read_bytes("/etc/./passwd") == img.read_bytes("/etc/passwd")


def test_directories_and_files_used_the_wrong_way(img) -> None:
    with pytest.raises(IsADirectoryError):
        img.open("/etc")
    with pytest.raises(IsADirectoryError):
        img.read_bytes("/bin")  # a symlink to a directory
    with pytest.raises(NotADirectoryError):
        img.listdir("/etc/passwd")
    with pytest.raises((NotADirectoryError, FileNotFoundError)):
        img.read_bytes("/etc/passwd/child")
