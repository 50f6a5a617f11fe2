"""The training pipeline, run on every merge to main: split (trusted) -> train and score-champion (untrusted:
they run model code, see only the training rows and the held-out features) -> evaluate -> validate -> register
(trusted: labels, metrics, verdict), then, only when the model passed validation (``dsl.If``), containerize ->
deploy to staging. The steps, their inputs, identities and conditions are declared once, in
``kfrelease.training.steps.TRAINING_STEPS`` (``run_inline`` runs the same list in one process); this module
builds the KFP pipeline from it.

The model spec travels as a typed ``dict`` parameter (KFP's STRUCT), the evidence as evaluate's ``Metrics``
artifact (the metrics shown in the Kubeflow UI, the whole evidence in its file) with the file's digest as a
parameter, which validate and register check.

A rejected model is still registered (with a ``rejected`` stage event and its reasons) so that the
verdict is on record; it gets no image and is never staged. A run the merge trigger did not start (a notebook,
a direct ``kfp.local`` or KFP run: no run record for ``run_id``) registers an experiment, never staged.
"""

import contextlib
import importlib

from kfp import dsl

from kfrelease.k8s.render.platform import KFP_SUBMITTER_STEP, UNTRUSTED, step_label
from kfrelease.training.resources import MODEL_DEFAULT, MODEL_STEPS, apply_step_policy
from kfrelease.training.steps import GATE, TRAINING_PIPELINE, TRAINING_STEPS


def component(step):
    """The KFP component a step of ``TRAINING_STEPS`` names (``<module>:<function>`` of ``kfrelease.components``)."""
    module, _, name = step.component.partition(":")
    return getattr(importlib.import_module(f"kfrelease.components.{module}"), name)


@dsl.pipeline(
    name=TRAINING_PIPELINE,
    description="Split the latest curated data (trusted), train the model spec of a commit and predict the held-out "
    "rows (untrusted), score production on them (untrusted), evaluate (trusted: labels, metrics, Evidently, paired "
    "test), validate, register V<tag>.<manual>.<auto>, containerize (ModelCar) and stage.",
)
def training_pipeline(
    spec: dict,
    commit: str,
    dataset_version: str = "latest",
    run_id: str = "",
    image_registry: str = "",
    model_cpu: str = MODEL_DEFAULT.cpu,
    model_memory: str = MODEL_DEFAULT.memory,
    model_cpu_limit: str = MODEL_DEFAULT.cpu_limit,
    model_memory_limit: str = MODEL_DEFAULT.memory_limit,
    model_node_selector: dict = {},  # noqa: B006 - KFP reads the default from the signature
) -> str:
    model = {
        "cpu": model_cpu,
        "memory": model_memory,
        "cpu_limit": model_cpu_limit,
        "memory_limit": model_memory_limit,
        "node_selector": model_node_selector,
    }
    parameters = {
        "spec": spec,
        "commit": commit,
        "dataset_version": dataset_version,
        "run_id": run_id,
        "image_registry": image_registry,
        "job_name": dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
    }
    tasks = {}
    gated = False
    with contextlib.ExitStack() as branch:  # one dsl.If around each run of consecutive if_passed steps
        for step in TRAINING_STEPS:
            arguments = {name: parameters[source] for name, source in step.inputs.items() if source in parameters}
            arguments |= {name: tasks[producer].outputs[output] for name, producer, output in step.sources()}
            if step.if_passed != gated:
                branch.close()
                if step.if_passed:
                    # The condition is on validate's single output: kfp.local 2.17 resolves only "<task>-Output"
                    # channels.
                    branch.enter_context(dsl.If(tasks[GATE].outputs["Output"] == True, name="passed-validation"))
                gated = step.if_passed
            task = component(step)(**arguments).set_display_name(step.name)
            for earlier in step.after:
                task.after(tasks[earlier])
            if step.untrusted:  # the merged model code runs as an identity that can stop nothing
                step_label(task, UNTRUSTED)  # (kfrelease.k8s.render.platform.step_identities)
            if step.submits_runs:
                step_label(task, KFP_SUBMITTER_STEP)
            # Resources, retries (infrastructure causes only: see kfrelease.training.resources), no caching, and no
            # pickle loads outside the untrusted steps.
            apply_step_policy(task, model if step.name in MODEL_STEPS else None, untrusted=step.untrusted)
            tasks[step.name] = task
    return tasks["register"].output
