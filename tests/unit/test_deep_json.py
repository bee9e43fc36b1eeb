"""A JSON document nested deeper than json's parser follows -- its scanner raises
RecursionError past the interpreter's recursion limit, about 1,000 levels: a 1 KB body of
``[`` -- is, for every parser of JSON read from outside (a registry's answers, manifests,
configs, TOCs, tar-splits, the cache directory's documents, Docker's config), what any
other document it cannot read is: that parser's own error or fallback, never a bare
RecursionError."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import urllib3

from seekoci import _json
from seekoci.cache import DiskCache
from seekoci.errors import FormatError
from seekoci.formats import toc, zstd_chunked_toc
from seekoci.formats.ztoc import PREFETCH_SEPARATOR, without_prefetch_list
from seekoci.registry import credentials, referrers, resolve, transport
from seekoci.registry.layout import LayoutStore
from seekoci.registry.manifest import parse_manifest

#: unclosed arrays, unclosed objects, and a well-formed document that is only too deep
DEEP = [b"[" * 100_000, b'{"a":' * 50_000, b"[" * 5_000 + b"]" * 5_000]
IDS = ["arrays", "objects", "well-formed"]
deep = pytest.mark.parametrize("body", DEEP, ids=IDS)


@deep
def test_loads_says_value_error(body: bytes) -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        _json.loads(body)
    with pytest.raises(ValueError, match="nested too deeply"):
        _json.load(io.BytesIO(body))
    assert _json.loads(b'{"a": [[1], {"b": null}]}') == {"a": [[1], {"b": None}]}
    depth = 200  # nesting a real document could have is read as before
    assert _json.loads("[" * depth + "]" * depth) == _nested(depth)


def _nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@deep
def test_a_manifest(body: bytes) -> None:
    with pytest.raises(FormatError, match="manifest is not valid JSON"):
        parse_manifest(body, media_type_hint=None, digest=None, where="r/app:v1")


@deep
def test_an_image_config(body: bytes) -> None:
    with pytest.raises(FormatError, match="image config is not valid JSON"):
        resolve._parse_config(body, where="r/app:v1")
    assert resolve._parse_config(body, where="r/app:v1", strict=False) == {}


@deep
def test_referrers(body: bytes) -> None:
    assert referrers._index_entries(body) is None  # not a listing: the tag fallback's rule
    with pytest.raises(ValueError, match="referrer manifest is not valid JSON"):
        referrers._parse_referrer(body, "application/vnd.oci.image.manifest.v1+json")


@deep
def test_an_oci_layout_index(body: bytes, tmp_path: Path) -> None:
    (tmp_path / "index.json").write_bytes(body)
    with pytest.raises(FormatError, match=r"cannot read index\.json"):
        LayoutStore._read_json(str(tmp_path / "index.json"), where="oci:x")


@deep
def test_dockers_config(body: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.json").write_bytes(body)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert credentials.load_docker_credentials("r.example") is None  # ignored, as garbage is


@deep
def test_an_embedded_toc(body: bytes) -> None:
    with pytest.raises(FormatError, match="not JSON"):
        toc.load_json(body, packed=len(body), where="layer x")


@deep
def test_a_tar_split(body: bytes) -> None:
    for lines in (body + b"\n", b'{"type": 2, "payload": ""}\n' + body + b"\n"):
        with pytest.raises(FormatError, match="not JSON lines"):
            zstd_chunked_toc.layout_of(lines, where="layer x")


def test_a_ztoc_prefetch_list() -> None:
    data = b"flatbuffer" + PREFETCH_SEPARATOR + DEEP[2]  # ends with "]": looked at
    assert without_prefetch_list(data) == data  # no list there: taken as it is


@deep
def test_the_cache_directorys_documents(body: bytes, tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    subject = "sha256:" + "ef" * 32
    cache.save_referrers(subject, [{"digest": "x"}])
    cache.save_published(subject, {"kind": "soci"})
    for kind in ("referrers", "published"):
        (tmp_path / kind / "sha256" / ("ef" * 32 + ".json")).write_bytes(body)
    assert cache.load_referrers(subject, 60) is None  # as if never saved: fetched again
    assert cache.load_published(subject) is None


@deep
def test_a_registry_error_body(body: bytes) -> None:
    raw = urllib3.HTTPResponse(
        body=io.BytesIO(body), headers={"Content-Length": str(len(body))}, status=400,
        preload_content=False,
    )  # fmt: skip
    response = transport.requests.Response()
    response.status_code, response.raw = 400, raw
    assert transport.error_detail(response) == ""  # no detail to quote, no traceback
