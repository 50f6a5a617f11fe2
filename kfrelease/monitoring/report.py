"""The monitoring page: one self-contained HTML file (plotly.js inlined, no network needed) with the
metrics of every window over time, one line per model version and stage with its 95% confidence band
(the window's ``intervals``, ``kfrelease.quality.metrics.metric_intervals``), and the current table."""

from __future__ import annotations

import html
from datetime import UTC, datetime

import pandas as pd

from kfrelease.monitoring.passes import current_table

PANELS = (
    ("rmse", "RMSE"),
    ("mae", "MAE"),
    ("r2", "R²"),
    ("drift_share", "Drift share"),
)
TABLE_COLUMNS = (
    "version",
    "stage",
    "window",
    "start",
    "status",
    "labelled",
    "predictions",
    "mse",
    "rmse",
    "mae",
    "r2",
    "drift_share",
    "baseline_rmse",
    "r2_floor",
)


def fmt(v) -> str:
    """A table cell: 4 significant digits, an em dash for a missing value."""
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def current_table_html(current: pd.DataFrame) -> str:
    if len(current) == 0:
        return "<p>No windows recorded yet. Run <code>kfrelease monitor</code> after some labelled traffic.</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in TABLE_COLUMNS if c in current.columns)
    rows = []
    for _, r in current.iterrows():
        cls = "ok" if r.get("status") == "ok" else "warn"
        cells = "".join(
            f"<td>{html.escape(fmt(r.get(c))[:19] if c == 'start' else fmt(r.get(c)))}</td>"
            for c in TABLE_COLUMNS
            if c in current.columns
        )
        rows.append(f'<tr class="{cls}">{cells}</tr>')
    return f'<table id="current"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _band(g: pd.DataFrame, col: str):
    """(lower, upper) of ``col`` per window from its ``intervals``, or None when no window has one."""
    if "intervals" not in g.columns:
        return None
    lows, highs = [], []
    for iv, point in zip(g["intervals"], g[col]):
        bounds = iv.get(col) if isinstance(iv, dict) else None
        lows.append(bounds[0] if bounds else point)
        highs.append(bounds[1] if bounds else point)
    if not any(isinstance(iv, dict) and iv.get(col) for iv in g["intervals"]):
        return None
    return lows, highs


def figure(history: pd.DataFrame, model: str):
    import plotly.graph_objects as go  # heavy: plotly
    from plotly.subplots import make_subplots  # heavy: plotly

    fig = make_subplots(
        rows=len(PANELS),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.05,
        subplot_titles=[title for _, title in PANELS],
    )
    if len(history):
        from plotly.colors import qualitative  # heavy: plotly

        h = history.assign(start=pd.to_datetime(history["start"], utc=True))
        keys = sorted({(v, s) for v, s in zip(h["version"], h["stage"])})
        colors = {k: qualitative.Plotly[i % len(qualitative.Plotly)] for i, k in enumerate(keys)}
        for i, (col, _title) in enumerate(PANELS, start=1):
            if col not in h.columns:
                continue
            for (version, stage), g in h.groupby(["version", "stage"], sort=True):
                band = _band(g, col)
                if band is not None:
                    fig.add_trace(
                        go.Scatter(
                            x=[*g["start"], *g["start"][::-1]],
                            y=[*band[1], *band[0][::-1]],
                            fill="toself",
                            fillcolor=colors[(version, stage)],
                            opacity=0.2,
                            line={"width": 0},
                            hoverinfo="skip",
                            name=f"{version} {stage} 95% interval",
                            legendgroup=f"{version} {stage}",
                            showlegend=False,
                        ),
                        row=i,
                        col=1,
                    )
                fig.add_trace(
                    go.Scatter(
                        x=g["start"],
                        y=g[col],
                        mode="lines+markers",
                        name=f"{version} {stage}",
                        line={"color": colors[(version, stage)]},
                        legendgroup=f"{version} {stage}",
                        showlegend=i == 1,
                    ),
                    row=i,
                    col=1,
                )
    fig.update_layout(
        height=950,
        title=f"{model}: quality and drift per window",
        template="plotly_white",
        margin={"l": 60, "r": 20, "t": 80, "b": 40},
    )
    return fig


def _sections(history: pd.DataFrame, current: pd.DataFrame) -> list[tuple[str | None, pd.DataFrame, pd.DataFrame]]:
    """(window kind, its history, its latest windows): one chart and one table per kind of window (a 1-hour
    run and a 200-label run are not on one axis); a single kind keeps the table it was given."""
    kinds = sorted(history["window"].dropna().unique()) if len(history) and "window" in history.columns else []
    if len(kinds) <= 1:
        return [(kinds[0] if kinds else None, history, current)]

    out = []
    for kind in kinds:
        h = history[history["window"] == kind].reset_index(drop=True)
        out.append((kind, h, current_table(h)))
    return out


def _report_item(report) -> str:
    """A report as a list item: a link when given as (label, href), else its object key."""
    if isinstance(report, tuple):
        label, href = report
        return f'<li><a href="{html.escape(href)}">{html.escape(label)}</a></li>'
    return f"<li><code>{html.escape(report)}</code></li>"


def render_page(
    history: pd.DataFrame,
    current: pd.DataFrame,
    model: str,
    warnings: list[str] | None = None,
    reports: list | None = None,
) -> str:
    """The self-contained page (a few MB: plotly.js is inlined once). ``reports``: drift reports as object
    keys or ``(label, href)`` links (``kfrelease monitor`` fetches them beside the page)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in (warnings or []))
    links = "".join(_report_item(r) for r in (reports or []))
    parts = []
    for i, (kind, h, cur) in enumerate(_sections(history, current)):
        title = f"{model} ({kind} windows)" if kind else model
        chart = figure(h, title).to_html(full_html=False, include_plotlyjs=i == 0)
        heading = f" ({html.escape(str(kind))} windows)" if kind else ""
        parts.append(f"<h2>Current{heading}</h2>\n{current_table_html(cur)}\n<h2>Over time{heading}</h2>\n{chart}")
    body = "\n".join(parts)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kfrelease monitor: {html.escape(model)}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; background: #fff; }}
table {{ border-collapse: collapse; margin: 12px 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th {{ background: #2a4d69; color: #fff; }}
tr.warn td {{ background: #fde2c8; }}
tr.ok td {{ background: #e3f4e1; }}
</style></head>
<body>
<h1>Model monitoring: {html.escape(model)}</h1>
<p>Generated {stamp}. {len(history)} windows recorded; the table shows the latest window per version and stage.</p>
{f"<h2>Warnings</h2><ul>{warn}</ul>" if warn else ""}
{body}
{f"<h2>Evidently drift reports</h2><ul>{links}</ul>" if links else ""}
</body></html>
"""
