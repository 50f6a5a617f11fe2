from kfp.dsl import Artifact, Dataset, Input, Output

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def validate_model(
    spec_json: str,
    metrics_json: str,
    run_id: str,
    train_data: Input[Dataset],
    test_data: Input[Dataset],
    verdict: Output[Artifact],
) -> bool:
    """The explicit verdict: absolute thresholds, no worse than production on the same test rows, drift.

    Args:
        spec_json: the model spec (thresholds, tolerance).
        metrics_json: the candidate's held-out metrics (from evaluate).
        run_id: the trigger's run id (may be empty).
        train_data: the candidate's training split (drift against production's training data).
        test_data: the held-out split (production is scored on the same rows).
        verdict: the verdict as JSON (passed, reasons, every check, champion metrics, drift).

    Returns:
        Whether the model passed: downstream steps (containerize, staging) run only then. (A single
        ``Output``: kfp.local 2.17 resolves ``dsl.If`` conditions only on a task's single output.)
    """
    import json
    import logging

    from kfrelease.training.run_records import step_record
    from kfrelease.training.spec import ModelSpec
    from kfrelease.training.steps import validate_step

    logging.basicConfig(level=logging.INFO)
    spec = ModelSpec.from_json(spec_json)
    with step_record(run_id, "validate"):
        result = validate_step(spec, json.loads(metrics_json), train_data.path, test_data.path)
    text = json.dumps(result, sort_keys=True, default=str)
    with open(verdict.path, "w") as fh:
        fh.write(text)
    verdict.metadata.update({"passed": result["passed"], "reasons": result["reasons"]})
    print("PASS" if result["passed"] else "FAIL: " + "; ".join(result["reasons"]))
    return bool(result["passed"])
