"""``nox -s docs``: the docs exist, their relative links resolve, the CLI help runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [
    "index.md",
    "concepts.md",
    "usage.md",
    "index-format.md",
    "formats.md",
    "cache.md",
    "trust.md",
    "publishing.md",
    "pickling.md",
    "notebooks.md",
    "models.md",
    "api.md",
    "cli.md",
    "comparison.md",
    "performance.md",
    "insight.md",
    "reliability.md",
]


def main() -> int:
    problems = []
    for page in PAGES:
        if not (ROOT / "docs" / page).is_file():
            problems.append(f"docs/{page} is missing")
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"`(docs/[\w.-]+\.md)`|\]\(([^)#:]+)\)", md.read_text()):
            rel = target[0] or target[1]
            base = ROOT if target[0] else md.parent
            if not (base / rel).exists():
                problems.append(f"{md.relative_to(ROOT)} links to missing {rel}")
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for image in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md.read_text()):
            if not (md.parent / image).is_file():
                problems.append(f"{md.relative_to(ROOT)} shows missing picture {image}")
    helps = (["--help"], ["ls", "--help"], ["get", "--help"], ["index", "--help"], ["du", "--help"])
    for args in helps:
        run = subprocess.run([sys.executable, "-m", "seekoci", *args], capture_output=True)
        if run.returncode != 0:
            problems.append(f"seekoci {' '.join(args)} exited {run.returncode}")
    for p in problems:
        print(p)
    print("docs ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
