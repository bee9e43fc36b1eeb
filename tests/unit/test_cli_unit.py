"""The command line, called in-process: exit statuses, usage errors and a few commands over an
OCI layout on disk (no registry)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from layers import dir, file, symlink

import seekoci
from seekoci.cli import main


@pytest.fixture(autouse=True)
def no_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a command does, nothing lands in the user's own cache or config."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / ".cache"))
    monkeypatch.setenv("SEEKOCI_CACHE_DIR", str(tmp_path / "home" / "seekoci-cache"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "home" / ".docker"))


def run(argv: list[str]) -> tuple[int, bytes]:
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    code = main(argv, out=out)
    out.flush()
    return code, out.buffer.getvalue()  # type: ignore[attr-defined]


@pytest.fixture
def layout(tmp_path: Path) -> str:
    import imagebuilder

    layer = imagebuilder.layer(
        dir("etc"),
        file("etc/hello", b"hello\n", mode=0o640),
        symlink("hi", "etc/hello"),
        file("bin/tool", b"\x7fELF", mode=0o755),
    )
    imagebuilder.write_oci_layout(tmp_path / "layout", imagebuilder.image(layer), "t")
    return f"oci:{tmp_path / 'layout'}:t"


def test_demo_runs(tmp_path: Path) -> None:
    code, out = run(["demo", "--dir", str(tmp_path / "demo")])
    assert code == 0
    assert b"second read (index from the cache)" in out
    assert (tmp_path / "demo" / "image" / "index.json").exists()
    assert (tmp_path / "demo" / "cache" / "indexes").is_dir()
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["ls"],
        ["cat", "oci:x"],
        ["no-such-command"],
        ["ls", "ref", "--bogus"],
        ["ls", "ref", "--span-size", "many"],
        ["index", "ref", "--format", "zip"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert seekoci.__version__ in capsys.readouterr().out


def test_ls_cat_and_stat(layout: str) -> None:
    assert run(["ls", layout, "/", "--no-cache"]) == (0, b"bin\netc\nhi\n")
    assert run(["cat", layout, "/etc/hello", "/hi", "--no-cache"]) == (0, b"hello\nhello\n")
    code, out = run(["stat", layout, "/etc/hello", "--json", "--no-cache"])
    info = json.loads(out)
    assert code == 0
    assert (info["type"], info["size"], info["mode"]) == ("file", 6, 0o640)
    code, out = run(["ls", layout, "/etc", "-l", "--no-cache"])
    assert code == 0 and out.startswith(b"-rw-r----- ") and out.endswith(b" hello\n")


def test_inspect_json(layout: str, tmp_path: Path) -> None:
    code, out = run(["inspect", layout, "--json", "--cache-dir", str(tmp_path / "c")])
    doc = json.loads(out)
    assert code == 0
    assert set(doc) >= {"reference", "digest", "platform", "layers"}
    (layer,) = doc["layers"]
    assert layer["digest"].startswith("sha256:") and layer["format"] == "tar"


def test_an_error_is_one_line_and_status_1(layout: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["cat", layout, "/etc/missing", "--no-cache"])[0] == 1
    err = capsys.readouterr().err
    assert err.startswith("seekoci: error:") and err.count("\n") == 1
    assert "Traceback" not in err


def test_a_missing_layout_is_status_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["ls", f"oci:{tmp_path / 'nothing'}:t", "--no-cache"])[0] == 1
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("span_size", ["0", "-4096"])
def test_a_span_size_that_is_not_positive(
    span_size: str, layout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # a usage error (2), or an error line (1): never a traceback
    try:
        code = run(["ls", layout, "/", "--no-cache", "--span-size", span_size])[0]
    except SystemExit as exc:
        code = exc.code  # type: ignore[assignment]
        assert code == 2
    else:
        assert code == 1
        assert capsys.readouterr().err.startswith("seekoci: error:")
