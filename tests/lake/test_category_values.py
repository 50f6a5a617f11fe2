"""Category values are logged as values: a request event's strings land in ``inputs_text`` at their positions
(numbers stay in ``inputs``), and files written before the column existed (schema version 1) still read,
with the column null, through every reader (DuckDB, Arrow)."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from kfrelease.lake import schema as S
from kfrelease.lake.engine import _files_view, connect

MIXED = {
    "id": "r1",
    "type": "request",
    "time": "2026-12-06T10:00:00Z",
    "source": "s",
    "features": ["carat", "cut", "color"],
    "instances": [[0.23, "Ideal", "E"], [1.5, "Fair", "J"]],
}
NUMBERS = {**MIXED, "id": "r0", "features": ["a", "b"], "instances": [[1.0, 2]]}


def test_a_mixed_request_keeps_its_numbers_and_its_category_values():
    rows = S.event_rows(MIXED)
    assert [r["inputs"] for r in rows] == [[0.23, None, None], [1.5, None, None]]
    assert [r["inputs_text"] for r in rows] == [[None, "Ideal", "E"], [None, "Fair", "J"]]
    assert S.event_rows(NUMBERS)[0]["inputs_text"] is None  # a numbers-only model's rows are as before
    table = S.to_table(rows, S.PREDICTION_SCHEMA)
    assert table.column("inputs_text").to_pylist()[0] == [None, "Ideal", "E"]


def _version_1_file(path) -> None:
    """A file as schema version 1 wrote it: no inputs_text column."""
    old = pa.schema([f for f in S.PREDICTION_SCHEMA if f.name != "inputs_text"])
    rows = [{k: v for k, v in r.items() if k != "inputs_text"} for r in S.event_rows(NUMBERS)]
    pq.write_table(pa.Table.from_pylist(rows, schema=old), path)


def test_files_of_both_versions_read_together(tmp_path):
    _version_1_file(tmp_path / "old.parquet")
    (tmp_path / "new.parquet").write_bytes(S.parquet_bytes(S.to_table(S.event_rows(MIXED), S.PREDICTION_SCHEMA)))
    assert S.schema_version_of(io.BytesIO((tmp_path / "new.parquet").read_bytes())) == 2
    for order in (["new", "old"], ["old", "new"]):  # DuckDB takes the first file's columns unless told
        con = connect()
        _files_view(con, "events", [str(tmp_path / f"{n}.parquet") for n in order], S.PREDICTION_SCHEMA)
        got = dict(con.execute("SELECT request_id || ':' || instance, inputs_text FROM events").fetchall())
        assert got == {"r0:0": None, "r1:0": [None, "Ideal", "E"], "r1:1": [None, "Fair", "J"]}
    tables = [pq.read_table(tmp_path / f"{n}.parquet").replace_schema_metadata(None) for n in ("old", "new")]
    merged = pa.concat_tables(tables, promote_options="default")
    assert merged.column("inputs_text").to_pylist() == [None, [None, "Ideal", "E"], [None, "Fair", "J"]]


def test_a_reader_not_told_the_category_features_reads_their_values_as_text(tmp_path):
    """``open_window`` without ``categorical`` (the release gates' and the labelled traffic's reader) takes
    the features whose logged values are text as category features: their values, not nulls."""
    from kfrelease.lake.engine import define_views, logged_categories

    response = {**MIXED, "type": "response", "predictions": [326.0, 4100.0]}
    events = S.event_rows(MIXED) + S.event_rows(response)
    path = tmp_path / "mixed.parquet"
    path.write_bytes(S.parquet_bytes(S.to_table(events, S.PREDICTION_SCHEMA)))
    con = connect()
    _files_view(con, "events", [str(path)], S.PREDICTION_SCHEMA)
    _files_view(con, "labels", [], S.LABEL_SCHEMA)
    features = ["carat", "cut", "color"]
    assert logged_categories(con, features) == ["cut", "color"]
    define_views(con, features, categorical=logged_categories(con, features))
    rows = con.execute("SELECT carat, cut, color, prediction FROM predictions ORDER BY instance").fetchall()
    assert rows == [(0.23, "Ideal", "E", 326.0), (1.5, "Fair", "J", 4100.0)]
    _version_1_file(tmp_path / "old.parquet")  # numbers only, no inputs_text column: nothing is a category
    old = connect()
    _files_view(old, "events", [str(tmp_path / "old.parquet")], S.PREDICTION_SCHEMA)
    assert logged_categories(old, ["a", "b"]) == []


def test_a_window_without_requests_has_no_category_features(tmp_path):
    from kfrelease.lake.engine import logged_categories

    (tmp_path / "new.parquet").write_bytes(S.parquet_bytes(S.to_table(S.event_rows(MIXED), S.PREDICTION_SCHEMA)))
    con = connect()
    _files_view(con, "events", [str(tmp_path / "new.parquet")], S.PREDICTION_SCHEMA)
    assert logged_categories(con, []) == []  # no feature known yet (an empty window): no query without columns
    assert logged_categories(con, ["carat", "cut", "color"]) == ["cut", "color"]
