"""MkDocs hooks for the docs site (mkdocs.yml ``hooks:``), run at build time, offline.

* ``<!-- seekoci-cli-help -->`` in a page becomes the ``--help`` of the command line and of
  every subcommand, taken from the argparse parser itself, so the CLI reference never drifts
  from the program.
* Links to files outside ``docs/`` (``../benchmarks/README.md``) become plain code names:
  the site cannot serve them, and a strict build would fail on them; ``docs/check_docs.py``
  checks that they resolve in the repository.
* The docstrings' reST roles (``:class:`~seekoci.Layer```) are shown as the code they name
  (``Layer``), not as role markup, in the API reference.
"""

from __future__ import annotations

import os
import re
from typing import Any

MARKER = "<!-- seekoci-cli-help -->"
_OUTSIDE = re.compile(r"\[([^\]]+)\]\((\.\./[^)#\s]+)\)")
# what a docstring's :class:`~a.b.C` becomes once rendered: the role name before <code>
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):<code>(~?)([^<]*)</code>")


def _cli_help() -> str:
    import argparse

    from seekoci.cli import _parser

    parser = _parser()
    parts = [("seekoci", parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            parts += [(f"seekoci {name}", sub) for name, sub in action.choices.items()]
    blocks = []
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: the same width every build
    try:
        for title, p in parts:
            blocks.append(f"### `{title}`\n\n```text\n{p.format_help().rstrip()}\n```\n")
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    return "\n".join(blocks)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, _cli_help())
    return _OUTSIDE.sub(_plain, markdown)


def _plain(match: re.Match[str]) -> str:
    text, path = match.group(1), match.group(2).removeprefix("../")
    return f"`{path}`" if text.strip("`") == path else f"{text} (`{path}`)"


def on_page_content(html: str, **kwargs: Any) -> str:
    return _ROLE.sub(_code, html)


def _code(match: re.Match[str]) -> str:
    name = match.group(2)
    return f"<code>{name.rsplit('.', 1)[-1] if match.group(1) else name}</code>"
