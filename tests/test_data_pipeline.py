"""The data pipeline on the embedded stack: publish, versions, atomicity, and failures that change nothing."""

import json
import uuid

import pytest
import yaml

from kfrelease.data.pipeline import run_data_pipeline
from kfrelease.data.publish import get_version, latest_version_id, list_versions
from kfrelease.data.spec import load_spec, parse_spec
from kfrelease.demo.data import demo_batches
from kfrelease.errors import AccessDenied
from kfrelease.storage import store_for

pytestmark = pytest.mark.integration

MANIFEST_FIELDS = {
    "dataset",
    "version",
    "content_sha256",
    "row_count",
    "columns",
    "schema",
    "sources",
    "data_key",
    "data_etag",
    "code",
    "run_id",
    "published_at",
    "previous_version",
    "features_step",
}


@pytest.fixture
def dataset(stack, tmp_path):
    """A private dataset (own name and raw prefix) with the demo schema; returns (spec path, spec)."""
    doc = yaml.safe_load(load_spec("diabetes").text)
    name = f"diabetes-{uuid.uuid4().hex[:8]}"
    doc["name"], doc["source"] = name, {"prefix": f"{name}/"}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path), load_spec(str(path))


def upload(spec, n: int, df=None) -> str:
    key = f"{spec.source_prefix}batch-{n}.csv"
    data = (demo_batches()[n - 1] if df is None else df).to_csv(index=False).encode()
    store_for("data-engineer").put_bytes("raw", key, data)
    return key


def state(spec):
    store = store_for("data-scientist")
    return [v.version for v in list_versions(store, spec.name)], latest_version_id(store, spec.name)


def test_publish_then_new_batch_gives_a_new_version(dataset, run_cli):
    path, spec = dataset
    upload(spec, 1)
    first = run_cli("data", "publish", "--dataset", path, check=True)
    v1 = latest_version_id(store_for("data-scientist"), spec.name)
    assert v1 and v1 in first.stdout and "250 rows" in first.stdout

    again = run_cli("data", "publish", "--dataset", path, check=True)  # same data: same version, no new one
    assert state(spec) == ([v1], v1) and v1 in again.stdout

    upload(spec, 2)
    run_cli("data", "publish", "--dataset", path, check=True)
    versions, latest = state(spec)
    assert len(versions) == 2 and latest == versions[1] != v1
    manifest = get_version(store_for("data-scientist"), spec.name).manifest
    assert manifest["row_count"] == 400 and manifest["previous_version"] == v1
    assert [s["key"] for s in manifest["sources"]] == [
        f"{spec.source_prefix}batch-1.csv",
        f"{spec.source_prefix}batch-2.csv",
    ]
    assert all(s["etag"] for s in manifest["sources"])

    listing = run_cli("data", "versions", "--dataset", spec.name, check=True).stdout  # by name: the stored spec
    assert v1 in listing and f"{latest} (latest)" in listing
    assert run_cli("data", "show", "--dataset", spec.name, check=True).stdout.count(latest) >= 1
    other = {**yaml.safe_load(spec.text), "name": f"{spec.name}-other"}  # a second dataset (the same sources)
    run_data_pipeline(parse_spec(yaml.safe_dump(other), "other"), store_for("data-engineer"))
    guess = run_cli("data", "versions")
    assert guess.returncode == 1 and "several datasets are published" in guess.stderr and spec.name in guess.stderr


def test_bad_batch_is_refused_and_nothing_changes(dataset, run_cli):
    path, spec = dataset
    upload(spec, 1)
    run_cli("data", "publish", "--dataset", path, check=True)
    before = state(spec)
    bad = demo_batches()[1].copy()
    bad.loc[3, "bmi"] = None
    bad.loc[5, "patient_id"] = bad.loc[6, "patient_id"]
    key = upload(spec, 2, bad)
    proc = run_cli("data", "publish", "--dataset", path)
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert f"s3://raw/{key} line 5" in err and "column 'bmi': missing value" in err and "duplicate" in err
    assert state(spec) == before


def test_missing_source_key_is_explained(dataset, run_cli):
    path, spec = dataset
    proc = run_cli("data", "publish", "--dataset", path, "--source", f"{spec.source_prefix}nope.csv")
    assert proc.returncode == 1
    assert f"source s3://raw/{spec.source_prefix}nope.csv does not exist" in proc.stderr
    proc = run_cli("data", "publish", "--dataset", path)
    assert proc.returncode == 1 and "no CSV or Parquet source under" in proc.stderr
    assert state(spec) == ([], None)


@pytest.mark.parametrize("crash_at", ["publish.after_data", "publish.after_manifest"])
def test_publish_killed_midway_leaves_no_partial_version(dataset, run_cli, crash_at):
    path, spec = dataset
    upload(spec, 1)
    run_cli("data", "publish", "--dataset", path, check=True)
    before = state(spec)
    upload(spec, 2)
    killed = run_cli("data", "publish", "--dataset", path, env={"KFRELEASE_CRASH_AT": crash_at})
    assert killed.returncode == -9  # SIGKILL: no clean-up ran
    versions, latest = state(spec)
    assert latest == before[1]  # latest never moved
    if crash_at == "publish.after_data":
        assert versions == before[0]  # no manifest, so no visible version
    # A rerun completes the interrupted publish with the same content-addressed version.
    run_cli("data", "publish", "--dataset", path, check=True)
    versions, latest = state(spec)
    assert len(versions) == 2 and latest == versions[-1]


def test_data_scientists_cannot_publish(dataset):
    _, spec = dataset
    with pytest.raises(AccessDenied, match="data-scientist.*may not write s3://curated"):
        store_for("data-scientist").put_bytes("curated", f"{spec.name}/latest", b"{}")


def test_kfp_local_pipeline_publishes_a_complete_manifest_and_prints_only_steps_and_result(dataset, stack, run_cli):
    path, spec = dataset
    upload(spec, 1)
    out = run_cli("data", "publish", "--dataset", path, "--pipeline", check=True)
    version = latest_version_id(store_for("data-scientist"), spec.name)
    printed = out.stdout + out.stderr
    assert f"version {version}" in out.stdout and "step publish-dataset: SUCCESS" in out.stdout
    assert "executor" not in printed.lower() and "non-Python base image" not in printed and "\x1b[" not in printed
    assert len(printed.strip().splitlines()) <= 8, printed
    manifest = get_version(store_for("data-scientist"), spec.name, version).manifest
    assert MANIFEST_FIELDS <= set(manifest)
    assert manifest["row_count"] == 250 and manifest["run_id"].startswith("kfrelease-data-")
    assert "bmi_bp" in [c["name"] for c in manifest["columns"]]  # the feature step ran
    assert manifest["code"]["kfrelease"]
    assert latest_version_id(store_for("data-scientist"), spec.name) == version


def test_data_pipeline_compiles_to_yaml(tmp_path, run_cli):
    run_cli("compile", "--out", str(tmp_path), "data", check=True)
    doc = yaml.safe_load((tmp_path / "data_pipeline.yaml").read_text())
    assert set(doc["root"]["dag"]["tasks"]) == {"data-engine", "condition-branches-1"}  # the spec's engine decides
    tasks = {t for c in doc["components"].values() for t in c.get("dag", {}).get("tasks", {})}
    assert {"ingest", "validate-data", "engineer-features", "publish-dataset", "publish-on-spark"} <= tasks
    images = {e["container"]["image"] for e in doc["deploymentSpec"]["executors"].values()}
    assert len(images) == 1
    json.dumps(doc)


def spec_file(tmp_path, spec, name: str, edit) -> str:
    doc = yaml.safe_load(spec.text)
    edit(doc)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def test_quarantine_publishes_the_valid_rows_and_keeps_the_rest_beside_them(dataset, run_cli, tmp_path):
    from kfrelease.data.publish import load_dataset, load_quarantine

    _, spec = dataset
    path = spec_file(tmp_path, spec, "q", lambda d: d.update(on_invalid="quarantine"))
    bad = demo_batches()[0].copy()
    bad.loc[3, "bmi"] = 900.0
    lines = bad.to_csv(index=False).splitlines()
    lines[10] = "2.5" + lines[10][lines[10].index(",") :]
    key = f"{spec.source_prefix}batch-1.csv"
    store_for("data-engineer").put_bytes("raw", key, ("\n".join(lines) + "\n").encode())
    out = run_cli("data", "publish", "--dataset", path, check=True).stdout
    assert "248 rows, 2 quarantined" in out
    reader = store_for("data-scientist")
    df, dv = load_dataset(reader, spec.name)
    assert dv.manifest["row_count"] == 248 and dv.manifest["quarantined_count"] == 2
    assert dv.manifest["on_invalid"] == "quarantine"
    assert sorted(df["patient_id"]) == sorted(
        set(bad["patient_id"]) - {bad.loc[3, "patient_id"], bad.loc[9, "patient_id"]}
    )
    q = load_quarantine(reader, spec.name)
    assert q["line"].tolist() == [5, 11] and (q["source"] == f"s3://raw/{key}").all()
    assert q["reason"].tolist() == [
        "column 'bmi': above the maximum 70 (value '900.0')",
        "column 'patient_id': not a whole number (expected int64) (value '2.5')",
    ]


def test_schema_evolution_against_a_production_model(dataset, run_cli, tmp_path):
    """An optional column may be added; removing or retyping a column a production model uses is refused."""
    import numpy as np
    from sklearn.linear_model import LinearRegression

    from kfrelease.data.publish import load_dataset
    from kfrelease.registry import ModelRegistry, TrainedModel

    path, spec = dataset
    upload(spec, 1)
    run_cli("data", "publish", "--dataset", path, check=True)
    reader = store_for("data-scientist")
    v1, dv1 = load_dataset(reader, spec.name)
    features = ["age", "bmi", "bp"]
    model = LinearRegression().fit(v1[features], v1["progression"])
    import io

    import joblib

    buf = io.BytesIO()
    joblib.dump(model, buf)
    reg = ModelRegistry(store_for("pipeline"))
    name = f"evolution-{uuid.uuid4().hex[:6]}"
    mv = reg.register(
        TrainedModel(
            name=name,
            tag=1,
            spec_fingerprint="f" * 64,
            dataset=spec.name,
            dataset_version=dv1.version,
            commit="c" * 40,
            run_id="test",
            metrics={},
            verdict={"passed": True, "reasons": []},
            input_schema=[{"name": f, "dtype": "float64"} for f in features],
            target="progression",
            model_bytes=buf.getvalue(),
        )
    ).version
    reg.set_stage(name, mv.version, "production", "test", "production model of this test")

    def add_optional(d):
        d["columns"]["glucose"] = {"dtype": "float64", "nullable": True}

    upload(spec, 2)
    run_cli("data", "publish", "--dataset", spec_file(tmp_path, spec, "added", add_optional), check=True)
    v2, dv2 = load_dataset(reader, spec.name)
    assert dv2.version != dv1.version and v2["glucose"].isna().all() and len(v2) == 400
    again, _ = load_dataset(reader, spec.name, dv1.version)  # the older version reads as it was published
    assert list(again.columns) == list(v1.columns) and len(again) == 250
    served = reg.load_model(name, mv.version).predict(v2[features])  # the model still serves the new version
    assert len(served) == 400 and np.isfinite(served).all()

    before = state(spec)
    without = upload(spec, 3, demo_batches()[1].drop(columns=["bmi"]))  # a new source without the column
    removed = run_cli(
        "data",
        "publish",
        "--dataset",
        spec_file(tmp_path, spec, "removed", lambda d: (d["columns"].pop("bmi"), d.pop("features"))),
        "--source",
        without,
    )
    assert removed.returncode == 1
    assert f"production model {name} {mv.version} uses column 'bmi', which this version removes" in removed.stderr

    def retype(d):
        d["columns"]["age"] = {"dtype": "int64", "nullable": False, "min": 0, "max": 120}

    retyped = run_cli(
        "data",
        "publish",
        "--dataset",
        spec_file(tmp_path, spec, "retyped", retype),
        "--source",
        f"{spec.source_prefix}batch-1.csv",
        "--source",
        f"{spec.source_prefix}batch-2.csv",
    )
    assert retyped.returncode == 1
    assert f"production model {name} {mv.version} was trained on column 'age' as float64" in retyped.stderr
    assert state(spec) == before  # nothing was published either time


def test_a_feature_step_beside_the_dataset_spec_needs_no_pythonpath(dataset, run_cli, tmp_path):
    """In-process and as a kfp.local pipeline, from a folder that is neither the spec's nor the module's."""
    _, spec = dataset
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "ratio_features.py").write_text(
        "def add_ratio(df):\n    out = df.copy()\n    out['bmi_per_age'] = out['bmi'] / out['age']\n    return out\n"
    )
    path = spec_file(folder, spec, "with-step", lambda d: d.update(features="ratio_features:add_ratio"))
    upload(spec, 1)
    for extra in ([], ["--pipeline"]):
        run_cli("data", "publish", "--dataset", path, *extra, check=True, env={"PYTHONPATH": ""})
        manifest = get_version(store_for("data-scientist"), spec.name).manifest
        assert "bmi_per_age" in [c["name"] for c in manifest["columns"]]
    missing = spec_file(folder, spec, "missing", lambda d: d.update(features="nowhere_features:f"))
    out = run_cli("data", "publish", "--dataset", missing)
    assert out.returncode == 1 and "no module 'nowhere_features' installed, and no nowhere_features.py in" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_source_changed_between_listing_and_reading_is_refused(dataset):
    """Every pass reads the bytes that were listed (If-Match their ETag): an object replaced meanwhile is named."""
    from kfrelease.data.ingest import SourceSet
    from kfrelease.errors import DataValidationError

    _, spec = dataset
    key = upload(spec, 1)
    store = store_for("data-engineer")
    with SourceSet(spec, store) as sources:
        assert sum(len(b) for b in sources.batches()) == 250
        store.put_bytes("raw", key, demo_batches()[1].to_csv(index=False).encode())
        with pytest.raises(DataValidationError, match=f"s3://raw/{key} changed while it was being read"):
            list(sources.batches())
