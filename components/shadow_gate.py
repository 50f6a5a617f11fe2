from kfp.dsl import HTML, Output
from kfrelease.components.base import kfrelease_component


@kfrelease_component
def shadow_gate(model: str, version: str, spec_yaml: str, report: Output[HTML]) -> str:
    """Shadow the staging candidate behind production until enough labelled requests decide.

    Both models are scored (MSE, RMSE, MAE, R2) on the same mirrored, labelled requests; the candidate
    passes when its RMSE <= production RMSE x shadow.max_rmse_ratio. The decision and its numbers are
    recorded in the registry history; a failed candidate is rejected and the shadow stopped.

    Args:
        model: the registered model name.
        version: the staging candidate.
        spec_yaml: the rollout spec (YAML text; empty: the packaged default).
        report: Evidently's regression report of both models on the joined requests (HTML).

    Returns:
        "pass", "fail" or "wait" (no verdict within shadow.max_wait_seconds).
    """
    import logging

    from kfrelease.config import Settings
    from kfrelease.release.run import pipeline_spec, shadow_step

    logging.basicConfig(level=logging.INFO)
    decision = shadow_step(
        Settings.from_env(), pipeline_spec(model, spec_yaml), version, report.path
    )
    if decision == "wait" or not __import__("os").path.exists(report.path):
        with open(report.path, "w") as fh:
            fh.write(f"<html><body>shadow gate: {decision}</body></html>")
    return decision
