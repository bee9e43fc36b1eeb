"""Help texts, `get` refusing to overwrite, `models`, the demo's directory, the namespace."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import imagebuilder
from modelfiles import gguf_bytes, safetensors_bytes

import seekoci
from seekoci import cli


@pytest.fixture(autouse=True)
def no_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / ".cache"))
    monkeypatch.setenv("SEEKOCI_CACHE_DIR", str(tmp_path / "home" / "seekoci-cache"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "home" / ".docker"))


def run(argv: list[str]) -> tuple[int, str]:
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    code = cli.main(argv, out=out)
    out.flush()
    return code, out.buffer.getvalue().decode()  # type: ignore[attr-defined]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


# -- help ---------------------------------------------------------------------------------------
def test_top_level_help_lists_the_reference_forms(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for form in ("python:3.12-slim", "@sha256:", "docker://", "oci:", "exit status"):
        assert form in text
    for command in ("ls", "cat", "get", "stat", "inspect", "index", "models", "demo"):
        assert f"    {command} " in text


def test_options_may_stand_between_a_reference_and_its_path(tmp_path: Path) -> None:
    ref = imagebuilder.write_oci_layout(
        tmp_path / "layout",
        imagebuilder.image(
            imagebuilder.layer(
                imagebuilder.file("etc/hosts", b"hosts\n"),
                imagebuilder.file("usr/lib/a.so", b"\x7fELF" + bytes(4000)),
            )
        ),
        "v1",
    )
    ref = f"oci:{ref}:v1"
    assert run(["ls", ref, "-l", "/etc"]) == run(["ls", ref, "/etc", "-l"])
    assert "hosts" in run(["ls", ref, "-l", "/etc"])[1]
    assert run(["ls", ref, "-R", "/usr"]) == run(["ls", ref, "/usr", "-R"])
    assert run(["du", ref, "-d", "0", "/usr"]) == run(["du", ref, "/usr", "-d", "0"])
    code, text = run(["du", ref, "--json", "/usr"])
    assert code == 0 and json.loads(text)[0]["path"] == "/usr"
    for wrong in (
        ["ls", ref, "-l", "/etc", "/usr"],
        ["ls", ref, "--bogus"],
        ["--platform=linux/arm64", "ls", ref, "/etc"],  # a command's option before it
        ["--no-cache", "cat", ref, "/etc/hosts"],
        ["--bogus", "ls", ref],
    ):
        with pytest.raises(SystemExit) as usage:
            run(wrong)
        assert usage.value.code == 2


def test_every_argument_of_every_command_has_help() -> None:
    for name, sub in _subparsers().items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"seekoci {name}: {action.dest} has no help"
        if name not in ("demo", "cache"):  # the two commands that take no image
            (ref,) = [a for a in sub._actions if a.dest == "ref"]
            assert "[REGISTRY/]REPOSITORY[:TAG][@DIGEST]" in str(ref.help)
            assert "oci:PATH" in str(ref.help)
            assert "oci:./layout" in str(sub.epilog)


# -- get ------------------------------------------------------------------------------------------
@pytest.fixture
def layout(tmp_path: Path) -> str:
    layer = imagebuilder.layer(
        imagebuilder.file("etc/hello", b"hello\n"),
        imagebuilder.file("etc/sub/deep", b"deep\n"),
        imagebuilder.file("etc/other", b"other\n"),
    )
    imagebuilder.write_oci_layout(tmp_path / "layout", imagebuilder.image(layer), "t")
    return f"oci:{tmp_path / 'layout'}:t"


def test_get_refuses_to_overwrite_a_file_unless_forced(
    layout: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "hello.txt"
    dest.write_bytes(b"mine\n")
    assert run(["get", layout, "/etc/hello", "-o", str(dest), "--no-cache"])[0] == 1
    err = capsys.readouterr().err
    assert str(dest) in err and "--force" in err and err.count("\n") == 1
    assert dest.read_bytes() == b"mine\n"
    assert run(["get", layout, "/etc/hello", "-o", str(dest), "--no-cache", "--force"])[0] == 0
    assert dest.read_bytes() == b"hello\n"


def test_get_of_a_tree_refuses_before_writing_anything(
    layout: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "etc"
    (dest / "sub").mkdir(parents=True)  # directories may be there already
    (dest / "sub" / "deep").write_bytes(b"mine\n")
    assert run(["get", layout, "/etc", "-o", str(dest), "--no-cache"])[0] == 1
    assert "already exists" in capsys.readouterr().err
    assert sorted(os.listdir(dest)) == ["sub"] and (dest / "sub" / "deep").read_bytes() == b"mine\n"
    assert run(["get", layout, "/etc", "-o", str(dest), "--no-cache", "--force"])[0] == 0
    assert (dest / "sub" / "deep").read_bytes() == b"deep\n"
    assert (dest / "hello").read_bytes() == b"hello\n"
    fresh = tmp_path / "empty"
    fresh.mkdir()
    assert run(["get", layout, "/etc", "-o", str(fresh), "--no-cache"])[0] == 0
    assert (fresh / "other").read_bytes() == b"other\n"


def test_get_of_a_tree_sees_a_clash_through_a_directory_symlink(
    layout: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory of DEST that is a symlink to a directory is looked into for clashes
    (the check walks only the directories that are there)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "deep").write_bytes(b"mine\n")
    dest = tmp_path / "etc"
    dest.mkdir()
    (dest / "sub").symlink_to(elsewhere)
    assert run(["get", layout, "/etc", "-o", str(dest), "--no-cache"])[0] == 1
    err = capsys.readouterr().err  # the symlink itself, and the file it leads to
    assert f"{dest / 'sub'}: already exists (and 1 more)" in err
    assert (elsewhere / "deep").read_bytes() == b"mine\n" and sorted(os.listdir(dest)) == ["sub"]


def test_get_forced_never_writes_through_a_symlinked_directory_of_dest(
    layout: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --force, a directory of DEST that is a symlink leading out of DEST is not
    written through: what the image puts below it is skipped, with a warning."""
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "etc"
    dest.mkdir()
    (dest / "sub").symlink_to(outside)
    assert run(["get", layout, "/etc", "-o", str(dest), "--no-cache", "--force"])[0] == 0
    assert os.listdir(outside) == []
    assert "skipped /etc/sub/deep" in capsys.readouterr().err
    assert (dest / "hello").read_bytes() == b"hello\n"


def _layout_of(tmp_path: Path, *entries: imagebuilder.Entry) -> str:
    imagebuilder.write_oci_layout(
        tmp_path / "layout", imagebuilder.image(imagebuilder.layer(*entries)), "t"
    )
    return f"oci:{tmp_path / 'layout'}:t"


def test_get_forced_never_follows_a_link_the_walk_replaced_after_deciding(
    tmp_path: Path,
) -> None:
    """DEST/A is a link to DEST/real, and DEST/real/a a link back to DEST. The image's
    directory A/od is made (through A) before its symlink A/a/A -- that is, DEST/A --
    replaces A with a link out of DEST; A/od/f must still land inside DEST."""
    ref = _layout_of(
        tmp_path,
        imagebuilder.dir("A"),
        imagebuilder.dir("A/a"),
        imagebuilder.symlink("A/a/A", "../outside"),
        imagebuilder.dir("A/od"),
        imagebuilder.file("A/od/f", b"from the image\n"),
    )
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    (outside / "od").mkdir(parents=True)
    (dest / "real").mkdir(parents=True)
    (dest / "real" / "a").symlink_to("..")
    (dest / "A").symlink_to("real")
    assert run(["get", ref, "/", "-o", str(dest), "--no-cache", "--force"])[0] == 0
    assert os.listdir(outside / "od") == []
    assert (dest / "real" / "od" / "f").read_bytes() == b"from the image\n"


def test_get_forced_writes_late_files_where_they_were_checked(tmp_path: Path) -> None:
    """A file checked while DEST/A leads (A -> L -> real) inside DEST is written after the
    walk (a staged file moved into place, or a segment); meanwhile the image's link z/L
    (z is a link of DEST to DEST itself) replaced DEST/L with a link out of DEST. The file
    goes where it was checked."""
    ref = _layout_of(
        tmp_path,
        imagebuilder.dir("A"),
        imagebuilder.file("A/f", b"from the image\n"),
        imagebuilder.dir("z"),
        imagebuilder.symlink("z/L", "../outside"),
    )
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    outside.mkdir()
    (dest / "real").mkdir(parents=True)
    (dest / "A").symlink_to("L")
    (dest / "L").symlink_to("real")
    (dest / "z").symlink_to(".")
    assert run(["get", ref, "/", "-o", str(dest), "--no-cache", "--force"])[0] == 0
    assert os.listdir(outside) == []
    assert (dest / "real" / "f").read_bytes() == b"from the image\n"


# -- models ---------------------------------------------------------------------------------------
def test_models_lists_every_model_file(tmp_path: Path) -> None:
    st = safetensors_bytes(
        {
            "a": ("F16", np.zeros((4, 8), dtype=np.float16)),
            "b": ("BF16", np.zeros(3, dtype=np.float32)),
        }
    )
    shard = safetensors_bytes({"c": ("F32", np.zeros((2, 5), dtype=np.float32))})
    index = {"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"}}
    work = tmp_path / "gguf"
    work.mkdir()
    gguf = gguf_bytes(work, {"w": np.zeros((6, 7), dtype=np.float32)})
    layer = imagebuilder.layer(
        imagebuilder.file("m/one.safetensors", st),
        imagebuilder.file("m/sharded/s1.safetensors", st),
        imagebuilder.file("m/sharded/s2.safetensors", shard),
        imagebuilder.file("m/sharded/model.safetensors.index.json", json.dumps(index).encode()),
        imagebuilder.file("m/tiny.gguf", gguf),
        imagebuilder.file("m/readme.txt", b"not a model\n"),
    )
    imagebuilder.write_oci_layout(tmp_path / "layout", imagebuilder.image(layer), "t")
    ref = f"oci:{tmp_path / 'layout'}:t"
    code, out = run(["models", ref, "--json", "--no-cache"])
    assert code == 0
    doc = {m["path"]: m for m in json.loads(out)}
    assert sorted(doc) == ["/m/one.safetensors", "/m/sharded/model.safetensors.index.json",
                           "/m/tiny.gguf"]  # fmt: skip
    one = doc["/m/one.safetensors"]
    assert (one["format"], one["tensors"], one["parameters"]) == ("safetensors", 2, 35)
    assert one["dtypes"] == {"BF16": 1, "F16": 1} and one["bytes"] == len(st)
    sharded = doc["/m/sharded/model.safetensors.index.json"]
    assert (sharded["format"], sharded["sharded"], sharded["tensors"]) == ("safetensors", True, 3)
    assert sharded["parameters"] == 45 and not one["sharded"]
    assert sharded["files"] == ["/m/sharded/s1.safetensors", "/m/sharded/s2.safetensors"]
    assert doc["/m/tiny.gguf"]["dtypes"] == {"F32": 1} and doc["/m/tiny.gguf"]["parameters"] == 42
    code, text = run(["models", ref, "--no-cache"])
    assert code == 0 and "3 tensors, 45 parameters" in text and "gguf: 1 tensors" in text


# -- demo -----------------------------------------------------------------------------------------
def _demo_temps() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("seekoci-demo-")}


def test_demo_reuses_one_directory_and_prints_next_commands(tmp_path: Path) -> None:
    before = _demo_temps()
    code, out = run(["demo"])
    assert code == 0
    root = tmp_path / "home" / "seekoci-cache" / "demo"
    assert f"sample image: oci:{root / 'image'}:sample" in out
    assert "next, try" in out and f"seekoci ls oci:{root / 'image'}:sample /etc -l" in out
    (root / "cache" / "leftover").write_bytes(b"x")
    code, out = run(["demo"])
    assert code == 0 and "first read (builds the index)" in out
    assert not (root / "cache" / "leftover").exists()  # the previous run's state replaced
    assert sorted(os.listdir(root)) == [".seekoci-demo", "cache", "image"]
    assert _demo_temps() == before
    # the printed command works
    assert run(["cat", f"oci:{root / 'image'}:sample", "/etc/os-release"])[1].startswith("NAME=")


def test_demo_without_a_writable_cache_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a-file").write_bytes(b"")
    monkeypatch.setenv("SEEKOCI_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    before = _demo_temps()
    code, out = run(["demo"])
    assert code == 0 and "now removed" in out
    assert _demo_temps() == before


def test_demo_leaves_a_foreign_directory_alone(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    (mine / "cache").mkdir(parents=True)
    (mine / "cache" / "keep.txt").write_bytes(b"keep\n")
    assert run(["demo", "--dir", str(mine)])[0] == 0
    assert (mine / "cache" / "keep.txt").read_bytes() == b"keep\n"  # not marked as the demo's


# -- namespace ------------------------------------------------------------------------------------
def test_all_is_pinned() -> None:
    assert seekoci.__all__ == [
        "DEFAULT_SPAN_SIZE",
        "AuthenticationError",
        "FileInfo",
        "FormatError",
        "Image",
        "ImageNotFoundError",
        "IntegrityError",
        "InvalidReferenceError",
        "Layer",
        "PlatformNotFoundError",
        "RangeSource",
        "RegistryError",
        "SeekociError",
        "TensorNotFoundError",
        "__version__",
        "open_image",
        "open_layer",
    ]
    for name in seekoci.__all__:
        assert hasattr(seekoci, name), name


def test_dir_shows_no_stray_public_names() -> None:
    names = dir(seekoci)
    for stray in ("os", "Any", "annotations", "CacheDir", "open_cache", "make_layer", "cache"):
        assert stray not in names
    public = [n for n in names if not n.startswith("_")]
    modules = [n for n in public if n not in seekoci.__all__]
    assert {"models", "soci"} <= set(modules) <= {"insight", "models", "soci"}
    for name in names:  # everything listed is there
        assert getattr(seekoci, name) is not None or name == "__spec__", name
    assert isinstance(seekoci.models, types.ModuleType)
    assert set(seekoci.__all__) <= set(names)
    with pytest.raises(AttributeError):
        seekoci.no_such_name  # noqa: B018
