from kfrelease.components.base import kfrelease_component


@kfrelease_component
def release_preflight(model: str, version: str, spec_yaml: str) -> str:
    """Check a release before any traffic moves (a model spec without absolute thresholds is refused) and say
    which path it takes.

    Args:
        model: the registered model name.
        version: the staging candidate, e.g. V1.2.0.
        spec_yaml: the rollout spec (YAML text; empty: the packaged default).

    Returns:
        "first" (no production model at all: served as provisional until its thresholds pass live), "shadow" (it must beat production on the same
        requests) or "canary" (a tag bump whose inputs differ: canary steps with the spec's thresholds).
    """
    from kfrelease.config import Settings, log_to_stderr
    from kfrelease.release.pipeline_steps import pipeline_spec, preflight_step

    log_to_stderr()
    return preflight_step(Settings.from_env(), pipeline_spec(model, spec_yaml), version)
