"""Labelled requests as rows of a dataset spec: stable row ids (a request is never added twice), the target
from the label, the spec's feature columns from the logged inputs, a clear refusal when a required column
is not logged. (The whole path, alert to retrain, is tests/monitoring/test_alerting.py.)"""

import pandas as pd
import pytest

from kfrelease.data.labelled_traffic import row_ids, traffic_rows
from kfrelease.data.spec import load_spec
from kfrelease.errors import ConfigError

FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


def requests(ids):
    frame = pd.DataFrame({"request_id": ids, "instance": [0] * len(ids)})
    for j, f in enumerate(FEATURES):
        frame[f] = [float(10 + j)] * len(ids)
    frame["truth"] = [150.0] * len(ids)
    return frame


def test_a_request_keeps_its_row_id_and_becomes_a_row_of_the_spec():
    spec = load_spec("diabetes")
    first, again = traffic_rows(requests(["a", "b"]), spec), traffic_rows(requests(["b", "c"]), spec)
    assert first["patient_id"].iloc[1] == again["patient_id"].iloc[0]  # request b: the same id in both windows
    assert first["patient_id"].nunique() == 2 and (first["patient_id"] > 0).all()
    assert list(first.columns[: len(spec.column_names)]) == spec.column_names
    assert (first["progression"] == 150.0).all() and (first["bmi"] == 12.0).all()
    assert list(row_ids(requests(["a"]), "string")) == ["a/0"]


def test_a_required_column_the_logs_do_not_carry_is_refused_by_name():
    with pytest.raises(ConfigError, match="requires column 's6'.*logged inputs"):
        traffic_rows(requests(["a"]).drop(columns=["s6"]), load_spec("diabetes"))
