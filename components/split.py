from typing import NamedTuple

from kfp.dsl import Dataset, Model, Output

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def split(
    spec: dict,
    dataset_version: str,
    run_id: str,
    train_data: Output[Dataset],
    holdout_features: Output[Dataset],
    champion_model: Output[Model],
) -> NamedTuple("SplitOutputs", dataset_version=str, champion=str, champion_note=str):
    """Trusted: check the spec against the curated version and split it by the stable hash of each row's key;
    hand the untrusted steps what they may see. Runs no model code and keeps the held-out labels to itself.

    Args:
        spec: the model spec (``ModelSpec.to_dict()``: model.yaml text and its code at the commit).
        dataset_version: curated version to train on; ``latest`` resolves to the newest one now.
        run_id: the trigger's run id (step states are recorded under it, and for a release run the decision the
            steps after it act on: ``steps.split_decision``); empty outside a triggered run.
        train_data: the training rows (features + target, Parquet).
        holdout_features: the held-out rows' ``_row`` and features, without the target (Parquet).
        champion_model: production's artifact folder (model file + entry), copied unread; empty when there is
            no comparable production model.

    Returns:
        The dataset version used, the production version compared with ("" when none) and, when none, why.
    """
    from collections import namedtuple

    from kfrelease.config import log_to_stderr
    from kfrelease.training.run_records import resume_or_run
    from kfrelease.training.spec import ModelSpec
    from kfrelease.training.steps import split_step

    log_to_stderr()
    spec = ModelSpec.from_dict(spec)
    out = resume_or_run(  # a retried run reuses a finished split of its earlier attempt
        run_id,
        "split",
        {"train_data": train_data.path, "holdout_features": holdout_features.path},
        lambda: split_step(
            spec, dataset_version, train_data.path, holdout_features.path, champion_model.path, run_id=run_id
        ),
    )
    train_data.metadata.update({"rows": out["train_rows"], "split": out["split"]})
    holdout_features.metadata.update({"rows": out["holdout_rows"]})
    champion_model.metadata.update({"version": out["champion"]})
    outputs = namedtuple("SplitOutputs", ["dataset_version", "champion", "champion_note"])
    return outputs(out["dataset_version"], out["champion"], out["champion_note"])
