"""The training pipeline's hand-over to the release: ``start_release(settings, model, version)``.

Called by the training pipeline's ``deploy_staging`` component once a version is in staging, so that one
merge runs the whole path unattended. Two targets, one decision:

- **embedded stack** (default): it starts the release runner (``python -m kfrelease.release.embedded MODEL
  VERSION``, which runs the release pipeline on ``kfp.local``) as a detached process that outlives the
  caller; its log is ``$KFRELEASE_HOME/logs/release-<model>-<V>.log``;
- **cluster**: with ``KFRELEASE_KFP_HOST`` set (the pipeline pods' PodDefault sets it to Kubeflow's
  ``ml-pipeline`` service), it submits the release pipeline to the KFP API server as a new run
  (``kfrelease.kfp.submit``), authenticated with the pod's projected token.

Idempotent per version: a second call while (or after) that version's release runs starts nothing. On
the embedded stack the releases of one model queue: a version staged while an earlier one is still in
shadow or canary waits (``QUEUE_SECONDS`` at most) for it to end, then is released against the production
it leaves.
``KFRELEASE_AUTO_RELEASE=0`` turns the hand-over off (the release is then started with ``kfrelease release
run``). The rollout spec is, in this order: ``spec_path``; ``spec_yaml`` (the text of the model project's
``rollout.yaml`` at the merge that registered the version, ``kfrelease.training.rollout_file``; kept as
``releases/<model>/<V>.rollout.yaml`` locally); ``KFRELEASE_ROLLOUT_SPEC=FILE``; the packaged default.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from kfrelease.config import Settings, child_env, setting
from kfrelease.errors import KfreleaseError
from kfrelease.kfp.submit import submit_run
from kfrelease.registry import ModelRegistry
from kfrelease.stack.supervisor import process_identity, record_alive, start_detached
from kfrelease.storage import store_for
from kfrelease.training.rollout_file import checked
from kfrelease.training.run_records import step_record
from kfrelease.training.spec import ModelSpec
from kfrelease.training.steps import deploy_staging_step, is_release_run, step_store

log = logging.getLogger(__name__)


#: Longest a handed-over release waits for the model's running release to end.
QUEUE_SECONDS = 3600


def record_path(settings: Settings, model: str, version: str) -> Path:
    return settings.home / "releases" / model / f"{version}.json"


def log_path(settings: Settings, model: str, version: str) -> Path:
    return settings.home / "logs" / f"release-{model}-{version}.log"


def stage_and_hand_over(
    settings: Settings, spec: ModelSpec, version: str, image: str, run_id: str, job_name: str
) -> str:
    """The training pipeline's last step (``components/deploy_staging.py`` only calls this): put a validated
    version in staging and hand it over to its release (``start_release``, with the ``rollout.yaml`` of the
    merge that registered it). Only a run the merge trigger started stages (``is_release_run``); any other
    run is an experiment and changes nothing. ``image`` is what containerize pushed (for the log).

    Returns the version's stage: ``staging``; ``experiment``; or the stage it already had (``rejected`` for a
    version that failed validation: its step record says ``skipped``)."""
    if not is_release_run(step_store(settings), run_id, spec):
        log.info("%s %s: an experiment (not started by the merge trigger); not staged", spec.name, version)
        return "experiment"
    with step_record(run_id, "deploy-staging", store_for("pipeline", settings)) as extra:
        stage = deploy_staging_step(spec.name, version, run_id, settings, release=True)
        if stage != "staging":  # nothing staged: skipped, never green
            extra["skipped"] = f"{spec.name} {version} is {stage}; nothing staged"
        else:
            rollout = ModelRegistry(store_for("pipeline", settings)).get(spec.name, version).entry.get("rollout")
            release = start_release(settings, spec.name, version, spec_yaml=rollout)
            log.info("%s %s: release handed over: %s", spec.name, version, release or "off (KFRELEASE_AUTO_RELEASE=0)")
    log.info("%s %s: %s (%s)", spec.name, version, stage, image)
    return stage


def start_release(
    settings: Settings,
    model: str,
    version: str,
    spec_path: str | None = None,
    spec_yaml: str | None = None,
    requested: bool = False,
) -> dict | None:
    """Start the release of a staging version in the background; returns its record (None when the
    hand-over is turned off and ``requested`` is false: a person's ``kfrelease release run --background``
    starts it anyway). The record says pid and log; the outcome lands in the registry history. A release of
    the version that was started before is not started again: its record is returned with ``existing``."""
    if not requested and not setting("KFRELEASE_AUTO_RELEASE"):
        log.info(
            "KFRELEASE_AUTO_RELEASE=0: the release of %s %s is not started",
            model,
            version,
        )
        return None

    if spec_yaml and not spec_path:
        checked(spec_yaml, model, f"the rollout spec recorded with {model} {version}")
    else:
        spec_yaml = None
        spec_path = spec_path or setting("KFRELEASE_ROLLOUT_SPEC")
    host = setting("KFRELEASE_KFP_HOST")
    if host:
        return submit_release(host, model, version, spec_path, spec_yaml)
    path = record_path(settings, model, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return {**json.loads(path.read_text() or "{}"), "existing": True}
    if spec_yaml:  # the merge's rollout.yaml, kept beside the record (``kfrelease up`` resumes with it)
        kept = path.with_suffix(".rollout.yaml")
        kept.write_text(spec_yaml)
        spec_path = str(kept)
    out = log_path(settings, model, version)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = child_env(settings)
    # releases of one model queue: a version staged while an earlier one is still in shadow or canary is
    # released after it ends (against the production it leaves)
    argv = [sys.executable, "-m", "kfrelease.release.embedded", model, version, "--wait-for-lock", str(QUEUE_SECONDS)]
    argv += ["--spec", spec_path] if spec_path else []
    proc = start_detached(argv, out, env)
    record = {
        "model": model,
        "version": version,
        **process_identity(proc.pid),
        "log": str(out),
        "spec": spec_path,
    }
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh)
    log.info("release of %s %s started (pid %d, log %s)", model, version, proc.pid, out)
    return record


RELEASE_EXPERIMENT = "kfrelease-release"


def submit_release(
    host: str, model: str, version: str, spec_path: str | None = None, spec_yaml: str | None = None
) -> dict:
    """Submit the release pipeline for ``version`` to a KFP API server; the run name is derived from the
    version (``release-<model>-<V>``), so the Kubeflow UI shows which candidate each run releases."""
    from kfrelease.pipelines.release_pipeline import release_pipeline  # heavy: kfp

    spec_yaml = Path(spec_path).read_text() if spec_path else (spec_yaml or "")
    run_name = f"release-{model}-{version}"
    run_id = submit_run(
        host,
        release_pipeline,
        {"model": model, "version": version, "spec_yaml": spec_yaml},
        run_name=run_name,
        experiment=RELEASE_EXPERIMENT,
    )
    log.info("release of %s %s submitted to %s as run %s", model, version, host, run_id)
    return {"model": model, "version": version, "kfp_host": host, "kfp_run_id": run_id, "run_name": run_name}


def wait_release(
    settings: Settings,
    model: str,
    version: str,
    timeout: float = 600.0,
    poll: float = 1.0,
    on_event=None,
) -> str:
    """Wait until the release of ``version`` ends; returns its final stage (production, rejected, or staging
    when the release stopped without a verdict). ``on_event(event)`` sees each new history event."""
    registry = ModelRegistry(store_for("pipeline", settings))
    seen = 0
    record: dict = {}

    def new_events() -> list[dict]:
        nonlocal seen
        events = registry.history(model, version)
        for event in events[seen:]:
            if on_event:
                on_event(event)
        seen = len(events)
        return events

    def final_stage() -> str | None:
        nonlocal record
        events = new_events()
        stage = events[-1]["stage"] if events else None
        if stage in ("production", "rejected", "archived"):
            return stage
        path = record_path(settings, model, version)
        record = json.loads(path.read_text()) if path.exists() else {}
        if record.get("pid") and not _alive(record):
            time.sleep(poll)  # the last event may be written just before the process ends
            events = new_events()
            return events[-1]["stage"] if events else "unknown"
        return None

    stage = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(poll),
        retry=retry_if_result(lambda stage: stage is None),
        retry_error_callback=lambda _: None,
    )(final_stage)
    if stage is None:
        raise KfreleaseError(
            f"the release of {model} {version} did not end within {timeout:.0f} s; see {record.get('log', 'its log')}"
        )
    return stage


def _alive(record: dict) -> bool:
    try:  # reap the runner when this process started it (else it stays a zombie that looks alive)
        done, _ = os.waitpid(record["pid"], os.WNOHANG)
        if done:
            return False
    except ChildProcessError:
        pass
    return record_alive(record)
