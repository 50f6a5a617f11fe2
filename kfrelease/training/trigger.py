"""The merge trigger: what CI runs on every merge to main (``kfrelease trigger --commit SHA``).

It reads the model spec at that commit and starts the training pipeline:

- locally (default): a detached background process (``kfrelease.training.execution``) runs the pipeline with
  ``kfp.local``; the run is recorded in the ``models`` bucket (``runs/<run_id>/``) and its log is
  ``$KFRELEASE_HOME/runs/<run_id>.log``;
- with ``kfp_host``: the compiled pipeline package is submitted with ``kfp.Client(host).
  create_run_from_pipeline_package`` (KFP SDK), and the KFP run id is recorded.

The run id is derived from the commit (``train-<sha[:12]>``), and the record is created with
``If-None-Match``: a second trigger of the same commit returns the first run, unless that run was
interrupted by an infrastructure cause (it failed so, or its runner is gone): then it is started again
under the same run id. A run that failed because of its model code or data is returned as it is, with
the reason. No command stops a run. Local runs are admitted by ``admission`` and retried by ``execution``.
``auto=True`` retrains the production model's definition on the latest curated data (new data or an
alert); its run id is derived from the production version and the data version.

The trigger never imports or executes the project's code (its ``build:`` file, or a module its estimator path
names outside the estimator libraries the platform installs): it checks the spec statically
(``ModelSpec.check_definition``) and leaves building the estimator to the pipeline's untrusted ``train`` step,
whose failure (a build function that raises) is recorded in the run with its cause. On CI the trigger runs
with the CI role's AWS credentials and the ``kfrelease-ci`` KFP token (``ci/github/kfrelease-train.yaml``),
which may start any pipeline: merged code run here could use them. Locally there is no such credential, but the
local path checks the same way, so a spec is refused (or started) alike on both.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from pathlib import Path

from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from kfrelease.config import Settings, child_env
from kfrelease.errors import Conflict, KfreleaseError
from kfrelease.images.project import pinned_project_image
from kfrelease.kfp.submit import submit_run
from kfrelease.registry import ModelRegistry
from kfrelease.registry.lineage import now_iso
from kfrelease.stack.supervisor import record_alive, start_detached
from kfrelease.storage import store_for
from kfrelease.training import run_records
from kfrelease.training.failures import retryable
from kfrelease.training.outcome import run_outcome
from kfrelease.training.resources import pipeline_arguments
from kfrelease.training.rollout_file import rollout_at_commit
from kfrelease.training.spec import (
    SPEC_FILE,
    ModelSpec,
    load_project_at_commit,
    parse_spec,
)
from kfrelease.training.steps import STEP_NAMES

log = logging.getLogger(__name__)

ROLE = "pipeline"
EXPERIMENT = "kfrelease-training"


def log_path(settings: Settings, run_id: str) -> Path:
    return settings.home / "runs" / f"{run_id}.log"


def _store(settings: Settings):
    return store_for(ROLE, settings)


def _auto_target(settings: Settings, model: str | None) -> tuple[ModelSpec, str, str, str, str | None]:
    """(spec, commit, dataset version, production version, its rollout spec text) of an automatic retrain."""
    from kfrelease.data.publish import get_version  # heavy: pandas

    store = _store(settings)
    reg = ModelRegistry(store)
    if model is None:
        names = reg.models()
        if len(names) != 1:
            raise KfreleaseError(f"auto retrain needs the model name (registered models: {', '.join(names) or 'none'})")
        model = names[0]
    mv = reg.current(model, "production")
    if mv is None:
        raise KfreleaseError(f"model {model!r} has no production version to retrain; promote one first")
    spec_doc = mv.entry.get("spec")
    if not spec_doc:
        raise KfreleaseError(f"{model} {mv.version} has no recorded spec; retrain it from its commit instead")
    spec = parse_spec(spec_doc["text"], f"{model} {mv.version} spec", spec_doc.get("code") or {})
    dataset_version = get_version(store, spec.dataset).version
    return spec, mv.commit, dataset_version, mv.version, mv.entry.get("rollout")


def trigger(
    settings: Settings,
    commit: str | None,
    repo: str | Path | None = ".",
    kfp_host: str | None = None,
    auto: bool = False,
    reason: str = "merge to main",
    model: str | None = None,
    spec_file: str = SPEC_FILE,
    dataset_version: str = "latest",
) -> run_records.RunRecord:
    """Start the training pipeline for a commit (or an automatic retrain); idempotent per run id."""
    if auto:
        spec, commit, dataset_version, prod_version, rollout_yaml = _auto_target(settings, model)
        run_id = f"auto-{spec.name}-{prod_version}-{dataset_version[:12]}"
        source = {"production_version": prod_version}
    else:
        if not commit:
            raise KfreleaseError("give the merged commit: kfrelease trigger --commit SHA [--repo PATH]")
        spec, commit = load_project_at_commit(repo or ".", commit, spec_file)
        # unknown estimator / bad hyper-parameter / a build file that does not parse: refuse before any run
        # exists, without running the project's code (see the module docstring)
        spec.check_definition()
        # the project's rollout.yaml travels with the merge; a bad one is refused before any run exists
        rollout_yaml = rollout_at_commit(repo or ".", commit, spec_file, spec.name)
        run_id = f"train-{commit[:12]}"
        source = {"repo": str(Path(repo or ".").resolve())}
    if kfp_host:
        pinned_project_image()  # a cluster run needs KFRELEASE_IMAGE by digest: refuse before any run exists
    store = _store(settings)
    from kfrelease.data.publish import get_version  # heavy: pandas
    from kfrelease.training.core import check_schema  # heavy: pandas

    # unknown dataset (version), a feature or target it lacks or cannot train: refuse before any run exists
    dv = get_version(store, spec.dataset, dataset_version)
    if not auto:
        check_schema(spec, dv.manifest, dv.version)
    # the same definition already registered on this data (a thresholds-only merge, a re-merge): nothing to train
    existing = ModelRegistry(store).existing(spec.name, spec.tag, spec.fingerprint, dv.version)
    record = run_records.create_run(
        store,
        run_id,
        {
            **source,
            "commit": commit,
            "model": spec.name,
            "tag": spec.tag,
            "spec_fingerprint": spec.fingerprint,
            "spec_json": spec.to_json(),
            "dataset": spec.dataset,
            "dataset_version": dataset_version,
            "auto": auto,
            "reason": reason,
            "rollout_yaml": rollout_yaml,
            "target": kfp_host or "local",
        },
    )
    if not record.created:
        if not kfp_host and retry_interrupted(settings, store, record):
            return record
        log.info("run %s exists already (%s); not starting another", run_id, record.status)
        return record
    if existing is not None:
        record.state = finish_without_training(store, record, spec, existing)
        return record
    try:
        if kfp_host:
            kfp_run = submit_to_kfp(kfp_host, spec, commit, dataset_version, run_id)
            record.state = run_records.set_state(store, run_id, "submitted", kfp_run_id=kfp_run, kfp_host=kfp_host)
        else:
            # queued before the runner starts: the runner writes its own pid and states from then on
            record.state = run_records.set_state(store, run_id, "queued", log=str(log_path(settings, run_id)))
            start_local(settings, run_id)
    except Exception as exc:
        record.state = run_records.set_state(store, run_id, "failed", error=f"could not start: {exc}"[:500])
        raise
    return record


def finish_without_training(store, record: run_records.RunRecord, spec: ModelSpec, mv) -> dict:
    """Record a run that needs no training: the same definition on the same data is ``mv`` already. Its
    outcome (``thresholds-only`` or ``unchanged``, ``kfrelease.training.outcome``) is known now, before any step
    runs; every step is ``skipped`` with that line, and no runner is started."""
    result = run_outcome(record.run_id, spec.text, mv)
    for step in STEP_NAMES:
        run_records.set_step(store, record.run_id, step, "skipped", skipped=result.line)
    log.info("run %s: %s", record.run_id, result.line)
    return run_records.set_state(
        store,
        record.run_id,
        "succeeded",
        finished_at=now_iso(),
        version=mv.version,
        verdict="passed" if mv.passed else "rejected",
        stage=mv.stage,
        trained=False,
        **result.as_state(),
    )


def start_auto_revision(settings: Settings, model: str, reason: str) -> run_records.RunRecord:
    """Start an auto revision of ``model``: its production definition retrained on the latest curated
    version of its dataset, registered as ``V<tag>.<manual>.<auto+1>`` and then staged like any merge.

    The one entry point for automatic retrains (new data, an alert); ``reason`` is recorded in the run.
    Idempotent per (production version, data version): a second call returns the first run. Rate limits
    are the caller's (``kfrelease.monitoring.newdata`` for new data)."""
    return trigger(settings, None, None, auto=True, reason=reason, model=model)


ACTIVE = ("queued", "running", "retrying")
#: A runner that has not written its pid yet (it is importing) is given this long before it counts as gone.
STARTING_GRACE_SECONDS = 60.0


def interruption(record: run_records.RunRecord) -> str | None:
    """Why a local run should be started again, or None: it failed of an infrastructure cause, or it is
    recorded as active while its runner process is gone (killed, or the machine restarted)."""
    st = record.state
    if record.status == "failed" and retryable(st.get("cause")):
        return st.get("error") or "infrastructure failure"
    if record.status in ACTIVE:
        if not st.get("pid"):
            updated = dt.datetime.fromisoformat(st.get("updated_at") or record.record["created_at"])
            if (dt.datetime.now(dt.UTC) - updated).total_seconds() < STARTING_GRACE_SECONDS:
                return None
            return "infrastructure: the runner never started (machine restart?)"
        if not record_alive(st):
            return f"infrastructure: the runner (pid {st['pid']}) is gone while the run was {record.status}"
    return None


def retry_interrupted(settings: Settings, store, record: run_records.RunRecord) -> bool:
    """Start an interrupted run again (same run id, its attempts go on counting); False if it was not."""
    why = interruption(record)
    if why is None:
        return False
    info = store.stat(run_records.BUCKET, f"runs/{record.run_id}/state.json")
    doc = {
        **record.state,
        "state": "queued",
        "retried_because": why,
        "error": None,
        "cause": None,
        "pid": None,
        "updated_at": now_iso(),
    }
    try:  # two triggers at once restart it once
        store.put_json(
            run_records.BUCKET, f"runs/{record.run_id}/state.json", doc, if_match=info.etag if info else None
        )
    except Conflict:
        return False
    record.state = doc
    record.retried = True
    start_local(settings, record.run_id)
    log.info("run %s started again: %s", record.run_id, why)
    return True


def resume_interrupted(settings: Settings) -> list[run_records.RunRecord]:
    """Start again every local run interrupted by an infrastructure cause (after a machine restart)."""
    store = _store(settings)
    resumed = []
    for record in run_records.list_runs(store):
        if record.record.get("target", "local") == "local" and retry_interrupted(settings, store, record):
            resumed.append(record)
    return resumed


def start_local(settings: Settings, run_id: str) -> int:
    """Start the detached local runner (own session: it outlives the caller and ignores its Ctrl-C)."""
    path = log_path(settings, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    env = child_env(settings)
    proc = start_detached([sys.executable, "-m", "kfrelease.training.execution", run_id], path, env)
    log.info("run %s started locally (pid %d, log %s)", run_id, proc.pid, path)
    return proc.pid


def submit_to_kfp(host: str, spec: ModelSpec, commit: str, dataset_version: str, run_id: str) -> str:
    """Submit the compiled training pipeline to a KFP API server as the CI service account; returns the KFP
    run id (``kfrelease.kfp.submit``)."""
    from kfrelease.pipelines.training_pipeline import training_pipeline  # heavy: kfp

    arguments = {
        "spec": spec.to_dict(),
        "commit": commit,
        "dataset_version": dataset_version,
        "run_id": run_id,
        **pipeline_arguments(spec.resources),
    }
    return submit_run(host, training_pipeline, arguments, run_name=run_id, experiment=EXPERIMENT)


def wait(settings: Settings, run_id: str, timeout: float = 600, poll: float = 1.0) -> run_records.RunRecord:
    """Wait until a local run has finished (succeeded or failed), polling every ``poll`` s; raises on timeout."""
    store = _store(settings)

    def ended() -> tuple[run_records.RunRecord, bool]:
        record = run_records.get_run(store, run_id)
        if record.status in ("succeeded", "failed"):
            return record, True
        if record.status in ACTIVE and record.state.get("pid") and interruption(record):
            record = run_records.get_run(store, run_id)  # it may have just written its final state
            return record, True  # finished, or interrupted (its record says how)
        return record, False

    record, done = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(poll),
        retry=retry_if_result(lambda outcome: not outcome[1]),
        retry_error_callback=lambda state: state.outcome.result(),
    )(ended)
    if not done:
        raise KfreleaseError(f"run {run_id} still {record.status} after {timeout:.0f} s; see `kfrelease runs`")
    return record
