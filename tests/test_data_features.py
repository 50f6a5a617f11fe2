"""A dataset spec's feature step is found without PYTHONPATH: installed, beside the spec file, or in the model
project (the current folder); it runs a batch at a time; a step that is nowhere says where it was looked for."""

import sys

import pandas as pd
import pytest
import yaml

from kfrelease.data.features import features_to_file, resolve
from kfrelease.data.frames import FrameWriter, read_frames
from kfrelease.data.spec import load_spec, parse_spec
from kfrelease.errors import ConfigError

STEP = "def add_ratio(df):\n    out = df.copy()\n    out['bmi_per_age'] = out['bmi'] / out['age']\n    return out\n"


@pytest.fixture
def project(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "ratio_features.py").write_text(STEP)
    yield folder
    sys.modules.pop("ratio_features", None)


def spec_with(step: str):
    doc = yaml.safe_load(load_spec("diabetes").text)
    doc["features"] = step
    return parse_spec(yaml.safe_dump(doc))


def test_a_module_beside_the_spec_or_in_the_project_is_found(project, tmp_path, monkeypatch):
    assert resolve("ratio_features:add_ratio", [project]).__module__ == "ratio_features"
    sys.modules.pop("ratio_features")
    monkeypatch.chdir(project)  # the model project the command runs in
    assert resolve("ratio_features:add_ratio").__name__ == "add_ratio"
    assert str(project) not in sys.path  # found, not added to the interpreter's path for good


def test_a_missing_module_says_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        resolve("nowhere_features:f", [tmp_path / "specs"])
    assert str(info.value) == (
        f"feature step 'nowhere_features:f' cannot be imported: no module 'nowhere_features' installed, and no "
        f"nowhere_features.py in {tmp_path / 'specs'} or {tmp_path}; put it beside the dataset spec file or in the "
        "model project (docs/data-engineer.md#feature-steps)"
    )
    (tmp_path / "broken_features.py").write_text("def f(df:\n")
    with pytest.raises(ConfigError, match=r"broken_features.py failed to load: SyntaxError"):
        resolve("broken_features:f")
    (tmp_path / "ratio_features.py").write_text(STEP)
    with pytest.raises(ConfigError, match="ratio_features.py defines no function 'nope'"):
        resolve("ratio_features:nope")
    sys.modules.pop("ratio_features", None)


def test_the_step_runs_on_every_batch_and_the_meta_columns_are_left_out(project, tmp_path):
    rows = pd.DataFrame({"patient_id": range(10), "age": 50.0, "bmi": 25.0, "__source": "s", "__line": range(10)})
    writer = FrameWriter(str(tmp_path / "valid.parquet"))
    for start in range(0, 10, 3):
        writer.write(rows.iloc[start : start + 3].reset_index(drop=True))
    writer.close()
    written = features_to_file(
        spec_with("ratio_features:add_ratio"), str(tmp_path / "valid.parquet"), str(tmp_path / "out"), [project]
    )
    out = pd.concat(list(read_frames(written.path)), ignore_index=True)
    assert written.rows == 10 and list(out.columns) == ["patient_id", "age", "bmi", "bmi_per_age"]
    assert (out["bmi_per_age"] == 0.5).all()
