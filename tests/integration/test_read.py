"""Reading files out of an image in a real registry: open_image, read_bytes, file objects."""

from __future__ import annotations

import io
import json
import random
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from imagebuilder import (
    Image,
    dir,
    file,
    image,
    layer,
    random_bytes,
    text_bytes,
    write_oci_layout,
)

import seekoci

pytestmark = pytest.mark.integration

REPO = "read/multi"
TAG = "v1"
BIG_PATH = "/data/big.bin"


@dataclass
class Pushed:
    image: Image
    ref: str
    files: dict[str, bytes]  # absolute path -> expected bytes


def build_read_image() -> tuple[Image, dict[str, bytes]]:
    """Six layers, one per producer, each with its own files; a 20 MB file in the first."""
    big = text_bytes("big-20mb", 20 << 20)
    layers = [
        layer(
            dir("data"),
            file("data/small.txt", b"small file in the python layer\n"),
            file("data/empty", b""),
            file("data/big.bin", big),
            producer="python",
        ),
        layer(file("gzip/a.txt", text_bytes("gzip-a", 10_000)), producer="gzip", tar_format="gnu"),
        layer(
            file("pigz/b.bin", text_bytes("pigz-b", 3 << 20)),
            file("pigz/tiny", b"t"),
            producer="pigz",
        ),
        layer(
            file("mm/c.bin", text_bytes("mm-c", 2 << 20)),
            file("mm/after.txt", b"after the members\n"),
            producer="multi-member",
            members=5,
            seed="read",
            tar_format="ustar",
        ),
        layer(file("fname/d.txt", b"a layer whose gzip header has a name\n"), producer="fname"),
        layer(
            file("none/e.bin", random_bytes("none-e", 1 << 20)),
            file("none/f.txt", b"uncompressed\n"),
            producer="none",
        ),
    ]
    files = {e.path: e.data for lay in layers for e in lay.entries if e.type == "file"}
    return image(*layers, config={"Labels": {"test": "read"}}), files


@pytest.fixture(scope="module")
def pushed(registry) -> Pushed:
    img, files = build_read_image()
    registry.push(REPO, TAG, img)
    return Pushed(img, registry.ref(REPO, TAG), files)


@pytest.fixture(scope="module")
def opened(pushed: Pushed, tmp_path_factory: pytest.TempPathFactory):
    return seekoci.open_image(pushed.ref, cache_dir=tmp_path_factory.mktemp("read-cache"))


def test_image_metadata(opened, pushed: Pushed, registry) -> None:
    assert opened.digest == pushed.image.digest
    assert opened.platform == "linux/amd64"
    assert opened.config == pushed.image.config
    assert opened.reference in (
        f"{registry.host}/{REPO}:{TAG}",
        f"{registry.host}/{REPO}:{TAG}@{pushed.image.digest}",
    )
    assert [lay.digest for lay in opened.layers] == [lay.digest for lay in pushed.image.layers]
    assert [lay.media_type for lay in opened.layers] == [
        lay.media_type for lay in pushed.image.layers
    ]
    assert [lay.size for lay in opened.layers] == [lay.size for lay in pushed.image.layers]


def test_read_bytes_of_every_file(opened, pushed: Pushed) -> None:
    for path, data in pushed.files.items():
        assert opened.read_bytes(path) == data, path


def test_big_file_spanning_many_checkpoints(opened, pushed: Pushed) -> None:
    big = pushed.files[BIG_PATH]
    assert opened.stat(BIG_PATH).size == len(big)
    assert opened.read_bytes(BIG_PATH) == big
    with opened.open(BIG_PATH) as f:
        # Reads that start deep inside the file, far from any gzip member start.
        for offset in (len(big) // 3, len(big) // 2 + 12_345, len(big) - 70_000):
            f.seek(offset)
            assert f.read(65_536) == big[offset : offset + 65_536], offset


def test_empty_file(opened) -> None:
    assert opened.read_bytes("/data/empty") == b""
    assert opened.stat("/data/empty").size == 0
    with opened.open("/data/empty") as f:
        assert f.size == 0
        assert f.read() == b""
        assert f.read(10) == b""
        assert f.readinto(bytearray(8)) == 0


def test_file_object_protocol(opened, pushed: Pushed) -> None:
    data = pushed.files[BIG_PATH]
    size = len(data)
    f = opened.open(BIG_PATH)
    assert isinstance(f, io.BufferedIOBase)
    assert f.readable() and f.seekable()
    assert f.name == BIG_PATH
    assert f.size == size
    assert f.tell() == 0
    assert f.read(100) == data[:100]
    assert f.tell() == 100
    assert f.seek(5_000_000) == 5_000_000
    assert f.read(10) == data[5_000_000:5_000_010]
    assert f.seek(-10, io.SEEK_CUR) == 5_000_000
    assert f.seek(1000, io.SEEK_CUR) == 5_001_000
    assert f.read(1) == data[5_001_000:5_001_001]
    assert f.seek(-100, io.SEEK_END) == size - 100
    assert f.read() == data[-100:]
    assert f.tell() == size
    assert f.read() == b""
    assert f.read(10) == b""
    assert f.seek(size + 50) == size + 50
    assert f.read(1) == b""
    f.seek(123)
    chunk = f.read1(1000)
    assert 0 < len(chunk) <= 1000
    assert chunk == data[123 : 123 + len(chunk)]
    assert f.tell() == 123 + len(chunk)
    buf = bytearray(4096)
    f.seek(7)
    assert f.readinto(buf) == 4096
    assert bytes(buf) == data[7 : 7 + 4096]
    f.seek(size - 10)
    assert f.readinto(buf) == 10
    assert bytes(buf[:10]) == data[-10:]
    f.seek(0)
    assert f.read(-1) == data
    with pytest.raises((ValueError, OSError)):
        f.seek(-1)
    f.close()
    assert f.closed
    with pytest.raises(ValueError):
        f.read(1)
    with pytest.raises(ValueError):
        f.seek(0)


def test_context_manager_closes(opened, pushed: Pushed) -> None:
    with opened.open("/data/small.txt") as f:
        assert f.read() == pushed.files["/data/small.txt"]
    assert f.closed
    with pytest.raises(ValueError):
        f.read()


read_op = st.one_of(
    st.tuples(st.just("read"), st.integers(min_value=-1, max_value=300_000)),
    st.tuples(st.just("read1"), st.integers(min_value=1, max_value=300_000)),
    st.tuples(st.just("readinto"), st.integers(min_value=0, max_value=100_000)),
    st.tuples(st.just("seek0"), st.integers(min_value=0, max_value=(2 << 20) + 1000)),
    st.tuples(st.just("seek1"), st.integers(min_value=-200_000, max_value=200_000)),
    st.tuples(st.just("seek2"), st.integers(min_value=-(2 << 20), max_value=100)),
)


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(path=st.sampled_from(["/mm/c.bin", "/pigz/b.bin", "/none/e.bin"]), ops=st.lists(read_op))
def test_random_access_matches_bytesio(opened, pushed: Pushed, path: str, ops) -> None:
    """Any sequence of seeks and reads gives what io.BytesIO gives over the same bytes."""
    data = pushed.files[path]
    ref = io.BytesIO(data)
    with opened.open(path) as f:
        for op, arg in ops:
            if op.startswith("seek"):
                whence = int(op[-1])
                target = arg + (0, ref.tell(), len(data))[whence]
                if target < 0:
                    continue  # negative absolute positions are an error in both
                assert f.seek(arg, whence) == ref.seek(arg, whence)
            elif op == "read":
                assert f.read(arg) == ref.read(arg)
            elif op == "read1":
                got = f.read1(arg)
                expected = ref.read(arg)
                assert expected.startswith(got)
                assert got or not expected  # read1 returns something unless at EOF
                ref.seek(len(got) - len(expected), io.SEEK_CUR)
            else:
                buf, ref_buf = bytearray(arg), bytearray(arg)
                assert f.readinto(buf) == ref.readinto(ref_buf)
                assert buf == ref_buf
            assert f.tell() == ref.tell()


def test_threads_read_different_files_at_once(opened, pushed: Pushed) -> None:
    paths = ["/mm/c.bin", "/pigz/b.bin", "/none/e.bin", "/gzip/a.txt", BIG_PATH, BIG_PATH]
    start = threading.Barrier(len(paths))

    def read_scattered(index: int, path: str) -> bool:
        data = pushed.files[path]
        rnd = random.Random(index)
        start.wait(timeout=30)
        with opened.open(path) as f:
            for _ in range(20):
                offset = rnd.randrange(len(data))
                length = rnd.randrange(1, 200_000)
                f.seek(offset)
                if f.read(length) != data[offset : offset + length]:
                    return False
        return True

    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        results = list(pool.map(read_scattered, range(len(paths)), paths))
    assert results == [True] * len(paths)


def test_open_by_digest_and_docker_prefix(pushed: Pushed, registry, cache_dir: Path) -> None:
    by_digest = seekoci.open_image(registry.ref(REPO, pushed.image.digest), cache_dir=cache_dir)
    assert by_digest.digest == pushed.image.digest
    assert by_digest.read_bytes("/fname/d.txt") == pushed.files["/fname/d.txt"]
    prefixed = seekoci.open_image("docker://" + pushed.ref, cache_dir=cache_dir)
    assert prefixed.digest == pushed.image.digest
    assert prefixed.read_bytes("/none/f.txt") == pushed.files["/none/f.txt"]


def test_build_index_then_read(pushed: Pushed, tmp_path: Path) -> None:
    img = seekoci.open_image(pushed.ref, cache_dir=tmp_path / "cache")
    img.build_index()
    assert any((tmp_path / "cache").rglob("*")), "build_index kept nothing in cache_dir"
    assert img.read_bytes("/gzip/a.txt") == pushed.files["/gzip/a.txt"]
    # A second image object finds the saved indexes and reads the same bytes.
    again = seekoci.open_image(pushed.ref, cache_dir=tmp_path / "cache")
    assert again.read_bytes("/mm/c.bin") == pushed.files["/mm/c.bin"]


def test_docker_schema2_image(registry, cache_dir: Path) -> None:
    layers = [
        layer(file("docker/one.txt", b"docker media types\n"), docker=True),
        layer(file("docker/two.bin", text_bytes("docker-two", 300_000)), docker=True),
    ]
    img = image(*layers, docker=True)
    registry.push("read/docker", "v2", img)
    opened = seekoci.open_image(registry.ref("read/docker", "v2"), cache_dir=cache_dir)
    assert opened.digest == img.digest
    assert [lay.media_type for lay in opened.layers] == [
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    ] * 2
    assert opened.read_bytes("/docker/two.bin") == layers[1].entries[0].data


def test_zstd_layer(registry, cache_dir: Path) -> None:
    lay = layer(file("z/data.bin", text_bytes("zstd", 1 << 20)), producer="zstd")
    registry.push("read/zstd", "v1", image(lay))
    opened = seekoci.open_image(registry.ref("read/zstd", "v1"), cache_dir=cache_dir)
    assert opened.layers[0].compression == "zstd"
    assert opened.read_bytes("/z/data.bin") == lay.entries[0].data


def test_oci_layout_directory(tmp_path: Path, cache_dir: Path) -> None:
    lay = layer(file("layout/hello.txt", b"from an OCI layout on disk\n"), producer="pigz")
    img = image(lay)
    root = write_oci_layout(tmp_path / "layout", img, "v1")
    opened = seekoci.open_image(f"oci:{root}:v1", cache_dir=cache_dir)
    assert opened.digest == img.digest
    assert opened.read_bytes("/layout/hello.txt") == lay.entries[0].data
    by_digest = seekoci.open_image(f"oci:{root}@{img.digest}", cache_dir=cache_dir)
    assert by_digest.read_bytes("/layout/hello.txt") == lay.entries[0].data


def test_image_pushed_by_skopeo(registry, tmp_path: Path, cache_dir: Path) -> None:
    """A second producer of registry content: skopeo copies an OCI layout to the registry."""
    assert shutil.which("skopeo"), "skopeo is part of the test environment"
    layers = [
        layer(file("skopeo/base.txt", b"base\n"), producer="gzip"),
        layer(file("skopeo/data.bin", text_bytes("skopeo", 500_000)), producer="multi-member"),
    ]
    write_oci_layout(tmp_path / "layout", image(*layers), "v1")
    subprocess.run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--quiet",
            f"oci:{tmp_path / 'layout'}:v1",
            f"docker://{registry.host}/read/skopeo:v1",
            "--dest-tls-verify=false",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    manifest, _, digest = registry.client().get_manifest("read/skopeo", "v1")
    opened = seekoci.open_image(registry.ref("read/skopeo", "v1"), cache_dir=cache_dir)
    assert opened.digest == digest
    assert [lay.digest for lay in opened.layers] == [
        d["digest"] for d in json.loads(manifest)["layers"]
    ]
    assert opened.read_bytes("/skopeo/data.bin") == layers[1].entries[0].data
    assert opened.read_bytes("/skopeo/base.txt") == b"base\n"
