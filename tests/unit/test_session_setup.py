"""The test session installs the Debian tools the integration tests need (tests/conftest.py),
or stops with one line naming them. Run as a child pytest with a PATH holding only what the
test puts there (a stand-in apt-get that records what it was asked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [
    "binutils", "chromium", "docker-registry", "gcc", "gzip", "pigz", "skopeo", "tar", "zstd"
]  # fmt: skip


def _collect(path_dir: Path, *, extra_env: dict[str, str] | None = None, target: str = "") -> (
    subprocess.CompletedProcess[str]
):  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "SEEKOCI_TEST_NO_INSTALL"}
    env.update({"PATH": str(path_dir), "PYTHONPATH": str(ROOT), **(extra_env or {})})
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only"]
    argv.append(target or str(ROOT / "tests" / "integration" / "test_harness.py"))
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_missing_tools_stop_the_session_with_one_line(tmp_path: Path) -> None:
    done = _collect(tmp_path, extra_env={"SEEKOCI_TEST_NO_INSTALL": "1"})
    assert done.returncode == 4
    lines = [line for line in (done.stdout + done.stderr).splitlines() if "need" in line]
    assert len(lines) == 1
    assert f"apt-get update && apt-get install -y {' '.join(PACKAGES)}" in lines[0]


def test_unit_tests_alone_need_no_tools(tmp_path: Path) -> None:
    done = _collect(tmp_path, target=str(ROOT / "tests" / "unit" / "test_threads.py"))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="installs as root")
def test_as_root_the_session_installs_what_is_missing(tmp_path: Path) -> None:
    log = tmp_path / "apt.log"
    fake = tmp_path / "apt-get"
    # a stand-in apt-get: logs its arguments; "install" puts each package's program on PATH
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {log}\n'
        'if [ "$1" = install ]; then\n'
        '  for p in "$@"; do case "$p" in -*|install) ;; *)\n'
        f'    printf "#!/bin/sh\\n" > {tmp_path}/"$p"; /bin/chmod +x {tmp_path}/"$p"\n'
        '    if [ "$p" = binutils ]; then\n'
        f"      for t in strip readelf; do /bin/cp {tmp_path}/binutils {tmp_path}/$t; done\n"
        "    fi;;\n"
        "  esac; done\n"
        "fi\n"
    )
    fake.chmod(0o755)
    done = _collect(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "update -qq"
    assert calls[1] == "install -y -qq --no-install-recommends " + " ".join(PACKAGES)
    assert "installing binutils chromium docker-registry" in done.stdout
