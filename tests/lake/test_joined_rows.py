"""A monitoring window's joined rows in one pass (``kfrelease.lake.engine.materialise_joined``): each request
paired with its response and its label without grouping either, kept only when no pair occurs twice, which is
when they are the very rows of the full plan (repeated events counted once, the latest label of each
instance); a repeated event or a corrected label sends the window to the full plan. A version and a stage
that every event names are not stored per row, and the window's rows are still the full plan's."""

from __future__ import annotations

import pytest

from kfrelease.lake import schema as S
from kfrelease.lake.engine import (
    _files_view,
    connect,
    constant_columns,
    define_views,
    joined_rows_view,
    materialise_joined,
    one_server,
)

FEATURES = ["carat", "cut"]
KEEP = ["model_version", "stage", "time", *FEATURES, "prediction", "truth", "truth_time", "request_id", "instance"]


def _events(first=0, n=8, isvc="m", again=(), version="V1"):
    rows = []
    for i in [*range(first, first + n), *again]:
        ev = {"id": f"r{i}", "time": f"2026-12-05T10:{i:02d}:00Z", "source": "agent", "inferenceservicename": isvc}
        ev.update(model_version=version, stage="production", endpoint="default")
        rows += S.event_rows({**ev, "type": "request", "instances": [[0.5 + i, "Ideal"]]})
        if i % 5 != 4:  # every fifth request is never answered
            rows += S.event_rows({**ev, "type": "response", "predictions": [float(i) + (isvc != "m")]})
    return S.to_table(rows, S.PREDICTION_SCHEMA)


def _labels(ids, minute=30, offset=0.0):
    rows = []
    for i in ids:
        rows += S.label_rows({"request_id": f"r{i}", "truth": i + 0.25 + offset, "time": f"2026-12-05T11:{minute}:00Z"})
    return S.to_table(rows, S.LABEL_SCHEMA)


def _window(tmp_path, events, labels):
    logs, truth = [], []
    for k, table in enumerate(events):
        logs.append(str(tmp_path / f"e{k}.parquet"))
        (tmp_path / f"e{k}.parquet").write_bytes(S.parquet_bytes(table))
    for k, table in enumerate(labels):
        truth.append(str(tmp_path / f"l{k}.parquet"))
        (tmp_path / f"l{k}.parquet").write_bytes(S.parquet_bytes(table))
    con = connect()
    _files_view(con, "events", logs, S.PREDICTION_SCHEMA)
    _files_view(con, "labels", truth, S.LABEL_SCHEMA)
    return con, one_server(logs)


def _full(con, single):
    """The full plan: repeated events counted once, the latest label of each instance."""
    define_views(con, FEATURES, dedup=True, categorical=["cut"], one_server=single)
    cols = ", ".join(f'"{c}"' for c in KEEP)
    return con.execute(f"SELECT {cols} FROM joined ORDER BY ALL").fetchall()


CASES = {
    "clean": ([_events()], [_labels(range(8))], True),
    "unlabelled and unanswered": ([_events()], [_labels([0, 2, 3])], True),
    "a label twice for an unanswered request": ([_events()], [_labels([1, 4]), _labels([4], 40, 1.0)], True),
    "the shadow answers the same ids": ([_events(), _events(isvc="m-shadow")], [_labels(range(8))], True),
    "a response delivered twice": ([_events(), _events(first=1, n=0, again=[1])], [_labels(range(8))], False),
    "a request delivered twice": (
        [
            _events(),
            S.to_table(
                S.event_rows(
                    {
                        "id": "r2",
                        "time": "2026-12-05T10:02:00Z",
                        "source": "agent",
                        "inferenceservicename": "m",
                        "model_version": "V1",
                        "stage": "production",
                        "endpoint": "default",
                        "type": "request",
                        "instances": [[2.5, "Ideal"]],
                    }
                ),
                S.PREDICTION_SCHEMA,
            ),
        ],
        [_labels(range(8))],
        False,
    ),
    "a label corrected": ([_events()], [_labels(range(8)), _labels([3], 45, 10.0)], False),
}


@pytest.mark.parametrize("case", CASES)
def test_one_pass_rows_are_the_full_plans_or_it_steps_aside(tmp_path, case):
    events, labels, kept = CASES[case]
    con, single = _window(tmp_path, events, labels)
    assert single is (len(events) == 1 or case != "the shadow answers the same ids")
    assert materialise_joined(con, FEATURES, KEEP, ["cut"], single) is kept
    if not kept:  # no table: the window takes the full plan
        assert not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'joined_rows'").fetchone()[0]
        return
    cols = ", ".join(f'"{c}"' for c in KEEP)
    mine = con.execute(f"SELECT {cols} FROM joined_rows ORDER BY ALL").fetchall()
    assert mine == _full(con, single)
    assert len(mine) == (14 if case == "the shadow answers the same ids" else 7)  # r4 is never answered


@pytest.mark.parametrize(
    ("events", "fixed"),
    [
        ([_events(), _events(first=8)], {"model_version": "V1", "stage": "production"}),
        ([_events(), _events(first=8, version="V2")], {"stage": "production"}),  # a new version on the same server
    ],
)
def test_a_version_and_stage_every_event_names_are_not_stored_and_the_rows_are_the_full_plans(tmp_path, events, fixed):
    con, single = _window(tmp_path, events, [_labels(range(16))])
    assert constant_columns(sorted(str(p) for p in tmp_path.glob("e*.parquet"))) == fixed
    assert materialise_joined(con, FEATURES, KEEP, ["cut"], single, fixed=fixed)
    stored = {r[0] for r in con.execute("DESCRIBE joined_rows").fetchall()}
    assert stored.isdisjoint(fixed) and "time" in stored
    cols = ", ".join(f'"{c}"' for c in KEEP)
    joined_rows_view(con, KEEP, fixed)
    mine = con.execute(f"SELECT {cols} FROM joined ORDER BY ALL").fetchall()
    assert mine == _full(con, single)
    assert {r[0] for r in mine} == ({"V1"} if "model_version" in fixed else {"V1", "V2"})
