"""JSON texts inflated from small compressed bodies (TOCs, tar-splits, the native index's
directory and pages): a text of ``{},{},...`` packs a thousand-fold and costs 26 bytes
of memory per byte once parsed, so each is refused when it holds more values than its
body's size allows (``seekoci._json.VALUES_PER_PACKED_BYTE``), before it is parsed. Valid
texts of the most compressible kind -- tens of thousands of empty files -- are read."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
import zstandard
from layers import CountingSource, build_tar, file, with_directory
from tocwriter import estargz, zstd_chunked

import seekoci
from seekoci import _json
from seekoci.cache import MemoryCache
from seekoci.errors import FormatError
from seekoci.formats import index as index_module
from seekoci.formats import zstd_chunked_toc
from seekoci.formats.entries import encode as encode_entries
from seekoci.formats.index import LayerIndex, Span, TarEntry, parse_header, parse_lazy, serialize

#: values in a bomb: 6 MB of ``{},``, which zstd packs to ~200 bytes and gzip to ~6 KB,
#: and which json would make 130 MB of objects (a TOC may hold 1M values, whatever it
#: packs to: ``MIN_TOC_VALUES``; the bombs of TOCs and tar-splits hold more)
BOMB = 2_000_000
WRITERS = pytest.mark.parametrize(
    "writer", [estargz, zstd_chunked], ids=["estargz", "zstd:chunked"]
)


def _layer(blob: bytes, annotations: dict[str, str], zstd: bool) -> seekoci.Layer:
    kind = "zstd" if zstd else "gzip"
    return seekoci.Layer(
        CountingSource(blob),
        cache=MemoryCache(),
        media_type=f"application/vnd.oci.image.layer.v1.tar+{kind}",
        size=len(blob),
        annotations=annotations,
    )


def _peak(action: Callable[[], object]) -> int:
    """The most memory ``action`` held at once (it must raise a FormatError)."""
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="values"):
            action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_values_are_counted_against_the_packed_size() -> None:
    per = _json.VALUES_PER_PACKED_BYTE
    text = "[" + "0," * (per * 11) + "0]"  # per * 11 + 1 values: too many from 10 bytes
    assert _json.loads(text, packed=12) == [0] * (per * 11 + 1)
    with pytest.raises(ValueError, match=r"from 10 compressed bytes; at most"):
        _json.loads(text, packed=10)
    with pytest.raises(ValueError, match="7 or more values; at most 6 are read"):
        _json.loads(b"[1,2,3,4,5,6]", max_values=6)  # the list and its six numbers
    assert _json.loads(b"[1,2,3,4,5]", max_values=6) == [1, 2, 3, 4, 5]
    nested = b"[" * 500 + b"]" * 500  # five hundred lists, no comma: each is counted
    with pytest.raises(ValueError, match="values"):
        _json.loads(nested, packed=6)
    assert _json.loads(nested, packed=8) == _json.loads(nested)
    assert _json.loads(nested, packed=1, min_values=501) == _json.loads(nested)  # a floor
    assert _json.loads(text) == _json.loads(text, packed=12)  # no size given: no bound
    # a few values from a tiny body (no floor: a floor would multiply by the pages)
    assert _json.loads('{"a": [1, 2]}', packed=1) == {"a": [1, 2]}


@WRITERS
def test_a_toc_of_many_empty_files_is_read(writer: Any) -> None:
    # the most compressible valid TOC: 7 values per packed byte for zstd:chunked
    count = 20_000
    made = writer(build_tar([file(f"d/f{i:06d}", b"") for i in range(count)]))
    layer = _layer(made.blob, made.annotations, writer is zstd_chunked)
    assert layer.stat(f"d/f{count - 1:06d}").size == 0
    assert len(layer.listdir("d")) == count


def _nested(depth: int) -> list[Any]:
    out: list[Any] = []
    for _ in range(depth - 1):
        out = [out]
    return out


def test_texts_that_decode_wide_are_bounded_by_their_decoded_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # one character past U+FFFF makes Python keep each character of the text in 4 bytes
    # (past U+00FF: 2): 17 KB of zstd:chunked inflated to 4.7 GB that way
    most = 1 << 20
    monkeypatch.setattr(_json, "MAX_WIDE_DECODED", most)
    small = 1 << 10  # the body a bomb comes from: a few KB (this text packs to ~1 KB)
    for char, width in (("\U0001f600", 4), ("\u0100", 2)):
        text = ('["' + "a" * (most // width) + char + '"]').encode()
        with pytest.raises(ValueError, match=f"{width} bytes a character"):
            _json.check(text, packed=small)
        _json.check(text)  # unbounded, as before
        fits = ('["' + "a" * (most // width - 16) + char + '"]').encode()
        _json.check(fits, packed=small)
    latin = ('["' + "a" * most + '\u00e9"]').encode()  # one byte a character, however long
    _json.check(latin, packed=small)
    # an ASCII text can make a wide string all the same: by its escapes
    for escape in (b"\\ud83d\\ude00", b"\\u0100"):
        text = b'["' + b"a" * (most // 4) + escape + b'"]'
        assert text.isascii()
        with pytest.raises(ValueError, match="4 bytes a character"):
            _json.check(text, packed=small)
    escaped_latin = b'["' + b"a" * most + b'\\u00e9"]'
    _json.check(escaped_latin, packed=small)


def test_a_wide_text_from_a_large_body_may_decode_past_the_fixed_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a valid TOC of ~430k files (~140 MiB) with one emoji in one name decodes to 4 bytes a
    # character, past MAX_WIDE_DECODED: it packs ~6x, so its body allows it
    most = 1 << 20
    monkeypatch.setattr(_json, "MAX_WIDE_DECODED", most)
    names = [f"usr/share/doc/pkg-{i:05d}/file.txt" for i in range(20_000)] + ["a/\U0001f600"]
    entries = [
        {"name": n, "type": "reg", "digest": "sha256:" + hashlib.sha256(n.encode()).hexdigest()}
        for n in names
    ]  # a digest an entry, as in a TOC: what keeps it from packing past ~6x
    text = json.dumps(entries, ensure_ascii=False).encode()
    assert len(text) * 4 > most
    packed = len(zstandard.ZstdCompressor().compress(text))
    assert packed * _json.WIDE_DECODED_PER_PACKED_BYTE >= len(text) * 4
    assert _json.loads(text, packed=packed)[-1]["name"] == "a/\U0001f600"
    # the same text said to come from fewer bytes than it needs
    short = len(text) * 4 // _json.WIDE_DECODED_PER_PACKED_BYTE - 1
    wide = short * _json.WIDE_DECODED_PER_PACKED_BYTE
    with pytest.raises(ValueError, match=f"at most {wide} are allowed for {short} compressed"):
        _json.check(text, packed=short)
    assert _json.wide_limit(None) == most
    assert _json.wide_limit(short + 1) == (short + 1) * _json.WIDE_DECODED_PER_PACKED_BYTE
    assert _json.wide_limit(1 << 40) == _json.MOST_WIDE_DECODED == 2 << 30  # whatever the body
    # and never past MOST_WIDE_DECODED, however large the body
    monkeypatch.setattr(_json, "MOST_WIDE_DECODED", len(text) * 4 - 1)
    with pytest.raises(ValueError, match=f"at most {len(text) * 4 - 1} are allowed"):
        _json.check(text, packed=len(text))


@WRITERS
def test_a_large_toc_with_a_wide_name_is_read(writer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # the fixed bound scaled down to this TOC's size: before, a TOC past 128 MiB (~430k
    # files) with one emoji in one name was refused; its compressed body now allows it
    files = [file(f"usr/lib/f{i:04d}", hashlib.sha256(b"%d" % i).digest()) for i in range(400)]
    made = writer(build_tar([*files, file("usr/\U0001f600.txt", b"smile")]))
    assert "\U0001f600".encode() in made.toc or b"\\ud83d" in made.toc
    monkeypatch.setattr(_json, "MAX_WIDE_DECODED", len(made.toc))
    layer = _layer(made.blob, made.annotations, writer is zstd_chunked)
    with layer.open("usr/\U0001f600.txt") as f:
        assert f.read() == b"smile"


def test_a_tar_split_is_decoded_a_slice_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # a name past U+FFFF once made the whole text 4 bytes a character: a valid tar-split of
    # 180k files (132 MB) with one such name was refused by the width bound
    from seekoci.formats import zstd_chunked_toc as module

    monkeypatch.setattr(module, "_SLICE", 64)
    monkeypatch.setattr(_json, "MAX_WIDE_DECODED", 1 << 10)
    names = [f"dir/file-{i:04d}" for i in range(200)] + ["dir/\U0001f600"]
    text = b"".join(
        json.dumps({"type": 1, "name": name, "size": 0}, ensure_ascii=False).encode() + b"\n"
        for name in names
    )
    assert len(text) * 4 > _json.MAX_WIDE_DECODED
    layout = zstd_chunked_toc.layout_of(text, packed=len(text), where="t")
    assert [item.name for item in layout] == names  # type: ignore[union-attr]
    long_line = json.dumps({"type": 1, "name": "\U0001f600" * 100}, ensure_ascii=False)
    with pytest.raises(FormatError, match="not ASCII"):
        zstd_chunked_toc.layout_of(long_line.encode() + b"\n", packed=10**6, where="t")


@pytest.mark.parametrize(
    ("writer", "pad"),
    [
        (estargz, [{}] * BOMB),
        (zstd_chunked, [{}] * BOMB),
        # (eStargz's TOC is indented: a line of its own per list, which packs less)
        (zstd_chunked, [_nested(100)] * (BOMB // 60)),
    ],
    ids=["estargz", "zstd:chunked", "zstd:chunked nested lists"],
)
def test_a_toc_of_many_values_from_few_bytes_is_refused(writer: Any, pad: list[Any]) -> None:
    made = writer(build_tar([file("a", b"x")]), edit=lambda d: d.update(padding=pad))
    layer = _layer(made.blob, made.annotations, writer is zstd_chunked)
    peak = _peak(lambda: layer.stat("a"))
    assert peak < 40 << 20, f"{peak:,} B held"  # the text (6 MB), not its objects (130 MB)


@WRITERS
def test_a_toc_of_many_files_with_the_same_xattrs_is_read(writer: Any) -> None:
    # ~60 values a packed byte: past the ratio, within a TOC's floor
    xattrs = {f"user.k{k:03d}": b"v" for k in range(300)}
    tar = build_tar([file(f"f{i:05d}", b"", xattrs=xattrs) for i in range(1000)])
    made = writer(tar)
    if writer is zstd_chunked:
        packed = len(zstandard.ZstdCompressor(level=3).compress(made.toc))
        marks = sum(map(made.toc.count, (b",", b"[", b"{")))  # what _json counts values by
        assert marks > _json.limit(packed)
    layer = _layer(made.blob, made.annotations, writer is zstd_chunked)
    assert layer.stat("f00999").size == 0


def test_a_tar_split_of_many_values_from_few_bytes_is_refused() -> None:
    text = b'{"type":2,"payload":"","pad":[' + b"{}," * BOMB + b"{}]}\n"
    packed = len(zstandard.ZstdCompressor().compress(text))
    peak = _peak(lambda: zstd_chunked_toc.layout_of(text, packed=packed, where="layer x"))
    assert peak < 40 << 20, f"{peak:,} B held"
    with pytest.raises(FormatError, match="layer x: the tar-split is too large"):
        zstd_chunked_toc.layout_of(text, packed=packed, where="layer x")
    lines = b"1\r" * (BOMB * 2)  # not one record a line: each line is a value all the same
    packed = len(zstandard.ZstdCompressor().compress(lines))
    with pytest.raises(FormatError, match="the tar-split is too large"):
        zstd_chunked_toc.layout_of(lines, packed=packed, where="layer x")
    ok = b'{"type":1,"name":"a","size":0}\n'
    assert zstd_chunked_toc.layout_of(ok, packed=len(ok), where="t")[0].name == "a"


def test_a_zstd_chunked_tar_split_is_counted_against_its_own_packed_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = zstd_chunked(build_tar([file(f"f{i}", b"x" * 100) for i in range(50)]))
    layer = _layer(made.blob, made.annotations, True)
    seen: list[tuple[int, int | None]] = []
    real = zstd_chunked_toc.layout_of

    def spy(data: bytes, *, packed: int | None = None, where: str) -> Any:
        seen.append((len(data), packed))
        return real(data, packed=packed, where=where)

    monkeypatch.setattr(zstd_chunked_toc, "layout_of", spy)
    assert layer.read_range(0, 512)[257:262] == b"ustar"
    ((size, packed),) = seen
    assert packed is not None and 0 < packed < size  # the tar-split's frame, not the TOC's


def _native_index(count: int) -> bytes:
    def offsets(i: int) -> dict[str, int]:
        return {"header_offset": 512 * i, "data_offset": 512 * i + 512}

    entries = [
        TarEntry(f"f{i:05d}", "file", 0, 0o644, 0, 0, 0.0, **offsets(i)) for i in range(count)
    ]
    total = 512 * count + 1024
    spans = [Span(0, 10, 10 + total, 0, total, hashlib.sha256(b"s").hexdigest())]
    index = LayerIndex(DIGEST, "application/vnd.oci.image.layer.v1.tar", "none", total + 20,
                       total, 4096, spans, entries, tool="tests")  # fmt: skip
    return serialize(index, [b""])


DIGEST = "sha256:" + "ab" * 32


def _lazy(data: bytes) -> LayerIndex:
    head = data[: parse_header(data).head_end]
    return parse_lazy(head, lambda o, n: data[o : o + n], expected_digest=DIGEST)


def test_an_index_page_of_many_values_from_few_bytes_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def padded(page: list[TarEntry]) -> dict[str, Any]:
        doc = encode_entries(page)
        doc["padding"] = [{}] * BOMB
        return doc

    monkeypatch.setattr(index_module, "encode_entries", padded)
    paged = _lazy(_native_index(10))
    peak = _peak(lambda: paged.entries.lookup("f00003"))  # type: ignore[attr-defined]
    assert peak < 40 << 20, f"{peak:,} B held"


def test_an_index_directory_of_many_values_from_few_bytes_is_refused() -> None:
    bomb = with_directory(_native_index(10), lambda d: d.update(padding=[{}] * BOMB))
    end = parse_header(bomb).head_end
    peak = _peak(lambda: parse_lazy(bomb[:end], lambda o, n: bomb[o : o + n]))
    assert peak < 40 << 20, f"{peak:,} B held"


def test_an_index_of_many_empty_files_is_read() -> None:
    paged = _lazy(_native_index(20_000))
    assert paged.entries.lookup("f19999").name == "f19999"  # type: ignore[attr-defined]
    assert len(paged.entries) == 20_000


def test_an_image_config_of_millions_of_values_is_refused() -> None:
    from seekoci.registry.resolve import MAX_CONFIG_VALUES, _parse_config

    body = b'{"history":[' + b"{}," * MAX_CONFIG_VALUES + b"{}]}"
    with pytest.raises(FormatError, match=r"image config is not valid JSON.*values"):
        _parse_config(body, where="img")
    assert _parse_config(b'{"history":[{},{}]}', where="img") == {"history": [{}, {}]}
