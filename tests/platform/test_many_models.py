"""Many models on one embedded stack (issue 13, "Done means"): two models, each with a production version
and a candidate, both released at the same time under steady client load to both through the gateway.

- 0 failed requests to either model; every answer comes from a version of the model asked for;
- every answered request of each model is in that model's prediction logs;
- a third model's release restarts no server of the first two and leaves their routes as they were.

Real parts: SeaweedFS, registry, log sink, feedback, nginx, the multi-model KServe servers, the release
controller; traffic is bounded and to 127.0.0.1 only.
"""

from __future__ import annotations

import threading
import uuid

import pytest

from kfrelease.demo.flow import create_release_demo_project
from kfrelease.registry import ModelRegistry
from kfrelease.release.embedded import run_release
from kfrelease.rollout.spec import load_rollout_spec
from kfrelease.stack import supervisor
from kfrelease.stack.gateway import LocalGatewayDriver, model_states
from kfrelease.storage import store_for
from kfrelease.training.spec import load_project_at_commit
from kfrelease.training.steps import run_inline
from tests.release.conftest import check_loss_free, release_first, release_firsts, small_spec, traffic
from tests.training.conftest import PrivateDataset

pytestmark = pytest.mark.integration


@pytest.fixture
def two_models(stack, tmp_path):
    models = []
    for k in range(2):
        ds = PrivateDataset(f"diabetes-{uuid.uuid4().hex[:8]}")
        ds.add_batch(1)
        name = f"many-{k}-{uuid.uuid4().hex[:6]}"
        shas = create_release_demo_project(tmp_path / name, name=name, dataset=ds.name)
        models.append((name, tmp_path / name, shas, ds))
    yield stack, models
    LocalGatewayDriver(stack, load_rollout_spec()).stop()


def _train(settings, repo, sha):
    spec, commit = load_project_at_commit(repo, sha)
    return run_inline(spec, commit, settings=settings, containerize=False)


@pytest.mark.slow(seconds=85, waits=True)
def test_two_models_released_at_once_under_load_fail_nothing_and_stay_apart(two_models, tmp_path):
    settings, models = two_models
    registry = ModelRegistry(store_for("pipeline", settings))
    firsts = {name: _train(settings, repo, shas[0]).version for name, repo, shas, _ in models}
    # both first models released at once too (each provisional on its own labelled traffic, then production)
    release_firsts(settings, firsts)
    # the better definitions, in staging
    candidates = {name: _train(settings, repo, shas[1]).version for name, repo, shas, _ in models}

    load = {name: traffic(settings, name) for name, *_ in models}
    outcomes, errors = {}, []
    # isolation is tested here, not the shadow gate's margin (the demo scenario holds this pair to 0.02): the
    # better definition is only ~1.6 % better, so at 0.02 each gate needed ~1,300 labelled pairs (52 s at 25/s)
    spec = {name: small_spec(name, shadow={"margin": 0.1}) for name in candidates}

    def release(name):
        try:
            outcomes[name] = run_release(settings, name, candidates[name], spec[name])
        except Exception as exc:  # noqa: BLE001 - reported below with the model's name
            errors.append(f"{name}: {type(exc).__name__}: {exc}")

    try:
        threads = [threading.Thread(target=release, args=(name,)) for name in candidates]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=400)
        assert not errors, errors
        assert {n: o.result for n, o in outcomes.items()} == dict.fromkeys(candidates, "promoted"), [
            o.decisions[-1]["why"] for o in outcomes.values()
        ]

        # a third model's release: its first model, provisional then production (on its own labelled traffic),
        # into the shared servers in place
        servers = {n: supervisor.service_status(settings, n).pid for n in ("gateway", "predictor-production")}
        routes = {n: s for n, s in model_states(settings).items() if n in candidates}
        third_ds = PrivateDataset(f"diabetes-{uuid.uuid4().hex[:8]}")
        third_ds.add_batch(1)
        third = f"many-2-{uuid.uuid4().hex[:6]}"
        shas = create_release_demo_project(tmp_path / third, name=third, dataset=third_ds.name)
        v = _train(settings, tmp_path / third, shas[0])
        assert release_first(settings, third, v.version, small_spec(third))[0].result == "promoted"
        assert {n: supervisor.service_status(settings, n).pid for n in servers} == servers, "a server was restarted"
        assert {n: s for n, s in model_states(settings).items() if n in candidates} == routes
    finally:
        stats = {name: gen.stop() for name, gen in load.items()}

    for name, st in stats.items():
        assert st.failed == 0, (name, st.errors[:3])
        assert st.sent == st.ok > 100, (name, st.as_dict())
        assert set(st.models) == {name}, f"{name}'s clients were answered by {dict(st.models)}"
        assert set(st.versions) <= {v.version for v in registry.list(name)}
        assert registry.current(name, "production").version == candidates[name]
        check_loss_free(settings, name, st)
