"""Run benchmarks and refresh the README's benchmark table.

Each ``bench/bench_<area>.py`` has ``main() -> dict`` and writes ``bench/results/<area>.json`` and
``bench/results/<area>.md`` (a markdown table). This runner then replaces the README's section between
``<!-- bench:start -->`` and ``<!-- bench:end -->`` with every results table.
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


def refresh_readme() -> None:
    if not README.exists():
        return
    text = README.read_text()
    if START not in text or END not in text:
        return
    tables = [p.read_text().strip() for p in sorted(RESULTS.glob("*.md"))]
    body = "\n\n".join(tables) if tables else "_No benchmark has been run yet: `make bench`._"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{body}\n{END}{tail}")


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
