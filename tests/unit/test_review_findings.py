"""Review findings: duplicate names, non-finite and out-of-range mtimes, NUL in names."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

import seekoci
from seekoci import cli
from seekoci.errors import SeekociError
from seekoci.image import Image


def _layer_blob(members: list[tuple[str, bytes, dict[str, str]]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data, pax in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.pax_headers = pax
            tf.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue())


def _write(tmp_path: Path, blob: bytes, name: str = "layer.tar.gz") -> Path:
    path = tmp_path / name
    path.write_bytes(blob)
    return path


def _image(*layers: seekoci.Layer) -> Image:
    return Image(
        reference="example/test:latest",
        digest="sha256:" + "0" * 64,
        platform="linux/amd64",
        config={},
        manifest={},
        layers=list(layers),
    )


# A member stored twice: tar extraction (and seekoci's complete index) keeps the last one.
# The padding member pushes the second copy past the first span. A lookup before the layer
# is indexed stops at the first copy (the price of reading only up to a file: no pass can
# know a later copy is coming); docs/trust.md says so. Once indexed, the last copy wins
# everywhere.
_DUPLICATE = [("f", b"old", {}), ("pad", os.urandom(8 << 20), {}), ("f", b"new", {})]


def test_an_indexed_layer_gives_the_last_copy_of_a_name(tmp_path: Path) -> None:
    layer = seekoci.open_layer(_write(tmp_path, _layer_blob(_DUPLICATE)), cache_dir=False)
    layer.index()
    assert layer.open("/f").read() == b"new"
    assert layer.stat("/f").size == 3


def test_an_indexed_image_gives_the_last_copy_through_both_paths(tmp_path: Path) -> None:
    layer = seekoci.open_layer(_write(tmp_path, _layer_blob(_DUPLICATE)), cache_dir=False)
    layer.index()
    img = _image(layer)
    fast = img.read_bytes("/f")  # before the merged tree exists
    img.tree()
    assert fast == img.read_bytes("/f") == b"new"


def test_a_partial_lookup_reads_only_up_to_the_first_copy(tmp_path: Path) -> None:
    layer = seekoci.open_layer(_write(tmp_path, _layer_blob(_DUPLICATE)), cache_dir=False)
    assert layer.open("/f").read() == b"old"  # documented: no index yet, first copy
    assert layer.source.bytes_read < len(_layer_blob(_DUPLICATE)) // 2  # type: ignore[attr-defined]


def test_index_with_infinite_pax_mtime_raises_only_seekoci_errors(tmp_path: Path) -> None:
    # PAX mtime "1e400" parses to float inf; writing the index to the cache directory
    # then hits json.dumps(allow_nan=False) and a bare ValueError escapes layer.index().
    blob = _layer_blob([("f", b"abc", {"mtime": "1e400"})])
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    layer = seekoci.open_layer(_write(tmp_path, blob), digest=digest, cache_dir=tmp_path / "c")
    try:
        layer.index()
    except SeekociError:
        pass  # refusing the layer is fine; a ValueError that is not a SeekociError is not


@pytest.fixture
def cli_image(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """cli.main with open_image replaced by an image over local layer files."""

    def use(blob: bytes) -> None:
        layer = seekoci.open_layer(_write(tmp_path, blob), cache_dir=False)
        monkeypatch.setattr(cli, "open_image", lambda ref, **kw: _image(layer))

    return use


def test_cli_get_out_of_range_mtime_is_no_traceback(cli_image, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # os.utime raises OverflowError (not OSError) for an mtime past time_t: it escapes main()
    cli_image(_layer_blob([("d/f", b"abc", {"mtime": "1e300"})]))
    status = cli.main(["get", "example/test", "/d", "-o", str(tmp_path / "out")])
    assert status in (0, 1)


def test_cli_ls_long_out_of_range_mtime_is_no_traceback(cli_image, capsys) -> None:  # type: ignore[no-untyped-def]
    # time.gmtime raises OverflowError for the same mtime in `ls -l` (and `stat`)
    cli_image(_layer_blob([("f", b"abc", {"mtime": "1e300"})]))
    status = cli.main(["ls", "example/test", "/", "-l"], out=io.StringIO())
    assert status in (0, 1)


def test_cli_get_name_with_nul_byte_is_no_traceback(cli_image, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # a PAX path may hold a NUL byte; os.open/os.path.realpath raise ValueError on it
    cli_image(_layer_blob([("d/x", b"abc", {"path": "d/a\x00b"})]))
    status = cli.main(["get", "example/test", "/d", "-o", str(tmp_path / "out")])
    assert status in (0, 1)


@pytest.mark.parametrize("mtime", ["1e999990", "1e99999999", "9" * 5000, "0." + "0" * 100 + "1e5"])
def test_a_pax_mtime_of_absurd_size_is_a_format_error_at_once(tmp_path: Path, mtime: str) -> None:
    # an exponent of a million (ten bytes) made an exact integer of a million digits: ~25 s
    # of CPU a header, and 1e999999 a decimal.Overflow out of the reader
    blob = _layer_blob([(f"f{i}", b"abc", {"mtime": mtime}) for i in range(3)])
    layer = seekoci.open_layer(_write(tmp_path, blob), cache_dir=False)
    with pytest.raises(SeekociError, match="PAX mtime"):
        layer.listdir("/")


def test_pax_times_in_other_spellings_are_exact() -> None:
    from seekoci.formats.tar import _pax_time_ns

    assert _pax_time_ns(b"1.5e-07") == 150
    assert _pax_time_ns(b"-1.5E+3") == -1_500_000_000_000
    assert _pax_time_ns(b"1e40") == 10**49  # the largest exponent taken
    assert _pax_time_ns(b"1e-50") == _pax_time_ns(b"1e-999999") == 0  # tarfile writes these
    with pytest.raises(ValueError):
        _pax_time_ns(b"1e41")
