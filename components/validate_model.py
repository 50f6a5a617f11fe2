from kfp.dsl import Artifact, Output

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def validate_model(spec_json: str, evidence_json: str, run_id: str, verdict: Output[Artifact]) -> bool:
    """Trusted: the explicit verdict on the evidence ``evaluate`` computed: absolute thresholds, no worse than
    production beyond noise on the rows neither trained on, TFX's no-threshold-no-champion rule, drift.

    Args:
        spec_json: the model spec (thresholds, tolerance).
        evidence_json: evaluate's evidence as its output parameter: for a release run only a cross-check of the
            evidence evaluate kept where no untrusted step writes (a parameter can be rewritten in transit).
        run_id: the trigger's run id (may be empty).
        verdict: the verdict as JSON (passed, reasons, every check, the paired test, drift).

    Returns:
        Whether the model passed: downstream steps (containerize, staging) run only then. (A single
        ``Output``: kfp.local 2.17 resolves ``dsl.If`` conditions only on a task's single output.)
    """
    import json

    from kfrelease.config import log_to_stderr
    from kfrelease.training.run_records import step_record
    from kfrelease.training.spec import ModelSpec
    from kfrelease.training.steps import trusted_evidence, validate_step

    log_to_stderr()
    spec = ModelSpec.from_json(spec_json)
    with step_record(run_id, "validate"):
        result = validate_step(spec, trusted_evidence(spec, run_id, json.loads(evidence_json)))
    text = json.dumps(result, sort_keys=True, default=str)
    with open(verdict.path, "w") as fh:
        fh.write(text)
    verdict.metadata.update({"passed": result["passed"], "reasons": result["reasons"]})
    print("PASS" if result["passed"] else "FAIL: " + "; ".join(result["reasons"]))
    return bool(result["passed"])
