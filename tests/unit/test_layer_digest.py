"""A layer digest whose algorithm seekoci cannot compute is a FormatError, never a bare one."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

import seekoci


def small_layer(tmp_path: Path) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("a.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(gzip.compress(buf.getvalue()))
    return path


@pytest.mark.parametrize("digest", ["blake3:" + "ab" * 32, "md5:" + "ab" * 16])
def test_an_unsupported_digest_algorithm_is_a_format_error(tmp_path: Path, digest: str) -> None:
    layer = seekoci.open_layer(small_layer(tmp_path), digest=digest, cache_dir=False)
    with pytest.raises(seekoci.FormatError, match="not supported"):
        layer.index()


def test_a_sha512_digest_is_verified(tmp_path: Path) -> None:
    import hashlib

    path = small_layer(tmp_path)
    good = "sha512:" + hashlib.sha512(path.read_bytes()).hexdigest()
    assert seekoci.open_layer(path, digest=good, cache_dir=False).open("/a.txt").read() == b"abc"
    bad = "sha512:" + "00" * 64
    with pytest.raises(seekoci.IntegrityError):
        seekoci.open_layer(path, digest=bad, cache_dir=False).index()
