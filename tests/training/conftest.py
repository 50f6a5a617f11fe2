"""Fixtures of the training tests: a private curated dataset (own name and raw prefix, so that other
parts' tests on the shared session stack never see it) and the demo model project as a git repository."""

from __future__ import annotations

import uuid

import pytest
import yaml

from kfrelease.data.pipeline import run_data_pipeline
from kfrelease.data.spec import load_spec, parse_spec
from kfrelease.demo.data import batches_of
from kfrelease.demo.project import create_demo_project
from kfrelease.storage import store_for


class PrivateDataset:
    """A shipped demo dataset (``shipped``: diabetes, diamonds or friedman; its spec and batches) under a private
    name; ``add_batch(n)`` is ``demo.data.upload_batch`` for this dataset's raw prefix, then the data pipeline
    publishes a new curated version."""

    def __init__(self, name: str, shipped: str = "diabetes"):
        doc = yaml.safe_load(load_spec(shipped).text)
        doc["name"], doc["source"] = name, {"prefix": f"{name}/"}
        self.spec = parse_spec(yaml.safe_dump(doc), name)
        self.name = name
        self.shipped = shipped

    def add_batch(self, n: int) -> str:
        store = store_for("data-engineer")
        batch = batches_of(self.shipped)[n - 1]
        store.put_bytes("raw", f"{self.spec.source_prefix}batch-{n}.csv", batch.to_csv(index=False).encode())
        return run_data_pipeline(self.spec, store).version


@pytest.fixture
def dataset(stack) -> PrivateDataset:
    ds = PrivateDataset(f"diabetes-{uuid.uuid4().hex[:8]}")
    ds.first_version = ds.add_batch(1)
    return ds


@pytest.fixture
def project(dataset, tmp_path):
    """(repo path, [sha1, sha2, sha3], model name) of the demo project on the private dataset."""
    name = f"diabetes-progression-{uuid.uuid4().hex[:6]}"
    repo = tmp_path / "model-project"
    shas = create_demo_project(repo, name=name, dataset=dataset.name)
    return repo, shas, name
