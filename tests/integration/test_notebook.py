"""docs/notebook.ipynb, executed in a Jupyter kernel against the test registry: a model's
safetensors header inspected without its weights crossing the wire."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import nbformat
import pytest
from imagebuilder import file, image, layer, random_bytes
from nbclient import NotebookClient

import seekoci
from seekoci.publish import publish_layer_index

pytestmark = pytest.mark.integration

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "notebook.ipynb"
MODEL = "/models/tiny/model.safetensors"
TENSORS = {  # name: (dtype, shape, bytes per element)
    "embed.weight": ("F16", [1024, 1024], 2),
    "layer0.weight": ("F32", [512, 1024], 4),
    "layer0.bias": ("F32", [512], 4),
}


def safetensors_file() -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt", "note": "made by the tests"}}
    offset = 0
    for name, (dtype, shape, width) in TENSORS.items():
        size = width
        for n in shape:
            size *= n
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + random_bytes("notebook-weights", offset)


def outputs(nb: Any) -> list[Any]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def test_notebook_inspects_a_model_without_fetching_its_weights(
    registry: Any, counting_proxy: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = safetensors_file()
    model_layer = layer(
        file("models/tiny/config.json", b'{"hidden_size": 1024}\n'),
        file("models/tiny/model.safetensors", weights),
    )
    img_def = image(layer(file("etc/os-release", b"ID=notebook\n")), model_layer)
    registry.push("notebook/tiny-model", "1.0", img_def)
    # someone published the model layer's index in the team's index repository; the
    # notebook's reader has an empty cache (and builds the small base layer's index itself)
    publisher = seekoci.open_image(registry.ref("notebook/tiny-model", "1.0"), cache_dir=False)
    publish_layer_index(publisher.layers[1], f"{registry.host}/indexes/notebook")

    proxy = counting_proxy(registry)
    monkeypatch.setenv("SEEKOCI_INDEX_REPO", f"{proxy.host}/indexes/notebook")
    monkeypatch.setenv("SEEKOCI_NOTEBOOK_REF", proxy.ref("notebook/tiny-model", "1.0"))
    monkeypatch.setenv("SEEKOCI_NOTEBOOK_MODEL", MODEL)
    monkeypatch.setenv("SEEKOCI_CACHE_DIR", str(tmp_path / "empty-cache"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    outs = outputs(nb)
    assert not [o for o in outs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outs if o.output_type == "stream")
    errors = "".join(o.text for o in outs if o.output_type == "stream" and o.name == "stderr")
    # build_index(progress=True) drew a bar for the one layer it had to build, none for the
    # one whose index came from the repository
    assert f"indexing {img_def.layers[0].digest[:19]}" in errors
    assert img_def.layers[1].digest[:19] not in errors
    assert "3 tensors, 1,573,376 parameters" in text
    assert "embed.weight             F16   [1024, 1024]" in text
    assert f"{MODEL}: {len(weights):,} bytes; read from its layer: " in text
    html = [o.data["text/html"] for o in outs if "text/html" in o.get("data", {})]
    assert any("<table>" in h and model_layer.digest in h and "native" in h for h in html)
    assert any(MODEL in h and f"({len(weights)} bytes)" in h for h in html)  # FileInfo
    # what crossed the wire from the model's layer: the header's span start, not the weights
    from_layer = sum(
        r.body_bytes for r in proxy.records if r.kind == "blob" and model_layer.digest in r.path
    )
    assert 0 < from_layer < len(weights) / 8, proxy.summary()
