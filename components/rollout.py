from kfrelease.components.base import kfrelease_component


@kfrelease_component
def rollout(model: str, version: str, spec_yaml: str) -> str:
    """Canary steps (e.g. 10 -> 25 -> 50 -> 100 %) with checks at each step, then promote or roll back.

    At each step: error rate and p99 latency of the canary, and its loss on labelled requests against
    production's; a failed check rolls back (canary 0 %, production untouched; the candidate rejected only
    when an accuracy check failed). With no production model at all (a first model) it serves all traffic
    as provisional until its spec's thresholds pass on its own labelled requests, else it is withdrawn.

    Args:
        model: the registered model name.
        version: the candidate (that passed the shadow gate, or a tag bump, or a first model).
        spec_yaml: the rollout spec (YAML text; empty: the packaged default).

    Returns:
        "promoted", "rolled_back" or "rejected".
    """
    from kfrelease.config import Settings, log_to_stderr
    from kfrelease.release.pipeline_steps import pipeline_spec, rollout_step

    log_to_stderr()
    return rollout_step(Settings.from_env(), pipeline_spec(model, spec_yaml), version)
