"""Shadow end to end with the real parts: the gateway in front of two kfrelease predictors that log to the
log sink; the prediction logs hold the primary's and the shadow's answers under the same request id, and
clients only ever got the primary's."""

from __future__ import annotations

import json

import joblib
import pytest

from kfrelease import httpcalls
from kfrelease.rollout.spec import parse_rollout_spec
from kfrelease.rollout.traffic import TrafficState
from kfrelease.stack import supervisor
from kfrelease.stack.gateway import LocalGatewayDriver
from tests.serving.serving_helpers import enter_private_home
from tests.waiting import eventually

pytestmark = pytest.mark.integration
MODEL = "gw-logs-test"


def _model_dir(root, version, offset):
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression

    frame = load_diabetes(as_frame=True).frame
    features = [c for c in frame.columns if c != "target"]
    d = root / version
    d.mkdir(parents=True)
    joblib.dump(LinearRegression().fit(frame[features], frame["target"] + offset), d / "model.joblib")
    entry = {
        "name": MODEL,
        "version": version,
        "input_schema": [{"name": f, "dtype": "float64"} for f in features],
        "target": "target",
    }
    (d / "model.json").write_text(json.dumps(entry))
    return d, frame[features]


@pytest.mark.slow(seconds=27, waits=True)
def test_logs_hold_primary_and_shadow_answers_under_the_same_request_id(stack, tmp_path, monkeypatch):
    from kfrelease.lake import read_predictions
    from kfrelease.stack.services import declared_services
    from kfrelease.storage import store_for

    # an isolated home and ports (for every process started here) on the session's S3
    settings = enter_private_home(stack, tmp_path / "home", monkeypatch)
    dirs = {}
    for version, offset in (("V1.1.0", 0.0), ("V1.2.0", 25.0)):
        dirs[version], frame = _model_dir(tmp_path / "models", version, offset)
    driver = LocalGatewayDriver(
        settings, parse_rollout_spec(f"model: {MODEL}\n"), model_dir_for=lambda model, version: dirs[version]
    )
    try:
        supervisor.up(settings, [s for s in declared_services(settings, ("serving",)) if s.name != "gateway"])
        driver.apply(TrafficState(primary="V1.1.0", shadow="V1.2.0", mirror_percent=100))
        url = settings.url("gateway", f"/v1/models/{MODEL}:predict")
        ids = []
        with httpcalls.client(timeout=30) as client:
            for i in range(40):
                r = client.post(url, json={"instances": [frame.iloc[i].tolist()]})
                assert r.status_code == 200, r.text
                assert r.json()["model_version"] == "V1.1.0"
                ids.append(r.headers["x-request-id"])
        store = store_for("monitoring", settings)

        def logged():
            logs = read_predictions(store, MODEL)
            return logs[logs["request_id"].isin(ids)]

        eventually(lambda: len(logged()) >= 2 * len(ids), 60, "the primary's and the shadow's logs", interval=0.5)
        mine = logged()
        by_version = mine.groupby("model_version")["request_id"].apply(set).to_dict()
        assert by_version == {"V1.1.0": set(ids), "V1.2.0": set(ids)}, "sent != logged for primary or shadow"
        assert len(mine) == 2 * len(ids), "duplicates in the logs"
        assert set(mine[mine.model_version == "V1.2.0"]["stage"]) == {"staging"}
    finally:
        driver.stop()
        supervisor.down(settings)
