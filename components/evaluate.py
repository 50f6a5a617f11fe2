from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def evaluate(
    spec_json: str,
    run_id: str,
    model: Input[Model],
    test_data: Input[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
) -> str:
    """Evidently regression report on the held-out split: MSE, RMSE, MAE, R².

    Args:
        spec_json: the model spec (features, target).
        run_id: the trigger's run id (may be empty).
        model: the fitted estimator.
        test_data: the held-out split.
        metrics: the metrics as a KFP Metrics artifact (shown in the Kubeflow UI).
        report: Evidently's HTML report (a KFP HTML artifact, shown in the Kubeflow UI).

    Returns:
        The metrics as JSON ``{mse, rmse, mae, r2, n, evidently}``.
    """
    import json
    import logging

    from kfrelease.training.run_records import step_record
    from kfrelease.training.spec import ModelSpec
    from kfrelease.training.steps import evaluate_step

    logging.basicConfig(level=logging.INFO)
    spec = ModelSpec.from_json(spec_json)
    with step_record(run_id, "evaluate"):
        values = evaluate_step(spec, model.path, test_data.path, report.path)
    for name in ("mse", "rmse", "mae", "r2"):
        if values.get(name) is not None:
            metrics.log_metric(name, float(values[name]))
    metrics.log_metric("test_rows", float(values["n"]))
    return json.dumps(values, sort_keys=True)
