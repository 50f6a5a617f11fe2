from kfp.dsl import Dataset, Model, Output

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def train(
    spec_json: str,
    dataset_version: str,
    run_id: str,
    model: Output[Model],
    train_data: Output[Dataset],
    test_data: Output[Dataset],
) -> str:
    """Fit the model spec on a curated dataset version with the spec's fixed seed; record the split.

    Args:
        spec_json: the model spec (``ModelSpec.to_json()``: model.yaml text and its code at the commit).
        dataset_version: curated version to train on; ``latest`` resolves to the newest one now.
        run_id: the trigger's run id (step states are recorded under it); empty outside a triggered run.
        model: the fitted estimator (joblib).
        train_data: the training split (features + target, Parquet).
        test_data: the held-out split (features + target, Parquet).

    Returns:
        The dataset version actually used.
    """
    import logging

    from kfrelease.training.run_records import resume_or_run
    from kfrelease.training.spec import ModelSpec
    from kfrelease.training.steps import train_step

    logging.basicConfig(level=logging.INFO)
    spec = ModelSpec.from_json(spec_json)
    out = resume_or_run(  # a retried run reuses a finished train step of its earlier attempt
        run_id,
        "train",
        {"model": model.path, "train_data": train_data.path, "test_data": test_data.path},
        lambda: train_step(spec, dataset_version, model.path, train_data.path, test_data.path),
    )
    model.metadata.update(
        {
            "framework": "scikit-learn",
            "spec_fingerprint": out["spec_fingerprint"],
            "dataset_version": out["dataset_version"],
        }
    )
    train_data.metadata.update({"rows": out["train_rows"]})
    test_data.metadata.update({"rows": out["test_rows"]})
    return out["dataset_version"]
