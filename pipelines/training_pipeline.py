"""The training pipeline, run on every merge to main: train -> evaluate -> validate -> register, then,
only when the model passed validation (``dsl.If``), containerize -> deploy to staging.

A rejected model is still registered (with a ``rejected`` stage event and its reasons) so that the
verdict is on record; it gets no image and is never staged. A run the merge trigger did not start (a notebook,
a direct ``kfp.local`` or KFP run: no run record for ``run_id``) registers an experiment, never staged.
"""

from kfp import dsl

from kfrelease.components.containerize import containerize
from kfrelease.components.deploy_staging import deploy_staging
from kfrelease.components.evaluate import evaluate
from kfrelease.components.register import register
from kfrelease.components.train import train
from kfrelease.components.validate_model import validate_model
from kfrelease.k8s.render.platform import KFP_SUBMITTER_STEP, UNTRUSTED, step_label
from kfrelease.training.resources import MODEL_DEFAULT, apply_step_policy


@dsl.pipeline(
    name="kfrelease-training",
    description="Train the model spec of a commit on the latest curated data, evaluate (Evidently), validate "
    "against thresholds and production, register V<tag>.<manual>.<auto>, containerize (ModelCar) and stage.",
)
def training_pipeline(
    spec_json: str,
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
    trained = train(spec_json=spec_json, dataset_version=dataset_version, run_id=run_id).set_display_name("train")
    evaluated = evaluate(
        spec_json=spec_json, run_id=run_id, model=trained.outputs["model"], test_data=trained.outputs["test_data"]
    ).set_display_name("evaluate")
    # the merged model code runs as an identity that can stop nothing (kfrelease.k8s.render.platform.step_identities)
    step_label(trained, UNTRUSTED)
    step_label(evaluated, UNTRUSTED)
    validated = validate_model(
        spec_json=spec_json,
        metrics_json=evaluated.outputs["Output"],
        run_id=run_id,
        train_data=trained.outputs["train_data"],
        test_data=trained.outputs["test_data"],
    ).set_display_name("validate")
    registered = register(
        spec_json=spec_json,
        commit=commit,
        dataset_version=trained.outputs["Output"],
        run_id=run_id,
        job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        metrics_json=evaluated.outputs["Output"],
        verdict=validated.outputs["verdict"],
        model=trained.outputs["model"],
        report=evaluated.outputs["report"],
    ).set_display_name("register")
    # The condition is on validate's single output: kfp.local 2.17 resolves only "<task>-Output" channels.
    with dsl.If(validated.outputs["Output"] == True, name="passed-validation"):
        image = containerize(
            spec_json=spec_json, version=registered.output, image_registry=image_registry, run_id=run_id
        ).set_display_name("containerize")
        staged = deploy_staging(
            spec_json=spec_json,
            version=registered.output,
            image=image.output,
            run_id=run_id,
            job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        ).set_display_name("deploy-staging")
        step_label(staged, KFP_SUBMITTER_STEP)  # the only step with a KFP API token: it hands over
    # Resources, retries (infrastructure causes only: see kfrelease.training.resources) and no caching.
    for task, step in (
        (trained, "train"),
        (evaluated, "evaluate"),
        (validated, "validate"),
        (registered, "register"),
        (image, "containerize"),
        (staged, "deploy-staging"),
    ):
        apply_step_policy(task, step, model if step in ("train", "evaluate") else None)
    return registered.output
