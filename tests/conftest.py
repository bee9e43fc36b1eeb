"""Session set-up shared by every test directory: the Debian tools the integration tests
run (a real registry, real producers) are installed when missing, so that the README's one
test command works on a fresh machine.

When the collected tests include integration tests (or benchmarks) and a tool is missing:
as root with ``apt-get`` (and ``SEEKOCI_TEST_NO_INSTALL`` unset) the session runs
``apt-get update && apt-get install -y PACKAGES`` first; otherwise it stops at once with one
line naming the packages to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

#: program the tests run -> Debian package that provides it
TOOLS = {
    "docker-registry": "docker-registry",  # the CNCF distribution registry
    "skopeo": "skopeo",
    "pigz": "pigz",
    "gzip": "gzip",
    "zstd": "zstd",
    "tar": "tar",
    # the insight tests build ELF binaries and render an HTML page headless
    "gcc": "gcc",
    "strip": "binutils",
    "readelf": "binutils",
    "chromium": "chromium",
}
_NEEDS_TOOLS = ("integration", "benchmarks")
_APT_TIMEOUT = 900.0


def missing_packages() -> list[str]:
    return sorted({pkg for prog, pkg in TOOLS.items() if shutil.which(prog) is None})


def _needs_tools(items: list[pytest.Item]) -> bool:
    return any(part in _NEEDS_TOOLS for item in items for part in Path(item.path).parts)


def _apt_install(packages: list[str]) -> str | None:
    """Install ``packages``; None on success, else the reason in one line."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
    ):
        try:
            done = subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=_APT_TIMEOUT, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(argv[:2])}: {exc}"
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            return f"{' '.join(argv[:2])} exited {done.returncode}: {last}"
    return None


def pytest_collection_finish(session: pytest.Session) -> None:
    if not _needs_tools(session.items):
        return
    missing = missing_packages()
    if not missing:
        return
    install = f"apt-get update && apt-get install -y {' '.join(missing)}"
    can_install = (
        hasattr(os, "geteuid")
        and os.geteuid() == 0
        and shutil.which("apt-get") is not None
        and not os.environ.get("SEEKOCI_TEST_NO_INSTALL")
    )
    if not can_install:
        pytest.exit(f"the integration tests need {', '.join(missing)}: run `{install}`", 4)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"seekoci tests: installing {' '.join(missing)} ({install})")
    problem = _apt_install(missing)
    still = missing_packages()
    if problem is not None or still:
        reason = problem or f"{', '.join(still)} still missing"
        pytest.exit(f"could not install {', '.join(missing)} ({reason}): run `{install}`", 4)
