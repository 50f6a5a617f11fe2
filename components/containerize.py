from kfrelease.components.base import kfrelease_component


@kfrelease_component
def containerize(spec_json: str, version: str, image_registry: str, run_id: str) -> str:
    """Build the version's KServe ModelCar image (model under /models, static busybox) without a daemon,
    push it and record its digest in the registry entry.

    Args:
        spec_json: the model spec (its name is the registered model).
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
    from kfrelease.storage import store_for
    from kfrelease.training.run_records import step_record
    from kfrelease.training.spec import ModelSpec
    from kfrelease.training.steps import containerize_step, is_release_run, step_store

    log_to_stderr()
    from kfrelease.registry import ModelRegistry
    from kfrelease.training.steps import not_staged_reason

    spec = ModelSpec.from_json(spec_json)
    if not is_release_run(step_store(), run_id, spec):
        print(f"{spec.name} {version}: an experiment; no image is built")
        return ""
    with step_record(run_id, "containerize") as extra:
        image = containerize_step(spec.name, version, registry=image_registry)
        if not image:  # skipped, never green: the version is a rejected one (an existing version re-returned)
            extra["skipped"] = not_staged_reason(ModelRegistry(store_for("pipeline")).get(spec.name, version))
    if not image:
        return ""
    pinned = ImageRef(image["ref"], image["digest"]).pinned
    print(f"pushed {pinned}")
    return pinned
