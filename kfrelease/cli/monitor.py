"""``kfrelease monitor``: compute the windows, print the current table, write the HTML page; and
``kfrelease alerts``: the alerts the receiver recorded and the retrains it triggered."""

from __future__ import annotations

from pathlib import Path

import click

from kfrelease.cli.choose import one_model
from kfrelease.cli.output import console, err_console, json_option, print_json, table
from kfrelease.config import Settings
from kfrelease.monitoring.newdata import check_new_data
from kfrelease.monitoring.passes import RESULT_BUCKET, current_table, load_history, run_monitoring
from kfrelease.monitoring.receiver import AlertReceiver
from kfrelease.monitoring.report import TABLE_COLUMNS, render_page
from kfrelease.monitoring.report import fmt as cell
from kfrelease.monitoring.sources import since_for
from kfrelease.monitoring.window import WindowSpec
from kfrelease.storage import store_for


def _seconds(text: str) -> float:
    spec = WindowSpec.parse(text)
    if spec.kind != "time":
        raise click.BadParameter(f"{text!r} is not a duration; use e.g. 7d, 12h, 30m", param_hint="--since")
    return spec.size


def _fetch_drift_reports(settings, keys: list[str], folder: Path) -> list[tuple[str, str]]:
    """The run's drift reports written beside the page, as (label, relative link) pairs."""
    store = store_for("pipeline", settings)
    links = []
    for key in keys:
        run_id, name = key.split("/")[-2:]
        local = folder / f"drift-{run_id}-{name}"
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(store.get_bytes(RESULT_BUCKET, key))
        links.append((name.removesuffix(".html"), f"{folder.name}/{local.name}"))
    return links


def register(cli: click.Group) -> None:
    @cli.command()
    @click.option(
        "--model",
        default=None,
        help="Model name (registry); may be left out only when exactly one model exists.",
    )
    @click.option(
        "--window",
        "window_text",
        default="1h",
        show_default=True,
        help="Window: a duration (1h, 15m) or a count of labelled predictions (500).",
    )
    @click.option(
        "--since",
        "since_text",
        default="7d",
        show_default=True,
        help="How far back to read the logs.",
    )
    @click.option(
        "--min-labels",
        default=30,
        show_default=True,
        help="Labels a window needs for a verdict.",
    )
    @click.option(
        "--r2-floor",
        type=float,
        default=None,
        help="R² floor (default: registry entry, else 0.2).",
    )
    @click.option(
        "--out",
        "out",
        default="monitor.html",
        show_default=True,
        type=click.Path(dir_okay=False),
        help="Where to write the HTML page.",
    )
    @click.option(
        "--push/--no-push",
        default=True,
        show_default=True,
        help="Push the latest windows to the Pushgateway.",
    )
    @click.option(
        "--compute/--no-compute",
        default=True,
        show_default=True,
        help="Compute new windows first (--no-compute shows the recorded history only).",
    )
    def monitor(model, window_text, since_text, min_labels, r2_floor, out, push, compute) -> None:
        """Accuracy (MSE, RMSE, MAE, R²) and drift per model version and stage, over windows."""
        settings = Settings.from_env()
        model = one_model(settings, model, "monitor")
        spec = WindowSpec.parse(window_text)
        warnings, reports = [], []
        if compute:
            run = run_monitoring(
                settings,
                model,
                window=spec,
                since=since_for(_seconds(since_text)),
                min_labels=min_labels,
                r2_floor=r2_floor,
                push=push,
            )
            warnings, reports = run.outcome.warnings, run.report_keys
            if run.push is not None:
                (console if run.push.ok else err_console).print(run.push.message)
        history = load_history(store_for("pipeline", settings), model)
        current = current_table(history)
        columns = [c for c in TABLE_COLUMNS if c not in ("baseline_rmse", "r2_floor")]
        rows = [
            [r[c][5:16].replace("T", " ") if c == "start" else cell(r.get(c)) for c in columns]
            for _, r in current.iterrows()
        ]
        table(f"{model}: latest window per version and stage", columns, rows)
        for w in warnings:
            err_console.print(f"warning: {w}")
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        links = _fetch_drift_reports(settings, reports, path.parent / "reports")
        path.write_text(render_page(history, current, model, warnings, links), encoding="utf-8")
        console.print(f"wrote {path} ({len(history)} windows)")

    @cli.command()
    @click.option("--model", default=None, help="Only this model's retrains.")
    @json_option
    def alerts(model, as_json: bool) -> None:
        """Alerts the Alertmanager receiver recorded, and the retrains it triggered."""
        receiver = AlertReceiver(Settings.from_env())
        rows = sorted(receiver.alerts(), key=lambda a: a.get("received_at", ""))
        if as_json:
            mine = [a for a in rows if model is None or a["labels"].get("model") == model]
            print_json({"alerts": mine, "retrains": receiver.retrains(model)})
            return
        table(
            "alerts",
            ["received", "status", "alert", "model", "version", "stage"],
            [
                (
                    a.get("received_at", "")[:19],
                    a.get("status"),
                    a["labels"].get("alertname"),
                    a["labels"].get("model"),
                    a["labels"].get("version"),
                    a["labels"].get("stage"),
                )
                for a in rows
                if model is None or a["labels"].get("model") == model
            ],
        )
        table(
            "retrains",
            ["at", "model", "decision / status", "detail"],
            [
                (
                    d.get("at", "")[:19],
                    d.get("model"),
                    d.get("status") or d.get("decision"),
                    d.get("error") or d.get("detail") or str(d.get("result") or "")[:80],
                )
                for d in receiver.retrains(model)
            ],
        )

    @cli.command()
    @click.option(
        "--model",
        "models",
        multiple=True,
        help="Only these models (default: every model in production).",
    )
    @json_option
    def newdata(models, as_json: bool) -> None:
        """Retrain (auto revision) every production model whose curated dataset has a newer version."""
        receiver = AlertReceiver(Settings.from_env())
        rows = check_new_data(receiver, list(models) or None)
        for t in receiver.threads:
            t.join()
        if as_json:
            print_json(rows)
            return
        table(
            "new data",
            ["model", "production", "trained on", "latest", "action"],
            [
                (
                    r["model"],
                    r["production_version"],
                    r["trained_on"],
                    r["latest"],
                    r["action"],
                )
                for r in rows
            ],
        )
