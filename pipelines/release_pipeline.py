"""The release pipeline: preflight (a spec without absolute thresholds is refused) -> shadow the staging
candidate behind production until enough labelled requests decide (shadow gate) -> canary steps with checks ->
promote or roll back. A tag bump whose inputs differ from production's goes to canary steps judged on the
spec's thresholds; a first model (no production model at all) serves all traffic as provisional until the
same thresholds pass on its own labelled requests. Started by the training pipeline's staging step
(``kfrelease.release.handover.start_release``) or by ``kfrelease release run``."""

from kfp import dsl

from kfrelease.components.release_preflight import release_preflight
from kfrelease.components.rollout import rollout
from kfrelease.components.shadow_gate import shadow_gate
from kfrelease.k8s.render.platform import RELEASE_DRIVER_STEP, step_label
from kfrelease.training.resources import apply_step_policy

#: The cluster autoscaler never evicts a pod with this annotation "false" to scale a node down
#: (kubernetes/autoscaler ``cluster-autoscaler/FAQ.md``, "What types of pods can prevent CA from removing a
#: node?"): a release step moved by a scale-down would interrupt a shadow or a canary step.
SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"


def release_step(task, name: str):
    """A release step: its display name, resources and retries (infrastructure causes: a re-run resumes
    from the traffic state the cluster records, or starts again after a SIGTERM moved traffic back), never
    cached (a release acts on the cluster), not evicted by the autoscaler, as the release driver."""
    from kfp import kubernetes

    task.set_display_name(name)
    apply_step_policy(task)
    kubernetes.add_pod_annotation(task, SAFE_TO_EVICT, "false")
    # each release step runs as the release driver (Role in serving) and runs no model code: apply_step_policy
    # makes it refuse pickles (production's answers come from production's model server, kfrelease.release.controller)
    return step_label(task, RELEASE_DRIVER_STEP)


@dsl.pipeline(
    name="kfrelease-release",
    description="Shadow accuracy gate in staging, canary rollout with automatic rollback, promotion.",
)
def release_pipeline(model: str, version: str, spec_yaml: str = "") -> None:
    pre = release_step(release_preflight(model=model, version=version, spec_yaml=spec_yaml), "preflight")
    with dsl.If(pre.output == "shadow", name="has-champion"):
        gate = release_step(shadow_gate(model=model, version=version, spec_yaml=spec_yaml), "shadow-gate")
        with dsl.If(gate.outputs["Output"] == "pass", name="shadow-passed"):
            release_step(rollout(model=model, version=version, spec_yaml=spec_yaml), "canary-rollout")
    with dsl.If(pre.output == "canary", name="tag-bump"):  # inputs differ from production's: no shadow
        release_step(rollout(model=model, version=version, spec_yaml=spec_yaml), "canary-rollout-tag-bump")
    with dsl.If(pre.output == "first", name="first-model"):  # no production model: provisional until it passes
        release_step(rollout(model=model, version=version, spec_yaml=spec_yaml), "provisional-rollout")
