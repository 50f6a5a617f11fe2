from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def evaluate(
    spec_json: str,
    run_id: str,
    dataset_version: str,
    champion: str,
    champion_note: str,
    train_claims: str,
    predictions: Input[Dataset],
    champion_predictions: Input[Dataset],
    onnx_model: Input[Model],
    booster_model: Input[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    holdout_predictions: Output[Dataset],
) -> str:
    """Trusted: the evidence. Reads the held-out labels itself (curated data), joins the untrusted steps'
    predictions by row, computes MSE, RMSE, MAE, R² with intervals (Evidently report) and compares production
    with the candidate on the rows neither trained on (the release gates' paired test). Loads no model.

    Args:
        spec_json: the model spec (features, target, split).
        run_id: the trigger's run id (may be empty; its rollout spec gives the paired test's rule).
        dataset_version: the curated version the split used.
        champion: the production version the split handed to ``score-champion`` ("" when none).
        champion_note: why there is no comparable production version ("" when there is one).
        train_claims: the flavours' checks as the train step measured them (its claims).
        predictions: the candidate's held-out predictions.
        champion_predictions: production's held-out predictions.
        onnx_model: the candidate converted to ONNX (empty: not converted); verified here on the real held-out
            rows against the judged predictions (ONNX loads without running code).
        booster_model: the candidate's XGBoost or LightGBM model file (empty: none); verified the same way.
        metrics: the metrics as a KFP Metrics artifact (shown in the Kubeflow UI).
        report: Evidently's HTML report (a KFP HTML artifact, shown in the Kubeflow UI).
        holdout_predictions: the candidate's predictions keyed by row across versions (kept with the version).

    Returns:
        The evidence as JSON: ``{metrics, champion, drift, split, held_out_rows, ...}`` (what validate decides on).
    """
    import json

    from kfrelease.config import log_to_stderr
    from kfrelease.training.run_records import step_record
    from kfrelease.training.spec import ModelSpec
    from kfrelease.training.steps import evaluate_step

    log_to_stderr()
    spec = ModelSpec.from_json(spec_json)
    with step_record(run_id, "evaluate"):
        evidence = evaluate_step(
            spec,
            dataset_version,
            champion,
            predictions.path,
            champion_predictions.path,
            run_id,
            report.path,
            holdout_predictions.path,
            champion_note=champion_note,
            onnx_path=onnx_model.path,
            flavour_claims=json.loads(train_claims or "{}"),
            booster_path=booster_model.path,
        )
    values = evidence.get("metrics") or {}
    for name in ("mse", "rmse", "mae", "r2"):
        if values.get(name) is not None:
            metrics.log_metric(name, float(values[name]))
    metrics.log_metric("test_rows", float(evidence["held_out_rows"]))
    return json.dumps(evidence, sort_keys=True, default=str)
