"""The data scientists' notebook runs top to bottom (papermill) against the embedded stack, for the demo's
model project and for a second dataset it knows nothing about, and what it submits is an experiment:
registered and comparable, never staged or released.

Its duration is not asserted (performance is measured by benchmarks, never by timed tests: on the shared
machine it took 30 s to 120 s depending on the load)."""

import json
import uuid
from pathlib import Path

import nbformat
import pytest

from kfrelease.demo.project import example_dir, spec_variant
from kfrelease.errors import KfreleaseError
from kfrelease.registry import EXPERIMENTS, ModelRegistry
from kfrelease.storage import store_for
from kfrelease.training.spec import parse_spec as parse_model_spec
from kfrelease.training.steps import run_inline
from tests.training.conftest import PrivateDataset

pytestmark = pytest.mark.integration

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "data_scientist.ipynb"


def run_notebook(tmp_path, **parameters) -> str:
    import papermill

    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK), str(out), parameters=parameters, kernel_name="python3", progress_bar=False
    )
    return "".join(o.get("text", "") for c in nbformat.read(out, 4).cells for o in c.get("outputs", []))


@pytest.mark.slow(seconds=35)
def test_the_notebook_on_the_demo_project_registers_an_experiment_and_leaves_production_untouched(
    dataset, tmp_path, run_cli
):
    model = f"notebook-{uuid.uuid4().hex[:6]}"
    released = parse_model_spec(spec_variant(1, name=model, dataset=dataset.name))
    production = run_inline(released, "a" * 40, containerize=False)  # the merge's run, in-process
    ModelRegistry(store_for("pipeline")).set_stage(model, production.version, "production", "test", "released")
    before = [(v.version, v.stage) for v in ModelRegistry(store_for("data-scientist")).list(model)]

    text = run_notebook(tmp_path, project=str(example_dir()), dataset=dataset.name, model_name=model)
    assert "raw sources are off limits" in text and f"registered experiment {model} E1.1.0" in text
    assert "executor" not in text.lower() and "non-Python base image" not in text  # quiet by default
    assert "rmse  production" in text and "Ridge predicts" in text  # compared; kfrelease.load_model, one call
    store = store_for("data-scientist")
    assert [(v.version, v.stage) for v in ModelRegistry(store).list(model)] == before == [("V1.1.0", "production")]
    mv = ModelRegistry(store, EXPERIMENTS).get(model, "E1.1.0")  # experiments have numbers of their own
    assert mv.dataset == dataset.name and mv.stage is None and mv.entry["experiment"] is True
    with pytest.raises(KfreleaseError, match="never staged"):
        ModelRegistry(store_for("pipeline"), EXPERIMENTS).set_stage(model, "E1.1.0", "staging", "someone", "try")
    fetched = run_cli("reports", model, "experiment:E1.1.0", "--out", str(tmp_path / "reports"), check=True)
    shown = json.loads(run_cli("models", "show", model, "E1.1.0", check=True).stdout)  # the same, without the prefix
    assert shown["version"] == "E1.1.0" and shown["experiment"] is True
    refused = run_cli("models", "show", model, "V9.9.9")
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "evaluation:" in fetched.stdout and "<html" in (tmp_path / "reports" / "evaluation.html").read_text()


def test_the_notebook_on_a_second_dataset_uses_its_declared_features_and_target(stack, tmp_path):
    name = f"friedman-{uuid.uuid4().hex[:8]}"
    PrivateDataset(name, "friedman").add_batch(1)

    model = f"{name}-model"
    text = run_notebook(tmp_path, dataset=name, model_name=model, submit=False)  # submitting: the test above
    assert "features ['x0', 'x1', 'x2', 'x3', 'x4', 'x5', 'x6', 'x7', 'x8', 'x9'] -> target 'y'" in text
    ranking = [line.split()[0] for line in text.splitlines() if " rmse " in line and " r2 " in line]
    assert set(ranking) == {"model.yaml", "ridge", "gradient"} and ranking[0] == "gradient"  # it fits sin(x0 x1)
    assert "compiled" in text
