from kfrelease.components.base import kfrelease_component


@kfrelease_component
def deploy_staging(spec_json: str, version: str, image: str, run_id: str, job_name: str) -> str:
    """Mark the version as the staging candidate and hand it over to the release pipeline (shadow gate,
    canary steps, promotion or rollback): locally a detached release runner, on a cluster a new KFP run
    (``kfrelease.release.handover``; ``KFRELEASE_AUTO_RELEASE=0`` turns the hand-over off).

    Args:
        spec_json: the model spec (its name is the registered model).
        version: its version (validated and containerized).
        image: the pushed image (orders this step after containerize; recorded in the stage event).
        run_id: the trigger's run id (may be empty).
        job_name: the KFP pipeline job name.

    Returns:
        The version's stage; ``experiment`` for a run the merge trigger did not start (never staged).
    """
    import logging

    from kfrelease.config import Settings
    from kfrelease.release.handover import start_release
    from kfrelease.storage import store_for
    from kfrelease.training.run_records import step_record
    from kfrelease.training.spec import ModelSpec
    from kfrelease.training.steps import deploy_staging_step, is_release_run, step_store

    logging.basicConfig(level=logging.INFO)
    spec = ModelSpec.from_json(spec_json)
    if not is_release_run(step_store(), run_id, spec):  # only the merge trigger's run stages
        print(f"{spec.name} {version}: an experiment (not started by the merge trigger); not staged")
        return "experiment"
    with step_record(run_id, "deploy-staging") as extra:
        model_name = spec.name
        stage = deploy_staging_step(model_name, version, run_id or job_name)
        if stage != "staging":  # nothing staged: skipped, never green
            extra["skipped"] = f"{model_name} {version} is {stage}; nothing staged"
        else:
            from kfrelease.registry import ModelRegistry

            # the rollout.yaml of the merge that registered this version (kfrelease.training.rollout_file)
            rollout = ModelRegistry(store_for("pipeline")).get(model_name, version).entry.get("rollout")
            release = start_release(Settings.from_env(), model_name, version, spec_yaml=rollout)
            print(f"{model_name} {version}: release handed over: {release or 'off (KFRELEASE_AUTO_RELEASE=0)'}")
    print(f"{model_name} {version}: {stage} ({image})")
    return stage
