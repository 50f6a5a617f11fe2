"""The model spec: parsing, clear errors before any training, and the fingerprint that decides manual revisions."""

from pathlib import Path

import pandas as pd
import pytest

from kfrelease.data.features import diabetes_features
from kfrelease.demo.data import diabetes_frame
from kfrelease.demo.project import spec_variant
from kfrelease.errors import ConfigError, DataValidationError
from kfrelease.training.core import check_data, train
from kfrelease.training.spec import load_project, parse_spec

EXAMPLE = "examples/diabetes-model"


def spec_text(**changes):
    return spec_variant(1, **changes)


def test_example_project_parses_and_builds_its_estimator():
    spec = load_project(EXAMPLE)
    assert spec.name == "diabetes-progression" and spec.tag == 1 and spec.features[-1] == "bmi_bp"
    assert type(spec.build_estimator()).__name__ == "Ridge"
    assert spec.thresholds() == {"max_rmse": 70.0, "min_r2": 0.1} and spec.tolerance() == 0.02


def test_build_function_in_project_code():
    spec = parse_spec(spec_variant(2), code={"model.py": Path(EXAMPLE, "model.py").read_text()})
    assert type(spec.build_estimator()).__name__ == "Pipeline"


def test_fingerprint_changes_with_the_definition_only():
    base = parse_spec(spec_text())
    assert parse_spec(spec_text(tag=2)).fingerprint == base.fingerprint  # tag: not the definition
    assert parse_spec(spec_text(validation={"max_rmse": 1})).fingerprint == base.fingerprint
    assert parse_spec(spec_text(dataset="other")).fingerprint == base.fingerprint
    changed = spec_text(estimator={"class": "sklearn.linear_model.Ridge", "params": {"alpha": 1.0}})
    assert parse_spec(changed).fingerprint != base.fingerprint  # a hyper-parameter
    assert parse_spec(spec_text(features=["age", "bmi"])).fingerprint != base.fingerprint
    code_a = parse_spec(spec_variant(2), code={"model.py": "def build_model():\n    return 1\n"})
    code_b = parse_spec(spec_variant(2), code={"model.py": "def build_model():\n    return 2\n"})
    assert code_a.fingerprint != code_b.fingerprint  # training code


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: [unclosed", "not valid YAML"),
        ("- a list", "a model spec is a mapping"),
        (spec_text(tag=0), "tag must be a whole number"),
        (spec_text(target="age"), "also listed as a feature"),
        (spec_text(features=[]), "features must be a non-empty list of column names"),
        (spec_text(split={"test_size": 2}), "test_size must be between 0 and 1"),
        (spec_text(validation={"max_rmse": "high"}), "validation.max_rmse must be a number"),
        (spec_text(estimatr={"class": "x"}), "unknown key 'estimatr' (did you mean 'estimator'?)"),
        (spec_text(build="model.py:build_model"), "exactly one of estimator"),
    ],
)
def test_unparseable_or_malformed_specs_are_refused_with_the_reason(text, message):
    with pytest.raises(ConfigError) as err:
        parse_spec(text, "model.yaml")
    assert message in str(err.value) and str(err.value).startswith("model.yaml: ")


@pytest.mark.parametrize(
    "estimator, message",
    [
        ({"class": "sklearn.linear_model.NoSuchModel", "params": {}}, "unknown estimator"),
        ({"class": "nosuchpackage.Model"}, "unknown estimator"),
        ({"class": "sklearn.linear_model.Ridge", "params": {"alpha": -1}}, "invalid hyper-parameter"),
        ({"class": "sklearn.linear_model.Ridge", "params": {"alphaa": 1}}, "invalid hyper-parameter"),
        ({"class": "sklearn.preprocessing.StandardScaler"}, "no fit/predict"),
    ],
)
def test_bad_estimators_fail_before_any_fit(estimator, message):
    spec = parse_spec(spec_text(estimator=estimator))
    with pytest.raises(ConfigError, match=message):
        train(spec, pd.DataFrame())  # no data needed: the estimator is checked first
    with pytest.raises(ConfigError, match=message):
        spec.check_definition()  # what the trigger checks, without running project code: the same message


BUILD_FORMS = {
    "def": "def build_model():\n    return Ridge()\n",
    "in an if": "if True:\n    def build_model():\n        return Ridge()\n",
    "assigned": "build_model = Ridge\n",
    "imported": "from sklearn.linear_model import Ridge as build_model\n",
}


@pytest.mark.parametrize("form", BUILD_FORMS)
def test_the_definition_is_checked_without_running_the_projects_code(form, tmp_path, monkeypatch):
    """``check_definition`` (what ``kfrelease trigger`` runs, on CI beside the CI role's credentials) neither
    executes the build file nor imports an estimator module outside the estimator libraries."""
    marker = tmp_path / "ran"
    side_effect = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    code = side_effect + "from sklearn.linear_model import Ridge\n\n" + BUILD_FORMS[form]
    spec = parse_spec(spec_variant(2), code={"model.py": code})
    spec.check_definition()
    assert not marker.exists()
    (tmp_path / "side_effect_models.py").write_text(side_effect + "class Model:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # an installed module whose import has an effect
    parse_spec(spec_text(estimator={"class": "side_effect_models.Model"})).check_definition()
    assert not marker.exists()
    assert type(spec.build_estimator()).__name__ == "Ridge" and marker.exists()  # the train step's call runs it


@pytest.mark.parametrize(
    "code, message",
    [
        ("def build_model(:\n    pass\n", "model.py failed to load: SyntaxError"),
        ("def make_model():\n    pass\n", "model.py defines no function 'build_model'"),
        ("class M:\n    def build_model(self):\n        pass\n", "model.py defines no function 'build_model'"),
    ],
)
def test_a_build_file_that_cannot_define_the_function_is_refused_unrun(code, message):
    with pytest.raises(ConfigError, match=f"^model spec 'diabetes-progression': {message}"):
        parse_spec(spec_variant(2), code={"model.py": code}).check_definition()
    with pytest.raises(ConfigError, match="build code 'model.py' is not in the project"):
        parse_spec(spec_variant(2)).check_definition()


def test_missing_feature_or_target_is_named():
    df = diabetes_features(diabetes_frame())
    with pytest.raises(DataValidationError, match=r"feature\(s\) \['bmi_bp'\]"):
        check_data(parse_spec(spec_text()), df.drop(columns=["bmi_bp"]))
    with pytest.raises(DataValidationError, match=r"target \['progression'\]"):
        check_data(parse_spec(spec_text()), df.drop(columns=["progression"]))


def test_split_and_fit_are_seeded():
    df = diabetes_features(diabetes_frame())
    a, b = train(parse_spec(spec_text()), df), train(parse_spec(spec_text()), df)
    assert a.test.equals(b.test) and abs(len(a.test) - 0.2 * len(df)) < 0.05 * len(df)  # a hash: about test_size
    assert (
        a.model.predict(a.test[list(parse_spec(spec_text()).features)])
        == b.model.predict(b.test[list(parse_spec(spec_text()).features)])
    ).all()
