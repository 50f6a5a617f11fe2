"""Text (category) features in training: a model project on ggplot2's diamonds (``cut``, ``color`` and ``clarity``
as text, no codes in the curated data) is checked, split, fitted and scored with the values as they are, and
registers the input schema its dataset spec declares (each category's known values). Offline (no stack)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kfrelease.data.spec import load_spec
from kfrelease.demo.data import DIAMONDS_CATEGORIES, DIAMONDS_FEATURES, batches_of
from kfrelease.demo.project import DIAMONDS_EXAMPLE, diamonds_code
from kfrelease.errors import DataValidationError
from kfrelease.quality.evaluation import regression_report
from kfrelease.registry.artifact import input_columns
from kfrelease.release.controller import _instances
from kfrelease.training.core import check_data, check_schema, predict, train
from kfrelease.training.evidence import split_frame
from kfrelease.training.spec import parse_spec


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return batches_of("diamonds")[0]


@pytest.fixture(scope="module")
def spec():
    return parse_spec((DIAMONDS_EXAMPLE / "model.yaml").read_text(), code={"model.py": diamonds_code(1)})


def manifest(frame: pd.DataFrame) -> dict:
    dtypes = {c: ("string" if frame[c].dtype == object else str(frame[c].dtype)) for c in frame.columns}
    return {"columns": [{"name": c, "dtype": t} for c, t in dtypes.items()]}


def test_text_features_pass_the_schema_check_but_a_text_target_or_a_date_feature_does_not(spec, data):
    check_schema(spec, manifest(data), "v1")  # cut, color, clarity are string columns: accepted
    with pytest.raises(DataValidationError, match=r"target 'price' of dataset 'diamonds' version v1 is string"):
        check_schema(spec, manifest(data.assign(price=data["price"].astype(str))), "v1")
    dated = manifest(data)
    next(c for c in dated["columns"] if c["name"] == "cut")["dtype"] = "datetime64[ns]"
    with pytest.raises(DataValidationError, match=r"cut \(datetime64\[ns\]\) .* are neither numbers nor text"):
        check_schema(spec, dated, "v1")
    with pytest.raises(DataValidationError, match=r"rows without a value in \['color'\]"):
        check_data(spec, data.assign(color=data["color"].where(data.index != 7)), "v1")


def test_a_categorical_project_trains_on_the_values_and_registers_their_known_values(spec, data):
    result = train(spec, data, "v1", id_column="diamond_id")
    for frame in (result.train, result.test):
        assert all(frame[c].map(type).eq(str).all() for c in DIAMONDS_CATEGORIES)  # the values, not codes
        assert all(frame[c].dtype == "float64" for c in DIAMONDS_FEATURES if c not in DIAMONDS_CATEGORIES)
    rmse = float(np.sqrt(np.mean((predict(result.model, result.test, spec.features) - result.test["price"]) ** 2)))
    assert rmse < 2000.0  # the example's max_rmse: the categories are used as categories
    columns = {c.name: c for c in input_columns(spec.input_schema(load_spec("diamonds")))}
    assert [c.name for c in columns.values()] == list(spec.features)
    for c in DIAMONDS_CATEGORIES:  # the dataset spec's categories, all of which the data holds
        assert columns[c].dtype == "category" and set(columns[c].categories) == set(data[c].unique())
        assert columns[c].unknown == "refuse"
    assert columns["carat"].dtype == "float64"


def test_the_split_keys_rows_by_their_text_values_and_the_report_takes_them_as_categories(spec, data):
    split = split_frame(spec, data.drop(columns="diamond_id"), "v1")  # no id column: the row's values are the key
    again = split_frame(spec, data.drop(columns="diamond_id").iloc[::-1], "v1")
    assert set(map(tuple, split.held_out.to_numpy())) == set(map(tuple, again.held_out.to_numpy()))
    assert 0.1 < len(split.held_out) / len(data) < 0.3
    frame = split.held_out.assign(prediction=split.held_out["price"] * 1.1)
    metrics, html = regression_report(frame, "price", "prediction", list(spec.features))
    assert "error" not in metrics["evidently"] and metrics["evidently"]["RMSE"] > 0 and "<html" in html


def test_logged_inputs_are_replayed_with_their_category_values():
    frame = pd.DataFrame({"carat": [0.3, 1.0], "cut": ["Ideal", "Fair"], "x": np.array([4, 6], dtype="int64")})
    rows = _instances(frame, ["carat", "cut", "x"])
    assert rows == [[0.3, "Ideal", 4.0], [1.0, "Fair", 6.0]]
    assert all(type(v) in (float, str) for row in rows for v in row)  # JSON-ready, numbers as floats


THREADS_PROBE = '''
from threadpoolctl import threadpool_info
from sklearn.base import BaseEstimator, RegressorMixin


class OpenMPProbe(RegressorMixin, BaseEstimator):
    """Records the OpenMP pools' thread counts it sees while it fits."""

    def fit(self, X, y):
        self.seen_ = sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"})
        self.mean_ = float(y.mean())
        return self

    def predict(self, X):
        return [self.mean_] * len(X)


def build_model():
    return OpenMPProbe()
'''


@pytest.mark.parametrize("cores", ["1", "2"])
def test_a_model_fits_with_the_native_threads_of_the_cores_the_step_is_given(spec, data, monkeypatch, cores):
    from threadpoolctl import threadpool_info

    from kfrelease.training.core import fit

    if not any(p["user_api"] == "openmp" for p in threadpool_info()):
        import sklearn.ensemble  # noqa: F401 - loads scikit-learn's OpenMP runtime

    monkeypatch.setenv("OMP_NUM_THREADS", cores)  # what a step's CPU limit gives it (else its cgroup quota, else 1)
    probe = parse_spec(
        (DIAMONDS_EXAMPLE / "model.yaml").read_text().replace("model.py:build_model", "probe.py:build_model"),
        code={"probe.py": THREADS_PROBE},
    )
    model, _ = fit(probe, data)
    assert model.seen_ == [int(cores)]  # not one thread per visible core: they only wait for each other when busy


def test_the_train_step_converts_a_categorical_model_to_onnx_with_text_inputs(spec, data, tmp_path):
    from kfrelease.training.core import split
    from kfrelease.training.steps import train_step

    train_rows, held_out = split(spec, data, "diamond_id")
    train_rows[[*spec.features, spec.target]].to_parquet(tmp_path / "train.parquet")
    held_out[list(spec.features)].to_parquet(tmp_path / "holdout.parquet")
    out = train_step(
        spec,
        str(tmp_path / "train.parquet"),
        str(tmp_path / "holdout.parquet"),
        str(tmp_path / "model.joblib"),
        str(tmp_path / "predictions.parquet"),
        str(tmp_path / "model.onnx"),
    )
    assert out["flavours"]["onnx"]["verified"], out["flavours"]["onnx"]  # typed as text, not cast to float
    assert (tmp_path / "model.onnx").stat().st_size > 0
