from kfp.dsl import Artifact, Input, Metrics, Output

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def validate_model(
    spec: dict, metrics: Input[Metrics], evidence_digest: str, run_id: str, verdict: Output[Artifact]
) -> bool:
    """Trusted: the explicit verdict on the evidence ``evaluate`` computed: absolute thresholds, no worse than
    production beyond noise on the rows neither trained on, TFX's no-threshold-no-champion rule, drift.

    Args:
        spec: the model spec (``ModelSpec.to_dict()``: thresholds, tolerance); for a release run it must be the one
            its run record holds (``steps.check_run_spec``: the parameter travels through KFP's metadata store).
        metrics: evaluate's ``Metrics`` artifact: its file holds the whole evidence; for a release run only a
            cross-check of the evidence evaluate kept where no untrusted step writes (``steps.trusted_evidence``).
        evidence_digest: the evidence file's digest as evaluate returned it; a file with another digest is
            refused.
        run_id: the trigger's run id (may be empty).
        verdict: the verdict as JSON (passed, reasons, every check, the paired test, drift).

    Returns:
        Whether the model passed: downstream steps (containerize, staging) run only then. (A single
        ``Output``: kfp.local 2.17 resolves ``dsl.If`` conditions only on a task's single output.)
    """
    import json

    from kfrelease.config import log_to_stderr
    from kfrelease.training.evidence import read_evidence
    from kfrelease.training.run_records import step_record
    from kfrelease.training.spec import ModelSpec
    from kfrelease.training.steps import trusted_evidence, validate_step

    log_to_stderr()
    model_spec = ModelSpec.from_dict(spec)
    with step_record(run_id, "validate"):
        given = read_evidence(metrics.path, evidence_digest, run_id)
        result = validate_step(model_spec, trusted_evidence(model_spec, run_id, given))
    text = json.dumps(result, sort_keys=True, default=str)
    with open(verdict.path, "w") as fh:
        fh.write(text)
    verdict.metadata.update({"passed": result["passed"], "reasons": result["reasons"]})
    print("PASS" if result["passed"] else "FAIL: " + "; ".join(result["reasons"]))
    return bool(result["passed"])
