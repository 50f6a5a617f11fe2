"""`kfrelease spec check model.yaml` tells the truth before a merge: the spec against its dataset's latest schema
(features, dtypes, target), and build code that defines its own estimator class (it works, or it is refused in
one line with what to do instead)."""

import uuid

import pytest

from kfrelease.data.pipeline import run_data_pipeline
from kfrelease.data.spec import parse_spec as parse_dataset_spec
from kfrelease.errors import ConfigError
from kfrelease.storage import store_for
from kfrelease.training.spec import parse_spec

pytestmark = pytest.mark.integration

DATASET = """name: {name}
source: {{prefix: {name}/}}
id_column: id
target: price
min_rows: 10
columns:
  id: {{dtype: int64, nullable: false, unique: true}}
  carat: {{dtype: float64, nullable: false}}
  cut: {{dtype: string, nullable: false}}
  price: {{dtype: float64, nullable: false}}
"""

#: build code with an estimator class of its own, written as scikit-learn's guide says (it trains and serves)
OWN_CLASS = """import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin


class ShrunkMean(RegressorMixin, BaseEstimator):
    def __init__(self, shrink=0.5):
        self.shrink = shrink

    def fit(self, X, y):
        self.mean_ = float(np.mean(y))
        return self

    def predict(self, X):
        return np.full(len(X), self.mean_ * (1 - self.shrink))


def build_model():
    return ShrunkMean()
"""

#: one that breaks the convention clone() relies on (its __init__ changes its argument)
BROKEN_CLASS = OWN_CLASS.replace("self.shrink = shrink", "self.shrink = shrink * 2")


@pytest.fixture
def gems(stack) -> str:
    """A curated dataset with a text column (``cut``)."""
    name = f"gems-{uuid.uuid4().hex[:8]}"
    spec = parse_dataset_spec(DATASET.format(name=name), name)
    rows = "\n".join(f"{i},{0.2 + i / 100:.2f},{'Ideal' if i % 2 else 'Good'},{300 + 7 * i}" for i in range(1, 41))
    store = store_for("data-engineer")
    store.put_bytes("raw", f"{name}/batch-1.csv", f"id,carat,cut,price\n{rows}\n".encode())
    run_data_pipeline(spec, store)
    return name


def model_yaml(dataset: str, **changes) -> str:
    doc = {
        "name": "gem-price",
        "tag": 1,
        "dataset": dataset,
        "features": ["carat"],
        "target": "price",
        "estimator": {"class": "sklearn.linear_model.Ridge"},
        "validation": {"max_rmse": 100},
        **changes,
    }
    import yaml

    return yaml.safe_dump(doc, sort_keys=False)


def check(run_cli, tmp_path, text: str, code: str | None = None, *args: str):
    project = tmp_path / uuid.uuid4().hex[:6]
    project.mkdir()
    (project / "model.yaml").write_text(text)
    if code is not None:
        (project / "model.py").write_text(code)
    out = run_cli("spec", "check", *args, str(project / "model.yaml"))
    return out.returncode, (out.stdout + out.stderr).strip()


def test_spec_check_reads_the_datasets_latest_schema(gems, run_cli, tmp_path):
    code, line = check(run_cli, tmp_path, model_yaml(gems))
    assert code == 0 and line.endswith(
        f"valid model 'gem-price' V1, Ridge on 1 features, against dataset '{gems}' version "
        + line.split(" version ")[1].split(" ")[0]
        + " (features, dtypes, target)"
    )
    code, line = check(run_cli, tmp_path, model_yaml(gems, features=["carat", "depth"]))
    assert code == 1 and "\n" not in line
    assert f"feature(s) ['depth'] not in dataset '{gems}' version " in line
    assert "its columns are ['id', 'carat', 'cut', 'price']; fix features/target in model.yaml" in line
    code, line = check(run_cli, tmp_path, model_yaml(gems, features=["carat", "cut"]))
    assert code == 0, line  # a text column is a category feature (the model's own encoder takes it)
    code, line = check(run_cli, tmp_path, model_yaml(gems, target="cut"))
    assert code == 1 and "\n" not in line
    assert f"target 'cut' of dataset '{gems}' version " in line
    assert "is string, not a number; a regression model predicts a numeric column: fix target in model.yaml" in line
    code, line = check(run_cli, tmp_path, model_yaml(gems, target="value"))
    assert code == 1 and "target ['value'] not in dataset" in line
    code, line = check(run_cli, tmp_path, model_yaml("no-such-data"))
    assert code == 1 and "dataset 'no-such-data' has no published version" in line
    code, line = check(run_cli, tmp_path, model_yaml("no-such-data"), None, "--offline")
    assert code == 0 and line.endswith("(dataset not checked: --offline)")


def test_build_code_with_its_own_estimator_class(gems, run_cli, tmp_path):
    own = model_yaml(gems, build="model.py:build_model")
    own = own.replace("estimator:\n  class: sklearn.linear_model.Ridge\n", "")
    code, line = check(run_cli, tmp_path, own, OWN_CLASS)
    assert code == 0 and "valid model 'gem-price' V1, ShrunkMean on 1 features" in line
    code, line = check(run_cli, tmp_path, own, BROKEN_CLASS)
    assert code == 1 and "\n" not in line and "_parameter_constraints" not in line
    assert "ShrunkMean cannot be copied by sklearn.base.clone" in line
    assert "store every __init__ argument unchanged as an attribute of the same name" in line


def test_a_class_without_fit_and_predict_is_named():
    text = model_yaml("d", build="model.py:build_model").replace(
        "estimator:\n  class: sklearn.linear_model.Ridge\n", ""
    )
    plain = "class Model:\n    def fit(self, X, y):\n        return self\n\n"
    spec = parse_spec(text, code={"model.py": plain + "def build_model():\n    return Model()\n"})
    with pytest.raises(ConfigError, match=r"Model has no fit/predict; return a scikit-learn compatible regressor"):
        spec.build_estimator()
