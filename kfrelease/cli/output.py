"""Shared CLI output: tables, JSON listings and progress.

On a terminal a table is a rich table. When stdout is not a terminal (a CI log, a pipe, a file) nothing is
cut or wrapped to 80 columns: a table is plain text, one line per row, each column as wide as its widest
value; other lines are printed whole. Every listing command takes ``--json`` (``json_option``) and then
prints one JSON document (``print_json``) instead of its tables.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# not a terminal: lines are never wrapped (rich would cut them at its default of 80 columns)
console = Console(soft_wrap=not _is_terminal(sys.stdout))
err_console = Console(stderr=True)

#: ``--json`` for a listing command: the command's rows as one JSON document instead of its tables.
json_option = click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON (no table).")
#: ``--spec`` of every command that reads a rollout spec (``release run``, ``release plan``, ``serve``).
spec_option = click.option(
    "--spec",
    "spec_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Rollout spec YAML (default: the packaged kfrelease/rollout/default.yaml).",
)


def print_json(doc) -> None:
    """One JSON document on stdout (values JSON does not know, such as datetimes, as text)."""
    click.echo(json.dumps(doc, indent=2, default=str))


def rows_as_records(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> list[dict]:
    """A table's rows as JSON objects keyed by the column names."""
    return [dict(zip(columns, row, strict=True)) for row in rows]


def _cell(value) -> str:
    return "" if value is None else str(value)


def plain_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """The table as plain text: the title, the header, a rule, then one line per row; nothing is cut."""
    cells = [[Text.from_markup(_cell(v)).plain for v in row] for row in rows]
    header = [Text.from_markup(c).plain for c in columns]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    out = [title] if title else []
    out += [line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    rows = [list(r) for r in rows]
    if not console.is_terminal:
        console.print(plain_table(title, columns, rows), markup=False, highlight=False, soft_wrap=True)
        return
    t = Table(title=title, show_lines=False)
    for c in columns:
        t.add_column(c)
    for row in rows:
        t.add_row(*[_cell(v) for v in row])
    console.print(t)
