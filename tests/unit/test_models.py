"""seekoci.models over in-memory files: GGUF headers against the gguf package's own reader,
safetensors tensors against numpy, bad input refused with bounded reads."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from modelfiles import bf16_round, gguf_bytes, safetensors_bytes

import seekoci
from seekoci import FormatError
from seekoci.fileobj import RangeFile
from seekoci.models import (
    MAX_GGUF_HEADER,
    MAX_SAFETENSORS_VALUES,
    describe_model,
    gguf_metadata,
    gguf_tensor_nbytes,
    read_tensor,
    safetensors_metadata,
    safetensors_shards,
)


class Files:
    """``open(path)`` over a dict of bytes, counting the bytes read."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.bytes_read = 0

    def open(self, path: str) -> RangeFile:
        if path not in self.files:
            raise FileNotFoundError(path)
        data = self.files[path]

        def read_range(offset: int, length: int) -> bytes:
            self.bytes_read += length
            return data[offset : offset + length]

        return RangeFile(read_range, 0, len(data), path)


RNG = np.random.default_rng(7)


def _reader_view(path: Path) -> list[dict[str, object]]:
    reader = gguf.GGUFReader(str(path))
    return [
        {
            "name": t.name,
            "shape": [int(d) for d in t.shape],
            "dtype": t.tensor_type.name,
            "offset": int(t.data_offset),
        }
        for t in reader.tensors
    ]


def test_gguf_header_matches_the_gguf_reader(tmp_path: Path) -> None:
    tensors = {
        "tok_embd.weight": RNG.standard_normal((64, 32)).astype(np.float16),
        "norm.weight": RNG.standard_normal(32).astype(np.float32),
        "blk.0.attn_q.weight": np.zeros((4, 144), dtype=np.uint8),  # 4 rows of one block
        "big": RNG.standard_normal((512, 512)).astype(np.float32),
    }
    kv = {
        "general.name": "tiny",
        "llama.context_length": 4096,
        "llama.rope.freq_base": 10000.0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.tokens": ["<s>", "</s>", "héllo"],
        "tokenizer.ggml.scores": [0.0, -1.5, 2.25],
        "nested": [[1, 2], [3]],
    }
    raw = {"blk.0.attn_q.weight": gguf.GGMLQuantizationType.Q4_K}
    data = gguf_bytes(tmp_path, tensors, kv, raw_types=raw)
    files = Files({"/m.gguf": data})
    meta = gguf_metadata(files, "/m.gguf")
    assert meta["version"] == 3
    assert meta["tensors"] == _reader_view(tmp_path / "model-0.gguf")
    by_name = {t["name"]: t for t in meta["tensors"]}
    assert by_name["tok_embd.weight"]["shape"] == [32, 64]  # GGML order: fastest first
    assert by_name["tok_embd.weight"]["dtype"] == "F16"
    assert by_name["blk.0.attn_q.weight"]["dtype"] == "Q4_K"
    big = by_name["big"]
    assert data[big["offset"] : big["offset"] + 16] == tensors["big"].tobytes()[:16]
    assert gguf_tensor_nbytes("Q4_K", [256, 4]) == 4 * 144
    md = meta["metadata"]
    assert md["general.name"] == "tiny" and md["general.architecture"] == "llama"
    assert md["llama.context_length"] == 4096 and md["tokenizer.ggml.add_bos_token"] is True
    assert md["tokenizer.ggml.tokens"] == ["<s>", "</s>", "héllo"]
    assert md["tokenizer.ggml.scores"] == [0.0, -1.5, 2.25]
    assert md["nested"] == [[1, 2], [3]]
    # only the header travelled: the first 64 KiB, not the megabyte of tensor data
    assert files.bytes_read <= 64 << 10 < len(data) // 10


def test_gguf_alignment_and_version_2(tmp_path: Path) -> None:
    tensors = {"a": np.arange(3, dtype=np.float32), "b": np.arange(5, dtype=np.float32)}
    data = gguf_bytes(tmp_path, tensors, alignment=256)
    meta = gguf_metadata(Files({"/m": data}), "/m")
    assert meta["metadata"]["general.alignment"] == 256
    assert [t["offset"] % 256 for t in meta["tensors"]] == [0, 0]
    for t in meta["tensors"]:
        want = tensors[t["name"]].tobytes()
        assert data[t["offset"] : t["offset"] + len(want)] == want
    # v2 has v3's layout (v3 only added big-endian files): same header, version 2
    v2 = data[:4] + struct.pack("<I", 2) + data[8:]
    assert gguf_metadata(Files({"/m": v2}), "/m") == {**meta, "version": 2}


def test_gguf_big_endian(tmp_path: Path) -> None:
    path = tmp_path / "be.gguf"
    writer = gguf.GGUFWriter(str(path), "llama", endianess=gguf.GGUFEndian.BIG)
    writer.add_uint32("x.count", 7)
    writer.add_tensor("w", np.arange(4, dtype=np.float32))  # byte-swapped by the writer
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    meta = gguf_metadata(Files({"/m": path.read_bytes()}), "/m")
    assert meta["metadata"]["x.count"] == 7
    assert meta["tensors"][0]["shape"] == [4] and meta["tensors"][0]["dtype"] == "F32"


def test_a_long_gguf_header_is_read_incrementally(tmp_path: Path) -> None:
    tokens = [f"token-{i:06d}" for i in range(20000)]  # ~400 KB of vocabulary
    data = gguf_bytes(
        tmp_path,
        {"w": RNG.standard_normal((1024, 1024)).astype(np.float32)},
        {"tokenizer.ggml.tokens": tokens},
    )
    files = Files({"/m": data})
    meta = gguf_metadata(files, "/m")
    assert meta["metadata"]["tokenizer.ggml.tokens"] == tokens
    header_end = meta["tensors"][0]["offset"]
    assert header_end < files.bytes_read <= 2 * header_end + (64 << 10)
    assert files.bytes_read < len(data) // 4


def _gguf_header(n_tensors: int, n_kv: int, body: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + body


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GGML" + b"\0" * 100, "not a GGUF file"),
        (b"GGUF\x09\0\0\0" + b"\0" * 100, "version 9"),
        (_gguf_header(0, 1)[:-3], "cut short"),
        (_gguf_header(1 << 60, 0), "tensor count"),
        (_gguf_header(0, 1, struct.pack("<Q", 1 << 50) + b"k"), "string length"),
        (_gguf_header(0, 1, struct.pack("<Q", 1) + b"k" + struct.pack("<I", 99)), "value type"),
        (
            _gguf_header(0, 1, struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 0, 1 << 40)),
            "array count",
        ),
        (
            _gguf_header(
                0,
                1,
                struct.pack("<Q", 1) + b"k" + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 20,
            ),
            "nested",
        ),
        (
            _gguf_header(
                0, 1, struct.pack("<Q", 17) + b"general.alignment" + struct.pack("<II", 4, 3)
            ),
            "alignment",
        ),
        (
            _gguf_header(1, 0, struct.pack("<Q", 1) + b"t" + struct.pack("<I", 1000)),
            "dimensions",
        ),
        (
            _gguf_header(1, 0, struct.pack("<Q", 1) + b"t" + struct.pack("<IQIQ", 1, 4, 77, 0)),
            "GGML type 77",
        ),
    ],
)
def test_bad_gguf_is_a_format_error(data: bytes, message: str) -> None:
    files = Files({"/bad.gguf": data if message == "cut short" else data + b"\0" * 64})
    with pytest.raises(FormatError, match=message) as info:
        gguf_metadata(files, "/bad.gguf")
    assert "/bad.gguf" in str(info.value)
    assert files.bytes_read <= 64 << 10


def test_a_gguf_header_bigger_than_the_cap_is_refused() -> None:
    class Huge(Files):  # a 1 TB file whose one string claims 300 MB
        def open(self, path: str) -> RangeFile:
            head = _gguf_header(0, 1, struct.pack("<Q", 300 << 20))

            def read_range(offset: int, length: int) -> bytes:
                self.bytes_read += length
                return (head + b"a" * length)[offset : offset + length]

            return RangeFile(read_range, 0, 1 << 40, path)

    files = Huge({})
    with pytest.raises(FormatError, match="larger than"):
        gguf_metadata(files, "/huge.gguf")
    assert files.bytes_read <= MAX_GGUF_HEADER


def _tensors() -> dict[str, tuple[str, np.ndarray]]:
    return {
        "h": ("F16", RNG.standard_normal((3, 5)).astype(np.float16)),
        "b": ("BF16", bf16_round(RNG.standard_normal((4, 2, 3)).astype(np.float32))),
        "f": ("F32", RNG.standard_normal(7).astype(np.float32)),
        "d": ("F64", RNG.standard_normal((2, 2))),
        "i8": ("I8", np.array([-128, 0, 127], dtype=np.int8)),
        "i16": ("I16", np.array([[-3, 4]], dtype=np.int16)),
        "i32": ("I32", np.array([1 << 30], dtype=np.int32)),
        "i64": ("I64", np.array([-(1 << 40)], dtype=np.int64)),
        "u8": ("U8", np.arange(10, dtype=np.uint8)),
        "ok": ("BOOL", np.array([True, False, True])),
        "scalar": ("F32", np.array(2.5, dtype=np.float32)),
        "weights": ("F32", RNG.standard_normal((512, 512)).astype(np.float32)),
    }


def test_read_tensor_every_dtype_against_numpy() -> None:
    tensors = _tensors()
    data = safetensors_bytes(tensors, {"format": "pt"})
    files = Files({"/m.safetensors": data})
    for name, (dtype, array) in tensors.items():
        got = read_tensor(files, "/m.safetensors", name)
        assert got.shape == array.shape, name
        if dtype == "BF16":
            assert got.dtype == np.float32
        else:
            assert got.dtype == array.dtype, name
        np.testing.assert_array_equal(got, array)
    assert safetensors_metadata(files, "/m.safetensors")["__metadata__"] == {"format": "pt"}


def test_read_tensor_reads_only_the_header_and_that_tensor() -> None:
    tensors = _tensors()
    data = safetensors_bytes(tensors)
    files = Files({"/m.safetensors": data})
    header_len = 8 + int.from_bytes(data[:8], "little")
    read_tensor(files, "/m.safetensors", "h")
    assert files.bytes_read == header_len + 3 * 5 * 2
    with pytest.raises(KeyError, match="nope") as missing:
        read_tensor(files, "/m.safetensors", "nope")
    # a SeekociError too (API.md: every error but the OSError family is one), said plainly
    assert isinstance(missing.value, seekoci.TensorNotFoundError)
    assert isinstance(missing.value, seekoci.SeekociError)
    assert str(missing.value) == "/m.safetensors: no tensor 'nope'"


def test_sharded_checkpoints_through_the_index() -> None:
    one = safetensors_bytes({"a": ("F32", np.arange(4, dtype=np.float32))})
    two = safetensors_bytes({"b": ("F16", np.ones((2, 2), dtype=np.float16))})
    index = {
        "metadata": {"total_size": 24},
        "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "sub/../model-2.safetensors"},
    }
    files = Files(
        {
            "/m/model.safetensors.index.json": json.dumps(index).encode(),
            "/m/model-00001-of-00002.safetensors": one,
            "/m/model-2.safetensors": two,
        }
    )
    assert safetensors_shards(files, "/m/model.safetensors.index.json") == {
        "a": "/m/model-00001-of-00002.safetensors",
        "b": "/m/model-2.safetensors",
    }
    got = read_tensor(files, "/m/model.safetensors.index.json", "b")
    np.testing.assert_array_equal(got, np.ones((2, 2), dtype=np.float16))
    with pytest.raises(seekoci.TensorNotFoundError, match="'c' in the weight map"):
        read_tensor(files, "/m/model.safetensors.index.json", "c")
    files.files["/m/bad.index.json"] = b'{"weight_map": [1]}'
    with pytest.raises(FormatError, match="weight_map"):
        safetensors_shards(files, "/m/bad.index.json")


def _tensor_json(shape: list[int], offsets: list[int]) -> str:
    return json.dumps({"t": {"dtype": "F32", "shape": shape, "data_offsets": offsets}})


def _st(header: str) -> bytes:
    return len(header).to_bytes(8, "little") + header.encode()


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"\xff" * 8, "not plausible"),
        (_st("[1,]"), "not JSON"),
        (_st("[]"), "not a JSON object"),
        (_st('{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}'), "do not hold"),
        (_st('{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'), "inside the file"),
        (_st('{"t":{"dtype":"F32","shape":9}}'), "malformed"),
        (_st('{"t":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}'), "C64"),
        (_st('{"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,8]}}'), "malformed"),
        (_st('{"t":5}'), "malformed"),  # there, but not a tensor's entry: not a KeyError
        (_st(_tensor_json([0, 10**30], [0, 0])), "numpy"),  # no bytes, but no such array
        (_st(_tensor_json([1] * 70, [0, 4])), "numpy"),  # more dimensions than numpy has
        (_st("[" + "0," * MAX_SAFETENSORS_VALUES + "0]"), "values"),  # would be 2.6 GB at 100 MB
        (
            _st("[" + ",".join(["[" * 99 + "]" * 99] * (MAX_SAFETENSORS_VALUES // 99)) + "]"),
            "values",
        ),
    ],
)
def test_bad_safetensors_is_a_format_error(header: bytes, message: str) -> None:
    files = Files({"/bad.safetensors": header + b"\0" * 8})
    with pytest.raises(FormatError, match=message) as info:
        read_tensor(files, "/bad.safetensors", "t")
    assert "/bad.safetensors" in str(info.value)
    assert files.bytes_read < len(header) + 64  # its header, and no more than its bytes


def test_describe_model_says_format_error_for_an_entry_that_is_not_a_tensor() -> None:
    files = Files({"/m.safetensors": _st('{"x":5}')})
    with pytest.raises(FormatError, match="malformed header entry"):  # (was a KeyError)
        describe_model(files, "/m.safetensors")


def test_a_safetensors_header_nested_too_deep_is_a_format_error() -> None:
    files = Files({"/deep.safetensors": _st("[" * 5_000) + b"\0" * 8})  # deeper than json follows
    with pytest.raises(FormatError, match="not JSON") as info:
        read_tensor(files, "/deep.safetensors", "t")
    assert "/deep.safetensors" in str(info.value)


def test_describe_model_counts_parameters_and_dtypes(tmp_path: Path) -> None:
    files = Files(
        {
            "/m.safetensors": safetensors_bytes(_tensors()),
            "/m.gguf": gguf_bytes(tmp_path, {"w": np.zeros((8, 4), dtype=np.float16)}),
        }
    )

    class WithStat(Files):
        def stat(self, path: str) -> object:
            return type("Info", (), {"size": len(self.files[path])})()

    img = WithStat(files.files)
    st = describe_model(img, "/m.safetensors")
    assert st.format == "safetensors" and st.tensors == len(_tensors())
    assert st.parameters == sum(int(np.size(a)) for _, a in _tensors().values())
    assert st.dtypes["F32"] == 3 and st.dtypes["BF16"] == 1
    g = describe_model(img, "/m.gguf")
    assert (g.format, g.tensors, g.parameters, g.dtypes) == ("gguf", 1, 32, {"F16": 1})
    assert g.bytes == len(files.files["/m.gguf"])


def test_every_cut_of_a_gguf_header_is_a_format_error_or_the_same_header(tmp_path: Path) -> None:
    data = gguf_bytes(
        tmp_path,
        {"a": np.zeros((3, 2), dtype=np.float16), "b": np.zeros(4, dtype=np.float32)},
        {"k.s": "text", "k.arr": ["x", "yy"], "k.nest": [[1], [2, 3]], "k.f": 1.5},
    )
    whole = gguf_metadata(Files({"/m": data}), "/m")
    header_end = whole["tensors"][0]["offset"]
    for cut in range(header_end + 1):
        try:
            got = gguf_metadata(Files({"/m": data[:cut]}), "/m")
        except FormatError as exc:
            assert "/m" in str(exc)
        else:
            assert got == whole, cut


def test_corrupted_gguf_headers_fail_cleanly(tmp_path: Path) -> None:
    data = gguf_bytes(tmp_path, {"a": np.zeros(8, dtype=np.float32)}, {"k": ["x", "y"], "n": 7})
    rng = np.random.default_rng(3)
    header_end = gguf_metadata(Files({"/m": data}), "/m")["tensors"][0]["offset"]
    for _ in range(300):
        bad = bytearray(data)
        for pos in rng.integers(4, header_end, size=3):
            bad[pos] = int(rng.integers(0, 256))
        files = Files({"/m": bytes(bad)})
        try:
            gguf_metadata(files, "/m")
        except FormatError:
            pass
        assert files.bytes_read <= max(len(data), 64 << 10)
