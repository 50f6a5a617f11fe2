"""Merge the parts' documentation (docs/<part>.md) into the README between
``<!-- sections:start -->`` and ``<!-- sections:end -->``, in the order of the flow.

Run: ``.venv/bin/python scripts/readme.py`` (tests/test_readme.py checks the README is up to date)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["training", "serving", "gateway", "release", "monitoring", "eks"]
START, END = "<!-- sections:start -->", "<!-- sections:end -->"


def render(readme: str) -> str:
    parts = [ROOT / "docs" / f"{name}.md" for name in ORDER]
    body = "\n\n".join(p.read_text().strip() for p in parts if p.exists())
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{body}\n{END}{tail}"


def main() -> int:
    path = ROOT / "README.md"
    new = render(path.read_text())
    if "--check" in sys.argv:
        if new != path.read_text():
            print("README.md is out of date with docs/*.md: run .venv/bin/python scripts/readme.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
