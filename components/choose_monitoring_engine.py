from typing import NamedTuple

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def choose_monitoring_engine(
    model: str, window: str, since: str, engine: str = "auto", spark_image: str = ""
) -> NamedTuple("EngineChoice", [("engine", str), ("features", str), ("spark_window", str), ("since", str)]):
    """Which engine computes this monitoring pass: the embedded engine (DuckDB) or Spark.

    Args:
        model: model name in the registry.
        window: a duration (``1h``) or a count of labelled predictions (``500``).
        since: how far back to read the logs (``1d``).
        engine: ``auto`` (by the logged predictions of the lookback, ``choose_engine``), ``duckdb`` or ``spark``.
        spark_image: the Spark image; a pass that needs Spark without one is refused here, before any work.

    Returns:
        engine (``duckdb`` or ``spark``), the model's features (comma separated), the window and the
        lookback's ISO start in the form the Spark application takes.
    """
    from collections import namedtuple

    from kfrelease.config import Settings, log_to_stderr
    from kfrelease.monitoring.spark_app import monitoring_engine
    from kfrelease.storage import store_for

    log_to_stderr()
    choice = monitoring_engine(store_for("monitoring", Settings.from_env()), model, window, since, engine, spark_image)
    out = namedtuple("EngineChoice", ["engine", "features", "spark_window", "since"])
    return out(choice.engine, ",".join(choice.features), choice.spark_window, choice.since)
