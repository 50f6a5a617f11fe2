"""Only declared label sources decide a release: the shadow gate and the canary's labelled check count the labels
whose ``source`` is declared (``kfrelease.collectors.feedback.LabelSources.declares``), and on a cluster the feedback
service accepts a label the ingress gateway relays only from a declared user (environments.yaml
``label_sources``), whatever other token the gateway verified."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from kfrelease.access.credentials import DEFAULT_LABEL_SOURCE, ensure_label_source, label_source_tokens
from kfrelease.collectors.feedback import (
    USER_HEADER,
    XFCC_HEADER,
    LabelSources,
    UndeclaredSource,
    declared_label_sources,
    write_feedback,
)
from kfrelease.config import Settings
from kfrelease.k8s.render.mesh import INGRESS_GATEWAY, label_source_declaration, principal
from kfrelease.lake.write import write_records
from kfrelease.release.controller import ReleaseController
from kfrelease.release.shadow import evaluate_shadow
from kfrelease.rollout.spec import GateRule, load_rollout_spec
from kfrelease.storage import store_for
from tests.release.conftest import logged_lines

V1, V2 = "V1.1.0", "V1.2.0"
LABELLER = "system:serviceaccount:shop:ground-truth"
DS_ADA = "system:serviceaccount:ds-ada:default-editor"


@pytest.fixture
def gate_logs(stack):
    """500 requests answered by production (V1) and the staging shadow (V2, the better model), labelled by the
    stack's declared source; then later labels of every request from an undeclared source saying production
    was exactly right (latest label wins: if they counted, production would win the gate)."""
    model = f"label-sources-{uuid.uuid4().hex[:6]}"
    since = pd.Timestamp.now(tz="UTC")
    rng = np.random.default_rng(1)
    truth = rng.normal(150, 50, 500)
    prod, cand = truth + rng.normal(0, 20, 500), truth + rng.normal(0, 10, 500)
    ids = [f"r-{uuid.uuid4().hex}" for _ in range(500)]
    lines = []
    for i, rid in enumerate(ids):
        lines += logged_lines(model, V1, rid, {"bmi": float(i)}, float(prod[i]))
        lines += logged_lines(f"{model}-staging", V2, rid, {"bmi": float(i)}, float(cand[i]))
    write_records(store_for("serving", stack), "inference-logs", model, lines, origin=f"test:{uuid.uuid4()}")
    serving = store_for("serving", stack)
    ensure_label_source(stack)
    write_feedback(
        serving, model, [{"request_id": r, "truth": float(t)} for r, t in zip(ids, truth)], DEFAULT_LABEL_SOURCE
    )
    forged = [{"request_id": r, "truth": float(p)} for r, p in zip(ids, prod)]
    write_feedback(serving, model, forged, f"{INGRESS_GATEWAY} user={DS_ADA}")
    return model, since, ids


def test_an_undeclared_sources_labels_do_not_count_in_the_shadow_gate(stack, gate_logs):
    model, since, _ = gate_logs
    store = store_for("pipeline", stack)
    rule = GateRule(min_exposure=0.01)
    declared = declared_label_sources(stack).declares  # the data dir's sources: "clients"
    verdict = evaluate_shadow(store, model, V2, V1, since, rule=rule, declared=declared, scale=20.0)
    assert verdict.decision == "pass", verdict.summary()
    forged_counted = evaluate_shadow(store, model, V2, V1, since, rule=rule, declared=lambda _s: True, scale=20.0)
    assert forged_counted.decision == "fail", forged_counted.summary()  # what the forged labels would decide


def test_an_undeclared_sources_labels_do_not_count_in_the_canarys_labelled_check(stack, gate_logs):
    model, since, ids = gate_logs
    spec = load_rollout_spec().with_changes(model=model)
    controller = ReleaseController(stack, spec, None, store=store_for("pipeline", stack), report=False)
    # the production-stage rows of V1 stand for the canary here: its own answers, labelled
    labelled = controller.canary_labelled(V1, since)
    assert len(labelled) == len(ids)
    assert not np.allclose(
        labelled["truth"].to_numpy(), labelled["prediction"].to_numpy()
    )  # declared truth, not forged


def _gateway(user: str | None) -> dict:
    headers = {XFCC_HEADER: f'By=spiffe://x;Hash=0;Subject="";URI=spiffe://{INGRESS_GATEWAY}'}
    return {**headers, USER_HEADER: user} if user else headers


def test_on_a_cluster_the_gateway_relays_labels_of_declared_users_only():
    sources = LabelSources.from_declaration(label_source_declaration(("shop",), (LABELLER,)))
    assert sources.source_of(_gateway(LABELLER)) == f"{INGRESS_GATEWAY} user={LABELLER}"
    for user in (DS_ADA, "ada@example.com", None):  # any other verified token's user, or none
        with pytest.raises(UndeclaredSource, match="label_sources of manifests/sources/environments.yaml"):
            sources.source_of(_gateway(user))
    client = principal("shop", "default")
    assert sources.source_of({XFCC_HEADER: f"URI=spiffe://{client}"}) == client  # an in-mesh client's sidecar
    assert sources.declares(f"{INGRESS_GATEWAY} user={LABELLER}") and sources.declares(client)
    for stored in (f"{INGRESS_GATEWAY} user={DS_ADA}", INGRESS_GATEWAY, principal("ds-ada", "default-editor"), None):
        assert not sources.declares(stored), stored
    # no label source declared outside the mesh: the gateway is no label source at all
    closed = LabelSources.from_declaration(label_source_declaration(("shop",)))
    with pytest.raises(UndeclaredSource):
        closed.source_of(_gateway(LABELLER))


def test_clients_declaring_one_label_source_at_once_all_get_the_token_that_stays_declared(tmp_path):
    """Two models' traffic declared the stack's label source at the same moment: each wrote its own token and the
    one replaced had every label refused with 403 from then on (a first release rolled back for want of labels,
    tests/platform/test_many_models.py). Declarations take turns: every caller gets the one declared token."""
    for round_ in range(20):
        settings = Settings(home=tmp_path / f"home{round_}")
        start = threading.Barrier(8)

        def declare(_, settings=settings, start=start):
            start.wait()
            return ensure_label_source(settings)

        with ThreadPoolExecutor(8) as pool:
            tokens = set(pool.map(declare, range(8)))
        assert len(tokens) == 1, f"round {round_}: {len(tokens)} different tokens handed out"
        assert label_source_tokens(settings) == {tokens.pop(): DEFAULT_LABEL_SOURCE}
