"""The data scientists' notebook runs top to bottom (papermill) against the embedded stack.

Its duration is not asserted (performance is measured by benchmarks, never by timed tests: on the shared
machine it took 30 s to 120 s depending on the load)."""

import uuid
from pathlib import Path

import nbformat
import pytest

from kfrelease.registry import ModelRegistry
from kfrelease.storage import store_for

pytestmark = pytest.mark.integration

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "data_scientist.ipynb"


def test_data_scientist_notebook_trains_and_submits_locally(dataset, tmp_path):
    import papermill

    model = f"notebook-{uuid.uuid4().hex[:6]}"
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(out), parameters={"dataset": dataset.name, "model_name": model},
                               kernel_name="python3", progress_bar=False)
    text = "".join(o.get("text", "") for c in nbformat.read(out, 4).cells for o in c.get("outputs", []))
    assert "raw sources are off limits" in text and "registered" in text
    mv = ModelRegistry(store_for("data-scientist")).get(model, "V1.1.0")
    assert mv.dataset == dataset.name and mv.stage == "staging"
