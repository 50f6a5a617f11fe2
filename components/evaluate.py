from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def evaluate(
    spec: dict,
    run_id: str,
    dataset_version: str,
    champion: str,
    champion_note: str,
    train_claims: dict,
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
        spec: the model spec (``ModelSpec.to_dict()``: features, target, split).
        run_id: the trigger's run id (may be empty; its rollout spec gives the paired test's rule).
        dataset_version: the curated version the split used.
        champion: the production version the split handed to ``score-champion`` ("" when none); for a release run
            it must be the one split kept (``steps.split_decision``), as must ``dataset_version`` and the note.
        champion_note: why there is no comparable production version ("" when there is one).
        train_claims: the flavours' checks as the train step measured them (its claims; only their numbers and
            reasons are read).
        predictions: the candidate's held-out predictions.
        champion_predictions: production's held-out predictions, counted only where they are checked to be
            production's (``evidence.checked_champion``: its code-free file's answers, or the ones it was
            registered with); others are refused and nothing is judged.
        onnx_model: the candidate converted to ONNX (empty: not converted); verified here on the real held-out
            rows against the judged predictions (ONNX loads without running code).
        booster_model: the candidate's XGBoost or LightGBM model file (empty: none); verified the same way.
        metrics: the evidence: MSE, RMSE, MAE, R² and the held-out row count logged as metrics (shown in the
            Kubeflow UI), the whole evidence as the artifact's JSON file (``{metrics, champion, drift, split,
            held_out_rows, ...}``: what validate and register decide on).
        report: Evidently's HTML report (a KFP HTML artifact, shown in the Kubeflow UI).
        holdout_predictions: the candidate's predictions keyed by row across versions (kept with the version).

    Returns:
        The digest of the evidence file (validate and register read the file only when it still has this
        digest; for a release run they decide on the copy ``evaluate_step`` kept where no untrusted step writes).
    """
    from kfrelease.config import log_to_stderr
    from kfrelease.training.evidence import write_evidence
    from kfrelease.training.run_records import step_record
    from kfrelease.training.spec import ModelSpec
    from kfrelease.training.steps import evaluate_step

    log_to_stderr()
    model_spec = ModelSpec.from_dict(spec)
    with step_record(run_id, "evaluate"):
        evidence = evaluate_step(
            model_spec,
            dataset_version,
            champion,
            predictions.path,
            champion_predictions.path,
            run_id,
            report.path,
            holdout_predictions.path,
            champion_note=champion_note,
            onnx_path=onnx_model.path,
            flavour_claims=train_claims,
            booster_path=booster_model.path,
        )
    values = evidence.get("metrics") or {}
    for name in ("mse", "rmse", "mae", "r2"):
        if values.get(name) is not None:
            metrics.log_metric(name, float(values[name]))
    metrics.log_metric("test_rows", float(evidence["held_out_rows"]))
    return write_evidence(metrics.path, evidence)
