from kfrelease.components.base import kfrelease_component


@kfrelease_component
def deploy_staging(spec: dict, version: str, image: str, run_id: str, job_name: str) -> str:
    """Mark the version as the staging candidate and hand it over to the release pipeline (shadow gate,
    canary steps, promotion or rollback): locally a detached release runner, on a cluster a new KFP run
    (``kfrelease.release.handover.stage_and_hand_over``; ``KFRELEASE_AUTO_RELEASE=0`` turns the hand-over off).

    Args:
        spec: the model spec (its name is the registered model).
        version: its version (validated and containerized).
        image: the pushed image (orders this step after containerize; recorded in the stage event).
        run_id: the trigger's run id (may be empty).
        job_name: the KFP pipeline job name.

    Returns:
        The version's stage; ``experiment`` for a run the merge trigger did not start (never staged).
    """
    from kfrelease.config import Settings, log_to_stderr
    from kfrelease.release.handover import stage_and_hand_over
    from kfrelease.training.spec import ModelSpec

    log_to_stderr()
    return stage_and_hand_over(Settings.from_env(), ModelSpec.from_dict(spec), version, image, run_id, job_name)
