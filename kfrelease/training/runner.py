"""The detached local run of the training pipeline (started by ``trigger``; ``python -m ...runner RUN_ID``).

Runs the pipeline with ``kfp.local`` and records the run's state; steps record their own states.
"""

from __future__ import annotations

import logging
import sys
import traceback

from kfrelease.config import Settings
from kfrelease.lineage import now_iso
from kfrelease.training import runs
from kfrelease.training.steps import STEP_NAMES


def run(run_id: str, settings: Settings | None = None) -> dict:
    from kfrelease.kfp_runner import run_local
    from kfrelease.pipelines.training_pipeline import training_pipeline
    from kfrelease.storage import store_for

    settings = settings or Settings.from_env()
    store = store_for("pipeline", settings)
    record = runs.get_run(store, run_id)
    runs.set_state(store, run_id, "running", started_at=now_iso())
    try:
        task = run_local(settings, training_pipeline, spec_json=record.record["spec_json"],
                         commit=record.record["commit"], dataset_version=record.record.get("dataset_version", "latest"),
                         run_id=run_id)
        version = task.output
    except BaseException as exc:
        done = runs.get_run(store, run_id).steps
        for step in STEP_NAMES:
            if done.get(step, {}).get("state") == "running":
                runs.set_step(store, run_id, step, "failed", finished_at=now_iso())
        runs.set_state(store, run_id, "failed", finished_at=now_iso(), error=f"{type(exc).__name__}: {exc}"[:1000])
        raise
    done = runs.get_run(store, run_id).steps
    for step in STEP_NAMES:
        if step not in done:
            runs.set_step(store, run_id, step, "skipped")
    from kfrelease.registry import ModelRegistry

    mv = ModelRegistry(store).get(record.record["model"], version)
    return runs.set_state(store, run_id, "succeeded", finished_at=now_iso(), version=version,
                          verdict="passed" if mv.passed else "rejected", stage=mv.stage)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(sys.argv) != 2:
        sys.exit("usage: python -m kfrelease.training.runner RUN_ID")
    try:
        run(sys.argv[1])
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    main()
