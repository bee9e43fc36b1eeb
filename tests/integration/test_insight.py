"""Image insight against the real registry: du, layer_usage, diff and bloat of images with
known contents equal what the test computes from its own declarations (tests/insightimages.py),
and the shared layers of two images are not fetched by a diff."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from imagebuilder import Entry, dir, file, image, layer, random_bytes, whiteout
from insightimages import content, debug_section_bytes, expected_du, known_layers, model

import seekoci
from seekoci import insight

pytestmark = pytest.mark.integration

REPO = "insight/app"


@pytest.fixture(scope="module")
def known(registry: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    k = known_layers(tmp_path_factory.mktemp("elf"))
    registry.push(REPO, "base", k.base_image)
    registry.push(REPO, "v1", k.image)
    # a second upper over the same base: the diff of v1 and v2 never needs the base's data
    upper2 = layer(
        dir("etc"),
        file("etc/same-size.txt", b"z" * 100),  # same as v1's upper
        file("etc/grow.txt", b"B" * 80, mode=0o600),  # v1's content, another mode
        dir("data"),
        file("data/big.bin", random_bytes("big-v2", 150_000)),  # v1's size, other bytes
        dir("app"),
        file("app/new.txt", b"new in the upper layer\n"),
        file("app/only-v2.txt", b"v2\n"),
        whiteout("usr/share/b.txt"),
    )
    k.upper2 = upper2
    k.image2 = image(k.base, upper2)
    registry.push(REPO, "v2", k.image2)
    registry.push(REPO, "v3", k.image3)
    return k


def open_ref(registry: Any, tag: str, cache: Path | bool = False) -> seekoci.Image:
    return seekoci.open_image(registry.ref(REPO, tag), cache_dir=cache)


# -- du -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("top", "depth"), [("/", 0), ("/", 1), ("/", 3), ("/usr", 1), ("/etc", 0)])
def test_du_is_what_the_declared_layers_hold(
    known: Any, registry: Any, top: str, depth: int
) -> None:
    got = insight.du(open_ref(registry, "v1"), top, depth=depth)
    want = expected_du(model(known.base, known.upper), top, depth)
    assert [(u.path, u.size, u.files) for u in got] == want
    assert [u.path for u in got] == sorted(u.path for u in got)


def test_du_counts_a_hard_link_once(known: Any, registry: Any) -> None:
    rows = {u.path: u for u in insight.du(open_ref(registry, "v1"), "/data", depth=0)}
    big = known.upper.entry("data/big.bin")
    assert (rows["/data"].size, rows["/data"].files) == (big.size, 1)


def test_du_of_a_file_or_a_missing_path_is_an_error(registry: Any, known: Any) -> None:
    img = open_ref(registry, "v1")
    with pytest.raises(NotADirectoryError):
        insight.du(img, "/etc/keep.txt")
    with pytest.raises(FileNotFoundError):
        insight.du(img, "/nowhere")
    with pytest.raises(ValueError):
        insight.du(img, "/", depth=-1)


# -- layer_usage ----------------------------------------------------------------------------


def _names_with_parents(entries: tuple[Entry, ...]) -> set[str]:
    names = set()
    for e in entries:
        parts = e.name.strip("/").split("/")
        names |= {"/".join(parts[: i + 1]) for i in range(len(parts))}
    return names


def test_layer_usage_is_what_the_declarations_say(known: Any, registry: Any) -> None:
    rows = insight.layer_usage(open_ref(registry, "v1"))
    seen = model(known.base, known.upper)
    base, upper = known.base, known.upper
    base_names = _names_with_parents(base.entries)
    base_by_name = {e.name: e for e in base.entries}
    up_real = [e for e in upper.entries if not e.name.rpartition("/")[2].startswith(".wh.")]
    up_whiteouts = [e for e in upper.entries if e not in up_real]

    def hidden(lay: Any) -> int:
        return sum(
            e.size
            for e in lay.entries
            if e.type == "file"
            and not e.name.rpartition("/")[2].startswith(".wh.")
            and seen.get(e.path) is not e
        )

    modified = [
        e
        for e in up_real
        if e.name in base_names
        and not (
            e.type == "dir"
            and base_by_name[e.name].type == "dir"
            and base_by_name[e.name].mode == e.mode
        )
    ]
    deleted = [
        e for e in up_whiteouts if e.name.replace(".wh.", "") in base_names
    ]  # etc/.wh.gone.txt -> etc/gone.txt
    want = [
        (base.digest, base.size, len(base.tar), 13, len(base.entries), 0, 0, hidden(base)),
        (
            upper.digest,
            upper.size,
            len(upper.tar),
            sum(1 for e in up_real if e.type == "file"),
            sum(1 for e in up_real if e.name not in base_names),
            len(modified),
            len(deleted),
            hidden(upper),
        ),
    ]
    got = [
        (
            r.digest,
            r.size,
            r.uncompressed_size,
            r.files,
            r.added,
            r.modified,
            r.deleted,
            r.hidden_bytes,
        )
        for r in rows
    ]
    assert got == want
    assert (len(modified), len(deleted)) == (3, 2)  # the declarations are what this test means
    assert hidden(base) == 100 + 50 + 30 + 1000 + 2000 + 200_000
    assert [r.created_by for r in rows] == ["imagebuilder layer 0", "imagebuilder layer 1"]


def expected_layer_counts(lower: dict[str, Entry], lay: Any) -> tuple[int, int, int, int]:
    """(files, added, modified, deleted) of layer ``lay`` over the model ``lower``."""
    names = set(lower)
    for p in list(lower):  # implied parents
        parts = p.strip("/").split("/")
        names |= {"/" + "/".join(parts[:i]) for i in range(1, len(parts))}
    real = {e.path: e for e in lay.entries if not e.name.rpartition("/")[2].startswith(".wh.")}
    marks = [e for e in lay.entries if e.name.rpartition("/")[2].startswith(".wh.")]
    added = sum(1 for p in real if p not in names)
    modified = sum(
        1
        for p, e in real.items()
        if p in names
        and not (e.type == "dir" and lower.get(p) is not None and lower[p].type == "dir"
                 and lower[p].mode == e.mode)
    )  # fmt: skip
    deleted = 0
    for m in marks:
        parent, _, base = m.path.rpartition("/")
        if base == ".wh..wh..opq":
            children = {n for n in names if n.rpartition("/")[0] == parent}
            deleted += len(children - set(real))
        elif parent + "/" + base[4:] in names and parent + "/" + base[4:] not in real:
            deleted += 1
    files = sum(1 for e in real.values() if e.type == "file")
    return files, added, modified, deleted


def test_layer_usage_of_an_opaque_directory(known: Any, registry: Any) -> None:
    rows = insight.layer_usage(open_ref(registry, "v3"))
    got = (rows[1].files, rows[1].added, rows[1].modified, rows[1].deleted)
    assert got == expected_layer_counts(model(known.base), known.upper3)
    assert got == (2, 1, 1, 2)  # c.txt added; a.txt stored again; b.txt and link hidden
    seen = model(known.base, known.upper3)
    hidden = sum(
        e.size for e in known.base.entries if e.type == "file" and seen.get(e.path) is not e
    )
    assert rows[0].hidden_bytes == hidden == 2 * len(known.base.entry("usr/share/a.txt").data)
    # the copy stored again is a duplicate of the hidden one, and hidden itself
    findings = {f.category: f for f in insight.bloat(open_ref(registry, "v3"))}
    assert "/usr/share/a.txt" in findings["duplicate-files"].paths
    assert findings["hidden-by-upper-layers"].bytes == hidden


# -- diff -----------------------------------------------------------------------------------


def expected_diff(a: dict[str, Entry], b: dict[str, Entry]) -> list[tuple[str, str, Any, Any]]:
    def size(seen: dict[str, Entry], p: str) -> int:
        e = content(seen, p)
        return e.size if e.type == "file" else 0

    def key(seen: dict[str, Entry], p: str) -> tuple[Any, ...]:
        e = content(seen, p)
        kind = "file" if e.type in ("file", "hardlink") else e.type
        return (kind, e.mode & 0o7777, e.linkname if e.type == "symlink" else "", e.data)

    out = []
    for p in sorted(set(a) | set(b)):
        ea, eb = a.get(p), b.get(p)
        if ea is not None and eb is not None:
            if ea.type == eb.type == "dir" or key(a, p) == key(b, p):
                continue
            out.append((p, "modified", size(a, p), size(b, p)))
        elif ea is None and eb is not None and eb.type != "dir":
            out.append((p, "added", None, size(b, p)))
        elif eb is None and ea is not None and ea.type != "dir":
            out.append((p, "removed", size(a, p), None))
    return out


@pytest.mark.parametrize(
    ("tag_a", "tag_b"),
    [("base", "v1"), ("v1", "base"), ("v1", "v2"), ("base", "v3"), ("v3", "v1")],
)
def test_diff_is_what_the_declarations_say(
    known: Any, registry: Any, tag_a: str, tag_b: str
) -> None:
    layers = {
        "base": [known.base],
        "v1": [known.base, known.upper],
        "v2": [known.base, known.upper2],
        "v3": [known.base, known.upper3],
    }
    got = insight.diff(open_ref(registry, tag_a), open_ref(registry, tag_b))
    want = expected_diff(model(*layers[tag_a]), model(*layers[tag_b]))
    assert [(c.path, c.kind, c.size_a, c.size_b) for c in got] == want
    assert want, "the images differ"


def test_diff_of_an_image_with_itself_is_empty(registry: Any, known: Any) -> None:
    assert insight.diff(open_ref(registry, "v1"), open_ref(registry, "v1")) == []


def test_diff_without_digests_compares_bytes(known: Any, registry: Any, monkeypatch: Any) -> None:
    """Indexes without file digests (a SOCI zTOC, format 5): same-size files are compared by
    their bytes, and the answer is the same."""
    from seekoci.formats import tar

    original = tar.TarScanner.__init__

    def no_digests(self: Any, *, name: str = "tar stream", hash_files: bool = True) -> None:
        original(self, name=name, hash_files=False)

    monkeypatch.setattr(tar.TarScanner, "__init__", no_digests)
    a, b = open_ref(registry, "v1"), open_ref(registry, "v2")
    for lay in [*a.layers, *b.layers]:
        lay.remote = None  # build here, without digests, even if another test published some
    got = insight.diff(a, b)
    assert all(e.sha256 is None for lay in b.layers for e in lay.entries())
    want = expected_diff(model(known.base, known.upper), model(known.base, known.upper2))
    assert [(c.path, c.kind, c.size_a, c.size_b) for c in got] == want
    assert ("/data/big.bin", "modified", 150_000, 150_000) in want  # same size, other bytes


def seekoci_cli(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seekoci", *args, "--cache-dir", str(cache)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_diff_of_two_tags_never_fetches_their_shared_layer(
    known: Any, registry: Any, counting_proxy: Any, tmp_path: Path
) -> None:
    for tag in ("v1", "v2"):
        pushed = seekoci_cli("index", registry.ref(REPO, tag), "--push", cache=tmp_path / tag)
        assert pushed.returncode == 0, pushed.stderr
    proxy = counting_proxy(registry)
    empty = tmp_path / "empty"
    a = seekoci.open_image(proxy.ref(REPO, "v1"), cache_dir=empty)
    b = seekoci.open_image(proxy.ref(REPO, "v2"), cache_dir=empty)
    got = insight.diff(a, b)
    want = expected_diff(model(known.base, known.upper), model(known.base, known.upper2))
    assert [(c.path, c.kind, c.size_a, c.size_b) for c in got] == want
    layer_blobs = {known.base.digest, known.upper.digest, known.upper2.digest}
    fetched = {d for d in layer_blobs for r in proxy.records if r.kind == "blob" and d in r.path}
    assert not fetched, proxy.summary()  # digests in the indexes decide: no layer data read
    assert proxy.bytes("blob") > 0  # the published indexes were read


# -- bloat ----------------------------------------------------------------------------------


def test_bloat_finds_what_was_planted(known: Any, registry: Any, tmp_path: Path) -> None:
    findings = {f.category: f for f in insight.bloat(open_ref(registry, "v1"))}
    assert set(insight.CATEGORIES) <= set(findings)
    seen = model(known.base, known.upper)
    hidden = sorted(
        (
            (e.path, e.size)
            for e in known.base.entries
            if e.type == "file" and seen.get(e.path) is not e
        ),
        key=lambda item: (-item[1], item[0]),
    )
    f = findings["hidden-by-upper-layers"]
    assert (f.bytes, f.paths) == (sum(s for _, s in hidden), [p for p, _ in hidden])
    f = findings["duplicate-files"]
    assert (f.bytes, sorted(f.paths)) == (
        len(known.base.entry("usr/share/a.txt").data),
        ["/usr/share/a.txt", "/usr/share/b.txt"],
    )
    pyc = known.base.entry("usr/lib/python3/m/__pycache__/mod.cpython-311.pyc")
    assert (findings["python-bytecode"].bytes, findings["python-bytecode"].paths) == (
        pyc.size,
        [pyc.path],
    )
    apt = known.base.entry("var/lib/apt/lists/deb.debian.org_Packages")
    assert (findings["package-manager-caches"].bytes, findings["package-manager-caches"].paths) == (
        apt.size,
        [apt.path],
    )
    lib = known.base.entry("usr/lib/libfoo.a")
    assert (findings["static-libraries"].bytes, findings["static-libraries"].paths) == (
        lib.size,
        [lib.path],
    )
    debug = findings["debug-info"]
    want_debug = debug_section_bytes(known.elf, tmp_path)
    assert want_debug > 0 and debug_section_bytes(known.elf_stripped, tmp_path) == 0
    assert (debug.bytes, debug.paths) == (want_debug, ["/app/bin/hello"])
    assert "/app/bin/hello-stripped" not in debug.paths
    sizes = [x.bytes for x in insight.bloat(open_ref(registry, "v1"))]
    assert sizes == sorted(sizes, reverse=True)


def test_debug_info_reads_section_headers_not_binaries(
    known: Any, registry: Any, counting_proxy: Any, tmp_path: Path
) -> None:
    """A big unstripped binary: bloat fetches its ELF headers, not its bulk."""
    padding = random_bytes("bulk", 24 << 20)
    elf = known.elf
    # the same binary with 24 MB of incompressible bytes appended: ELF ignores trailing data
    big = layer(dir("opt"), file("opt/huge-binary", elf + padding, mode=0o755))
    img = image(known.base, big)
    registry.push(REPO, "huge", img)
    pushed = seekoci_cli("index", registry.ref(REPO, "huge"), "--push", cache=tmp_path / "p")
    assert pushed.returncode == 0, pushed.stderr
    proxy = counting_proxy(registry)
    reader = seekoci.open_image(proxy.ref(REPO, "huge"), cache_dir=tmp_path / "empty")
    debug = next(f for f in insight.bloat(reader) if f.category == "debug-info")
    assert "/opt/huge-binary" in debug.paths
    fetched = sum(r.body_bytes for r in proxy.records if big.digest in r.path)
    assert 0 < fetched < big.size / 8, proxy.summary()


# -- CLI ------------------------------------------------------------------------------------


def test_cli_json_forms_agree_with_the_library(known: Any, registry: Any, tmp_path: Path) -> None:
    ref = registry.ref(REPO, "v1")
    cache = tmp_path / "c"
    du = seekoci_cli("du", ref, "/", "-d", "2", "--json", cache=cache)
    assert du.returncode == 0, du.stderr
    rows = json.loads(du.stdout)
    want = expected_du(model(known.base, known.upper), "/", 2)
    assert sorted((r["path"], r["size"], r["files"]) for r in rows) == want
    assert [r["size"] for r in rows] == sorted((r["size"] for r in rows), reverse=True)
    layers = json.loads(seekoci_cli("layers", ref, "--json", cache=cache).stdout)
    assert [row["digest"] for row in layers] == [known.base.digest, known.upper.digest]
    assert layers[1]["deleted"] == 2 and layers[1]["created_by"] == "imagebuilder layer 1"
    changes = json.loads(
        seekoci_cli("diff", registry.ref(REPO, "base"), ref, "--json", cache=cache).stdout
    )
    assert {"path": "/etc/gone.txt", "kind": "removed", "size_a": 30, "size_b": None} in changes
    bloat = json.loads(seekoci_cli("bloat", ref, "--json", cache=cache).stdout)
    assert {b["category"] for b in bloat} >= set(insight.CATEGORIES)


def test_cli_text_forms(known: Any, registry: Any, tmp_path: Path) -> None:
    ref = registry.ref(REPO, "v1")
    cache = tmp_path / "c"
    du = seekoci_cli("du", ref, cache=cache)
    assert du.returncode == 0, du.stderr
    lines = du.stdout.splitlines()
    assert lines[0].split()[-1] == "/" and lines[1].split()[-1] == "/data"  # largest first
    layers = seekoci_cli("layers", ref, cache=cache).stdout.splitlines()
    assert layers[0].split()[:2] == ["#", "LAYER"]
    assert layers[2].endswith("imagebuilder layer 1")
    diff = seekoci_cli("diff", registry.ref(REPO, "base"), ref, cache=cache).stdout
    assert "- /etc/gone.txt" in diff and "+ /app/new.txt" in diff and "M /data/big.bin" in diff
    bloat = seekoci_cli("bloat", ref, cache=cache).stdout
    assert "debug-info" in bloat and "/app/bin/hello" in bloat
    missing = seekoci_cli("du", ref, "/nowhere", cache=cache)
    assert missing.returncode == 1 and missing.stderr.startswith("seekoci: error:")
    assert "Traceback" not in missing.stderr
    html_file = tmp_path / "du.html"
    written = seekoci_cli("du", ref, "--html", str(html_file), cache=cache)
    assert written.returncode == 0, written.stderr
    page = html_file.read_text()
    assert "<svg" in page and "/data" in page and "<script" not in page


# -- on the wire ----------------------------------------------------------------------------

DU_SCRIPT = """
import json, sys
import seekoci
from seekoci import insight
img = seekoci.open_image(sys.argv[1], cache_dir=sys.argv[2])
rows = insight.du(img, "/", depth=2)
print(json.dumps({"rows": [[u.path, u.size, u.files] for u in rows],
                  "status": [layer.index_status for layer in img.layers]}))
"""


def test_du_of_a_big_image_with_published_indexes_fetches_under_2_percent(
    registry: Any, counting_proxy: Any, tmp_path: Path
) -> None:
    """A fresh process with an empty cache: only manifests, config and the indexes' header,
    directory and entry pages travel -- not the ~48 MB of layers."""
    base = layer(
        dir("etc"),
        file("etc/os-release", b"ID=test\n"),
        *(file(f"usr/lib/lib{i:02d}.so", random_bytes(f"lib{i}", 1 << 20)) for i in range(16)),
    )
    models = layer(
        dir("models"),
        *(file(f"models/m{i}/weights.bin", random_bytes(f"w{i}", 2 << 20)) for i in range(16)),
        producer="pigz",
    )
    img = image(base, models)
    registry.push("insight/big", "v1", img)
    total = sum(lay.size for lay in img.layers)
    assert total > 40 << 20
    pushed = seekoci_cli("index", registry.ref("insight/big", "v1"), "--push", cache=tmp_path / "p")
    assert pushed.returncode == 0, pushed.stderr
    proxy = counting_proxy(registry)
    run = subprocess.run(
        [sys.executable, "-c", DU_SCRIPT, proxy.ref("insight/big", "v1"), str(tmp_path / "empty")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["status"] == ["native", "native"]
    want = expected_du(model(base, models), "/", 2)
    assert [tuple(r) for r in doc["rows"]] == want
    assert proxy.bytes() < total * 0.02, proxy.summary()
    layer_digests = {lay.digest for lay in img.layers}
    assert not any(d in r.path for d in layer_digests for r in proxy.records), proxy.summary()


# -- pictures -------------------------------------------------------------------------------

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def png_pixels(data: bytes) -> tuple[int, int, list[tuple[int, ...]]]:
    """Width, height and RGB(A) pixels of an 8-bit RGB or RGBA PNG (what Chromium writes),
    decoded here with zlib: chunks, then the five scanline filters of the PNG spec."""
    import struct
    import zlib

    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and color in (2, 6), (depth, color)
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytearray] = []
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(line)
        prev = line
    pixels = [tuple(row[i : i + 3]) for row in rows for i in range(0, stride, bpp)]
    return width, height, pixels


def test_the_du_page_renders_in_headless_chromium(
    known: Any, registry: Any, tmp_path: Path
) -> None:
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is needed (apt-get install -y chromium; .ci/run installs it)"
    page = tmp_path / "du.html"
    written = seekoci_cli(
        "du", registry.ref(REPO, "v1"), "-d", "2", "--html", str(page), cache=tmp_path / "c"
    )
    assert written.returncode == 0, written.stderr
    shot = tmp_path / "du.png"
    subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=480,360",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    width, height, pixels = png_pixels(shot.read_bytes())
    assert (width, height) == (480, 360)
    background = max(set(pixels), key=pixels.count)
    drawn = sum(1 for p in pixels if p != background)
    assert drawn > len(pixels) // 5, "the page rendered (nearly) blank"
    # the treemap's largest box (/data, first colour) fills a good part of the picture
    assert pixels.count((0x4C, 0x78, 0xA8)) > len(pixels) // 20


def test_results_render_for_notebooks(known: Any, registry: Any) -> None:
    img = open_ref(registry, "v1")
    page = insight.du(img, "/", depth=2)._repr_html_()
    assert page.count("<svg") == 1 and "<script" not in page
    assert "/usr/share" in page and "<table" in page
    layers = insight.layer_usage(img)._repr_html_()
    assert "imagebuilder layer 1" in layers and layers.count("<tr>") == 1 + 2
    assert "<table" in insight.diff(open_ref(registry, "base"), img)._repr_html_()
    assert "debug-info" in insight.bloat(img)._repr_html_()
