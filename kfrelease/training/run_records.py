"""Run records of the training pipeline in the ``models`` bucket.

Layout::

    runs/<run_id>/run.json             immutable: commit, model, spec, trigger (If-None-Match: one per run id)
    runs/<run_id>/state.json           the run's state: running, succeeded, failed (written by the runner)
    runs/<run_id>/steps/<step>.json    each step's state, written by the step itself
    runs/<run_id>/evidence/evaluate.json   the evaluate step's evidence (kfrelease.training.evidence.keep_evidence)
    runs/<run_id>/evidence/split.json      the split step's decision (dataset version, champion, the champion
                                           files' sha256): the same

Every trusted step of a run with a record must be given the spec its ``run.json`` holds (``spec_json``:
``kfrelease.training.steps.check_run_spec``).

A run id is derived from what is trained (``train-<commit[:12]>`` for a merge), so a second trigger of
the same commit finds the existing record and returns that run instead of starting another.
"""

from __future__ import annotations

import contextlib
import logging
import re
import resource
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from kfrelease.errors import Conflict, KfreleaseError
from kfrelease.registry.lineage import now_iso
from kfrelease.storage import ObjectStore, store_for
from kfrelease.training.failures import cause_of, one_line, retryable

log = logging.getLogger(__name__)

BUCKET = "models"


@dataclass
class RunRecord:
    run_id: str
    record: dict  # run.json
    state: dict = field(default_factory=dict)  # state.json (empty if the runner has not written it yet)
    steps: dict = field(default_factory=dict)  # step -> {state, started_at, finished_at, error}
    created: bool = False  # True when this trigger created the run
    retried: bool = False  # True when this trigger started an interrupted run again

    @property
    def status(self) -> str:
        return self.state.get("state", "pending")

    def as_dict(self) -> dict:
        return {"run_id": self.run_id, **self.record, "state": self.state, "steps": self.steps, "created": self.created}


def _key(run_id: str, *parts: str) -> str:
    return "/".join(("runs", run_id, *parts))


#: what a run id looks like (``train-<sha12>``, ``auto-<model>-<V>-<data12>``, a KFP job name): one key segment
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")


def run_key(run_id: str, *parts: str) -> str:
    """The key of ``parts`` of run ``run_id``, for a trusted step that got ``run_id`` as a parameter: a run id is
    one key segment, never ``a/steps/b`` (which would land under ``runs/*/steps/*``, the one prefix of ``models``
    the untrusted steps' role may write: ``kfrelease.k8s.render.eks.untrusted_step_policy``)."""
    if not RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise KfreleaseError(f"{run_id!r} is not a run id (letters, digits, '.', '_', '-'); nothing was read")
    return _key(run_id, *parts)


def create_run(store: ObjectStore, run_id: str, record: dict) -> RunRecord:
    """Create the run's record; if it exists already, return the existing run (``created=False``)."""
    doc = {**record, "run_id": run_id, "created_at": now_iso()}
    try:
        store.put_json(BUCKET, _key(run_id, "run.json"), doc, if_none_match=True)
    except Conflict:
        existing = get_run(store, run_id)
        existing.created = False
        return existing
    return RunRecord(run_id, doc, created=True)


def get_run(store: ObjectStore, run_id: str) -> RunRecord:
    record = store.get_json(BUCKET, _key(run_id, "run.json"))
    state = store.get_json(BUCKET, _key(run_id, "state.json")) if store.stat(BUCKET, _key(run_id, "state.json")) else {}
    steps = {}
    for obj in store.iter(BUCKET, _key(run_id, "steps") + "/"):
        steps[obj.key.rsplit("/", 1)[-1].removesuffix(".json")] = store.get_json(BUCKET, obj.key)
    return RunRecord(run_id, record, state, steps)


def list_runs(store: ObjectStore) -> list[RunRecord]:
    """Every run, oldest first."""
    ids = [o.key.rstrip("/").split("/")[-1] for o in store.iter(BUCKET, "runs/", recursive=False)]
    runs = [get_run(store, i) for i in ids if store.stat(BUCKET, _key(i, "run.json"))]
    return sorted(runs, key=lambda r: r.record.get("created_at", ""))


def set_state(store: ObjectStore, run_id: str, state: str, **fields) -> dict:
    key = _key(run_id, "state.json")
    previous = store.get_json(BUCKET, key) if store.stat(BUCKET, key) else {}
    doc = {**previous, **fields, "state": state, "updated_at": now_iso()}
    store.put_json(BUCKET, key, doc)
    return doc


def get_step(store: ObjectStore, run_id: str, step: str) -> dict:
    key = _key(run_id, "steps", f"{step}.json")
    return store.get_json(BUCKET, key) if store.stat(BUCKET, key) else {}


def set_step(store: ObjectStore, run_id: str, step: str, state: str, **fields) -> None:
    key = _key(run_id, "steps", f"{step}.json")
    previous = store.get_json(BUCKET, key) if store.stat(BUCKET, key) else {}
    store.put_json(BUCKET, key, {**previous, **fields, "state": state})


class StepNotRetried(KfreleaseError):
    """A retried attempt of a step whose previous attempt failed for a cause that retrying cannot fix."""


def peak_rss_mb() -> float:
    """The peak resident memory of this process so far, in MB: ``VmHWM`` of /proc/self/status (the peak of
    this program's own memory; ``ru_maxrss`` would also count the parent's resident memory at fork, which
    Linux carries over exec), else ``ru_maxrss`` (KiB on Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@contextlib.contextmanager
def step_record(run_id: str, step: str, store: ObjectStore | None = None):
    """Record a pipeline step's state (running -> succeeded | skipped | failed, with the failure's cause and
    the step process's peak memory) when the run has a record. The block may set ``extra["skipped"]`` to
    why it did nothing (e.g. containerize for a version that was rejected): the step is then ``skipped``.

    KFP retries a failed step whatever the cause (see ``kfrelease.training.resources``): when the previous
    attempt of this step failed because of the model code or the data, this attempt fails at once with
    that reason instead of running the model code again."""
    if not run_id:
        yield {}
        return
    if store is None:
        store = store_for("pipeline")
    key = _key(run_id, "steps", f"{step}.json")
    previous = store.get_json(BUCKET, key) if store.stat(BUCKET, key) else {}
    attempt = int(previous.get("attempt", 0)) + 1
    if previous.get("state") == "failed" and previous.get("cause") and not retryable(previous["cause"]):
        reason = (
            f"{step} is not retried: its previous attempt failed because of the "
            f"{one_line(previous['cause'], previous.get('error', ''))}"
        )
        set_step(store, run_id, step, "failed", attempt=attempt, finished_at=now_iso(), not_retried=True)
        raise StepNotRetried(reason)
    set_step(store, run_id, step, "running", started_at=now_iso(), attempt=attempt, error=None, cause=None)
    extra: dict = {}
    try:
        yield extra
    except BaseException as exc:
        set_step(
            store,
            run_id,
            step,
            "failed",
            finished_at=now_iso(),
            error=f"{type(exc).__name__}: {exc}"[:500],
            cause=cause_of(exc),
            peak_rss_mb=peak_rss_mb(),
            **extra,
        )
        raise
    # a step that did nothing says so (``extra["skipped"]`` is why): it is recorded skipped, never succeeded
    set_step(
        store,
        run_id,
        step,
        "skipped" if extra.get("skipped") else "succeeded",
        finished_at=now_iso(),
        peak_rss_mb=peak_rss_mb(),
        **extra,
    )


def resume_or_run(run_id: str, step: str, outputs: dict[str, str], run, store: ObjectStore | None = None) -> dict:
    """Run an idempotent step, or, when an earlier attempt of the same run finished it and its output files
    are still there (a local run retried after an infrastructure failure), reuse them: copy the files to
    ``outputs`` and return the recorded result. ``run()`` returns a JSON-able result dict."""
    if run_id:
        if store is None:
            store = store_for("pipeline")
        key = _key(run_id, "steps", f"{step}.json")
        done = store.get_json(BUCKET, key) if store.stat(BUCKET, key) else {}
        kept = done.get("outputs") or {}
        if (
            done.get("state") == "succeeded"
            and set(kept) == set(outputs)
            and all(Path(p).is_file() for p in kept.values())
        ):
            for name, path in outputs.items():
                shutil.copyfile(kept[name], path)
            log.info("%s of run %s finished in an earlier attempt; its outputs are reused", step, run_id)
            return done["result"]
    with step_record(run_id, step, store) as extra:
        result = run()
        extra.update(result=result, outputs=dict(outputs))
    return result
