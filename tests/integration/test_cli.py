"""The command line, run as ``python -m seekoci`` in a subprocess against a real registry."""

from __future__ import annotations

import json
import os
import posixpath
import secrets
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from imagebuilder import (
    block,
    char,
    dir,
    file,
    hardlink,
    image,
    layer,
    symlink,
    text_bytes,
)

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]  # so that `python -m seekoci` finds the package
REPO = "cli/app"
MTIME = 1_650_000_000
BIN = text_bytes("cli-bin", 150_000)

BASE = layer(
    dir("etc", mtime=MTIME),
    file("etc/motd", b"welcome\n", mtime=MTIME),
    file("etc/app.conf", b"key = value\n", mode=0o600, mtime=MTIME),
    dir("opt", mtime=MTIME),
    dir("opt/app", mtime=MTIME),
    file("opt/app/run.sh", b"#!/bin/sh\necho run\n", mode=0o755, mtime=MTIME),
    file("opt/app/data.bin", BIN, mtime=MTIME),
    file("opt/app/suid", b"#!/bin/sh\n", mode=0o4755, mtime=MTIME),
    dir("opt/app/sub", mtime=MTIME),
    file("opt/app/sub/deep.txt", b"deep\n", mtime=MTIME),
    symlink("opt/app/current", "run.sh", mtime=MTIME),
)
UPPER = layer(file("etc/motd", b"welcome, from the upper layer\n", mtime=MTIME), producer="pigz")
IMAGE = image(BASE, UPPER)
APP_FILES = {"run.sh": 0o755, "data.bin": 0o644, "suid": 0o4755, "sub/deep.txt": 0o644}


@dataclass
class Run:
    code: int
    stdout: bytes
    stderr: str


class CLI:
    """Runs ``python -m seekoci ARGS`` with its own ``SEEKOCI_CACHE_DIR`` (``.cache``)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.cache = workdir / "cli-cache"
        self.env = dict(os.environ)
        self.env["SEEKOCI_CACHE_DIR"] = str(self.cache)
        self.env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_ROOT), self.env.get("PYTHONPATH")])
        )

    def __call__(self, *args: str, cwd: Path | None = None) -> Run:
        proc = subprocess.run(
            [sys.executable, "-m", "seekoci", *args],
            env=self.env,
            cwd=cwd or self.workdir,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=180,
        )
        return Run(proc.returncode, proc.stdout, proc.stderr.decode(errors="replace"))


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    return CLI(tmp_path)


@pytest.fixture(scope="module")
def ref(registry) -> str:
    registry.push(REPO, "v1", IMAGE)
    return registry.ref(REPO, "v1")


def ok(result: Run) -> Run:
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def one_line_error(result: Run) -> str:
    """Exit status 1 with exactly one line on stderr and no traceback."""
    assert result.code == 1, (result.code, result.stderr)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


# --------------------------------------------------------------------------- ls / cat / stat


def test_ls(cli, ref: str) -> None:
    out = ok(cli("ls", ref, "/opt/app")).stdout.decode().split()
    assert [name.rstrip("/@*") for name in out] == ["current", "data.bin", "run.sh", "sub", "suid"]
    root = ok(cli("ls", ref)).stdout.decode().split()
    assert [name.rstrip("/@*") for name in root] == ["etc", "opt"]


def long_line(lines: list[str], name: str) -> str:
    """The ``ls -l`` line of ``name`` (its last field before any ``-> target``)."""
    found = [line for line in lines if line.split(" -> ")[0].split()[-1:] == [name]]
    assert len(found) == 1, (name, lines)
    return found[0]


def test_ls_long(cli, ref: str) -> None:
    lines = ok(cli("ls", ref, "/opt/app", "-l")).stdout.decode().splitlines()
    data_line = long_line(lines, "data.bin")
    assert str(len(BIN)) in data_line.split()
    assert "-rw-r--r--" in data_line or "644" in data_line
    suid_line = long_line(lines, "suid")
    assert "rwsr-xr-x" in suid_line or "4755" in suid_line
    assert long_line(lines, "current").endswith("run.sh")  # the link target is shown
    for name in ("run.sh", "sub"):
        long_line(lines, name)


def test_ls_recursive(cli, ref: str) -> None:
    flat = ok(cli("ls", ref, "/opt")).stdout.decode()
    assert "deep.txt" not in flat
    out = ok(cli("ls", ref, "/opt", "-R")).stdout.decode()
    for name in ("app", "run.sh", "data.bin", "sub", "deep.txt"):
        assert name in out, name


def test_cat(cli, ref: str) -> None:
    result = ok(cli("cat", ref, "/etc/motd", "/opt/app/data.bin"))
    assert result.stdout == UPPER.entry("etc/motd").data + BIN
    assert result.stderr == ""


def test_cat_follows_symlinks(cli, ref: str) -> None:
    assert ok(cli("cat", ref, "/opt/app/current")).stdout == BASE.entry("opt/app/run.sh").data


def test_stat_json(cli, ref: str) -> None:
    info = json.loads(ok(cli("stat", ref, "/etc/app.conf", "--json")).stdout)
    declared = BASE.entry("etc/app.conf")
    assert info["path"] == "/etc/app.conf"
    assert info["type"] == "file"
    assert info["size"] == len(declared.data)
    assert info["mode"] == 0o600
    assert info["mtime"] == pytest.approx(MTIME)
    assert (info["uid"], info["gid"]) == (0, 0)
    assert info["linkname"] == ""
    assert info["layer"] == BASE.digest
    link = json.loads(ok(cli("stat", ref, "/opt/app/suid", "--json")).stdout)
    assert link["mode"] == 0o4755


def test_stat_plain(cli, ref: str) -> None:
    out = ok(cli("stat", ref, "/opt/app/data.bin")).stdout.decode()
    assert str(len(BIN)) in out and "data.bin" in out


def test_inspect_json(cli, ref: str, registry) -> None:
    doc = json.loads(ok(cli("inspect", ref, "--json")).stdout)
    assert {"reference", "digest", "platform", "layers"} <= set(doc)
    assert doc["digest"] == IMAGE.digest
    assert doc["platform"] == "linux/amd64"
    assert REPO in doc["reference"]
    assert [
        (lay["digest"], lay["media_type"], lay["size"], lay["format"]) for lay in doc["layers"]
    ] == [(lay.digest, lay.media_type, lay.size, "tar") for lay in IMAGE.layers]


def test_inspect_plain(cli, ref: str) -> None:
    out = ok(cli("inspect", ref)).stdout.decode()
    assert "linux/amd64" in out
    for lay in IMAGE.layers:
        assert lay.digest.split(":")[1][:12] in out


def test_index_fills_the_cache(cli, ref: str) -> None:
    result = ok(cli("index", ref))
    assert result.stderr == ""  # no progress bar when stderr is not a terminal
    lines = result.stdout.decode().splitlines()
    for lay in IMAGE.layers:  # one line a layer, then how long all of them took together
        assert any(line.startswith(f"{lay.digest}  built  ") for line in lines), lines
    assert lines[-1].startswith(f"{len(IMAGE.layers)} layers in ")
    assert any(p.is_file() for p in cli.cache.rglob("*"))
    assert ok(cli("cat", ref, "/opt/app/data.bin")).stdout == BIN


# --------------------------------------------------------------------------- get


def test_get_file(cli, ref: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    ok(cli("get", ref, "/opt/app/run.sh", cwd=work))
    copied = work / "run.sh"
    assert copied.read_bytes() == BASE.entry("opt/app/run.sh").data
    assert stat.S_IMODE(copied.stat().st_mode) == 0o755
    ok(cli("get", ref, "/etc/motd", "-o", str(tmp_path / "motd.copy")))
    assert (tmp_path / "motd.copy").read_bytes() == UPPER.entry("etc/motd").data


def test_get_directory(cli, ref: str, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    ok(cli("get", ref, "/opt/app", "-o", str(dest)))
    for rel, mode in APP_FILES.items():
        path = dest / rel
        assert path.read_bytes() == BASE.entry(f"opt/app/{rel}").data, rel
        assert stat.S_IMODE(path.stat().st_mode) == mode & 0o777, rel  # setuid dropped
        assert int(path.stat().st_mtime) == MTIME, rel
    assert os.readlink(dest / "current") == "run.sh"
    assert sorted(os.listdir(dest)) == ["current", "data.bin", "run.sh", "sub", "suid"]


def test_get_directory_default_name_and_special_bits(cli, ref: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    ok(cli("get", ref, "/opt/app", "--keep-special-bits", cwd=work))
    assert (work / "app" / "data.bin").read_bytes() == BIN
    assert stat.S_IMODE((work / "app" / "suid").stat().st_mode) == 0o4755


def snapshot(root: Path, *skip: Path) -> dict[str, tuple[int, int, int, int, bytes]]:
    """Every path under ``root`` but ``skip``: (mode, nlink, size, mtime_ns, content)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) not in skip]
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            content = p.read_bytes() if stat.S_ISREG(st.st_mode) else b""
            out[str(p)] = (st.st_mode, st.st_nlink, st.st_size, st.st_mtime_ns, content)
    return out


SAFE = [
    dir("safe"),
    file("safe/ok.txt", b"this one is fine\n"),
    symlink("safe/abs-link", "/etc/passwd"),
    hardlink("safe/hard-ok", "safe/ok.txt"),
]


def hostile_entries(group: str, outside: Path, token: str) -> list:
    """Entries that try to get out of DEST (every base name is unique within the image)."""
    victim = outside / "victim.txt"
    up = "../../../../../../../../.."
    groups = {
        "names": [
            file(f"../escape-{token}.txt", b"escaped\n"),
            file(f"safe/../../escape2-{token}.txt", b"escaped\n"),
            file(f"/abs-{token}.txt", b"absolute\n"),
            file(f"{outside}/abs-host-{token}.txt", b"absolute, into the host directory\n"),
        ],
        "symlinks": [
            symlink("through-abs", str(outside)),
            file("through-abs/pwned-abs.txt", b"written through an absolute symlink\n"),
            symlink("through-rel", up + str(outside)),
            file("through-rel/pwned-rel.txt", b"written through a relative symlink\n"),
        ],
        "hardlinks": [
            hardlink("hard-abs", str(victim)),
            hardlink("hard-rel", up + str(victim)),
        ],
        "devices": [char("dev/console", 5, 1), block("dev/sda", 8, 0)],
    }
    return groups[group]


@pytest.mark.parametrize("group", ["names", "symlinks", "hardlinks", "devices"])
def test_get_never_writes_outside_dest(cli, registry, tmp_path: Path, group: str) -> None:
    token = secrets.token_hex(6)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_bytes(b"the host's file\n")
    hostile = hostile_entries(group, outside, token)
    registry.push(f"cli/hostile-{group}", "v1", image(layer(SAFE, hostile)))
    dest = tmp_path / "dest"
    host_root_files = [Path(f"/abs-{token}.txt"), Path(f"/abs-host-{token}.txt")]
    before = snapshot(tmp_path, dest, cli.cache)
    try:
        result = cli("get", registry.ref(f"cli/hostile-{group}", "v1"), "/", "-o", str(dest))
        after = snapshot(tmp_path, dest, cli.cache)
        leaked = [p for p in host_root_files if p.exists()]
    finally:
        for p in host_root_files:
            p.unlink(missing_ok=True)
    assert leaked == []
    # Outside DEST nothing appeared, vanished or changed (not even the victim's link count).
    assert after == before

    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert (dest / "safe" / "ok.txt").read_bytes() == b"this one is fine\n"
    assert (dest / "safe" / "hard-ok").read_bytes() == b"this one is fine\n"
    assert os.path.islink(dest / "safe" / "abs-link")  # kept as a link, never followed

    # One warning line per skipped entry: whatever did not land in DEST was warned about.
    materialized = {name for _, dirs, files in os.walk(dest) for name in dirs + files}
    skipped = [e.name for e in hostile if posixpath.basename(e.name) not in materialized]
    warning_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warning_lines) == len(skipped), (skipped, warning_lines)
    if group == "devices":  # device files are always skipped
        assert len(skipped) == 2
        assert not (dest / "dev" / "console").exists() and not (dest / "dev" / "sda").exists()
        # asked for by itself, a device is skipped the same way: a warning, exit 0
        alone = tmp_path / "alone"
        one = cli("get", registry.ref(f"cli/hostile-{group}", "v1"), "/dev/sda", "-o", str(alone))
        assert one.code == 0, one.stderr
        assert one.stderr.strip() == "seekoci: warning: skipped /dev/sda: block device or fifo"
        assert not os.path.lexists(alone)


# --------------------------------------------------------------------------- errors


def test_missing_path_is_exit_1(cli, ref: str) -> None:
    message = one_line_error(cli("cat", ref, "/no/such/file"))
    assert "/no/such/file" in message


def test_missing_image_is_exit_1(cli, registry) -> None:
    one_line_error(cli("ls", registry.ref("cli/never-pushed", "v1")))


def test_directory_to_cat_is_exit_1(cli, ref: str) -> None:
    one_line_error(cli("cat", ref, "/etc"))


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["ls"],
        ["cat"],
        ["stat"],
        ["index", "example.invalid/x:y", "--format", "bogus"],
        ["ls", "example.invalid/x:y", "--no-such-flag"],
    ],
)
def test_usage_errors_are_exit_2(cli, args: list[str]) -> None:
    result = cli(*args)
    assert result.code == 2, (result.code, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.strip()
