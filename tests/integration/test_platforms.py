"""Multi-platform images: index / manifest list resolution and PlatformNotFoundError."""

from __future__ import annotations

import platform as host_platform
from pathlib import Path

import pytest
from imagebuilder import Index, file, image, index, layer, write_oci_layout

import seekoci

pytestmark = pytest.mark.integration

HOST_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
    host_platform.machine().lower(), host_platform.machine().lower()
)


def platform_image(arch: str, variant: str | None = None, docker: bool = False):
    name = "/".join(["linux", arch] + ([variant] if variant else []))
    base = layer(file("etc/os", b"shared base\n"), docker=docker)
    own = layer(file("platform.txt", f"built for {name}\n".encode()), docker=docker)
    return image(base, own, arch=arch, variant=variant, docker=docker)


def make_index(docker: bool = False) -> Index:
    return index(
        platform_image("amd64", docker=docker),
        platform_image("arm64", "v8", docker=docker),
        platform_image("arm", "v7", docker=docker),
        docker=docker,
    )


@pytest.fixture(scope="module", params=["oci", "docker"])
def pushed(request, registry) -> tuple[Index, str]:
    idx = make_index(docker=request.param == "docker")
    repo = f"platforms/{request.param}"
    registry.push(repo, "multi", idx)
    return idx, registry.ref(repo, "multi")


@pytest.mark.parametrize("wanted", ["linux/amd64", "linux/arm64/v8", "linux/arm/v7"])
def test_select_platform(pushed, wanted: str, cache_dir: Path) -> None:
    idx, ref = pushed
    img = seekoci.open_image(ref, platform=wanted, cache_dir=cache_dir)
    expected = idx.for_platform(wanted)
    assert img.platform == wanted
    assert img.digest == expected.digest  # the platform manifest, not the index
    assert img.config == expected.config
    assert [lay.digest for lay in img.layers] == [lay.digest for lay in expected.layers]
    assert img.read_bytes("/platform.txt") == expected.layers[1].entries[0].data


def test_default_platform_is_the_host_architecture(pushed, cache_dir: Path) -> None:
    idx, ref = pushed
    assert f"linux/{HOST_ARCH}" in [p.rsplit("/v", 1)[0] for p in idx.platforms]
    img = seekoci.open_image(ref, cache_dir=cache_dir)
    assert img.platform.startswith(f"linux/{HOST_ARCH}")
    assert img.read_bytes("/platform.txt") == f"built for {img.platform}\n".encode()


def test_missing_platform_names_the_available_ones(pushed, cache_dir: Path) -> None:
    idx, ref = pushed
    with pytest.raises(seekoci.PlatformNotFoundError) as excinfo:
        seekoci.open_image(ref, platform="linux/s390x", cache_dir=cache_dir)
    message = str(excinfo.value)
    assert "linux/s390x" in message
    for available in idx.platforms:
        assert available in message
    assert isinstance(excinfo.value, seekoci.SeekociError)


def test_single_platform_image(registry, cache_dir: Path) -> None:
    img = platform_image("arm64", "v8")
    registry.push("platforms/single", "arm64", img)
    ref = registry.ref("platforms/single", "arm64")
    # No platform asked for: a single-platform image is used as it is, whatever the host.
    opened = seekoci.open_image(ref, cache_dir=cache_dir)
    assert opened.platform == "linux/arm64/v8"
    assert opened.digest == img.digest
    assert seekoci.open_image(ref, platform="linux/arm64/v8", cache_dir=cache_dir).digest == (
        img.digest
    )
    with pytest.raises(seekoci.PlatformNotFoundError) as excinfo:
        seekoci.open_image(ref, platform="linux/riscv64", cache_dir=cache_dir)
    assert "linux/arm64/v8" in str(excinfo.value)


def test_index_in_an_oci_layout(tmp_path: Path, cache_dir: Path) -> None:
    idx = make_index()
    root = write_oci_layout(tmp_path / "layout", idx, "multi")
    img = seekoci.open_image(f"oci:{root}:multi", platform="linux/arm64/v8", cache_dir=cache_dir)
    expected = idx.for_platform("linux/arm64/v8")
    assert img.digest == expected.digest
    assert img.read_bytes("/platform.txt") == b"built for linux/arm64/v8\n"
