from kfp.dsl import HTML, Dataset, Input, Metrics, Model

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def register(
    spec: dict,
    commit: str,
    dataset_version: str,
    run_id: str,
    job_name: str,
    metrics: Input[Metrics],
    evidence_digest: str,
    model: Input[Model],
    report: Input[HTML],
    holdout_predictions: Input[Dataset],
    onnx_model: Input[Model],
    booster_model: Input[Model],
) -> str:
    """Register the model as ``V<tag>.<manual>.<auto>`` (atomic; idempotent for the same definition and data).

    The verdict is decided again here from the trusted evidence (the same pure function as validate's): for a
    release run the evidence evaluate kept where no untrusted step writes (``steps.trusted_evidence``), which the
    ``Metrics`` file (read only under the digest evaluate returned) must equal; so no artifact or parameter a step
    could rewrite decides it. A model that failed validation is registered with a ``rejected`` stage event and its
    reasons.

    Args:
        spec: the model spec (``ModelSpec.to_dict()``: name, tag, fingerprint, input schema); for a release run it
            must be the one its run record holds (``steps.check_run_spec``: else nothing is registered).
        commit: the git commit the spec was read from; for a release run it must be the run record's.
        dataset_version: the curated dataset version it was trained on; for a release run it must be the one the
            kept evidence was computed on (``steps.trusted_lineage``: else nothing is registered).
        run_id: the trigger's run id (recorded as lineage; the KFP job name when empty).
        job_name: the KFP pipeline job name.
        metrics: evaluate's ``Metrics`` artifact; its file holds the evidence (metrics, the comparison with
            production, drift); for a release run only a cross-check of the evidence evaluate kept.
        evidence_digest: the evidence file's digest as evaluate returned it; a file with another digest is
            refused and nothing is registered.
        model: the fitted estimator (stored as bytes; never loaded here).
        report: the evaluation report (stored beside the version's artifacts).
        holdout_predictions: the held-out predictions evaluate joined (kept beside the model).
        onnx_model: the ONNX file evaluate verified (served when it is the fastest verified flavour).
        booster_model: the XGBoost or LightGBM model file evaluate verified (likewise).

    Returns:
        The registered version (or the existing one for the same tag, definition and data). A run the merge
        trigger did not start (no run record for ``run_id``: a notebook, a direct ``kfp.local`` or KFP run)
        registers an experiment (``E<tag>.<manual>.<auto>``), which is never containerized or staged.
    """
    from kfrelease.config import log_to_stderr
    from kfrelease.training.evidence import read_evidence
    from kfrelease.training.run_records import step_record
    from kfrelease.training.spec import ModelSpec
    from kfrelease.training.steps import is_release_run, register_step, step_store, validate_step

    log_to_stderr()
    model_spec = ModelSpec.from_dict(spec)
    with step_record(run_id, "register"):
        # a release run's spec must be its run record's (steps.check_run_spec: the parameter travels through MLMD)
        release = is_release_run(step_store(), run_id, model_spec)
        evidence = read_evidence(metrics.path, evidence_digest, run_id)
        out = register_step(
            model_spec,
            commit,
            dataset_version,
            run_id or job_name,
            model.path,
            evidence,
            validate_step(model_spec, evidence),
            release=release,
            report_path=report.path,
            keyed_path=holdout_predictions.path,
            onnx_path=onnx_model.path,
            booster_path=booster_model.path,
        )
    print(
        f"{model_spec.name} {out['version']} ({'new' if out['created'] else 'existing'}, "
        f"{'passed' if out['passed'] else 'rejected'}{'' if release else ', experiment'})"
    )
    return out["version"]
