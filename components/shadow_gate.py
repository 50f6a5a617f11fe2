from kfp.dsl import HTML, Output

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def shadow_gate(model: str, version: str, spec_yaml: str, report: Output[HTML]) -> str:
    """Shadow the staging candidate behind production until enough labelled requests decide.

    A paired, anytime-valid sequential test on the same mirrored, labelled requests
    (kfrelease.release.decision): the candidate passes when the upper confidence bound of its loss is
    below (1 + shadow.margin) x production's, fails when the lower bound says it is worse, at the declared
    shadow.error_rate. The decision, its confidence sequence and sample count are recorded in the registry
    history; a failed candidate is rejected and the shadow stopped.

    Args:
        model: the registered model name.
        version: the staging candidate.
        spec_yaml: the rollout spec (YAML text; empty: the packaged default).
        report: Evidently's regression report of both models on the joined requests (HTML).

    Returns:
        "pass", "fail" or "insufficient" (no decision within shadow.max_wait_seconds or shadow.max_samples).
    """
    from kfrelease.config import Settings, log_to_stderr
    from kfrelease.release.pipeline_steps import pipeline_spec, shadow_step

    log_to_stderr()
    decision = shadow_step(Settings.from_env(), pipeline_spec(model, spec_yaml), version, report.path)
    if decision == "insufficient" or not __import__("os").path.exists(report.path):
        with open(report.path, "w") as fh:
            fh.write(f"<html><body>shadow gate: {decision}</body></html>")
    return decision
