"""The training pipeline's steps as plain functions over files and values.

The KFP components (``kfrelease.components.train`` ...) call exactly these, with their artifact paths;
``run_inline`` calls them in one process in the same order (tests, benchmark, quick local runs).
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from kfrelease.config import Settings
from kfrelease.registry.artifact import DEFAULT_FLAVOUR, flavour_named
from kfrelease.training.spec import ModelSpec

log = logging.getLogger(__name__)

ROLE = "pipeline"
PREDICTION = "prediction"
STEP_NAMES = ("train", "evaluate", "validate", "register", "containerize", "deploy-staging")


def step_role() -> str:
    """The access-policy role the training steps run as: ``pipeline``, unless ``KFRELEASE_ROLE`` says
    otherwise. An experiment submitted from a notebook runs as ``data-scientist``
    (``kfrelease.experiments.submit_experiment``; on the cluster the notebook's own IRSA role), which may
    register experiments and write nothing of the released registry: it can stage nothing, by identity."""
    from kfrelease.config import setting

    return setting("KFRELEASE_ROLE") or ROLE


def step_store(settings: Settings | None = None):
    from kfrelease.storage import store_for

    return store_for(step_role(), settings)


def check_columns(spec: ModelSpec, dv) -> None:
    """Refuse a spec whose features or target the curated version does not have (``DataValidationError``
    naming them and the columns it has): found before training, so the trigger writes no run for it."""
    from kfrelease.errors import DataValidationError

    known = [c["name"] for c in dv.manifest["columns"]]
    missing = [c for c in (*spec.features, spec.target) if c not in known]
    if missing:
        kind = "target" if missing == [spec.target] else "feature(s)"
        raise DataValidationError(
            f"model spec {spec.name!r}: {kind} {missing} not in dataset {spec.dataset!r} version {dv.version}; "
            f"its columns are {known}; fix features/target in model.yaml",
            [{"column": c, "problem": "missing"} for c in missing],
        )


def train_step(
    spec: ModelSpec,
    dataset_version: str,
    model_path: str,
    train_path: str,
    test_path: str,
    settings: Settings | None = None,
) -> dict:
    """Load the curated version (``latest`` resolves now), check, split, fit; write model + split."""
    from kfrelease.data.publish import get_version, load_dataset
    from kfrelease.faults import crash_point
    from kfrelease.training.core import train
    from kfrelease.training.memory import check_fits

    spec.build_estimator()  # unknown estimator / bad hyper-parameter: fail before reading any data
    store = step_store(settings)
    dv = get_version(store, spec.dataset, dataset_version or "latest")
    columns = [*spec.features, spec.target]
    check_columns(spec, dv)
    check_fits(spec, dv, columns)  # too large for this step: fail now, with the size and the limit
    known = {c["name"] for c in dv.manifest["columns"]}
    df, dv = load_dataset(store, spec.dataset, dv.version, columns=[c for c in columns if c in known])
    crash_point("train.loaded")
    result = train(spec, df, dv.version)
    flavour_named(DEFAULT_FLAVOUR).dump(result.model, model_path)
    result.train.to_parquet(train_path, index=False)
    result.test.to_parquet(test_path, index=False)
    return {
        "dataset_version": dv.version,
        "spec_fingerprint": spec.fingerprint,
        "train_rows": len(result.train),
        "test_rows": len(result.test),
        "fit_seconds": result.fit_seconds,
    }


def evaluate_step(spec: ModelSpec, model_path: str, test_path: str, html_path: str | None = None) -> dict:
    """Evidently regression report on the held-out split; returns metrics, writes the HTML report."""
    import pandas as pd

    from kfrelease.evaluation import regression_report
    from kfrelease.training.core import predict

    model = flavour_named(DEFAULT_FLAVOUR).load(model_path)
    test = pd.read_parquet(test_path)
    test[PREDICTION] = predict(model, test, spec.features)
    metrics, html = regression_report(test, spec.target, PREDICTION, list(spec.features))
    if html_path:
        Path(html_path).write_text(html, encoding="utf-8")
    return metrics


def validate_step(
    spec: ModelSpec, metrics: dict, train_path: str, test_path: str, settings: Settings | None = None
) -> dict:
    """The verdict: thresholds, champion on the same test rows, drift against the champion's data."""
    import pandas as pd

    from kfrelease.registry import ModelRegistry
    from kfrelease.training.validate import load_champion, validate

    store = step_store(settings)
    champion = load_champion(ModelRegistry(store), store, spec)
    verdict = validate(spec, metrics, pd.read_parquet(test_path), pd.read_parquet(train_path), champion)
    return verdict.as_dict()


def is_release_run(store, run_id: str, spec: ModelSpec) -> bool:
    """Whether a pipeline run may release: only a run the merge trigger (or the automatic retrain) started,
    i.e. one with a run record (``kfrelease.training.run_records``, written by the trigger as the ``pipeline``
    identity) for this model and definition. A notebook or any other direct run is an experiment."""
    from kfrelease.training import run_records

    if not run_id or store.stat(run_records.BUCKET, f"runs/{run_id}/run.json") is None:
        return False
    record = store.get_json(run_records.BUCKET, f"runs/{run_id}/run.json")
    return record.get("model") == spec.name and record.get("spec_fingerprint") == spec.fingerprint


def register_step(
    spec: ModelSpec,
    commit: str,
    dataset_version: str,
    run_id: str,
    model_path: str,
    metrics: dict,
    verdict: dict,
    settings: Settings | None = None,
    release: bool = True,
    report_path: str | None = None,
) -> dict:
    """Register under the next version (or return the existing one); rejected models are recorded as such.

    ``release=False`` (an experiment) registers in the ``experiments`` space of the registry: the same entry,
    compared with production the same way, but with numbers of its own and never staged. The evaluation
    report (``report_path``) is stored beside the version's artifacts (``kfrelease.results``)."""
    from kfrelease.registry import EXPERIMENTS, ModelRegistry, TrainedModel
    from kfrelease.results import evaluation_report_key
    from kfrelease.training.rollout_file import rollout_of_run

    store = step_store(settings)
    rollout = rollout_of_run(store, run_id) if release else None  # the merge's rollout.yaml, for its release
    registry = ModelRegistry(store, "registry" if release else EXPERIMENTS)
    reg = registry.register(
        TrainedModel(
            name=spec.name,
            tag=spec.tag,
            spec_fingerprint=spec.fingerprint,
            dataset=spec.dataset,
            dataset_version=dataset_version,
            commit=commit,
            run_id=run_id,
            metrics=metrics,
            verdict=verdict,
            input_schema=spec.input_schema,
            target=spec.target,
            model_bytes=Path(model_path).read_bytes(),
            extra={
                "spec": {"text": spec.text, "code": spec.code},
                "split": {"test_size": spec.split.test_size, "seed": spec.split.seed},
                "experiment": not release,
                **({"rollout": rollout} if rollout else {}),
            },
        )
    )
    mv = reg.version
    key = evaluation_report_key(registry.artifact_prefix(spec.name, mv.version))
    if report_path and Path(report_path).is_file() and store.stat(registry.bucket, key) is None:
        store.put_bytes(registry.bucket, key, Path(report_path).read_bytes(), content_type="text/html")
    return {
        "version": mv.version,
        "created": reg.created,
        "passed": mv.passed,
        "stage": mv.stage,
        "experiment": not release,
    }


def not_staged_reason(mv) -> str | None:
    """Why the version ``mv`` a run ended with gets no image and no staging, or None when it does."""
    if mv.passed:
        return None
    by = mv.entry.get("run_id")
    return (
        f"{mv.name} {mv.version} is rejected by validation (its recorded verdict{f', run {by}' if by else ''}); "
        "nothing to build or stage"
    )


def containerize_step(model: str, version: str, settings: Settings | None = None, registry: str = "") -> dict:
    """Build and push the version's ModelCar image; record ref and digest in its entry (once)."""
    from kfrelease.faults import crash_point
    from kfrelease.oci import containerize, image_registry
    from kfrelease.registry import ModelRegistry

    settings = settings or Settings.from_env()
    crash_point("containerize.start")
    reg = ModelRegistry(step_store(settings))
    mv = reg.get(model, version)
    if not mv.passed:  # an existing version returned by an idempotent re-run may be a rejected one
        log.info("%s; no image is built", not_staged_reason(mv))
        return {}
    if mv.entry.get("image"):
        return mv.entry["image"]
    with tempfile.TemporaryDirectory(prefix="kfrelease-modelcar-") as tmp:
        model_dir = reg.download(model, version, tmp)
        image = containerize(
            model_dir,
            registry or image_registry(settings),
            f"kfrelease/{model}",
            version,
            {
                "org.opencontainers.image.title": model,
                "org.opencontainers.image.version": version,
                "kfrelease.commit": mv.commit or "",
                "kfrelease.dataset_version": mv.dataset_version,
            },
        )
    reg.set_image(model, version, image.ref, image.digest)
    return image.as_dict()


def deploy_staging_step(model: str, version: str, run_id: str, settings: Settings | None = None) -> str:
    """Mark the version as the staging candidate (idempotent: no second event if it already is)."""
    from kfrelease.registry import ModelRegistry

    reg = ModelRegistry(step_store(settings))
    mv = reg.get(model, version)
    if not mv.passed:
        return mv.stage or "rejected"
    if mv.stage is not None:  # already staged (or promoted/archived since): a re-run changes nothing
        return mv.stage
    reg.set_stage(
        model,
        version,
        "staging",
        "training-pipeline",
        f"passed validation in run {run_id}",
        {"run_id": run_id, "metrics": mv.metrics, "image": mv.entry.get("image")},
    )
    return "staging"


@dataclass
class InlineRun:
    run_id: str
    dataset_version: str = ""
    metrics: dict = field(default_factory=dict)
    verdict: dict = field(default_factory=dict)
    registration: dict = field(default_factory=dict)
    image: dict | None = None
    stage: str | None = None
    seconds: dict = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.registration.get("version", "")


def run_inline(
    spec: ModelSpec,
    commit: str,
    dataset_version: str = "latest",
    run_id: str | None = None,
    settings: Settings | None = None,
    containerize: bool = True,
    release: bool = True,
) -> InlineRun:
    """The training pipeline's steps in this process (same functions, same order, same conditions), as the
    trigger's run does them (``release=True``: staged when it passed) or as an experiment (never staged)."""
    import time

    settings = settings or Settings.from_env()
    run = InlineRun(run_id or f"inline-{uuid.uuid4().hex[:12]}")
    with tempfile.TemporaryDirectory(prefix="kfrelease-train-") as tmp:
        model_file = flavour_named(DEFAULT_FLAVOUR).file
        p = {k: str(Path(tmp) / k) for k in (model_file, "train.parquet", "test.parquet", "report.html")}

        def timed(name, fn, *args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            run.seconds[name] = time.perf_counter() - start
            return out

        trained = timed(
            "train", train_step, spec, dataset_version, p[model_file], p["train.parquet"], p["test.parquet"], settings
        )
        run.dataset_version = trained["dataset_version"]
        run.metrics = timed("evaluate", evaluate_step, spec, p[model_file], p["test.parquet"], p["report.html"])
        run.verdict = timed(
            "validate", validate_step, spec, run.metrics, p["train.parquet"], p["test.parquet"], settings
        )
        run.registration = timed(
            "register",
            register_step,
            spec,
            commit,
            run.dataset_version,
            run.run_id,
            p[model_file],
            run.metrics,
            run.verdict,
            settings,
            release,
            p["report.html"],
        )
        if run.registration["passed"] and release:
            if containerize:
                run.image = timed("containerize", containerize_step, spec.name, run.version, settings)
            run.stage = timed("deploy-staging", deploy_staging_step, spec.name, run.version, run.run_id, settings)
    return run
