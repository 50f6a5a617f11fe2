"""``kfrelease serve``: serves what the model registry marks production (primary) and staging (shadow),
through the gateway, as services of the embedded stack.

The CLI runs in its own KFRELEASE_HOME and ports (credentials copied from the session stack, same S3), so
its model servers never meet those of other tests.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import joblib
import pytest

from kfrelease import httpcalls
from kfrelease.config import Settings
from kfrelease.stack import supervisor
from tests.serving.serving_helpers import private_home_env

pytestmark = pytest.mark.integration
MODEL = "gw-serve-test"


@pytest.fixture(scope="module")
def serve_env(stack, tmp_path_factory):
    home = tmp_path_factory.mktemp("serve-home") / "home"
    env = private_home_env(stack, home)
    spec = home / "rollout.yaml"
    spec.write_text(f"model: {MODEL}\n")
    yield env, str(spec)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        supervisor.down(Settings.from_env())
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _register(stack, version_tag: int, fit_offset: float):
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression

    from kfrelease.registry import ModelRegistry, TrainedModel
    from kfrelease.storage import store_for

    frame = load_diabetes(as_frame=True).frame
    features = [c for c in frame.columns if c != "target"]
    model = LinearRegression().fit(frame[features], frame["target"] + fit_offset)
    buf = io.BytesIO()
    joblib.dump(model, buf)
    registry = ModelRegistry(store_for("pipeline", stack))
    reg = registry.register(
        TrainedModel(
            name=MODEL,
            tag=version_tag,
            spec_fingerprint=f"fp-{version_tag}",
            dataset="diabetes",
            dataset_version="test",
            commit="0" * 40,
            run_id=f"run-{version_tag}",
            metrics={"mse": 1.0, "rmse": 1.0, "mae": 1.0, "r2": 0.5},
            verdict={"passed": True, "reasons": []},
            input_schema=[{"name": f, "dtype": "float64"} for f in features],
            target="target",
            model_bytes=buf.getvalue(),
        )
    )
    return registry, reg.version.version, model, frame[features].iloc[:3]


def test_serve_without_a_production_version_says_so_and_starts_nothing(run_cli, serve_env):
    env, spec = serve_env
    proc = run_cli("serve", "--spec", spec, env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error:") and f"no version of {MODEL} is in production" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    status = run_cli("serve", "status", env=env, check=True).stdout
    assert "traffic: no traffic state applied" in status


@pytest.mark.slow(seconds=28)
def test_serve_runs_production_as_primary_and_staging_as_shadow(stack, run_cli, serve_env):
    env, spec = serve_env
    registry, v1, model1, rows = _register(stack, 1, 0.0)
    _, v2, _, _ = _register(stack, 2, 10.0)
    registry.set_stage(MODEL, v1, "production", who="test", why="serve test")
    registry.set_stage(MODEL, v2, "staging", who="test", why="serve test")

    run_cli("serve", "--spec", spec, env=env, check=True, timeout=300)
    status = run_cli("serve", "status", env=env, check=True).stdout
    assert f"{MODEL} traffic: primary {v1}, shadow {v2} (100% mirrored)" in status
    assert "predictor-production" in status and "predictor-staging" in status
    assert f"{MODEL} {v1}" in status  # the production server's row names what it hosts

    settings = Settings(home=Path(env["KFRELEASE_HOME"]), port_offset=int(env["KFRELEASE_PORT_OFFSET"]))
    url = settings.url("gateway", f"/v1/models/{MODEL}:predict")
    r = httpcalls.post(url, json={"instances": rows.values.tolist()}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == v1
    assert body["predictions"] == pytest.approx(model1.predict(rows).tolist(), rel=0, abs=1e-9)

    again = run_cli("serve", "--spec", spec, env=env, check=True, timeout=300)  # idempotent
    assert f"primary {v1}, shadow {v2}" in again.stdout

    stopped = run_cli("serve", "stop", env=env, check=True).stdout
    assert "gateway" in stopped and "predictor-production" in stopped
    assert "predictor-production" not in run_cli("serve", "status", env=env, check=True).stdout


def test_a_bad_rollout_spec_is_refused_in_one_line_and_starts_nothing(run_cli, serve_env, tmp_path):
    env, _ = serve_env
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"model: {MODEL}\ncanary: {{steps: [50, 20, 100]}}\n")
    proc = run_cli("serve", "--spec", str(bad), env=env)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "not strictly increasing" in proc.stderr and "nothing was changed" in proc.stderr
    settings = Settings(home=Path(env["KFRELEASE_HOME"]), port_offset=int(env["KFRELEASE_PORT_OFFSET"]))
    assert not supervisor.service_status(settings, "gateway").healthy
