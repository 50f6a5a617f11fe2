"""The data pipeline on the embedded stack: publish, versions, atomicity, and failures that change nothing."""

import json
import uuid

import pytest
import yaml

from kfrelease.data.publish import get_version, latest_version_id, list_versions
from kfrelease.data.spec import load_spec
from kfrelease.demo.data import demo_batches
from kfrelease.errors import AccessDenied
from kfrelease.storage import store_for

pytestmark = pytest.mark.integration

MANIFEST_FIELDS = {"dataset", "version", "content_sha256", "row_count", "columns", "schema", "sources", "data_key",
                   "data_etag", "code", "run_id", "published_at", "previous_version", "features_step"}


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
    assert [s["key"] for s in manifest["sources"]] == [f"{spec.source_prefix}batch-1.csv", f"{spec.source_prefix}batch-2.csv"]
    assert all(s["etag"] for s in manifest["sources"])

    listing = run_cli("data", "versions", "--dataset", path, check=True).stdout
    assert v1 in listing and f"{latest} (latest)" in listing


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


def test_kfp_local_pipeline_publishes_a_complete_manifest(dataset, stack):
    from kfrelease.kfp_runner import run_local
    from kfrelease.pipelines.data_pipeline import data_pipeline

    _, spec = dataset
    upload(spec, 1)
    version = run_local(stack, data_pipeline, spec_yaml=spec.text).output
    manifest = get_version(store_for("data-scientist"), spec.name, version).manifest
    assert MANIFEST_FIELDS <= set(manifest)
    assert manifest["row_count"] == 250 and manifest["run_id"].startswith("kfrelease-data-")
    assert "bmi_bp" in [c["name"] for c in manifest["columns"]]  # the feature step ran
    assert manifest["code"]["kfrelease"]
    assert latest_version_id(store_for("data-scientist"), spec.name) == version


def test_data_pipeline_compiles_to_yaml(tmp_path, run_cli):
    run_cli("compile", "--out", str(tmp_path), "data", check=True)
    doc = yaml.safe_load((tmp_path / "data_pipeline.yaml").read_text())
    tasks = doc["root"]["dag"]["tasks"]
    assert set(tasks) == {"ingest", "validate-data", "engineer-features", "publish-dataset"}
    images = {e["container"]["image"] for e in doc["deploymentSpec"]["executors"].values()}
    assert len(images) == 1
    json.dumps(doc)
