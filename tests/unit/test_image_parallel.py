"""An image lookup that needs several layers indexed works on them at once: the next layer's
lookup starts while the one above is still indexing, lookups called off stay resumable, and
the answer (including whiteouts and errors) is the one a top-down walk gives."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator, Sequence

import pytest
from layers import Entry, build_tar, compress_layer, file, random_bytes, whiteout

import seekoci
from seekoci.build import PassMeter
from seekoci.cache import MemoryCache
from seekoci.errors import RegistryError
from seekoci.image import Image, _room_beside
from seekoci.source import BytesSource

MIB = 1 << 20


class Streams:
    """Counts the layer streams open at once, across every layer of an image."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open = 0
        self.most = 0

    def opened(self) -> None:
        with self._lock:
            self.open += 1
            self.most = max(self.most, self.open)

    def closed(self) -> None:
        with self._lock:
            self.open -= 1


class SlowStream(BytesSource):
    """Hands its blob out in small chunks, pausing between them (a slow wire), so a pass
    lasts long enough for the next layer's lookup to start next to it."""

    def __init__(
        self, data: bytes, streams: Streams, *, fail: bool = False, pause: float = 0.01
    ) -> None:
        super().__init__(data, name="slow")
        self._streams = streams
        self._fail = fail
        self._pause = pause
        self.streamed = 0

    def iter_from(self, offset: int = 0, chunk_size: int = MIB) -> Iterator[bytes]:
        self._streams.opened()
        try:
            for chunk in super().iter_from(offset, 64 << 10):
                if self._fail:
                    raise RegistryError("slow: connection reset")
                time.sleep(self._pause)
                self.streamed += len(chunk)
                yield chunk
        finally:
            self._streams.closed()


def image_of(
    *layers: Sequence[Entry], fail: int | None = None, pause: float = 0.01
) -> tuple[Image, Streams]:
    streams = Streams()
    objs = []
    for i, declared in enumerate(layers):
        blob = compress_layer(build_tar(declared), "python")
        objs.append(
            seekoci.Layer(
                SlowStream(blob, streams, fail=i == fail, pause=pause),
                cache=MemoryCache(),
                digest="sha256:" + hashlib.sha256(blob).hexdigest(),
                span_size=65536,
            )
        )
    img = Image(
        reference="test", digest="", platform="linux/amd64", config={}, manifest={}, layers=objs
    )
    return img, streams


def filler(tag: str) -> list[Entry]:
    return [file(f"{tag}/blob{i}", random_bytes(f"{tag}{i}", MIB // 2)) for i in range(3)]


def text_filler(tag: str) -> list[Entry]:
    """Compressible files: a pass over them inflates for a while (tenths of a second)."""
    lines = b"".join(f"{tag} line {i} {i * i % 9973}\n".encode() for i in range(300_000))
    return [file(f"{tag}/text{i}", lines) for i in range(2)]


def test_a_path_in_the_bottom_layer_indexes_the_layers_above_at_once() -> None:
    img, streams = image_of(
        [*filler("base"), file("deep/target", b"found me")],
        filler("middle"),
        filler("top"),
    )
    assert img.read_bytes("/deep/target") == b"found me"
    assert streams.most >= 2  # two passes were streaming at the same time
    assert img.layers[2].complete() and img.layers[1].complete()
    assert img.layers[2].index_status == img.layers[1].index_status == "built"


def test_on_two_cores_a_pass_the_cpu_holds_up_starts_no_guess_beside_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # bytes at once (no wire to wait for): a second pass could only take the first's CPU
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    img, streams = image_of(
        [*text_filler("base"), file("deep/target", b"found me")],
        text_filler("middle"),
        text_filler("top"),
        pause=0,
    )
    assert img.read_bytes("/deep/target") == b"found me"
    assert streams.most == 1
    assert all(layer.complete() for layer in img.layers)


def test_the_pass_meter_tells_the_wire_from_the_cpu() -> None:
    meter = PassMeter()
    assert meter.waits_on_network() is None  # nothing measured yet
    meter.add(network=0.01, behind=0.02)
    assert meter.waits_on_network() is None  # too little to tell
    meter.add(network=0.3, behind=0.05)
    assert meter.waits_on_network() is True
    meter.add(network=0.0, behind=0.5)
    assert meter.waits_on_network() is False


def test_a_guess_beside_a_pass_needs_spare_cores_or_a_waiting_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    layer = seekoci.Layer(BytesSource(b"x" * 10, name="x"), cache=MemoryCache(), digest=None)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert _room_beside(layer)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert not _room_beside(layer)  # not measured: no guess
    layer.pass_meter.add(network=1.0, behind=0.1)
    assert _room_beside(layer)
    layer.pass_meter.add(network=0.0, behind=2.0)
    assert not _room_beside(layer)


def test_a_path_in_the_top_layer_leaves_lower_lookups_resumable() -> None:
    img, _ = image_of(filler("base"), filler("middle"), [*filler("top"), file("t", b"top")])
    assert img.read_bytes("/t") == b"top"
    lower = img.layers[1]
    assert lower.index_status in ("none", "partial")  # called off, or never started
    # the work done for the called-off lookup is not repeated: one read of the blob in all
    lower.index()
    assert lower.source.streamed == lower.size  # type: ignore[attr-defined]


def test_an_upper_whiteout_still_hides_a_lower_file() -> None:
    img, _ = image_of(
        [*filler("base"), file("gone", b"old")],
        [*filler("mid"), whiteout("gone")],
        filler("top"),
    )
    with pytest.raises(FileNotFoundError):
        img.read_bytes("/gone")


def test_an_error_in_a_layer_the_answer_needs_is_raised() -> None:
    img, _ = image_of([file("deep", b"x")], filler("middle"), filler("top"), fail=1)
    with pytest.raises(RegistryError, match="connection reset"):
        img.read_bytes("/deep")


def test_an_error_in_a_layer_the_answer_does_not_need_is_not() -> None:
    img, _ = image_of(filler("base"), [*filler("top"), file("t", b"top")], fail=0)
    assert img.read_bytes("/t") == b"top"


def test_build_index_indexes_every_layer() -> None:
    img, streams = image_of(filler("a"), filler("b"), filler("c"))
    calls: list[str] = []
    img.build_index(progress=lambda name, done, total: calls.append(name))
    assert all(layer.index_status == "built" for layer in img.layers)
    assert streams.most >= 2
    assert {layer.name for layer in img.layers} <= set(calls)
