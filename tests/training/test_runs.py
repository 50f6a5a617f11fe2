"""Local runs under load and faults: admission to a machine-sized number of slots, retries of infrastructure
failures only (from the first unfinished step), and a one-line reason for failures that are not retried.

The pure parts (causes, the limit, the slots, the memory check) are tested without the stack; the runs
themselves on the embedded stack, triggered as CI would (``trigger``), with SIGKILL injected by
``KFRELEASE_CRASH_AT`` (the step kills itself, no clean-up: what the out-of-memory killer does)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime

import pytest

from kfrelease.demo.project import merge_change, spec_variant
from kfrelease.errors import (
    ConfigError,
    DataValidationError,
    NotFound,
    StoreUnavailable,
)
from kfrelease.stack.supervisor import record_alive
from kfrelease.storage import store_for
from kfrelease.training import admission, failures, run_records
from kfrelease.training.execution import runners_dir
from kfrelease.training.trigger import interruption, trigger, wait

RIDGE = "sklearn.linear_model.Ridge"


# -- without the stack --------------------------------------------------------------------------------
def test_only_infrastructure_causes_are_retried():
    assert failures.cause_of(StoreUnavailable("s3 down")) == failures.INFRASTRUCTURE
    assert failures.cause_of(ConnectionResetError()) == failures.INFRASTRUCTURE
    assert failures.cause_of(MemoryError()) == failures.INFRASTRUCTURE
    assert failures.cause_of(DataValidationError("bad rows")) == failures.DATA
    assert failures.cause_of(NotFound("no version")) == failures.DATA
    assert failures.cause_of(ConfigError("bad hyper-parameter")) == failures.MODEL_CODE
    assert failures.cause_of(ValueError("raised in fit")) == failures.MODEL_CODE
    assert failures.cause_of_exit(-9) == failures.cause_of_exit(137) == failures.INFRASTRUCTURE
    assert failures.cause_of_exit(1) is None
    assert [failures.retryable(c) for c in (failures.INFRASTRUCTURE, failures.MODEL_CODE, failures.DATA)] == [
        True,
        False,
        False,
    ]


def test_the_run_limit_comes_from_cores_and_memory(monkeypatch):
    gib = 2**30
    assert admission.machine_limit(4 * gib, cores=2, total_memory=24 * gib) == 2  # cores bound
    assert admission.machine_limit(4 * gib, cores=16, total_memory=24 * gib) == 4  # 75 % of 24 GiB / 4 GiB
    assert admission.machine_limit(64 * gib, cores=8, total_memory=24 * gib) == 1  # never 0
    monkeypatch.setenv("KFRELEASE_MAX_RUNS", "5")
    assert admission.concurrency_limit(4 * gib) == 5
    monkeypatch.setenv("KFRELEASE_MAX_RUNS", "none")
    with pytest.raises(ConfigError, match="KFRELEASE_MAX_RUNS"):
        admission.concurrency_limit(4 * gib)


def test_a_full_machine_queues_the_next_run_and_a_dead_holder_frees_its_slot(tmp_path):
    from kfrelease.config import Settings

    settings = Settings(home=tmp_path)
    waits = []
    with admission.slot(settings, 1) as first:
        assert first == 0 and admission.busy_slots(settings, 1) == 1
        with (
            pytest.raises(TimeoutError, match="no run slot of 1"),
            admission.slot(settings, 1, waits.append, timeout=0.6),
        ):
            pass
    assert waits and "all 1 are taken" in waits[0]
    # a holder killed with SIGKILL keeps nothing: the kernel drops its lock
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, os, signal, sys; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
                "print('held', flush=True); os.kill(os.getpid(), signal.SIGKILL)"
            ),
            str(admission.slots_dir(settings) / "0.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    holder.wait(timeout=30)
    with admission.slot(settings, 1, timeout=5) as again:
        assert again == 0


def test_a_run_whose_runner_is_gone_counts_as_interrupted():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    now = datetime.now().astimezone().isoformat()
    record = run_records.RunRecord(
        "train-x", {"created_at": now}, {"state": "running", "pid": gone.pid, "updated_at": now}
    )
    assert "the runner (pid" in interruption(record) and "is gone while the run was running" in interruption(record)
    record.state = {"state": "failed", "cause": failures.MODEL_CODE, "error": "model code: boom"}
    assert interruption(record) is None  # the model code's failure is returned, not retried
    record.state = {"state": "failed", "cause": failures.INFRASTRUCTURE, "error": "infrastructure: killed"}
    assert interruption(record) == "infrastructure: killed"


def test_a_runner_record_whose_pid_is_another_programs_now_is_a_gone_runner(tmp_path):
    """A runner's marker and its run's state name it by pid and start time as every process record of the
    machine does (``supervisor.process_identity``: one definition), so a pid the kernel gave to another program
    after the runner died is a gone runner: the watchdog finds its run, ``kfrelease down`` signals nothing."""
    from kfrelease.config import Settings
    from kfrelease.stack.supervisor import process_started
    from kfrelease.training.execution import gone_runners, runner_marker, stop_runners
    from tests.waiting import eventually

    settings = Settings(home=tmp_path)
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        started = eventually(lambda: process_started(other.pid), 10, "the other program started")
        me = {"pid": other.pid, "pid_started": started}
        marker = runner_marker(settings, "train-x")
        marker.parent.mkdir(parents=True)
        marker.write_text(json.dumps({"run_id": "train-x", **me, "pid_started": started - 1}))
        assert gone_runners(settings) == ["train-x"]
        assert stop_runners(settings) == [] and other.poll() is None, "the other program was taken for the runner"
        now = datetime.now().astimezone().isoformat()
        state = {"state": "running", **me, "updated_at": now}
        dead = run_records.RunRecord("train-x", {"created_at": now}, {**state, "pid_started": started - 1})
        assert "is gone while the run was running" in interruption(dead)

        marker.write_text(json.dumps({"run_id": "train-x", **me}))  # named by its own start time: the runner
        assert gone_runners(settings) == []
        assert interruption(run_records.RunRecord("train-x", {"created_at": now}, state)) is None
    finally:
        other.kill()
        other.wait()


def test_a_dataset_too_large_for_the_step_fails_early_with_its_size_and_the_limit():
    from kfrelease.data.publish import DatasetVersion
    from kfrelease.training.memory import check_fits
    from kfrelease.training.spec import parse_spec

    spec = parse_spec(
        "name: m\ntag: 1\ndataset: d\nfeatures: [a, b]\ntarget: y\nestimator: {class: " + RIDGE + "}\n"
        "resources: {memory: 512Mi, memory_limit: 1Gi}\n"
    )
    big = DatasetVersion("d", "v1", {"row_count": 50_000_000})
    with pytest.raises(
        DataValidationError,
        match=r"50,000,000 rows x 3 columns need about \d+\.\d GiB, the limit is "
        r"1\.0 GiB \(resources\.memory_limit 1Gi in the model spec\)",
    ):
        check_fits(spec, big, ["a", "b", "y"])
    assert check_fits(spec, DatasetVersion("d", "v2", {"row_count": 10_000}), ["a", "b", "y"]) < 2**30


# -- on the embedded stack ------------------------------------------------------------------------------
def ridge_merges(repo, name, dataset, n: int) -> list[str]:
    return [
        merge_change(
            repo,
            f"alpha-{i}",
            {
                "model.yaml": spec_variant(
                    1,
                    name=name,
                    dataset=dataset.name,
                    estimator={"class": RIDGE, "params": {"alpha": round(0.5 + i * 0.25, 2)}},
                )
            },
            f"ridge alpha {0.5 + i * 0.25}",
        )
        for i in range(n)
    ]


@pytest.mark.integration
@pytest.mark.slow(seconds=26)
def test_a_step_killed_with_sigkill_is_retried_and_the_run_finishes(project, stack, monkeypatch, tmp_path):
    repo, shas, _ = project
    monkeypatch.setenv("KFRELEASE_CRASH_AT", "train.loaded")  # the train step kills itself once, mid-step
    monkeypatch.setenv("KFRELEASE_CRASH_ONCE", str(tmp_path / "crashed-once"))
    monkeypatch.setenv("KFRELEASE_STEP_BACKOFF_SECONDS", "1")  # the retry is tested, not its 5 s wait
    record = trigger(stack, shas[0], repo)
    done = wait(stack, record.run_id, timeout=420)
    assert (tmp_path / "crashed-once").exists()  # attempt 1 of the step really was killed
    assert done.status == "succeeded", (done.state, done.steps)
    assert done.state["version"] == "V1.1.0" and done.state["stage"] == "staging"
    assert done.steps["train"]["attempt"] == 2 and done.steps["train"]["state"] == "succeeded"  # retried in place
    assert done.steps["evaluate"]["attempt"] == 1 and done.state["attempt"] == 1
    assert (
        done.steps["train"]["peak_rss_mb"] > 50
        and done.state["peak_rss_mb"]["train"] == done.steps["train"]["peak_rss_mb"]
    )


@pytest.mark.integration
@pytest.mark.slow(seconds=30)
def test_a_run_failing_in_its_model_code_is_not_retried_and_says_why(project, dataset, stack, run_cli):
    repo, _, name = project
    code = (
        'class Broken:\n    def fit(self, X, y):\n        raise ValueError("the merged model code cannot fit")\n\n'
        "    def predict(self, X):\n        return X\n\n\ndef build_model():\n    return Broken()\n"
    )
    sha = merge_change(
        repo,
        "broken",
        {"model.yaml": spec_variant(2, name=name, dataset=dataset.name), "model.py": code},
        "a model whose fit raises",
    )
    record = trigger(stack, sha, repo)
    done = wait(stack, record.run_id, timeout=300)
    assert done.status == "failed" and done.state["attempt"] == 1  # no second attempt
    assert done.state["cause"] == "model code"
    assert done.state["error"].startswith("model code: step train: ValueError: the merged model code cannot fit")
    assert "(not retried: it would fail the same way)" in done.state["error"]
    again = run_cli("trigger", "--commit", sha, "--repo", str(repo), check=True).stdout
    assert f"run {record.run_id} exists already (failed)" in again and "not retried" in again
    # the reason is in the run's record as `kfrelease runs` reads it (the table may wrap a long reason
    # when the session holds many runs; the JSON never does)
    listed = run_cli("runs", "--json", check=True).stdout
    assert record.run_id in listed and "the merged model code" in listed
    assert (
        run_records.get_run(store_for("pipeline"), record.run_id).state["attempt"] == 1
    )  # the trigger started nothing


@pytest.mark.integration
@pytest.mark.slow(seconds=82)
def test_an_infrastructure_failure_on_every_attempt_is_retried_by_the_next_trigger(project, stack, monkeypatch):
    repo, shas, _ = project
    monkeypatch.setenv("KFRELEASE_CRASH_AT", "containerize.start")  # every attempt of containerize is killed
    monkeypatch.setenv("KFRELEASE_STEP_BACKOFF_SECONDS", "1")  # 1 s + 2 s between its tries, not 5 s + 10 s
    record = trigger(stack, shas[0], repo)
    done = wait(stack, record.run_id, timeout=600)
    assert done.status == "failed" and done.state["cause"] == "infrastructure", done.state
    assert done.state["attempt"] == 2 and "gave up after 2 attempts" in done.state["error"]
    assert "step containerize" in done.state["error"]
    assert done.steps["train"]["attempt"] == 1  # the second attempt resumed after train: train was not refitted
    monkeypatch.delenv("KFRELEASE_CRASH_AT")
    again = trigger(stack, shas[0], repo)  # the same commit: the same run, started again
    assert again.retried and again.run_id == record.run_id and "gave up" in again.state["retried_because"]
    done = wait(stack, record.run_id, timeout=420)
    assert done.status == "succeeded" and done.state["attempt"] == 3 and done.state["version"] == "V1.1.0"
    assert done.steps["train"]["attempt"] == 1 and done.steps["containerize"]["state"] == "succeeded"


def _runs(store, run_ids) -> list[run_records.RunRecord]:
    return [run_records.get_run(store, r) for r in run_ids]


def _all_ended(store, run_ids):
    runs = _runs(store, run_ids)
    return runs if all(r.status in ("succeeded", "failed") for r in runs) else None


#: Merges triggered at once in the restart test: three times the 2 run slots, so that `down`, called once two
#: have finished, finds two running and two queued.
MERGES = 6


@pytest.fixture
def own_stack(tmp_path, monkeypatch):
    """A private embedded stack this test may stop and start (``kfrelease down`` / ``up`` as a user runs
    them), with its own home and ports; the test's own calls use it too (the environment points at it)."""
    from kfrelease.config import Settings
    from tests.conftest import free_port_offset

    env = {"KFRELEASE_HOME": str(tmp_path / "home"), "KFRELEASE_PORT_OFFSET": str(free_port_offset())}
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    def cli(*args):
        proc = subprocess.run(
            [sys.executable, "-m", "kfrelease.cli", *args],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "COLUMNS": "200"},
            check=False,
        )
        assert proc.returncode == 0, f"kfrelease {' '.join(args)}: {proc.stderr}{proc.stdout}"
        return proc.stdout

    cli("up")
    yield Settings.from_env(), cli
    cli("down")


@pytest.mark.integration
@pytest.mark.timeout(1500)
@pytest.mark.slow(seconds=100)
def test_merges_at_once_with_the_stack_stopped_and_started_in_the_middle_all_finish(own_stack, tmp_path):
    """Six merges at once, admitted to the machine's 2 run slots; `kfrelease down` while some have finished, some
    run and the rest are queued; `kfrelease up`: every run finishes, each with its own version, and none is
    left queued or running. The attempts `down` cut short are not counted against the runs.

    The issue's report had 16 merges (14 left queued, 1 left running); what broke was per run (a queued or
    running run whose runner `down` stopped was never started again), so six, which `down` still finds
    finished (2), running (2) and queued (2), fail on it the same way with six runs of ~13 s of CPU instead of 16."""
    from kfrelease.demo.project import create_demo_project
    from tests.training.conftest import PrivateDataset
    from tests.waiting import eventually

    settings, cli = own_stack
    ds = PrivateDataset(f"diabetes-{uuid.uuid4().hex[:8]}")
    ds.add_batch(1)
    name = f"resume-{uuid.uuid4().hex[:6]}"
    repo = tmp_path / "project"
    create_demo_project(repo, name=name, dataset=ds.name)
    merges = ridge_merges(repo, name, ds, MERGES)
    records = [trigger(settings, sha, repo) for sha in merges]  # all at once, as CI would on eight merges
    run_ids = [r.run_id for r in records]
    assert len(set(run_ids)) == MERGES
    store = store_for("pipeline", settings)

    def middle():
        runs = _runs(store, run_ids)
        done = sum(r.status == "succeeded" for r in runs)
        return done >= 2 and any(r.status == "running" and r.state.get("attempt") for r in runs)

    eventually(middle, 900, "some runs finished and one running", interval=1.0)
    runners = [json.loads(p.read_text()) for p in runners_dir(settings).glob("*.json")]
    before = [r.status for r in _runs(store, run_ids)]
    assert "queued" in before, before  # `down` stops runs waiting for a slot too, not only running ones
    down = cli("down")
    assert f"stopped {len(runners)} training run(s)" in down, down
    assert runners and not any(record_alive(m) for m in runners), "a runner outlived `kfrelease down`"

    up = cli("up")
    done = eventually(lambda: _all_ended(store, run_ids), 1200, f"all {MERGES} runs ended", interval=2.0)
    assert [d.status for d in done] == ["succeeded"] * MERGES, [d.state.get("error") for d in done]
    assert sorted(d.state["version"] for d in done) == sorted(f"V1.{i}.0" for i in range(1, MERGES + 1))
    cut = {d.run_id for d in done if d.state.get("resumes")}
    assert cut == {m["run_id"] for m in runners}  # every run `down` stopped, and only those, started again
    for d in done:
        assert d.state.get("failed_attempts") == 0  # an attempt `kfrelease down` cut short is not a failure
        if d.run_id in cut:
            assert d.state["resumes"] == 1 and "(stopped by `kfrelease down`)" in d.state["resumed_because"]
            assert f"run {d.run_id} started again: the runner (pid" in up, up
    limit = done[0].state["slot_limit"]
    assert limit == admission.concurrency_limit(4 * 2**30)
    spans = sorted((d.state["admitted_at"], d.state["finished_at"]) for d in done)
    overlap = max(sum(1 for s, f in spans if s <= start < f) for start, _ in spans)
    assert overlap <= limit  # never more runs at once than the machine's slots
    assert admission.busy_slots(settings, limit) == 0  # no slot held by anything
    assert not list(runners_dir(settings).glob("*.json")), "a runner marker was left behind"


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_the_watchdog_retries_a_run_whose_runner_was_killed_and_fails_it_when_its_attempts_are_used(project, stack):
    """The runner SIGKILLed mid-attempt (its steps left running): the stack's watchdog stops what it left,
    counts the attempt as failed and starts the run again; killed again, the run has used its 2 attempts
    and fails with the cause. No slot stays held, no step process stays behind."""
    import signal

    from kfrelease.stack.supervisor import group_alive
    from tests.waiting import eventually

    repo, shas, _ = project
    store = store_for("pipeline", stack)
    run_id = trigger(stack, shas[0], repo).run_id

    def running(attempt: int):
        rec = run_records.get_run(store, run_id)
        return rec if rec.status == "running" and rec.state.get("attempt") == attempt else None

    first = eventually(lambda: running(1), 300, "attempt 1 running", interval=0.5)
    os.kill(first.state["pid"], signal.SIGKILL)  # the runner only: its step processes are left behind

    def resumed():
        rec = run_records.get_run(store, run_id)
        return rec if rec.state.get("resumes") == 1 else None

    again = eventually(resumed, 60, "the watchdog started the run again")
    assert (
        again.state["failed_attempts"] == 1
        and f"the runner (pid {first.state['pid']}) is gone" in (again.state["resumed_because"])
    )
    assert not group_alive(first.state["pid"]), "the killed runner's steps are still running"
    second = eventually(lambda: running(2), 300, "attempt 2 running", interval=0.5)
    os.kill(second.state["pid"], signal.SIGKILL)

    def ended():
        rec = run_records.get_run(store, run_id)
        return rec if rec.status == "failed" else None

    failed = eventually(ended, 60, "the run failed once its attempts were used")
    assert failed.state["cause"] == "infrastructure" and failed.state["failed_attempts"] == 2
    assert failed.state["error"].startswith(f"infrastructure: the runner (pid {second.state['pid']}) is gone")
    assert "gave up after 2 attempts; `kfrelease trigger` on the commit retries" in failed.state["error"]
    assert not any(s.get("state") == "running" for s in failed.steps.values()), failed.steps
    assert not group_alive(second.state["pid"])
    limit = admission.concurrency_limit(4 * 2**30)
    assert admission.busy_slots(stack, limit) == 0
