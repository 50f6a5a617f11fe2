"""The training pipeline, run on every merge to main: split (trusted) -> train and score-champion (untrusted:
they run model code, see only the training rows and the held-out features) -> evaluate -> validate -> register
(trusted: labels, metrics, verdict), then, only when the model passed validation (``dsl.If``), containerize ->
deploy to staging.

A rejected model is still registered (with a ``rejected`` stage event and its reasons) so that the
verdict is on record; it gets no image and is never staged. A run the merge trigger did not start (a notebook,
a direct ``kfp.local`` or KFP run: no run record for ``run_id``) registers an experiment, never staged.
"""

from kfp import dsl

from kfrelease.components.containerize import containerize
from kfrelease.components.deploy_staging import deploy_staging
from kfrelease.components.evaluate import evaluate
from kfrelease.components.register import register
from kfrelease.components.score_champion import score_champion
from kfrelease.components.split import split
from kfrelease.components.train import train
from kfrelease.components.validate_model import validate_model
from kfrelease.k8s.render.platform import KFP_SUBMITTER_STEP, UNTRUSTED, step_label
from kfrelease.training.resources import MODEL_DEFAULT, MODEL_STEPS, apply_step_policy


@dsl.pipeline(
    name="kfrelease-training",
    description="Split the latest curated data (trusted), train the model spec of a commit and predict the held-out "
    "rows (untrusted), score production on them (untrusted), evaluate (trusted: labels, metrics, Evidently, paired "
    "test), validate, register V<tag>.<manual>.<auto>, containerize (ModelCar) and stage.",
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
    data = split(spec_json=spec_json, dataset_version=dataset_version, run_id=run_id).set_display_name("split")
    trained = train(
        spec_json=spec_json,
        run_id=run_id,
        train_data=data.outputs["train_data"],
        holdout_features=data.outputs["holdout_features"],
    ).set_display_name("train")
    # production's model runs in a pod of its own, after the candidate's has ended (it cannot touch its outputs)
    scored = (
        score_champion(
            run_id=run_id,
            champion_model=data.outputs["champion_model"],
            holdout_features=data.outputs["holdout_features"],
        )
        .set_display_name("score-champion")
        .after(trained)
    )
    # the merged model code runs as an identity that can stop nothing (kfrelease.k8s.render.platform.step_identities)
    step_label(trained, UNTRUSTED)
    step_label(scored, UNTRUSTED)
    evaluated = evaluate(
        spec_json=spec_json,
        run_id=run_id,
        dataset_version=data.outputs["dataset_version"],
        champion=data.outputs["champion"],
        champion_note=data.outputs["champion_note"],
        train_claims=trained.outputs["Output"],
        predictions=trained.outputs["predictions"],
        champion_predictions=scored.outputs["predictions"],
        onnx_model=trained.outputs["onnx_model"],
        booster_model=trained.outputs["booster_model"],
    ).set_display_name("evaluate")
    validated = validate_model(
        spec_json=spec_json, evidence_json=evaluated.outputs["Output"], run_id=run_id
    ).set_display_name("validate")
    registered = register(
        spec_json=spec_json,
        commit=commit,
        dataset_version=data.outputs["dataset_version"],
        run_id=run_id,
        job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        evidence_json=evaluated.outputs["Output"],
        model=trained.outputs["model"],
        report=evaluated.outputs["report"],
        holdout_predictions=evaluated.outputs["holdout_predictions"],
        onnx_model=trained.outputs["onnx_model"],
        booster_model=trained.outputs["booster_model"],
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
    # Resources, retries (infrastructure causes only: see kfrelease.training.resources), no caching, and no
    # pickle loads outside the untrusted steps.
    for task, step in (
        (data, "split"),
        (trained, "train"),
        (scored, "score-champion"),
        (evaluated, "evaluate"),
        (validated, "validate"),
        (registered, "register"),
        (image, "containerize"),
        (staged, "deploy-staging"),
    ):
        apply_step_policy(task, step, model if step in MODEL_STEPS else None)
    return registered.output
