"""MkDocs hooks for the docs site (mkdocs.yml ``hooks:``), run at build time, offline.

* ``<!-- seekoci-cli-help -->`` in a page becomes the ``--help`` of the command line and of
  every subcommand, taken from the argparse parser itself, so the CLI reference never drifts
  from the program.
* Links to files outside ``docs/`` (``../benchmarks/README.md``) become plain code names:
  the site cannot serve them, and a strict build would fail on them; ``docs/check_docs.py``
  checks that they resolve in the repository.
"""

from __future__ import annotations

import os
import re
from typing import Any

MARKER = "<!-- seekoci-cli-help -->"
_OUTSIDE = re.compile(r"\[([^\]]+)\]\((\.\./[^)#\s]+)\)")


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
