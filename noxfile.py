"""Sessions: tests, lint, typecheck, bench, docs (``nox -s NAME``)."""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite: unit tests and integration tests against a real registry."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    # the optional extras too: their modules are typed, and seekoci imports them where used
    session.install("-e", ".[models,seekable,fsspec]", "mypy>=1.8", "types-requests")
    session.run("mypy", "seekoci")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks against a local registry; figures go to docs/performance.md (and
    docs/performance-images.md). The image benchmarks' baseline is skopeo + umoci, their peak
    RSS is read by GNU time: installed here when missing (as root)."""
    session.install("-e", ".[test]")
    missing = [pkg for pkg in ("umoci", "time", "skopeo") if not shutil.which(pkg)]
    if missing and hasattr(os, "geteuid") and os.geteuid() == 0:
        session.run("apt-get", "update", "-qq", external=True)
        session.run("apt-get", "install", "-y", "-qq", *missing, external=True)
    # byte code up front: a fresh-process benchmark times importing, not compiling (with
    # PYTHONDONTWRITEBYTECODE set, no process would write it and every one would compile)
    session.run("python", "-m", "compileall", "-q", "seekoci", env={"PYTHONDONTWRITEBYTECODE": ""})
    session.run(
        "python",
        "-m",
        "pytest",
        "benchmarks",
        "-q",
        "-s",
        "-p",
        "no:cacheprovider",
        *session.posargs,
    )


@nox.session
def docs(session: nox.Session) -> None:
    """Check the docs (every page exists, every relative link resolves, the CLI help runs),
    then build the site with MkDocs, warnings as errors, offline (``-- DIR``: where to)."""
    session.install("-e", ".[docs,fsspec]")
    session.run("python", "docs/check_docs.py")
    out = session.posargs[0] if session.posargs else "site"
    session.run("mkdocs", "build", "--strict", "--site-dir", out, env={"NO_MKDOCS_2_WARNING": "1"})
