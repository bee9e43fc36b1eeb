"""The docs site's configuration (mkdocs.yml) and build hooks, without MkDocs itself:
`nox -s docs` builds the site with --strict."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def nav_pages() -> list[str]:
    """The pages mkdocs.yml's nav lists (``- Title: page.md`` or ``- page.md`` lines)."""
    text = (ROOT / "mkdocs.yml").read_text()
    nav = text[text.index("\nnav:") :]
    return re.findall(r"^\s*-\s+(?:[^:\n]+:\s+)?([\w./-]+\.md)\s*$", nav, flags=re.M)


def hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", DOCS / "mkdocs_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nav_lists_pages_that_exist() -> None:
    pages = nav_pages()
    assert len(pages) >= 10
    missing = [p for p in pages if not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml nav names missing pages: {missing}"
    assert len(pages) == len(set(pages))


def test_every_page_is_in_the_nav() -> None:
    orphans = sorted({p.name for p in DOCS.glob("*.md")} - set(nav_pages()))
    assert not orphans, f"docs pages not in mkdocs.yml's nav: {orphans}"


def test_the_build_is_offline_and_strict() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    assert re.search(r"^strict: true$", config, flags=re.M)
    assert re.search(r"^\s+font: false$", config, flags=re.M)  # no web fonts
    for plugin in ("social", "privacy", "offline-fetch", "git-revision"):
        assert f"- {plugin}" not in config


def test_cli_help_marker_becomes_every_commands_help() -> None:
    module = hooks()
    page = f"# CLI\n\n{module.MARKER}\n"
    out = module.on_page_markdown(page)
    assert module.MARKER not in out
    for command in ("ls", "cat", "get", "stat", "inspect", "index", "demo"):
        assert f"### `seekoci {command}`" in out
        assert f"usage: seekoci {command}" in out
    assert "--index-repo REGISTRY/REPO" in out
    assert "--to REGISTRY/REPO" in out


def test_links_outside_the_docs_become_plain_names() -> None:
    module = hooks()
    out = module.on_page_markdown(
        "see [benchmarks/README.md](../benchmarks/README.md) and [the run](../.ci/run), "
        "and [trust](trust.md)"
    )
    assert out == ("see `benchmarks/README.md` and the run (`.ci/run`), and [trust](trust.md)")


def test_docstring_roles_render_as_code() -> None:
    module = hooks()
    html = (
        "see :class:<code>~seekoci.errors.FormatError</code> and "
        ":meth:<code>Layer.index</code>, not <code>:x:</code>"
    )
    assert module.on_page_content(html) == (
        "see <code>FormatError</code> and <code>Layer.index</code>, not <code>:x:</code>"
    )
