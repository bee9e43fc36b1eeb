"""Progress for long work: index builds and large copies, on a terminal only."""

from __future__ import annotations

import fcntl
import io
import itertools
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

import seekoci
from seekoci._sample import make_sample_image
from seekoci.extract import extract
from seekoci.progress import ProgressBar


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_sample_image(str(tmp_path_factory.mktemp("sample") / "image"))


def test_get_reports_bytes_copied_up_to_the_total(sample: str, tmp_path: Path) -> None:
    img = seekoci.open_image(sample, cache_dir=False, platform="linux/amd64")
    calls: list[tuple[int, int]] = []
    extract(
        img, "/usr", str(tmp_path / "usr"), warn=print, progress=lambda d, t: calls.append((d, t))
    )
    total = sum(
        img.stat(f"{dirpath}/{name}").size
        for dirpath, _, names in img.walk("/usr")
        for name in names
    )
    assert calls and calls[-1] == (total, total)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(calls))  # only ever grows
    calls.clear()
    extract(img, "/etc/app/config.yaml", str(tmp_path / "c.yaml"), warn=print,
            progress=lambda d, t: calls.append((d, t)))  # fmt: skip
    assert calls[-1] == (45, 45)


def test_a_bar_draws_only_on_a_terminal() -> None:
    quiet = io.StringIO()
    bar = ProgressBar(quiet)
    bar("sha256:abc", 5, 10)
    bar.close()
    assert not bar.enabled and quiet.getvalue() == ""
    loud = io.StringIO()
    forced = ProgressBar(loud, force=True, desc="copying")
    forced("x", 5, 10)
    forced("x", 10, 10)
    forced.close()
    assert forced.enabled and "copying" in loud.getvalue()


@pytest.mark.parametrize("rows_columns", [(0, 0), (40, 100)], ids=["unsized", "sized"])
def test_a_bar_draws_on_a_pseudo_terminal_sized_or_not(
    sample: str, tmp_path: Path, rows_columns: tuple[int, int]
) -> None:
    # a pseudo-terminal nobody sized says 0 x 0 (what a harness usually gets from
    # openpty): tqdm alone then draws nothing on stderr
    master, slave = pty.openpty()
    if rows_columns != (0, 0):
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *rows_columns, 0, 0))
    env = {**os.environ, "SEEKOCI_CACHE_DIR": str(tmp_path / "cache")}
    child = subprocess.Popen(
        [sys.executable, "-m", "seekoci", "index", sample, "--platform", "linux/amd64"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    drawn = b""
    while select.select([master], [], [], 60)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    assert child.wait(60) == 0
    assert b"indexing" in drawn and b"%|" in drawn, drawn[:400]
