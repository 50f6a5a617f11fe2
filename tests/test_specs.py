"""The three YAML specs teach: every key is described, an unknown key gets a did-you-mean, errors are one line,
and the committed JSON Schemas and key reference are the generated ones."""

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, ValidationError

from kfrelease.cli import cli
from kfrelease.data.spec import parse_spec as parse_dataset
from kfrelease.errors import ConfigError
from kfrelease.rollout import spec as rollout
from kfrelease.specs import SCHEMAS, Section, document, key_rows, parse, reference_markdown, schema_text
from kfrelease.training.spec import parse_spec as parse_model

ROOT = Path(__file__).resolve().parents[1]
DATASET = "name: d\nsource: {prefix: d/}\ncolumns: {a: {dtype: float64}, y: {dtype: float64}}\n"
MODEL = "name: m\ntag: 1\ndataset: d\nfeatures: [a]\ntarget: y\n"
RIDGE = "estimator: {class: sklearn.linear_model.Ridge}\n"


def refused(parse, text: str) -> str:
    with pytest.raises(ConfigError) as err:
        parse(text, "spec.yaml")
    message = str(err.value)
    assert "\n" not in message and message.startswith("spec.yaml: ")
    return message


@pytest.mark.parametrize(
    "text, message",
    [
        (DATASET + "descripton: x\n", "unknown key 'descripton' (did you mean 'description'?)"),
        (DATASET.replace("{a: {dtype:", "{a: {type:"), "unknown key 'type' in columns.a (did you mean 'dtype'?)"),
        (DATASET.replace("source:", "sources:"), "unknown key 'sources' (did you mean 'source'?)"),
        (DATASET.replace("float64}, y", "float}, y"), "columns.a.dtype 'float' is unknown (did you mean 'float64'?)"),
        (DATASET + "target: yy\n", "target 'yy' is not one of the declared columns (did you mean 'y'?)"),
        ("name: d\n", "missing key(s) source, columns"),
        (
            DATASET.replace("{dtype: float64}, y", "{dtype: float64, min: 5, max: 1}, y"),
            "columns.a: min 5 is above max 1",
        ),
    ],
)
def test_dataset_spec_mistakes_are_named_with_the_fix(text, message):
    assert message in refused(parse_dataset, text)


@pytest.mark.parametrize(
    "text, message",
    [
        (MODEL + RIDGE + "validaton: {}\n", "unknown key 'validaton' (did you mean 'validation'?)"),
        (
            MODEL + "estimator: {class: sklearn.linear_model.Ridge, parms: {}}\n",
            "unknown key 'parms' in estimator (did you mean 'params'?); known: class, params",
        ),
        (MODEL + RIDGE + "resources: {cpu: true}\n", "resources.cpu must be text or a number, not True"),
        (MODEL.replace("tag: 1", "tag: '1'") + RIDGE, "tag must be a whole number, not '1'"),
    ],
)
def test_model_spec_mistakes_are_named_with_the_fix(text, message):
    assert message in refused(parse_model, text)


@pytest.mark.parametrize(
    "estimator, message",
    [
        (
            {"class": "sklearn.linear_model.Ridg"},
            "unknown estimator 'sklearn.linear_model.Ridg' (did you mean 'sklearn.linear_model.Ridge'?)",
        ),
        ({"class": "RandomForestRegresor"}, "(did you mean 'sklearn.ensemble.RandomForestRegressor'?)"),
        (
            {"class": "sklearn.linear_model.Ridge", "params": {"alpah": 1}},
            "estimator.params.alpah: sklearn.linear_model.Ridge has no such parameter (did you mean 'alpha'?)",
        ),
    ],
)
def test_estimator_classes_and_parameters_get_a_suggestion(estimator, message):
    spec = parse_model(MODEL + f"estimator: {json.dumps(estimator)}\n")
    with pytest.raises(ConfigError, match="^model spec 'm': ") as err:
        spec.build_estimator()
    assert message in str(err.value)


def test_rollout_spec_mistakes_are_named_and_change_nothing():
    message = refused(rollout.parse_rollout_spec, "model: m\ncanary: {checks: [{name: a, serie: requests}]}\n")
    assert "unknown key 'serie' in canary.checks[0] (did you mean 'series'?)" in message
    assert message.endswith("; nothing was changed")


def documents(model: type[BaseModel], seen=None):
    seen = seen if seen is not None else set()
    if model in seen:
        return seen
    seen.add(model)
    for field in model.model_fields.values():
        for inner in _types(field.annotation):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                documents(inner, seen)
    return seen


def _types(annotation):
    yield annotation
    for arg in getattr(annotation, "__args__", ()):
        yield from _types(arg)


@pytest.mark.parametrize("kind", list(SCHEMAS))
def test_every_key_of_every_spec_is_described(kind):
    for model in documents(document(kind)):
        assert model.__doc__, model
        undescribed = [name for name, f in model.model_fields.items() if not f.description]
        assert not undescribed, f"{model.__name__}: {undescribed}"


def test_the_packaged_default_rollout_spec_is_the_declared_defaults():
    """default.yaml (what a data scientist copies) and the defaults in the declaration are the same values."""
    assert rollout.load_rollout_spec().model_dump() == rollout.RolloutSpec().model_dump()


def test_a_spec_is_frozen_and_a_change_is_checked_again():
    spec = rollout.load_rollout_spec()
    with pytest.raises(ValidationError, match="frozen"):
        spec.canary.interval_seconds = 0
    with pytest.raises(AttributeError):
        spec.canary.steps.append(7)  # a list in YAML is a tuple in the spec
    with pytest.raises(ConfigError, match=r"^rollout spec: canary.interval_seconds must be above 0, not 0; "):
        spec.with_changes(canary={"interval_seconds": 0})
    with pytest.raises(ConfigError, match=r"canary.checks\[0\]: a labels check takes no series"):
        spec.with_changes(canary={"checks": [{"name": "a", "source": "labels", "max": 1}]})
    model = parse_model(MODEL + RIDGE, "spec.yaml", code={"model.py": "x = 1\n"})
    changed = model.with_changes(validation={"max_rmse": 5})
    assert changed.thresholds() == {"max_rmse": 5.0} and changed.code == model.code
    assert parse_model(changed.text).thresholds() == {"max_rmse": 5.0}  # its text is the changed spec
    with pytest.raises(ConfigError, match="features lists a twice"):
        model.with_changes(features=["a", "a"])


def test_sections_left_out_or_null_take_their_defaults():
    model = parse_model(MODEL + RIDGE + "split: null\n")
    assert (model.split.test_size, model.split.seed, model.retrain.on_new_data) == (0.2, 42, True)
    assert model.resources.memory_limit == "4Gi" and model.validation.max_rmse is None
    assert rollout.parse_rollout_spec("shadow: null\n").shadow == rollout.ShadowSpec()


def test_dataset_columns_know_their_names_and_the_source_folder_ends_in_a_slash():
    spec = parse_dataset(DATASET.replace("prefix: d/", "prefix: d"))
    assert [c.name for c in spec.columns.values()] == spec.column_names == ["a", "y"]
    assert spec.column("y").dtype == "float64" and spec.source_prefix == "d/"


@pytest.mark.parametrize("kind", list(SCHEMAS))
def test_committed_json_schemas_are_the_generated_ones(kind):
    committed = ROOT / "schemas" / "specs" / f"{kind}.schema.json"
    assert committed.read_text() == schema_text(kind), (
        f"run: .venv/bin/kfrelease spec schema {kind} > schemas/specs/{kind}.schema.json"
    )
    result = CliRunner().invoke(cli, ["spec", "schema", kind])
    assert result.exit_code == 0 and json.loads(result.output)["additionalProperties"] is False


def test_committed_spec_reference_is_the_generated_one():
    assert (ROOT / "docs" / "spec-reference.md").read_text() == reference_markdown(), (
        "run: .venv/bin/kfrelease spec reference > docs/spec-reference.md"
    )


def test_the_packaged_and_example_specs_validate_against_their_json_schemas():
    import jsonschema
    import yaml

    files = {
        "dataset": sorted((ROOT / "kfrelease" / "data" / "specs").glob("*.yaml")),
        "rollout": [ROOT / "kfrelease" / "rollout" / "default.yaml", *ROOT.glob("examples/*/rollout.yaml")],
        "model": sorted(ROOT.glob("examples/*/model.yaml")),
    }
    for kind, paths in files.items():
        assert paths, kind
        for path in paths:
            jsonschema.validate(yaml.safe_load(path.read_text()) or {}, json.loads(schema_text(kind)))


VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 300)
    | st.floats(-1, 2, allow_nan=False)
    | st.sampled_from(["", "x", "float64", "reject", "squared", "sklearn.linear_model.Ridge", "model.py:build", "a"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["a", "dtype", "prefix", "x"]), inner, max_size=3)
    ),
    max_leaves=6,
)


@pytest.mark.parametrize(
    "parse, text",
    [
        (parse_dataset, DATASET),
        (parse_model, MODEL + RIDGE),
        (rollout.parse_rollout_spec, "canary: {steps: [50, 100]}\nshadow: {}\n"),
    ],
    ids=["dataset", "model", "rollout"],
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_edit_of_a_spec_parses_or_is_refused_in_one_line(parse, text, data):
    """Whatever a key is changed to (or whichever key is misspelt), the answer is a spec or one ConfigError line."""
    import yaml

    doc = yaml.safe_load(text)
    keys = sorted(doc) + ["descripton", "sources", "estimatr"]
    key = data.draw(st.sampled_from(keys))
    doc[key] = data.draw(VALUES)
    try:
        parse(yaml.safe_dump(doc), "spec.yaml")
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("spec.yaml: ")


def test_spec_check_answers_in_one_line_either_way(tmp_path):
    (tmp_path / "model.yaml").write_text(MODEL + "estimator: {class: sklearn.linear_model.Ridge, params: {alpah: 1}}\n")
    (tmp_path / "ds.yaml").write_text(DATASET)
    bad = CliRunner().invoke(cli, ["spec", "check", str(tmp_path / "model.yaml")])
    assert bad.exit_code == 1 and "(did you mean 'alpha'?)" in bad.output and len(bad.output.splitlines()) == 1
    good = CliRunner().invoke(cli, ["spec", "check", str(tmp_path / "ds.yaml")])
    assert good.exit_code == 0 and "valid dataset 'd', 2 columns" in good.output


def test_the_readme_example_of_a_new_spec_key_is_one_declaration():
    """README, "Adding a spec key is one declaration plus its use": the declaration it shows, added to
    ``ServingSpec``, is accepted, defaulted, checked in one line (also on ``with_changes``), described in the
    JSON Schema and in the reference, with no other edit."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Adding a spec key is one declaration plus its use", 1)[1]
    declaration = section.split("```python\n", 1)[1].split("```", 1)[0]
    refused = re.search(r"`(rollout\.yaml: serving\.timeout_seconds [^`]+)`", section).group(1)
    namespace = vars(rollout).copy()
    exec(f"class Serving(ServingSpec):\n{declaration}", namespace)  # noqa: S102 - the README's own example
    with_timeout = namespace["Serving"]

    class Rollout(rollout.RolloutSpec):
        serving: Section[with_timeout] = Field(None, description="Serving settings.")

    def load(text: str):
        return parse(Rollout, text, "rollout.yaml", "a mapping", empty_ok=True)

    assert load("serving: {timeout_seconds: 30}\n").serving.timeout_seconds == 30
    assert load("canary: {interval_seconds: 5}\n").serving.timeout_seconds == 60
    with pytest.raises(rollout.RolloutSpecError) as err:
        load("serving: {timeout_seconds: soon}\n")
    assert str(err.value) == refused
    with pytest.raises(rollout.RolloutSpecError, match="serving.timeout_seconds must be at least 1, not 0"):
        load("").with_changes(serving={"timeout_seconds": 0})
    row = "| `serving.timeout_seconds` | number | `60` | Seconds a predictor may take to answer one request. |"
    assert row in key_rows(Rollout) and row not in key_rows(rollout.RolloutSpec)
