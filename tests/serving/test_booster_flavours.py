"""Native XGBoost and LightGBM flavours and ONNX through onnxmltools (``kfrelease.registry.artifact``), on
ggplot2's diamonds: a booster behind a one-hot ColumnTransformer converts to ONNX with text inputs and serves it;
a bare booster also has its own model file (XGBoost's UBJSON, LightGBM's text), read without running code, and
the fastest verified flavour is served; when ONNX does not verify, the booster file serves and the entry says
why. An ONNX model whose tensors live in external files is refused wherever it is loaded."""

from __future__ import annotations

import json
import pickle

import numpy as np
import onnx
import pytest
from lightgbm import LGBMRegressor
from onnx.external_data_helper import set_external_data
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder
from threadpoolctl import threadpool_limits
from xgboost import XGBRegressor

from kfrelease.errors import ConfigError
from kfrelease.registry.artifact import (
    ENTRY_FILE,
    FLAVOURS,
    agreement,
    artifact_record,
    booster_flavour,
    choose_flavour,
    convert_flavours,
    flavour_named,
    input_columns,
    load_model_dir,
    model_format,
    verify_flavour,
)
from tests.serving.serving_helpers import (
    DIAMONDS_CATEGORIES,
    DIAMONDS_FEATURES,
    DIAMONDS_NUMBERS,
    diamonds_frame,
    diamonds_schema,
)

BOOSTERS = {
    "xgboost": lambda: XGBRegressor(n_estimators=60, max_depth=4, n_jobs=1, random_state=0),
    "lightgbm": lambda: LGBMRegressor(n_estimators=60, n_jobs=1, random_state=0, verbose=-1),
}
NUMBERS = input_columns([{"name": c, "dtype": "float64"} for c in DIAMONDS_NUMBERS])


@pytest.fixture(scope="module")
def diamonds():
    frame = diamonds_frame()
    return frame, frame.iloc[:2500], frame.iloc[2500:]


def _one_hot(booster):
    encode = ColumnTransformer(
        [("n", "passthrough", DIAMONDS_NUMBERS), ("c", OneHotEncoder(handle_unknown="ignore"), DIAMONDS_CATEGORIES)]
    )
    return make_pipeline(encode, booster)


def _fit(model, train, features):
    with threadpool_limits(1):
        return model.fit(train[features], train["price"])


def _artifact(folder, checks, served, fallback, files, schema):
    for name, data in files.items():
        (folder / flavour_named(name).file).write_bytes(data)
    entry = {"name": "m", "version": "V1.1.0", "input_schema": [c.as_dict() for c in schema]}
    (folder / ENTRY_FILE).write_text(json.dumps({**entry, "artifact": artifact_record(checks, served, fallback)}))
    return folder


@pytest.mark.parametrize("name", sorted(BOOSTERS))
def test_a_booster_behind_a_one_hot_encoder_is_served_as_onnx_through_onnxmltools(diamonds, name, tmp_path):
    frame, train, held_out = diamonds
    model = _fit(_one_hot(BOOSTERS[name]()), train, DIAMONDS_FEATURES)
    schema = input_columns(diamonds_schema(frame))
    converted = convert_flavours(model, schema, held_out[DIAMONDS_FEATURES])
    onnx_check, native = converted.checks["onnx"], converted.checks[name]
    assert onnx_check.verified and onnx_check.agreement <= 1e-4, onnx_check.reason
    assert onnx_check.rows == len(held_out) and onnx_check.predict_us < converted.checks["sklearn"].predict_us
    # the booster file holds the trees, not the encoder: not made, and the entry says why
    assert not native.verified and "last step of a Pipeline (columntransformer before it)" in native.reason
    served, fallback = choose_flavour(converted.checks)
    assert served == "onnx" and fallback.startswith(f"kept onnx: {name}: conversion failed: the ")
    record = artifact_record(converted.checks, served, fallback)
    assert record["served_because"].startswith("the fastest verified flavour (onnx ")
    folder = _artifact(tmp_path, converted.checks, served, fallback, {"onnx": converted.files["onnx"]}, schema)
    loaded = load_model_dir(folder)  # category values as text, the ONNX graph encodes them
    assert loaded.flavour.name == "onnx" and not loaded.numeric
    assert agreement(loaded.predict(held_out), model.predict(held_out[DIAMONDS_FEATURES])) <= 1e-4


@pytest.mark.parametrize("name", sorted(BOOSTERS))
def test_a_bare_booster_has_its_own_model_file_read_without_running_code(diamonds, name, tmp_path, monkeypatch):
    _, train, held_out = diamonds
    model = _fit(BOOSTERS[name](), train, DIAMONDS_NUMBERS)
    assert booster_flavour(model) == name and booster_flavour(Ridge()) is None
    converted = convert_flavours(model, NUMBERS, held_out[DIAMONDS_NUMBERS])
    native = converted.checks[name]
    assert native.verified and native.agreement == 0.0 and native.rows == len(held_out), native.reason
    assert converted.checks["onnx"].verified  # both verified: the faster one serves
    served, fallback = choose_flavour(converted.checks)
    fastest = min(("onnx", name), key=lambda n: converted.checks[n].predict_us)
    assert served == fastest and fallback == ""

    # served as the booster file (model.yaml `flavour: xgboost|lightgbm`), in a process that refuses pickles
    files = {name: converted.files[name]}
    folder = _artifact(tmp_path, converted.checks, name, "", files, NUMBERS)
    (folder / "model.joblib").write_bytes(b"a pickle that would fail if anything read it")
    monkeypatch.setenv("KFRELEASE_REFUSE_PICKLE", "1")
    loaded = load_model_dir(folder)
    assert loaded.flavour.name == name and not loaded.flavour.runs_code and model_format(loaded.entry) == name
    want = model.predict(held_out[DIAMONDS_NUMBERS])
    assert np.array_equal(loaded.predict(held_out[DIAMONDS_NUMBERS].to_numpy("float64")), want)  # the same trees
    assert np.array_equal(loaded.predict(held_out), want)  # a typed frame: the schema's columns in order
    assert verify_flavour(name, converted.files[name], NUMBERS, held_out[DIAMONDS_NUMBERS], want).verified
    assert choose_flavour(converted.checks, name) == (name, "")


@pytest.mark.parametrize("name", sorted(BOOSTERS))
def test_a_booster_whose_onnx_does_not_verify_serves_its_own_file_and_says_why(diamonds, name):
    _, train, held_out = diamonds
    model = _fit(BOOSTERS[name](), train, DIAMONDS_NUMBERS)
    # float32 ONNX is ~1e-7 from the booster's own answers: a tolerance of 1e-12 refuses it, the booster file is exact
    strict = convert_flavours(model, NUMBERS, held_out[DIAMONDS_NUMBERS], tolerance=1e-12)
    assert not strict.checks["onnx"].verified and strict.checks[name].verified
    served, fallback = choose_flavour(strict.checks)
    assert served == name
    assert fallback.startswith(f"kept {name}: onnx: its predictions differ from scikit-learn's by up to ")
    record = artifact_record(strict.checks, served, fallback)
    assert record["model_format"] == name and record["flavour"] == name
    assert record["files"] == sorted([FLAVOURS["sklearn"].file, FLAVOURS[name].file]) + [ENTRY_FILE]
    assert record["served_because"].startswith(f"the fastest verified flavour ({name} ")


def test_a_booster_file_for_other_columns_or_of_another_kind_is_refused(diamonds, tmp_path):
    _, train, held_out = diamonds
    model = _fit(BOOSTERS["xgboost"](), train, DIAMONDS_NUMBERS)
    converted = convert_flavours(model, NUMBERS, held_out[DIAMONDS_NUMBERS], wanted="xgboost")
    assert set(converted.checks) == {"sklearn", "xgboost"}  # asked for by name: only that one is tried
    shuffled = input_columns([c.as_dict() for c in reversed(NUMBERS)])
    check = verify_flavour("xgboost", converted.files["xgboost"], shuffled, held_out[DIAMONDS_NUMBERS], [0.0])
    assert not check.verified and "are not the input schema's" in check.reason
    lgbm = verify_flavour("lightgbm", converted.files["xgboost"], NUMBERS, held_out[DIAMONDS_NUMBERS], [0.0])
    assert not lgbm.verified and lgbm.reason.startswith("does not run:")
    ridge = convert_flavours(_fit(Ridge(), train, DIAMONDS_NUMBERS), NUMBERS, held_out[DIAMONDS_NUMBERS], "lightgbm")
    assert "not a LGBMRegressor" in ridge.checks["lightgbm"].reason  # named, but not that kind of model
    assert set(convert_flavours(_fit(Ridge(), train, DIAMONDS_NUMBERS), NUMBERS, held_out[:50]).checks) == {
        "sklearn",
        "onnx",
    }  # auto: a native booster flavour is tried only for its own regressor


class _Marker:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("name", sorted(BOOSTERS))
def test_a_pickle_named_as_a_booster_file_is_never_run(tmp_path, name):
    marker = tmp_path / "ran"
    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / FLAVOURS[name].file).write_bytes(pickle.dumps(_Marker(str(marker))))
    entry = {"name": "m", "input_schema": [c.as_dict() for c in NUMBERS], "artifact": {"flavour": name}}
    (folder / ENTRY_FILE).write_text(json.dumps(entry))
    with pytest.raises(ConfigError, match=f"could not be loaded as a {name} model"):
        load_model_dir(folder)
    assert not marker.exists()


def _linear_onnx() -> tuple[onnx.ModelProto, bytes]:
    """y = X @ w as an ONNX graph whose weights are an initializer (a tensor that can live in an external file)."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.arange(1, 7, dtype=np.float32).reshape(6, 1), name="w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "w"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model, model.SerializeToString()


@pytest.mark.parametrize("location", ["weights.bin", "../../outside/weights.bin"])
def test_an_onnx_model_that_keeps_its_tensors_in_external_files_is_refused(diamonds, tmp_path, location):
    model, plain = _linear_onnx()
    tensor = model.graph.initializer[0]
    raw = onnx.numpy_helper.to_array(tensor).tobytes()
    set_external_data(tensor, location=location, offset=0, length=len(raw))
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    crafted = model.SerializeToString()
    folder = tmp_path / "artifact" / "V1"
    folder.mkdir(parents=True)
    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    (folder / location).write_bytes(raw)  # the weights are there: ONNX Runtime would read them from that path
    (folder / "model.onnx").write_bytes(crafted)
    entry = {"name": "m", "input_schema": [c.as_dict() for c in NUMBERS], "artifact": {"flavour": "onnx"}}
    (folder / ENTRY_FILE).write_text(json.dumps(entry))

    with pytest.raises(ConfigError) as refused:  # serving: the model server's load
        load_model_dir(folder)
    message = str(refused.value)
    assert "external data files" in message and location in message and "save_as_external_data=False" in message
    # trusted steps (evaluate's verification): not verified, with the same reason; nothing was read
    _, _, held_out = diamonds
    check = verify_flavour("onnx", crafted, NUMBERS, held_out[:20][DIAMONDS_NUMBERS], np.zeros(20))
    assert not check.verified and "external data files" in check.reason
    (folder / "model.onnx").write_bytes(plain)  # the same model with its tensors inside loads and answers
    assert load_model_dir(folder).predict(np.ones((1, 6))).tolist() == [21.0]


def test_the_booster_flavours_name_kserves_model_formats_and_run_no_code():
    # kserve/kserve config/runtimes/kserve-xgbserver.yaml and kserve-lgbserver.yaml: supportedModelFormats
    # name "xgboost" and "lightgbm"
    for name, file in (("xgboost", "model.ubj"), ("lightgbm", "model.txt")):
        flavour = FLAVOURS[name]
        assert (flavour.model_format, flavour.framework, flavour.file) == (name, name, file)
        assert not flavour.runs_code and flavour.available()
