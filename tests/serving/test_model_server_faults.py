"""A production model server dies under steady traffic to two models (issue 26, "Done means").

Two models in production on the embedded stack (real SeaweedFS, log sink, feedback, nginx and its hold, the
multi-model KServe servers on two production replicas, the watchdog and its warm spare), bounded traffic to
both through the gateway (25 requests/s each, 127.0.0.1 only). The production model server is SIGKILLed
once, then three times in a row (each time as soon as the watchdog has it back), then both production
replicas at once. Checked for each model: 0 failed requests, every answer from that model's own production
version, every answered request in its prediction logs.

Both models are hosted by the same production processes (what isolates them and what does not: the README's
"Many models, one machine"), so "the other model is unaffected" means that it fails nothing and loses no log
either, while the server it shares is killed under it.
"""

from __future__ import annotations

import os
import signal
import uuid

import pytest

from kfrelease import httpcalls
from kfrelease.demo.flow import create_release_demo_project
from kfrelease.registry import ModelRegistry
from kfrelease.rollout.spec import load_rollout_spec
from kfrelease.stack import supervisor
from kfrelease.stack.gateway import LocalGatewayDriver
from kfrelease.stack.hosts import hosted
from kfrelease.storage import store_for
from kfrelease.training.spec import load_project_at_commit
from kfrelease.training.steps import run_inline
from tests.release.conftest import check_loss_free, release_firsts, traffic
from tests.training.conftest import PrivateDataset
from tests.waiting import eventually

pytestmark = pytest.mark.integration

PRODUCTION = ("predictor-production", "predictor-production-1")


@pytest.fixture
def two_in_production(stack, tmp_path):
    """Two models (each its own dataset and project), each with one version in production (both first models
    released at once: each provisional on its own labelled traffic, then production)."""
    versions = {}
    for k in range(2):
        ds = PrivateDataset(f"diabetes-{uuid.uuid4().hex[:8]}")
        ds.add_batch(1)
        name = f"faults-{k}-{uuid.uuid4().hex[:6]}"
        shas = create_release_demo_project(tmp_path / name, name=name, dataset=ds.name)
        spec, commit = load_project_at_commit(tmp_path / name, shas[0])
        versions[name] = run_inline(spec, commit, settings=stack, containerize=False).version
    release_firsts(stack, versions)
    yield stack, versions
    LocalGatewayDriver(stack, load_rollout_spec()).stop()


def _kill(settings, name: str) -> int:
    pid = supervisor.service_status(settings, name).pid
    assert pid, f"{name} is not running"
    os.killpg(pid, signal.SIGKILL)
    return pid


def _back(settings, name: str, old: int) -> None:
    def restarted():
        st = supervisor.service_status(settings, name)
        return st.healthy and st.pid != old

    eventually(restarted, 60, f"the watchdog restarts {name}")


def _more(load: dict, n: int, what: str) -> None:
    """Wait until every model's clients got ``n`` more answers (traffic goes on between two kills)."""
    start = {name: gen.stats().ok for name, gen in load.items()}
    eventually(lambda: all(gen.stats().ok - start[name] >= n for name, gen in load.items()), 60, what)


@pytest.mark.slow(seconds=40, waits=True)
def test_killing_the_production_model_server_fails_no_request_and_loses_no_log(two_in_production):
    settings, versions = two_in_production
    both = set(versions)
    assert {s: set(m) for s, m in hosted(settings).items() if s in PRODUCTION} == dict.fromkeys(PRODUCTION, both), (
        "production does not run on two replicas holding both models"
    )
    health = settings.url("watchdog", "/healthz")
    eventually(lambda: httpcalls.get(health, timeout=5).json()["spare"] == "ready", 120, "the warm spare is ready")
    held_before = httpcalls.get(settings.url("gateway-hold", "/healthz"), timeout=5).json()["answered"]

    load = {name: traffic(settings, name) for name in versions}
    try:
        _more(load, 50, "traffic to both models before the first kill")
        _back(settings, PRODUCTION[0], _kill(settings, PRODUCTION[0]))  # once
        _more(load, 25, "answers after the first restart")
        for _ in range(3):  # then three times in a row, each time as soon as it is back
            _back(settings, PRODUCTION[0], _kill(settings, PRODUCTION[0]))
        _more(load, 25, "answers after three kills in a row")
        old = {name: _kill(settings, name) for name in PRODUCTION}  # every production replica at once
        for name, pid in old.items():
            _back(settings, name, pid)
        _more(load, 50, "answers after both replicas were killed")
    finally:
        stats = {name: gen.stop() for name, gen in load.items()}

    assert httpcalls.get(settings.url("gateway-hold", "/healthz"), timeout=5).json()["answered"] > held_before, (
        "no prediction was held while both replicas were down"
    )
    registry = ModelRegistry(store_for("pipeline", settings))
    for name, st in stats.items():
        assert st.failed == 0, (name, st.failed, st.errors[:3])
        assert st.sent == st.ok > 150, (name, st.as_dict())
        assert set(st.models) == {name} and set(st.versions) == {versions[name]}, (name, st.as_dict())
        assert registry.current(name, "production").version == versions[name]
        check_loss_free(settings, name, st)


def test_a_logger_killed_right_after_an_answer_loses_none_of_its_events(tmp_path):
    """``log()`` returns once the prediction's events are in the write-ahead file: a process killed right after
    it (SIGKILL, no clean-up) leaves them there, and the next logger on the same folder sends them to the sink."""
    import subprocess
    import sys

    from kfrelease.serving.logger import InferenceLogger

    wal = tmp_path / "wal"
    kwargs = {"model": "m", "version": "V1.1.0", "stage": "production", "features": ["a", "b"]}
    script = (
        "import os, signal, sys, numpy as np\n"
        "from kfrelease.serving.logger import InferenceLogger\n"
        f"lg = InferenceLogger(url='http://127.0.0.1:9/', wal_dir=sys.argv[1], linger=30, **{kwargs!r})\n"
        "lg.start()\n"
        "for i in range(3):\n"
        "    lg.log(f'answered-{i}', np.array([[1.0, 2.0]]), np.array([0.5]))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(wal)], check=False, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    again = InferenceLogger(url="http://127.0.0.1:9/", wal_dir=wal, **kwargs)
    again.start()
    try:
        assert again.backlog() == 6  # 3 requests and their 3 responses, waiting for the sink
        spooled = [line for seg in wal.glob("*.jsonl") for line in seg.read_text().splitlines()]
        assert sorted({e.split('"id":"')[1].split('"')[0] for e in spooled}) == [f"answered-{i}" for i in range(3)]
    finally:
        again.close()
