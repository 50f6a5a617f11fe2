from kfrelease.components.base import kfrelease_component


@kfrelease_component
def containerize(spec: dict, version: str, image_registry: str, run_id: str) -> str:
    """Build the version's KServe ModelCar image (model under /models, static busybox) without a daemon,
    push it and record its digest in the registry entry.

    Args:
        spec: the model spec (its name is the registered model).
        version: its version.
        image_registry: e.g. ``<account>.dkr.ecr.<region>.amazonaws.com``; empty: the embedded registry
            (or ``KFRELEASE_IMAGE_REGISTRY``).
        run_id: the trigger's run id (may be empty).

    Returns:
        The pushed image pinned by digest (``registry/kfrelease/<model>@sha256:...``); empty when the
        version's recorded verdict is a rejection or the run is an experiment (not started by the trigger).
    """
    from kfrelease.config import log_to_stderr
    from kfrelease.images.oci import ImageRef
    from kfrelease.registry import ModelRegistry
    from kfrelease.storage import store_for
    from kfrelease.training.run_records import step_record
    from kfrelease.training.spec import ModelSpec
    from kfrelease.training.steps import containerize_step, is_release_run, not_staged_reason, step_store

    log_to_stderr()

    model_spec = ModelSpec.from_dict(spec)
    if not is_release_run(step_store(), run_id, model_spec):
        print(f"{model_spec.name} {version}: an experiment; no image is built")
        return ""
    with step_record(run_id, "containerize") as extra:
        image = containerize_step(model_spec.name, version, registry=image_registry)
        if not image:  # skipped, never green: the version is a rejected one (an existing version re-returned)
            extra["skipped"] = not_staged_reason(ModelRegistry(store_for("pipeline")).get(model_spec.name, version))
    if not image:
        return ""
    pinned = ImageRef(image["ref"], image["digest"]).pinned
    print(f"pushed {pinned}")
    return pinned
