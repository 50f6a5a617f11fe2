from kfp.dsl import Dataset, Input, Model, Output

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def train(
    spec_json: str,
    run_id: str,
    train_data: Input[Dataset],
    holdout_features: Input[Dataset],
    model: Output[Model],
    predictions: Output[Dataset],
) -> str:
    """Untrusted (runs the merged model code): fit the model spec on the training rows with the spec's fixed
    seed, then predict the held-out rows' features, label-blind.

    Args:
        spec_json: the model spec (``ModelSpec.to_json()``: model.yaml text and its code at the commit).
        run_id: the trigger's run id (step states are recorded under it); empty outside a triggered run.
        train_data: the training rows (from the trusted split).
        holdout_features: the held-out rows' features, without the target (from the trusted split).
        model: the fitted estimator (its flavour's file).
        predictions: one prediction per held-out row (``_row``, ``prediction``; Parquet).

    Returns:
        The fitted estimator's class name.
    """
    from kfrelease.config import log_to_stderr
    from kfrelease.training.run_records import resume_or_run
    from kfrelease.training.spec import ModelSpec
    from kfrelease.training.steps import train_step

    log_to_stderr()
    spec = ModelSpec.from_json(spec_json)
    out = resume_or_run(  # a retried run reuses a finished train step of its earlier attempt
        run_id,
        "train",
        {"model": model.path, "predictions": predictions.path},
        lambda: train_step(spec, train_data.path, holdout_features.path, model.path, predictions.path),
    )
    model.metadata.update({"framework": "scikit-learn", "spec_fingerprint": spec.fingerprint})
    predictions.metadata.update({"rows": out["holdout_rows"]})
    return spec.estimator.class_ if spec.estimator else spec.build
