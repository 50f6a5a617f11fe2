"""The README is the front page; the documentation lives in ``docs/*.md``, one page per role and one per part.

The README is hand-written except the table of documentation pages between ``<!-- sections:start -->`` and
``<!-- sections:end -->``, which is generated from the pages themselves: each page's title (its first
heading), who it is for (``PAGES`` below; a page not listed there is a reference page) and a link to each of
its sections.

Run ``.venv/bin/python scripts/readme.py`` after editing ``docs/`` to regenerate the table;
``scripts/readme.py --check`` (run by ``tests/test_readme.py``) fails, naming each problem, when the README
and ``docs/`` disagree: the table is not what the pages say, or a link in the README or in a page points to
a file or a section that does not exist.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- sections:start -->", "<!-- sections:end -->"
# Page (in docs/) -> who it is for, in the order of the table: the walks by role first, then the parts in
# the order of the flow. A page that is not listed joins the table after these, as a reference page.
PAGES = {
    "data-engineer.md": "data engineers (walk)",
    "data-scientist.md": "data scientists (walk)",
    "platform-engineer-eks.md": "platform engineers (walk)",
    "training.md": "reference: training",
    "serving.md": "reference: serving",
    "gateway.md": "reference: traffic",
    "release.md": "reference: release",
    "monitoring.md": "reference: monitoring",
    "CONTRACTS.md": "contributors",
}
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


@dataclass(frozen=True)
class Heading:
    level: int
    text: str
    anchor: str


def slug(text: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps only its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _outside_code(text: str):
    """The lines of a Markdown text that are not inside a fenced code block, with their line numbers."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip()
        if fence is None and stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
            continue
        if fence is not None:
            if stripped.startswith(fence):
                fence = None
            continue
        yield number, line


def headings(text: str) -> list[Heading]:
    """Every heading of a page with its anchor (repeated anchors get ``-1``, ``-2``... as on GitHub)."""
    seen: dict[str, int] = {}
    found = []
    for _, line in _outside_code(text):
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.append(Heading(len(match.group(1)), match.group(2), base if count == 0 else f"{base}-{count}"))
    return found


def pages(root: Path) -> list[Path]:
    """The documentation pages in table order: those in ``PAGES`` first, then any other, by name."""
    present = {p.name: p for p in sorted((root / "docs").glob("*.md"))}
    listed = [present[name] for name in PAGES if name in present]
    return listed + [p for name, p in present.items() if name not in PAGES]


def table(root: Path) -> str:
    """The generated table of documentation pages: page title, who it is for, a link to each section."""
    rows = ["| page | for | sections |", "| --- | --- | --- |"]
    for page in pages(root):
        found = headings(page.read_text())
        if not found:
            raise SystemExit(f"docs/{page.name} has no heading: start it with '# <title>'")
        title, sections = found[0], found[1:]
        href = f"docs/{page.name}"
        links = " · ".join(f"[{_cell(h.text)}]({href}#{h.anchor})" for h in sections if h.level <= 3)
        rows.append(f"| [{_cell(title.text)}]({href}) | {PAGES.get(page.name, 'reference')} | {links} |")
    return "\n".join(rows)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(readme: str, root: Path = ROOT) -> str:
    """The README with its generated table replaced by the one ``docs/`` gives today."""
    if START not in readme or END not in readme:
        raise SystemExit(f"README.md has no {START} ... {END} block for the table of documentation pages")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table(root)}\n{END}{tail}"


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """Each link in a Markdown file to a missing file, or to a section its target file does not have."""
    problems = []
    text = path.read_text()
    for number, line in _outside_code(text):
        for target in _LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ... are not checked here
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(root)}:{number}"
            if not dest.exists():
                problems.append(f"{where}: link to {target}: {file_part} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in {h.anchor for h in headings(dest.read_text())}:
                problems.append(f"{where}: link to {target}: {dest.relative_to(root)} has no section #{anchor}")
    return problems


def check(root: Path = ROOT) -> list[str]:
    """Every way the README and ``docs/`` disagree (empty when they agree)."""
    readme = root / "README.md"
    problems = []
    if render(readme.read_text(), root) != readme.read_text():
        problems.append(
            "README.md's table of documentation pages is not what docs/*.md say: run .venv/bin/python scripts/readme.py"
        )
    for path in [readme, *sorted((root / "docs").glob("*.md"))]:
        problems.extend(broken_links(path, root))
    return problems


def main(argv: list[str]) -> int:
    readme = ROOT / "README.md"
    if "--check" in argv:
        problems = check()
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1 if problems else 0
    readme.write_text(render(readme.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
