from kfp.dsl import HTML, Output

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def monitor_model(
    model: str,
    window: str,
    since: str,
    min_labels: int,
    reports: str,
    page: Output[HTML],
) -> list:
    """Windowed MSE, RMSE, MAE, R² and input drift of every version and stage of a model.

    Reads prediction logs and ground truth, records every window under
    ``s3://pipeline-root/monitoring/<model>/runs/``, writes an Evidently drift report per window to
    ``s3://pipeline-root/monitoring/<model>/reports/``, pushes the latest windows to the Pushgateway.

    Args:
        model: model name in the registry.
        window: a duration (``1h``) or a count of labelled predictions (``500``).
        since: how far back to read the logs (``1d``).
        min_labels: labelled predictions a window needs for a verdict (fewer: ``insufficient``).
        reports: which windows get an Evidently report: ``latest`` (per version and stage) or ``all``.
        page: the monitoring page (metrics over time and the current table), self-contained HTML.

    Returns:
        The object keys of the Evidently reports written (one per reported window).
    """
    from kfrelease.config import Settings, log_to_stderr
    from kfrelease.monitoring.passes import current_table, load_history, run_monitoring
    from kfrelease.monitoring.report import render_page
    from kfrelease.monitoring.sources import since_for
    from kfrelease.monitoring.window import WindowSpec
    from kfrelease.storage import store_for

    log_to_stderr()
    settings = Settings.from_env()
    lookback = WindowSpec.parse(since)
    run = run_monitoring(
        settings,
        model,
        window=WindowSpec.parse(window),
        since=since_for(lookback.size),
        min_labels=min_labels,
        reports=reports,
    )
    history = load_history(store_for("pipeline", settings), model)
    with open(page.path, "w", encoding="utf-8") as fh:
        fh.write(
            render_page(
                history,
                current_table(history),
                model,
                run.outcome.warnings,
                run.report_keys,
            )
        )
    page.metadata["windows"] = len(run.windows)
    page.metadata["record"] = run.record_key
    if run.push is not None:
        page.metadata["push"] = run.push.message
    return run.report_keys
