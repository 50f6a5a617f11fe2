"""What the engine learns of a window from its files' footers alone, and the cheaper plans it allows: every
request row's width (recorded by the writer: no read of the inputs to find rows of another width), and one
server for every event (Parquet's column statistics: requests and responses paired by id and instance
alone). Each plan gives the very rows of the full one."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kfrelease.lake import join as J
from kfrelease.lake import schema as S
from kfrelease.lake.engine import (
    _files_view,
    connect,
    constant_columns,
    file_request_stats,
    one_server,
    widths_proven,
)

FEATURES = ["carat", "cut"]


def _events(isvc: str | None = "m", source: str | None = "http://localhost:9081/", first: int = 0, n: int = 6):
    rows = []
    for i in range(first, first + n):
        ev = {"id": f"r{i}", "time": f"2026-12-05T10:{i:02d}:00Z", "source": source, "inferenceservicename": isvc}
        ev.update(model_version="V1", stage="production", endpoint="default")
        rows += S.event_rows({**ev, "type": "request", "instances": [[0.5 + i, "Ideal"]]})
        if i % 5 != 4:  # every fifth request is never answered
            rows += S.event_rows({**ev, "type": "response", "predictions": [float(i)]})
    table = S.to_table(rows, S.PREDICTION_SCHEMA)
    if source is None:
        table = table.set_column(table.schema.get_field_index("source"), "source", pa.nulls(len(table), pa.string()))
    return table


def _file(tmp_path, name: str, table: pa.Table, recorded: bool = True) -> str:
    path = tmp_path / f"{name}.parquet"
    if recorded:
        path.write_bytes(S.parquet_bytes(table))
    else:  # a batch written before the writer recorded its request stats
        pq.write_table(table, path)
    return str(path)


def test_the_writer_records_each_batchs_request_rows_and_widths():
    table = _events()
    meta = pq.read_metadata(io.BytesIO(S.parquet_bytes(table))).metadata
    assert S.request_stats_of(meta) == {"rows": 6, "width": [2, 2]}
    wider = S.to_table(
        S.event_rows({"id": "x", "type": "request", "time": "2026-12-05T10:00:00Z", "instances": [[1, 2, 3]]}),
        S.PREDICTION_SCHEMA,
    )
    assert S.request_stats(pa.concat_tables([table, wider])) == {"rows": 7, "width": [2, 3]}
    answers = table.filter(pa.compute.equal(table["type"], "response"))
    assert S.request_stats(answers) == {"rows": 0, "width": None}
    labels = S.to_table(
        S.label_rows({"request_id": "r1", "truth": 1.0, "time": "2026-12-05T10:00:00Z"}), S.LABEL_SCHEMA
    )
    assert S.request_stats_of(pq.read_metadata(io.BytesIO(S.parquet_bytes(labels))).metadata) is None


def test_widths_are_proven_only_when_every_file_recorded_the_models_width(tmp_path):
    good = _file(tmp_path, "good", _events())
    answers = _file(tmp_path, "answers", _events().filter(pa.compute.equal(_events()["type"], "response")))
    assert widths_proven(file_request_stats([good, answers]), 2)
    assert not widths_proven(file_request_stats([good]), 3)
    old = _file(tmp_path, "old", _events(first=10), recorded=False)
    assert file_request_stats([old]) == {old: None}
    assert not widths_proven(file_request_stats([good, old]), 2)  # the engine reads that window's inputs


@pytest.mark.parametrize(
    ("other", "single"),
    [
        ({}, True),
        ({"isvc": "m-staging"}, False),  # the shadow answers the same ids from another InferenceService
        ({"source": None}, False),  # a null source pairs with nothing in the full key: not one server
    ],
)
def test_one_server_is_read_from_the_column_statistics(tmp_path, other, single):
    files = [_file(tmp_path, "a", _events()), _file(tmp_path, "b", _events(first=6, **other))]
    assert one_server(files) is single
    assert one_server(files[:1])


def test_an_inferenceservice_never_named_counts_as_one_server(tmp_path):
    unnamed = [_file(tmp_path, "a", _events(isvc=None)), _file(tmp_path, "b", _events(isvc=None, first=6))]
    assert one_server(unnamed)  # the join reads a missing name as ''
    assert not one_server([*unnamed, _file(tmp_path, "c", _events(first=12))])


def test_a_version_and_stage_are_constant_only_when_every_event_names_the_same(tmp_path):
    table = _events()
    assert constant_columns([_file(tmp_path, "a", table)]) == {"model_version": "V1", "stage": "production"}
    requests = pa.compute.equal(table["type"], "request")
    at = table.schema.get_field_index("model_version")
    unnamed = table.set_column(
        at, "model_version", pa.compute.if_else(requests, pa.scalar(None, pa.string()), table["model_version"])
    )  # requests that name no version (the KServe agent's): the joined rows take the responses'; not proven
    assert constant_columns([_file(tmp_path, "b", unnamed)]) == {"stage": "production"}
    old = _file(tmp_path, "old", _events(first=10), recorded=False)  # any writer's statistics will do
    assert constant_columns([_file(tmp_path, "a", table), old]) == {"model_version": "V1", "stage": "production"}
    assert constant_columns([]) == {}


@pytest.mark.parametrize("dedup", [False, True])
def test_pairing_by_id_alone_gives_the_full_keys_rows_on_one_servers_logs(tmp_path, dedup):
    events = _events(n=12)
    again = events.filter(pa.compute.is_in(events["request_id"], pa.array(["r1", "r2"])))  # delivered twice
    files = [_file(tmp_path, "a", pa.concat_tables([events, again])), _file(tmp_path, "b", _events(first=12))]
    assert one_server(files)
    con = connect()
    _files_view(con, "events", files, S.PREDICTION_SCHEMA)
    assert (
        con.execute(J.duplicates_sql("events", True)).fetchone() == con.execute(J.duplicates_sql("events")).fetchone()
    )
    assert con.execute(J.duplicates_sql("events", True)).fetchone()[0] == 4
    rows = {}
    for single in (False, True):
        sql = J.predictions_sql("events", FEATURES, J.DUCKDB, dedup=dedup, categorical={"cut"}, one_server=single)
        rows[single] = con.execute(f"SELECT * FROM ({sql}) ORDER BY request_id, instance, time").fetchall()
    assert rows[True] == rows[False]
    assert len(rows[True]) == (15 if dedup else 21)  # 15 answered; without dedup r1 and r2 pair twice with twice
