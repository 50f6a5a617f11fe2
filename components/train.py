from kfp.dsl import Dataset, Input, Model, Output

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def train(
    spec: dict,
    run_id: str,
    train_data: Input[Dataset],
    holdout_features: Input[Dataset],
    model: Output[Model],
    onnx_model: Output[Model],
    booster_model: Output[Model],
    predictions: Output[Dataset],
) -> dict:
    """Untrusted (runs the merged model code): fit the model spec on the training rows with the spec's fixed
    seed, then predict the held-out rows' features, label-blind.

    Args:
        spec: the model spec (``ModelSpec.to_dict()``: model.yaml text and its code at the commit).
        run_id: the trigger's run id (step states are recorded under it); empty outside a triggered run.
        train_data: the training rows (from the trusted split).
        holdout_features: the held-out rows' features, without the target (from the trusted split).
        model: the fitted estimator (the ``sklearn`` flavour's file).
        onnx_model: the same model converted to ONNX when the spec's ``flavour`` asks for it and it converts
            (empty otherwise); ``evaluate`` verifies it where no model code runs.
        booster_model: an XGBoost or LightGBM regressor's own model file (UBJSON or LightGBM text: reading it
            runs no code) when the spec's ``flavour`` allows it (empty otherwise); ``evaluate`` verifies it too.
        predictions: one prediction per held-out row (``_row``, ``prediction``; Parquet).

    Returns:
        The flavours' checks as this step measured them (its claims, ``train_claims``: a typed ``dict``
        parameter): the sklearn reference's single-row cost, and why a conversion failed.
    """
    from kfrelease.config import log_to_stderr
    from kfrelease.registry.artifact import BOOSTERS, FLAVOURS
    from kfrelease.training.run_records import resume_or_run
    from kfrelease.training.spec import ModelSpec
    from kfrelease.training.steps import train_claims, train_step

    log_to_stderr()
    model_spec = ModelSpec.from_dict(spec)
    out = resume_or_run(  # a retried run reuses a finished train step of its earlier attempt
        run_id,
        "train",
        {
            "model": model.path,
            "onnx_model": onnx_model.path,
            "booster_model": booster_model.path,
            "predictions": predictions.path,
        },
        lambda: train_step(
            model_spec,
            train_data.path,
            holdout_features.path,
            model.path,
            predictions.path,
            onnx_model.path,
            booster_model.path,
        ),
    )
    model.metadata.update({"framework": "scikit-learn", "spec_fingerprint": model_spec.fingerprint})
    onnx_model.metadata.update(
        {"framework": "onnx", "converted": bool(out["flavours"].get("onnx", {}).get("verified"))}
    )
    native = next((FLAVOURS[n] for n in BOOSTERS if n in out["flavours"]), None)
    booster_model.metadata.update(
        {
            "framework": native.framework if native else "",
            "converted": bool(native and out["flavours"][native.name].get("verified")),
        }
    )
    predictions.metadata.update({"rows": out["holdout_rows"]})
    return train_claims(out["flavours"])
