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
5. A runner that is gone (killed with its steps, the out-of-memory killer, ``kfrelease down``, a machine
   restart) is found by ``recover_runs``: ``kfrelease up`` looks at every run, the stack's watchdog at the
   runners of this machine (``runs/runners/<run_id>.json``, written by a runner while it lives) every few
   seconds. What is left of the runner (its step processes) is stopped, so its slot and memory are free,
   and the run is started again under the same id from its first unfinished step: an attempt its runner
   died in counts as a failed attempt of an infrastructure cause, as the retries above count them, and a
   run whose ``MAX_ATTEMPTS`` are used (or whose runner was lost ``MAX_RESUMES`` times) is ``failed`` with
   that cause instead. An attempt cut short by ``kfrelease down`` (``stop_runners``) is not counted.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from kfrelease.config import LOG_FORMAT, Settings, exit_without_collecting
from kfrelease.errors import Conflict
from kfrelease.kfp.runner import run_local
from kfrelease.locks import exclusive_lock
from kfrelease.registry import ModelRegistry
from kfrelease.registry.lineage import now_iso
from kfrelease.stack.supervisor import (
    group_alive,
    pid_alive,
    process_identity,
    record_alive,
    stop_process_group,
    write_whole,
)
from kfrelease.storage import store_for
from kfrelease.training import run_records
from kfrelease.training.admission import concurrency_limit, slot
from kfrelease.training.failures import INFRASTRUCTURE, cause_of, one_line, retryable
from kfrelease.training.outcome import run_outcome
from kfrelease.training.resources import memory_bytes, pipeline_arguments
from kfrelease.training.spec import ModelSpec
from kfrelease.training.steps import STEP_NAMES, not_staged_reason
from kfrelease.training.trigger import STARTING_GRACE_SECONDS, start_local

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2
BACKOFF_SECONDS = (1.0, 10.0)  # tenacity wait_exponential: min, max
#: Most times a run's runner may be lost (and the run started again) before the run fails.
MAX_RESUMES = 5
ACTIVE = ("queued", "running", "retrying")
#: Who stops runners in order (their attempt is not counted against the run): ``stop_runners``.
STOPPED_BY_DOWN = "kfrelease down"


class AttemptFailed(Exception):
    def __init__(self, cause: str, error: str):
        super().__init__(error)
        self.cause, self.error = cause, error


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
    from kfrelease.pipelines.training_pipeline import training_pipeline  # heavy: kfp

    run_id = record.run_id
    started = now_iso()
    run_records.set_state(store, run_id, "running", started_at=started, attempt=attempt, **process_identity())
    spec = ModelSpec.from_json(record.record["spec_json"])
    try:
        task = run_local(
            settings,
            training_pipeline,
            spec=spec.to_dict(),
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
    settings = settings or Settings.from_env()
    mark_runner(settings, run_id)  # first of all: a runner that dies from here on is found by the watchdog
    store = None
    try:
        store = store_for("pipeline", settings)
        record = run_records.get_run(store, run_id)
        spec = ModelSpec.from_json(record.record["spec_json"])
        limit = concurrency_limit(memory_bytes(spec.resources.memory_limit))
        first = int(record.state.get("attempt", 0)) + 1  # a re-triggered run goes on counting its attempts
        # a run started again by ``recover_runs`` goes on with the attempts it has left; a trigger gives new ones
        failed_before = int(record.state.get("failed_attempts") or 0) if record.state.get("resume") else 0
        result = _run(settings, store, record, spec, limit, first, failed_before, max(1, MAX_ATTEMPTS - failed_before))
    except BaseException:
        if store is not None and _recorded_end(store, run_id):
            runner_marker(settings, run_id).unlink(missing_ok=True)
        raise  # the marker stays when the end could not be recorded: the watchdog finds the run
    runner_marker(settings, run_id).unlink(missing_ok=True)
    return result


def _recorded_end(store, run_id: str) -> bool:
    try:
        return run_records.get_run(store, run_id).status in ("succeeded", "failed")
    except Exception:  # noqa: BLE001 - the store is unreachable: the end is not recorded
        return False


def _run(settings, store, record, spec, limit: int, first: int, failed_before: int, budget: int) -> dict:
    run_id = record.run_id
    run_records.set_state(
        store, run_id, "queued", resume=None, stopped_by=None, failed_attempts=failed_before, **process_identity()
    )

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
            failed_attempts=failed_before + state.attempt_number,
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
        counter = iter(range(first, first + budget))
        try:
            outcome = Retrying(
                stop=stop_after_attempt(budget),
                wait=wait_exponential(min=BACKOFF_SECONDS[0], max=BACKOFF_SECONDS[1]),
                retry=retry_if_exception(lambda e: isinstance(e, AttemptFailed) and retryable(e.cause)),
                before_sleep=before_retry,
                reraise=False,
            )(lambda: _attempt(settings, store, record, next(counter)))
        except (AttemptFailed, RetryError) as exc:
            failed = exc.last_attempt.exception() if isinstance(exc, RetryError) else exc
            attempts = run_records.get_run(store, run_id).state.get("attempt", first)
            failed_attempts = failed_before + attempts - first + 1
            why = one_line(failed.cause, failed.error)
            if retryable(failed.cause):
                why += f" (gave up after {failed_attempts} attempts; `kfrelease trigger` on the commit retries)"
            else:
                why += " (not retried: it would fail the same way)"
            for step in STEP_NAMES:
                if run_records.get_step(store, run_id, step).get("state") == "running":
                    run_records.set_step(store, run_id, step, "failed", finished_at=now_iso())
            run_records.set_state(
                store,
                run_id,
                "failed",
                finished_at=now_iso(),
                cause=failed.cause,
                error=why,
                failed_attempts=failed_attempts,
            )
            raise

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


# --- runners that are gone: found, cleaned up, their runs started again or failed -------------------------


def runners_dir(settings: Settings) -> Path:
    return settings.home / "runs" / "runners"


def runner_marker(settings: Settings, run_id: str) -> Path:
    return runners_dir(settings) / f"{run_id}.json"


def mark_runner(settings: Settings, run_id: str) -> None:
    """Record on this machine that this process runs ``run_id`` (removed when the run's end is recorded)."""
    path = runner_marker(settings, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, json.dumps({"run_id": run_id, **process_identity()}))


def _markers(settings: Settings) -> list[dict]:
    out = []
    for path in sorted(runners_dir(settings).glob("*.json")) if runners_dir(settings).exists() else []:
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # being written
    return out


@dataclass(frozen=True)
class Recovery:
    """What ``recover_runs`` did with a run whose runner was gone: ``resumed`` or ``failed``, and why."""

    run_id: str
    action: str
    why: str

    def line(self) -> str:
        verb = {"resumed": "started again", "failed": "failed"}.get(self.action, "left as it is")
        return f"run {self.run_id} {verb}: {self.why}"


def _recovery_lock(settings: Settings):
    """One recovery at a time on this machine (``kfrelease up`` and the watchdog may look at once)."""
    return exclusive_lock(settings.home / "runs" / "recovery.lock")


def gone_runners(settings: Settings) -> list[str]:
    """Runs of this machine whose runner process is gone without recording the run's end (cheap: no store)."""
    return [m["run_id"] for m in _markers(settings) if not record_alive(m)]


def _gone_why(record: run_records.RunRecord, now: float) -> str | None:
    """Why an active local run has no runner, or None when its runner lives (or may still be starting)."""
    st = record.state
    if record.status not in ACTIVE or record.record.get("target", "local") != "local":
        return None
    if not st.get("pid"):
        updated = dt.datetime.fromisoformat(st.get("updated_at") or record.record["created_at"]).timestamp()
        return None if now - updated < STARTING_GRACE_SECONDS else "the runner never started (a machine restart?)"
    if record_alive(st):
        return None
    by = f" (stopped by `{st['stopped_by']}`)" if st.get("stopped_by") else ""
    return f"the runner (pid {st['pid']}) is gone while the run was {record.status}{by}"


def recover_runs(settings: Settings, everything: bool = True) -> list[Recovery]:
    """Find the runs whose runner is gone; stop what is left of each runner, then start the run again or fail
    it with the cause when its attempts are used (see the module docstring). ``everything``: every run in
    the store (``kfrelease up``); else only this machine's runners that died (the watchdog)."""
    gone = gone_runners(settings)
    if not everything and not gone:
        return []
    store = store_for("pipeline", settings)
    out = []
    with _recovery_lock(settings):
        ids = list(dict.fromkeys(gone))
        if everything:
            ids += [r.run_id for r in run_records.list_runs(store) if r.run_id not in ids]
        now = time.time()
        for run_id in ids:
            try:
                record = run_records.get_run(store, run_id)
                why = _gone_why(record, now)
                if why is not None:
                    out.append(_recover(settings, store, record, why))
                elif run_id in gone:
                    _drop_dead_marker(settings, run_id)  # its end is recorded, or a newer runner has it
            except Exception:  # the others are looked at; this one again next time
                log.exception("could not recover run %s", run_id)
    for r in out:
        log.warning("%s", r.line())
    return out


def _drop_dead_marker(settings: Settings, run_id: str) -> None:
    """Remove ``run_id``'s runner marker if the runner it names is dead (a new runner writes its own)."""
    path = runner_marker(settings, run_id)
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if not record_alive(marker):
        path.unlink(missing_ok=True)


def _stop_leftovers(state: dict) -> None:
    """Stop the step processes a dead runner (``state``: its ``process_identity``) left (its process group):
    they hold memory and a slot's work. A process group lives while any member does, so its id is never
    another program's; a pid the kernel gave to another program since is not the runner's group."""
    pid, started = state.get("pid"), state.get("pid_started")
    if pid and not pid_alive(pid, started) and group_alive(pid, started):
        log.warning("stopping what runner %d left running (its process group)", pid)
        stop_process_group(pid, started=started)


def _recover(settings: Settings, store, record: run_records.RunRecord, why: str) -> Recovery:
    run_id, st = record.run_id, record.state
    _stop_leftovers(st)
    failed = int(st.get("failed_attempts") or 0)
    cut_short = (
        "stopped by `kfrelease down`; `kfrelease up` started the run again"
        if st.get("stopped_by")
        else f"killed with its runner (pid {st.get('pid')})"
    )
    for step in STEP_NAMES:
        if record.steps.get(step, {}).get("state") == "running":
            run_records.set_step(
                store, run_id, step, "failed", finished_at=now_iso(), error=cut_short, cause=INFRASTRUCTURE
            )
    if record.status == "running" and not st.get("stopped_by"):
        failed += 1  # the attempt it was in failed of an infrastructure cause
    resumes = int(st.get("resumes") or 0)
    info = store.stat(run_records.BUCKET, f"runs/{run_id}/state.json")
    if failed >= MAX_ATTEMPTS or resumes >= MAX_RESUMES:
        used = (
            f"gave up after {failed} attempts" if failed >= MAX_ATTEMPTS else f"its runner was lost {resumes + 1} times"
        )
        error = one_line(INFRASTRUCTURE, why) + f" ({used}; `kfrelease trigger` on the commit retries)"
        doc = {**st, "state": "failed", "cause": INFRASTRUCTURE, "error": error, "failed_attempts": failed}
        doc.update(finished_at=now_iso(), updated_at=now_iso(), waiting=None)
        action = "failed"
    else:
        doc = {**st, "state": "queued", "resume": True, "resumed_because": why, "resumes": resumes + 1}
        doc.update(failed_attempts=failed, pid=None, pid_started=None, waiting=None, error=None, cause=None)
        doc.update(stopped_by=None, updated_at=now_iso())
        action = "resumed"
    doc.update(recovered=action, recovered_at=now_iso())
    try:  # `kfrelease up`, the watchdog or a trigger of the commit: the run is started again once
        store.put_json(run_records.BUCKET, f"runs/{run_id}/state.json", doc, if_match=info.etag if info else None)
    except Conflict:
        return Recovery(run_id, "left", "another process started it again meanwhile")
    _drop_dead_marker(settings, run_id)
    if action == "resumed":
        start_local(settings, run_id)
        return Recovery(run_id, action, why)
    return Recovery(run_id, action, error)


def recovered_since(settings: Settings, since: str) -> list[Recovery]:
    """What ``recover_runs`` did since ``since`` (ISO time), by whoever ran it (``kfrelease up`` or the
    watchdog, which starts first and may have started the runs again before ``up`` looks)."""
    out = []
    for record in run_records.list_runs(store_for("pipeline", settings)):
        st = record.state
        if st.get("recovered") and (st.get("recovered_at") or "") >= since:
            why = st.get("resumed_because") if st["recovered"] == "resumed" else st.get("error")
            out.append(Recovery(record.run_id, st["recovered"], why or ""))
    return out


def stop_runners(settings: Settings) -> list[str]:
    """Stop every runner of this machine (``kfrelease down``) and record it on its run, so ``kfrelease up``
    starts the run again without counting the attempt it cut short; returns the run ids stopped."""
    live = [m for m in _markers(settings) if record_alive(m)]
    if not live:
        return []
    store = store_for("pipeline", settings)
    stopped = []
    for marker in live:
        stop_process_group(marker["pid"], started=marker.get("pid_started"))  # the runner and its steps
        try:
            state = run_records.get_run(store, marker["run_id"]).state
            run_records.set_state(store, marker["run_id"], state.get("state", "queued"), stopped_by=STOPPED_BY_DOWN)
        except Exception as exc:  # noqa: BLE001 - the store is gone: `kfrelease up` counts the attempt instead
            log.warning("could not record that run %s was stopped: %s", marker["run_id"], exc)
        stopped.append(marker["run_id"])
    return stopped


def main() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    exit_without_collecting()  # the runner ends with its run
    if len(sys.argv) != 2:
        sys.exit("usage: python -m kfrelease.training.execution RUN_ID")
    try:
        run(sys.argv[1])
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    main()
