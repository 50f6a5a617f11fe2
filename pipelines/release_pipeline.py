"""The release pipeline: preflight (a spec without absolute thresholds is refused; the first model of a model
goes straight to production on its offline verdict; a tag bump whose inputs differ from production's goes to
canary steps judged on the spec's thresholds) -> shadow the staging candidate behind production until enough
labelled requests decide (shadow gate) -> canary steps with checks -> promote or roll back. Started by the training pipeline's staging step
(``kfrelease.release.handover.start_release``) or by ``kfrelease release run``."""

from kfp import dsl

from kfrelease.components.release_preflight import release_preflight
from kfrelease.components.rollout import rollout
from kfrelease.components.shadow_gate import shadow_gate
from kfrelease.k8s.render.platform import RELEASE_DRIVER_STEP, step_label


@dsl.pipeline(
    name="kfrelease-release",
    description="Shadow accuracy gate in staging, canary rollout with automatic rollback, promotion.",
)
def release_pipeline(model: str, version: str, spec_yaml: str = "") -> None:
    pre = release_preflight(model=model, version=version, spec_yaml=spec_yaml).set_display_name("preflight")
    pre.set_caching_options(False)
    step_label(pre, RELEASE_DRIVER_STEP)  # each release step runs as the release driver (Role in serving)
    with dsl.If(pre.output == "shadow", name="has-champion"):
        gate = shadow_gate(model=model, version=version, spec_yaml=spec_yaml).set_display_name("shadow-gate")
        gate.set_caching_options(False)
        step_label(gate, RELEASE_DRIVER_STEP)
        with dsl.If(gate.outputs["Output"] == "pass", name="shadow-passed"):
            step_label(
                rollout(model=model, version=version, spec_yaml=spec_yaml)
                .set_display_name("canary-rollout")
                .set_caching_options(False),
                RELEASE_DRIVER_STEP,
            )
    with dsl.If(pre.output == "canary", name="tag-bump"):  # inputs differ from production's: no shadow
        step_label(
            rollout(model=model, version=version, spec_yaml=spec_yaml)
            .set_display_name("canary-rollout-tag-bump")
            .set_caching_options(False),
            RELEASE_DRIVER_STEP,
        )
