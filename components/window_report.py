from kfp.dsl import HTML, Output

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def window_report(report_key: str, report: Output[HTML]):
    """One window's Evidently drift report as a KFP HTML artifact (viewable in the Kubeflow UI).

    Args:
        report_key: the report's key in the ``pipeline-root`` bucket (from ``monitor_model``).
        report: the Evidently HTML report.
    """
    from kfrelease.config import Settings, log_to_stderr
    from kfrelease.storage import store_for

    log_to_stderr()
    store = store_for("pipeline", Settings.from_env())
    with open(report.path, "wb") as fh:
        fh.write(store.get_bytes("pipeline-root", report_key))
    report.metadata["source"] = store.uri("pipeline-root", report_key)
