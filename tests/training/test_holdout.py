"""The held-out split is a stable hash of each row's key: a grown dataset's held-out rows contain the old ones,
and a version split by another rule can say which of today's rows it trained on."""

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from kfrelease.data.features import diabetes_features
from kfrelease.demo.data import demo_batches
from kfrelease.training.holdout import HASH, SEEDED_SHUFFLE, SplitRule

COLUMNS = ("age", "bmi", "progression")


def rule(**changes) -> SplitRule:
    return SplitRule(**{"test_size": 0.2, "seed": 42, "id_column": "patient_id", "columns": COLUMNS, **changes})


def test_a_grown_dataset_keeps_every_old_held_out_row_held_out():
    first, second = (diabetes_features(b) for b in demo_batches())
    grown = pd.concat([second, first], ignore_index=True)  # new rows first: order does not matter either
    for r in (rule(), rule(id_column=None)):  # by id column, and by the row's values when there is none
        old = set(r.split(first)[1]["patient_id"])
        new = set(r.split(grown)[1]["patient_id"])
        assert old and old <= new and len(new) > len(old)
        share = len(new) / len(grown)
        assert 0.12 < share < 0.28  # about test_size


def test_the_key_is_the_id_whatever_its_type_and_the_seed_moves_the_split():
    ids = pd.DataFrame({"patient_id": np.arange(1, 1001)})
    as_float = ids.astype("float64")
    assert np.array_equal(rule().row_hashes(ids), rule().row_hashes(as_float))  # 7 read as 7.0 is the id 7
    held = rule().held_out(ids)
    assert not np.array_equal(held, rule(seed=7).held_out(ids))
    assert np.array_equal(held, rule().held_out(ids.iloc[::-1]).copy()[::-1])  # a row's side is its own
    text = pd.DataFrame({"patient_id": [f"p-{i}" for i in range(1000)]})
    assert 150 < rule().held_out(text).sum() < 250


def test_what_another_rule_trained_on():
    frame = diabetes_features(demo_batches()[0])
    wide = rule(test_size=0.3)
    held = rule().held_out(frame)
    # a model that held out 30 % trained on none of the rows a 20 % rule holds out (same seed: nested)
    assert not wide.trained_on(frame)[held].any()
    assert rule(test_size=0.1).trained_on(frame)[held].any()
    # the old seeded shuffle: its training rows are rebuilt from its own data
    old = SplitRule(0.2, 42, SEEDED_SHUFFLE, None, COLUMNS)
    own = frame[list(COLUMNS)].astype("float64")
    train, _ = train_test_split(own, test_size=0.2, random_state=42, shuffle=True)
    mask = old.trained_on(own, own)
    assert mask.sum() == len(train) and HASH != old.method
    assert "seeded shuffle" in old.describe() and "id column 'patient_id'" in rule().describe()
