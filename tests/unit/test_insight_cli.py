"""``seekoci du / layers / diff / bloat`` in-process over an OCI layout on disk (no registry):
terminal and pipe output, usage errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from layers import dir, file, random_bytes, whiteout

from seekoci.cli import main


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def no_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / ".cache"))
    monkeypatch.setenv("SEEKOCI_CACHE_DIR", str(tmp_path / "home" / "seekoci-cache"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "home" / ".docker"))


@pytest.fixture
def refs(tmp_path: Path) -> tuple[str, str]:
    import imagebuilder

    base = imagebuilder.layer(
        dir("big"),
        file("big/blob.bin", random_bytes("cli-big", 40_000)),
        dir("small"),
        file("small/a.txt", b"a" * 1000),
        file("small/gone.txt", b"g" * 10),
    )
    upper = imagebuilder.layer(whiteout("small/gone.txt"), file("small/new.txt", b"n" * 5))
    root = tmp_path / "layout"
    imagebuilder.write_oci_layout(root, imagebuilder.image(base), "base")
    imagebuilder.write_oci_layout(root, imagebuilder.image(base, upper), "top")
    return f"oci:{root}:base", f"oci:{root}:top"


def run(argv: list[str], out: io.StringIO | None = None) -> tuple[int, str]:
    out = out if out is not None else io.StringIO()
    code = main([*argv, "--no-cache"], out=out)
    return code, out.getvalue()


def test_du_on_a_terminal_draws_a_bar_per_row_largest_first(refs: tuple[str, str]) -> None:
    code, text = run(["du", refs[1]], out=Terminal())
    assert code == 0
    rows = text.splitlines()
    assert [r.split()[-1] for r in rows] == ["/", "/big", "/small"]
    bars = [r.count("\u2588") for r in rows]
    assert bars[0] == 24 and bars[0] > bars[1] > bars[2] >= 0  # "/" is the longest bar
    assert rows[1].split()[:3] == ["39.1", "KiB", "1"]


def test_du_into_a_pipe_has_no_bars(refs: tuple[str, str]) -> None:
    code, text = run(["du", refs[1], "/small", "-d", "0"])
    assert code == 0 and text.count("\n") == 1 and "\u2588" not in text
    assert text.split() == ["1005", "B", "2", "/small"]


def test_du_json_and_html(refs: tuple[str, str], tmp_path: Path) -> None:
    page = tmp_path / "out.html"
    code, text = run(["du", refs[1], "--json", "--html", str(page)])
    assert code == 0
    assert json.loads(text) == [
        {"path": "/", "size": 41_005, "files": 3},
        {"path": "/big", "size": 40_000, "files": 1},
        {"path": "/small", "size": 1005, "files": 2},
    ]
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html and "/big" in html


@pytest.mark.parametrize(
    "argv", [["du", "REF", "-d", "-1"], ["du", "REF", "-d", "x"], ["diff", "REF"]]
)
def test_usage_errors_exit_2(refs: tuple[str, str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run([refs[1] if a == "REF" else a for a in argv])
    assert exc.value.code == 2


def test_du_of_a_missing_directory_is_one_error_line(
    refs: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run(["du", refs[1], "/small/gone.txt"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("seekoci: error:") and err.count("\n") == 1 and "gone.txt" in err


def test_layers_diff_and_bloat_text(refs: tuple[str, str]) -> None:
    code, text = run(["layers", refs[1]])
    assert code == 0
    header, first, second = text.splitlines()
    assert header.split()[:3] == ["#", "LAYER", "COMPRESSED"]
    assert first.split()[0] == "0" and second.split()[0] == "1"
    assert second.endswith("imagebuilder layer 1")
    code, text = run(["diff", *refs])
    assert (code, text) == (0, "- /small/gone.txt  (10 B)\n+ /small/new.txt  (5 B)\n")
    code, text = run(["bloat", refs[1], "--json"])
    doc = {f["category"]: f for f in json.loads(text)}
    assert doc["hidden-by-upper-layers"] == {
        "category": "hidden-by-upper-layers",
        "bytes": 10,
        "paths": ["/small/gone.txt"],
    }
