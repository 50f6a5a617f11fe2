"""A model with category features, served with its prediction logger, end to end with the real processes
(predictor, log sink, SeaweedFS): the category strings clients send are stored as strings in the Parquet
lake, and a refused request (an unknown category) is answered 400 and never logged."""

from __future__ import annotations

import pytest

from kfrelease import httpcalls
from kfrelease.lake.read import stored_rows
from kfrelease.stack import supervisor
from kfrelease.stack.serving import logsink_service
from kfrelease.storage import store_for
from tests.serving.serving_helpers import (
    DIAMONDS_CATEGORIES,
    DIAMONDS_FEATURES,
    DIAMONDS_NUMBERS,
    diamonds_frame,
    enter_private_home,
    fast_flush,
    make_diamonds_model_dir,
    start_predictor,
)
from tests.waiting import eventually

pytestmark = pytest.mark.integration
MODEL = "diamond-price-logged"


@pytest.fixture(scope="module")
def serving(stack, tmp_path_factory):
    root = tmp_path_factory.mktemp("category-logging")
    mp = pytest.MonkeyPatch()
    settings = enter_private_home(stack, root / "home", mp)
    sink = fast_flush(logsink_service(settings))
    try:
        supervisor.up(settings, [sink])
        model_dir = make_diamonds_model_dir(root / "models", MODEL)
        url = start_predictor(settings, model_dir, name=MODEL, logger_url=settings.url("logsink", "/"))
        yield url, store_for("monitoring", settings)
    finally:
        supervisor.down(settings)
        mp.undo()


def test_category_values_are_logged_as_values_and_refused_requests_are_not_logged(serving):
    url, store = serving
    frame = diamonds_frame(50).iloc[10:20][DIAMONDS_FEATURES]
    ids = [f"cat-log-{i}" for i in range(len(frame))]
    with httpcalls.client(timeout=30) as client:
        for rid, row in zip(ids, frame.to_dict(orient="records")):
            r = client.post(
                f"{url}/v1/models/{MODEL}:predict", json={"instances": [row]}, headers={"x-request-id": rid}
            )
            assert r.status_code == 200, r.text
        bad = {**frame.iloc[0].to_dict(), "cut": "Perfect"}
        r = client.post(f"{url}/v1/models/{MODEL}:predict", json={"instances": [bad]}, headers={"x-request-id": "bad"})
        assert r.status_code == 400 and "'cut'" in r.json()["error"]

    def logged():
        rows = [r for r in stored_rows(store, "inference-logs", MODEL).to_pylist() if r["type"] == "request"]
        got = {r["request_id"]: r for r in rows}
        return got if set(ids) <= set(got) else None

    got = eventually(logged, 60, "10 request events in the lake")
    assert "bad" not in got
    positions = [DIAMONDS_FEATURES.index(c) for c in DIAMONDS_CATEGORIES]
    for rid, row in zip(ids, frame.to_dict(orient="records")):
        stored = got[rid]
        assert [stored["inputs_text"][j] for j in positions] == [row[c] for c in DIAMONDS_CATEGORIES]
        assert stored["inputs"][: len(DIAMONDS_NUMBERS)] == [row[c] for c in DIAMONDS_NUMBERS]
        assert stored["features"] == ",".join(DIAMONDS_FEATURES)
