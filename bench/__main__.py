"""Run benchmarks and refresh the README's benchmark table.

Each ``bench/bench_<area>.py`` has ``main() -> dict`` and writes ``bench/results/<area>.json`` and
``bench/results/<area>.md`` (a markdown table). This runner then replaces the README's section between
``<!-- bench:start -->`` and ``<!-- bench:end -->`` with every results table, each followed by its area's
hand-written notes, ``bench/results/<area>.notes.md`` when there is one (what a run cannot say about itself, e.g.
why a goal is missed; a bench run never overwrites it).
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def areas() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def readme_section() -> str:
    """The README's benchmark section: every area's results table, then its notes."""
    parts = []
    for table in sorted(p for p in RESULTS.glob("*.md") if not p.name.endswith(".notes.md")):
        notes = table.with_suffix(".notes.md")
        parts.append(table.read_text().strip() + (f"\n\n{notes.read_text().strip()}" if notes.exists() else ""))
    return "\n\n".join(parts) if parts else "_No benchmark has been run yet: `make bench`._"


def refresh_readme() -> None:
    if not README.exists():
        return
    text = README.read_text()
    if START not in text or END not in text:
        return
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{readme_section()}\n{END}{tail}")


def main(argv: list[str]) -> int:
    wanted = argv or areas()
    unknown = [a for a in wanted if a not in areas()]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {', '.join(areas())}", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    for area in wanted:
        print(f"== bench {area}", flush=True)
        t0 = time.monotonic()
        importlib.import_module(f"bench.bench_{area}").main()
        print(f"== bench {area} done in {time.monotonic() - t0:.0f} s", flush=True)
    refresh_readme()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
