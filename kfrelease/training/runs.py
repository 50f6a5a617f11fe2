"""Run records of the training pipeline in the ``models`` bucket.

Layout::

    runs/<run_id>/run.json             immutable: commit, model, spec, trigger (If-None-Match: one per run id)
    runs/<run_id>/state.json           the run's state: running, succeeded, failed (written by the runner)
    runs/<run_id>/steps/<step>.json    each step's state, written by the step itself

A run id is derived from what is trained (``train-<commit[:12]>`` for a merge), so a second trigger of
the same commit finds the existing record and returns that run instead of starting another.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

from kfrelease.errors import Conflict
from kfrelease.lineage import now_iso
from kfrelease.storage import ObjectStore

log = logging.getLogger(__name__)

BUCKET = "models"


@dataclass
class RunRecord:
    run_id: str
    record: dict  # run.json
    state: dict = field(default_factory=dict)  # state.json (empty if the runner has not written it yet)
    steps: dict = field(default_factory=dict)  # step -> {state, started_at, finished_at, error}
    created: bool = False  # True when this trigger created the run

    @property
    def status(self) -> str:
        return self.state.get("state", "pending")

    def as_dict(self) -> dict:
        return {"run_id": self.run_id, **self.record, "state": self.state, "steps": self.steps, "created": self.created}


def _key(run_id: str, *parts: str) -> str:
    return "/".join(("runs", run_id, *parts))


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


def set_step(store: ObjectStore, run_id: str, step: str, state: str, **fields) -> None:
    key = _key(run_id, "steps", f"{step}.json")
    previous = store.get_json(BUCKET, key) if store.stat(BUCKET, key) else {}
    store.put_json(BUCKET, key, {**previous, **fields, "state": state})


@contextlib.contextmanager
def step_record(run_id: str, step: str, store: ObjectStore | None = None):
    """Record a pipeline step's state (running -> succeeded | failed) when the run has a record."""
    if not run_id:
        yield
        return
    if store is None:
        from kfrelease.storage import store_for

        store = store_for("pipeline")
    set_step(store, run_id, step, "running", started_at=now_iso())
    try:
        yield
    except BaseException as exc:
        set_step(store, run_id, step, "failed", finished_at=now_iso(), error=f"{type(exc).__name__}: {exc}"[:500])
        raise
    set_step(store, run_id, step, "succeeded", finished_at=now_iso())
