from kfp.dsl import Dataset, Input, Model, Output

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def score_champion(
    run_id: str,
    champion_model: Input[Model],
    holdout_features: Input[Dataset],
    predictions: Output[Dataset],
) -> str:
    """Untrusted (runs production's model code, in a step of its own, after the candidate's step has ended):
    production's predictions on the held-out rows' features, label-blind.

    Args:
        run_id: the trigger's run id (may be empty).
        champion_model: production's artifact folder from the trusted split (empty: no comparable production).
        holdout_features: the held-out rows' features, without the target.
        predictions: one prediction per held-out row (``_row``, ``prediction``; empty without a champion).

    Returns:
        The production version scored ("" when none).
    """
    from kfrelease.config import log_to_stderr
    from kfrelease.training.run_records import step_record
    from kfrelease.training.steps import score_step

    log_to_stderr()
    with step_record(run_id, "score-champion"):
        out = score_step(champion_model.path, holdout_features.path, predictions.path)
    return out["version"]
