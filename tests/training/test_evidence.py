"""Evidence computed by trusted code (issue 23, item 3), end to end on the embedded stack: a model whose code
forges the metrics of any process that loads it, and looks for the labels, is still judged on its real errors;
its own estimator class travels with it by value (issue 26); no trusted step could have loaded it."""

import json
import subprocess
import sys

import pytest

from kfrelease.demo.project import merge_change, spec_variant
from kfrelease.registry import ModelRegistry
from kfrelease.storage import store_for
from kfrelease.training.trigger import wait

pytestmark = pytest.mark.integration

#: build code whose model lies: loaded anywhere, it makes that process report perfect metrics; asked to predict
#: rows that carry the target, it answers the target. Otherwise it predicts 0 (RMSE ~160 on this data).
LIAR = """import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin


def _forge():
    import kfrelease.evaluation as evaluation
    import kfrelease.metrics as metrics

    perfect = {"mse": 0.01, "rmse": 0.1, "mae": 0.1, "r2": 0.999, "n": 1}
    metrics.regression_metrics = lambda *a, **k: dict(perfect)
    evaluation.regression_metrics = metrics.regression_metrics
    evaluation.regression_report = lambda frame, *a, **k: ({**perfect, "n": len(frame)}, "<html>perfect</html>")


class Liar(RegressorMixin, BaseEstimator):
    def fit(self, X, y):
        self.rows_, self.columns_ = len(X), list(X.columns)
        return self

    def predict(self, X):
        _forge()
        if "progression" in X.columns:
            return X["progression"].to_numpy()
        return np.zeros(len(X))

    def __setstate__(self, state):
        self.__dict__.update(state)
        _forge()


def build_model():
    return Liar()
"""


def test_a_model_that_lies_about_its_metrics_is_caught(project, stack, run_cli):
    repo, _, name = project
    text = spec_variant(2, (repo / "model.yaml").read_text())  # build: model.py:build_model
    sha = merge_change(repo, "liar", {"model.yaml": text, "model.py": LIAR}, "A model that reports its own score")
    assert "valid model" in run_cli("spec", "check", "--offline", str(repo / "model.yaml"), check=True).stdout
    run_cli("trigger", "--commit", sha, "--repo", str(repo), check=True)
    record = wait(stack, f"train-{sha[:12]}", timeout=300)
    assert record.status == "succeeded", record.state
    assert record.state["verdict"] == "rejected" and record.state["outcome"] == "rejected"

    mv = ModelRegistry(store_for("pipeline")).get(name, record.state["version"])
    assert mv.metrics["rmse"] > 100 and mv.metrics["r2"] < 0  # its real errors, not the 0.1 it forges
    assert any(r.startswith(f"rmse {mv.metrics['rmse']:.4g}") and "> 70" in r for r in mv.verdict["reasons"])
    held_out = mv.entry["held_out"]
    assert mv.entry["split"]["method"] == "hash" and mv.entry["split"]["id_column"] == "patient_id"

    # the lie is real: a process that loads this model (as evaluate did when it ran the model code) reports a
    # perfect score for it; and the model was fitted on the training rows only, without the target column
    probe = """
import json, sys
import joblib
import pandas as pd
from kfrelease.evaluation import regression_report
model = joblib.load(sys.argv[1])
frame = pd.DataFrame({"y": [100.0, 200.0], "p": [0.0, 0.0], "x": [1.0, 2.0]})
print(json.dumps({"rmse": regression_report(frame, "y", "p", ["x"])[0]["rmse"], "rows": model.rows_,
                  "columns": model.columns_}))
"""
    artifact = store_for("data-scientist").get_bytes("models", f"artifacts/{name}/{mv.version}/model.joblib")
    path = repo / "liar.joblib"
    path.write_bytes(artifact)
    out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["rmse"] == 0.1  # forged in the process that loaded it
    assert seen["rows"] == held_out["train_rows"] and "progression" not in seen["columns"]
