"""The detached local execution of a training run: ``python -m kfrelease.training.execution RUN_ID``, started
by ``trigger``.

1. Admission: the run waits (``queued``) for one of the machine's run slots (``admission``).
2. It runs the pipeline with ``kfp.local``; steps record their own states, causes and peak memory.
3. Each step is retried in place by the compiled retry policy (``kfp.local`` honours ``set_retry`` as
   Argo does; a retry of a model-code or data failure fails at once, see ``run_records.step_record``).
4. When the pipeline still fails, the failure is classified (``failures``): an infrastructure cause (a
   step killed by a signal or the out-of-memory killer, the object store unavailable) gets up to
   ``MAX_ATTEMPTS`` attempts of the whole run with a backoff, resuming from the first unfinished step (a
   finished ``train`` is reused); a failure of the model code or the data ends the run at once,
   ``failed`` with the reason in one line. ``kfrelease trigger`` on the commit retries an infrastructure
   failure again later.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback

from kfrelease.config import Settings
from kfrelease.lineage import now_iso
from kfrelease.training import run_records
from kfrelease.training.failures import INFRASTRUCTURE, cause_of, one_line, retryable
from kfrelease.training.steps import STEP_NAMES

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2
BACKOFF_SECONDS = (1.0, 10.0)  # tenacity wait_exponential: min, max


class AttemptFailed(Exception):
    def __init__(self, cause: str, error: str):
        super().__init__(error)
        self.cause, self.error = cause, error


def process_identity(pid: int | None = None) -> dict:
    """pid and its start time: a pid reused after a restart is not mistaken for the runner."""
    import psutil

    pid = pid or os.getpid()
    return {"pid": pid, "pid_started": psutil.Process(pid).create_time()}


def runner_alive(state: dict) -> bool:
    import psutil

    pid = state.get("pid")
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = state.get("pid_started")
        return started is None or abs(proc.create_time() - float(started)) < 1.0
    except psutil.Error:
        return False


def _failure_of_attempt(store, run_id: str, attempt_started: str, exc: BaseException) -> tuple[str, str]:
    """(cause, error) of a failed attempt, from the steps' own records; a step left 'running' was killed."""
    for step in STEP_NAMES:
        st = run_records.get_step(store, run_id, step)
        if (st.get("started_at") or "") < attempt_started:
            continue
        if st.get("state") == "running":
            error = (
                f"step {step} was killed before it could record anything (a signal or the out-of-memory "
                f"killer; peak memory unknown)"
            )
            run_records.set_step(
                store, run_id, step, "failed", finished_at=now_iso(), error=error, cause=INFRASTRUCTURE
            )
            return INFRASTRUCTURE, error
        if st.get("state") == "failed":
            return st.get("cause") or cause_of(exc), f"step {step}: {st.get('error', '')}"
    return cause_of(exc), f"{type(exc).__name__}: {exc}"


def _attempt(settings: Settings, store, record: run_records.RunRecord, attempt: int) -> dict:
    from kfrelease.kfp_runner import run_local
    from kfrelease.pipelines.training_pipeline import training_pipeline
    from kfrelease.training.resources import pipeline_arguments
    from kfrelease.training.spec import ModelSpec

    run_id = record.run_id
    started = now_iso()
    run_records.set_state(store, run_id, "running", started_at=started, attempt=attempt, **process_identity())
    spec = ModelSpec.from_json(record.record["spec_json"])
    try:
        task = run_local(
            settings,
            training_pipeline,
            spec_json=record.record["spec_json"],
            commit=record.record["commit"],
            dataset_version=record.record.get("dataset_version", "latest"),
            run_id=run_id,
            **pipeline_arguments(spec.resources),
        )
    except Exception as exc:  # noqa: BLE001 - every failure is classified below
        cause, error = _failure_of_attempt(store, run_id, started, exc)
        raise AttemptFailed(cause, error) from None
    return {"version": task.output}


def run(run_id: str, settings: Settings | None = None) -> dict:
    from tenacity import (
        RetryError,
        Retrying,
        retry_if_exception,
        stop_after_attempt,
        wait_exponential,
    )

    from kfrelease.storage import store_for
    from kfrelease.training.admission import concurrency_limit, slot
    from kfrelease.training.resources import memory_bytes
    from kfrelease.training.spec import ModelSpec

    settings = settings or Settings.from_env()
    store = store_for("pipeline", settings)
    record = run_records.get_run(store, run_id)
    spec = ModelSpec.from_json(record.record["spec_json"])
    limit = concurrency_limit(memory_bytes(spec.resources.memory_limit))
    first = int(record.state.get("attempt", 0)) + 1  # a re-triggered run goes on counting its attempts
    run_records.set_state(store, run_id, "queued", **process_identity())

    waited = {}

    def on_wait(why: str) -> None:
        waited["since"] = time.monotonic()
        run_records.set_state(store, run_id, "queued", waiting=why, **process_identity())

    def before_retry(state) -> None:
        exc = state.outcome.exception()
        run_records.set_state(
            store,
            run_id,
            "retrying",
            cause=exc.cause,
            error=one_line(exc.cause, exc.error),
            retry_of_attempt=first + state.attempt_number - 1,
        )
        log.warning("run %s attempt %d failed (%s); retrying", run_id, first + state.attempt_number - 1, exc.error)

    with slot(settings, limit, on_wait):
        run_records.set_state(
            store,
            run_id,
            "running",
            waiting=None,
            slot_limit=limit,
            admitted_at=now_iso(),
            queued_seconds=round(time.monotonic() - waited["since"], 1) if waited else 0.0,
            **process_identity(),
        )
        counter = iter(range(first, first + MAX_ATTEMPTS))
        try:
            outcome = Retrying(
                stop=stop_after_attempt(MAX_ATTEMPTS),
                wait=wait_exponential(min=BACKOFF_SECONDS[0], max=BACKOFF_SECONDS[1]),
                retry=retry_if_exception(lambda e: isinstance(e, AttemptFailed) and retryable(e.cause)),
                before_sleep=before_retry,
                reraise=False,
            )(lambda: _attempt(settings, store, record, next(counter)))
        except (AttemptFailed, RetryError) as exc:
            failed = exc.last_attempt.exception() if isinstance(exc, RetryError) else exc
            attempts = run_records.get_run(store, run_id).state.get("attempt", first)
            why = one_line(failed.cause, failed.error)
            if retryable(failed.cause):
                why += f" (gave up after {attempts - first + 1} attempts; `kfrelease trigger` on the commit retries)"
            else:
                why += " (not retried: it would fail the same way)"
            for step in STEP_NAMES:
                if run_records.get_step(store, run_id, step).get("state") == "running":
                    run_records.set_step(store, run_id, step, "failed", finished_at=now_iso())
            run_records.set_state(store, run_id, "failed", finished_at=now_iso(), cause=failed.cause, error=why)
            raise
        from kfrelease.registry import ModelRegistry
        from kfrelease.training.outcome import run_outcome
        from kfrelease.training.steps import not_staged_reason

        mv = ModelRegistry(store).get(record.record["model"], outcome["version"])
        result = run_outcome(run_id, spec.text, mv)
        done = run_records.get_run(store, run_id).steps
        for step in STEP_NAMES:  # not run by the final attempt (the dsl.If branch of a rejected model)
            if done.get(step, {}).get("state") not in ("succeeded", "skipped"):
                run_records.set_step(store, run_id, step, "skipped", skipped=not_staged_reason(mv) or result.line)
        log.info("run %s: %s", run_id, result.line)
        peak = {
            s: v["peak_rss_mb"] for s, v in run_records.get_run(store, run_id).steps.items() if v.get("peak_rss_mb")
        }
        return run_records.set_state(
            store,
            run_id,
            "succeeded",
            finished_at=now_iso(),
            version=outcome["version"],
            verdict="passed" if mv.passed else "rejected",
            stage=mv.stage,
            cause=None,
            error=None,
            peak_rss_mb=peak,
            **result.as_state(),
        )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(sys.argv) != 2:
        sys.exit("usage: python -m kfrelease.training.execution RUN_ID")
    try:
        run(sys.argv[1])
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    main()
