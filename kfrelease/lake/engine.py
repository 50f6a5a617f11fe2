"""The embedded engine: DuckDB over a window's Parquet files (read by ``kfrelease.lake.read``).

``open_window`` downloads the window's partitions into the local cache and gives a DuckDB connection with
three views: ``predictions`` (one row per predicted instance, the CONTRACTS frame), ``truth`` (the latest
label of each request instance) and ``joined`` (predictions left-joined with truth), all defined by the
one SQL of ``kfrelease.lake.join``. Frames for the release gates and the notebook come from these views.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kfrelease.lake import join as J
from kfrelease.lake import read as R
from kfrelease.lake import schema as S

log = logging.getLogger(__name__)

#: DuckDB's memory ceiling per connection (it spills to disk beyond it).
MEMORY_LIMIT = "1500MB"


def connect(threads: int | None = None):
    import duckdb  # heavy: duckdb

    spill = os.path.join(tempfile.gettempdir(), "kfrelease-duckdb")  # not ./.tmp in the caller's directory
    con = duckdb.connect(
        config={"memory_limit": MEMORY_LIMIT, "preserve_insertion_order": False, "temp_directory": spill}
    )
    con.execute("SET enable_progress_bar = false")  # a library never writes to its caller's stdout
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


def _files_view(con, name: str, files: list[str], schema, filename: bool = False) -> None:
    if files:
        listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        # union by name: files written before a column was added (schema version 1 has no inputs_text) read as null
        extra = ", union_by_name = true" + (", filename = true" if filename else "")
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet([{listing}]{extra})")
    else:
        empty = schema.empty_table()
        if filename:
            empty = empty.append_column("filename", pa.array([], pa.string()))
        con.register(f"{name}_empty", empty)
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM {name}_empty")


@dataclass
class WindowData:
    """A DuckDB connection holding one window's views (see the module docstring)."""

    con: object
    model: str
    features: list[str]
    since: str | None
    until: str | None
    log_keys: list[str] = field(default_factory=list)
    label_keys: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: What was read, for lineage: ``(s3 URI, ETag, local file)`` of each log and label object.
    log_objects: list[tuple[str, str, str]] = field(default_factory=list)
    label_objects: list[tuple[str, str, str]] = field(default_factory=list)
    #: The features whose values are categories (strings from ``inputs_text``); the others are numbers.
    categorical: list[str] = field(default_factory=list)
    #: Per prediction-log file read: its request rows' ``kfrelease.lake.schema.request_stats`` (None: not recorded).
    file_stats: dict[str, dict | None] = field(default_factory=dict)

    def frame(self, view: str) -> pd.DataFrame:
        return self.con.execute(f"SELECT * FROM {view}").df()


def file_request_stats(files: list[str]) -> dict[str, dict | None]:
    """Each Parquet file's recorded ``request_stats`` (its footer only; None where not recorded)."""
    return {f: S.request_stats_of(pq.read_metadata(f).metadata) for f in files}


def widths_proven(stats: dict[str, dict | None], width: int) -> bool:
    """Whether every file's recorded stats show that all its request rows have ``width`` inputs."""
    return all(st is not None and (st["rows"] == 0 or st["width"] == [width, width]) for st in stats.values())


def footer_values(files: list[str], names: tuple[str, ...]) -> dict[str, set | None]:
    """Per column of ``names``, the values of ``files`` as their footers' column statistics prove them: each
    row group one value (min = max, no null) or only nulls (None); the column's entry is None (not proven)
    when a row group holds several values, or nulls and values, or has no statistics, or a file lacks the
    column. A writer that truncates long values' statistics writes a greater max, so min = max holds only
    for one exact value."""
    seen: dict[str, set | None] = {name: set() for name in names}
    for path in files:
        meta = pq.read_metadata(path)
        index = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
        for name in names:
            if name not in index:
                seen[name] = None
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            if group.num_rows == 0:
                continue
            for name, values in seen.items():
                if values is None:
                    continue
                st = group.column(index[name]).statistics
                if st is not None and st.null_count == group.num_rows:
                    values.add(None)
                elif st is not None and st.null_count == 0 and st.has_min_max and st.min == st.max:
                    values.add(st.min)
                else:
                    seen[name] = None
    return seen


def one_server(files: list[str]) -> bool:
    """Whether every event of ``files`` names the same server (``source``, InferenceService, endpoint: the
    join's pairing key besides the request id and instance), from the Parquet column statistics in their
    footers (``footer_values``): each column one value; the InferenceService and the endpoint may be all
    null instead, which the join reads as ''. False when a footer has no statistics."""
    seen = footer_values(files, ("source", "inferenceservicename", "endpoint"))
    if any(values is None for values in seen.values()) or None in seen["source"]:
        return False
    return all(len({"" if v is None else v for v in values}) <= 1 for values in seen.values())


def constant_columns(files: list[str], names: tuple[str, ...] = ("model_version", "stage")) -> dict[str, str]:
    """The columns of ``names`` that hold one and the same value in every event of ``files`` (no null), with
    that value, from their footers (``footer_values``): every joined row then has it (``coalesce`` of the
    response's and the request's), so the window's table of joined rows need not store it."""
    seen = footer_values(files, names)
    return {n: v.pop() for n, v in seen.items() if v is not None and len(v) == 1 and isinstance(next(iter(v)), str)}


def features_in_logs(con) -> list[str] | None:
    row = con.execute("SELECT features FROM events WHERE type = 'request' AND features IS NOT NULL LIMIT 1").fetchone()
    return row[0].split(",") if row else None


def logged_categories(con, features: list[str]) -> list[str]:
    """The features whose logged request rows carry category values (``inputs_text`` at their position): what
    a reader that was not told the input schema's category features takes for them."""
    if not features or "inputs_text" not in {r[0] for r in con.execute("DESCRIBE events").fetchall()}:
        return []  # a window with no request yet, or only files written before schema version 2
    flags = ", ".join(f"bool_or(inputs_text[{j + 1}] IS NOT NULL)" for j in range(len(features)))
    row = con.execute(f"SELECT {flags} FROM events WHERE type = 'request' AND inputs_text IS NOT NULL").fetchone()
    return [f for f, hit in zip(features, row) if hit]


def widest_inputs(con) -> int:
    row = con.execute("SELECT max(len(inputs)) FROM events WHERE type = 'request'").fetchone()
    return int(row[0] or 0)


def define_views(
    con, features: list[str], since=None, until=None, dedup: bool | None = None, categorical=(), one_server=False
) -> None:
    """``predictions``, ``truth`` and ``joined`` over the views ``events`` and ``labels`` (``dedup`` None:
    count repeated events once only if there are any; ``categorical``: the features read as category values;
    ``one_server``: every event names the same server, ``kfrelease.lake.engine.one_server``)."""
    lo, hi = R.sql_time(R.as_utc(since)), R.sql_time(R.as_utc(until))
    if dedup is None:
        dedup = con.execute(J.duplicates_sql("events", one_server)).fetchone()[0] > 0
    con.execute(
        "CREATE OR REPLACE VIEW predictions AS "
        + J.predictions_sql(
            "events", features, J.DUCKDB, lo, hi, dedup=dedup, categorical=frozenset(categorical), one_server=one_server
        )
    )
    con.execute("CREATE OR REPLACE VIEW truth AS " + J.latest_labels_sql("labels", J.DUCKDB, lo))
    con.execute("CREATE OR REPLACE VIEW joined AS " + J.joined_sql("predictions", "truth"))


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def materialise_joined(con, features, keep, categorical, one_server, since=None, until=None, fixed=None) -> bool:
    """The joined rows' columns ``keep`` into the table ``joined_rows``, in one pass that pairs each request
    with its response and its label without grouping either: the join's own rows when no event repeats and
    no instance has two labels, which one grouping of the joined rows' pairing keys proves (a repeated event
    or a second label gives a pair twice; a hash collision only fails the proof). False, and no table, when
    a pair occurs twice: the caller then joins with the repeat check and the latest-label rule. ``fixed``:
    columns whose one value every row has (``constant_columns``), not stored (``joined_rows_view``)."""
    preds = J.predictions_sql(
        "events",
        features,
        J.DUCKDB,
        since,
        until,
        dedup=False,
        categorical=frozenset(categorical),
        one_server=one_server,
        pair_key=True,
    )
    joined = J.joined_sql(f"({preds})", f"({J.labels_sql('labels', J.DUCKDB, since)})")
    cols = ", ".join(_quoted(c) for c in keep if c not in (fixed or {}))
    con.execute(f"CREATE TEMP TABLE joined_rows AS SELECT {cols}, _pair FROM ({joined}) j")
    if con.execute("SELECT count(*) - count(DISTINCT _pair) FROM joined_rows").fetchone()[0] == 0:
        return True
    con.execute("DROP TABLE joined_rows")
    return False


def joined_rows_view(con, keep, fixed=None) -> None:
    """The view ``joined`` over the table ``joined_rows``: its columns ``keep``, those of ``fixed`` (not stored)
    as their one value."""
    fixed = fixed or {}
    cols = ", ".join(f"{_literal(fixed[c])} AS {_quoted(c)}" if c in fixed else _quoted(c) for c in keep)
    con.execute(f"CREATE OR REPLACE VIEW joined AS SELECT {cols} FROM joined_rows")


def open_window(
    store,
    model: str,
    since=None,
    until=None,
    features: list[str] | None = None,
    warnings: list[str] | None = None,
    registry_features=None,
    threads: int | None = None,
    materialize: bool | str = False,
    categorical: list[str] | tuple[str, ...] | None = None,
) -> WindowData:
    """The window ``[since, until)`` of ``model``: its files downloaded and its views defined.

    ``features``: the input names in order; when not given, the names the events carry, else
    ``registry_features(version)`` of the first logged version, else ``f0, f1, ...``; ``categorical``: the
    features whose logged values are categories (the input schema's ``category`` and ``string``; None: those
    whose logged values are text, ``logged_categories``). With ``materialize``
    the joined rows a window reads are computed once into a table (several queries on one window;
    ``"with-keys"`` keeps ``request_id`` and ``instance`` too), in one pass with no repeat check and no
    latest-label grouping when no pair occurs twice (``materialise_joined``); a version and a stage that every
    event names (``constant_columns``) are not stored per row."""
    warnings = warnings if warnings is not None else []
    cache = R.LakeCache.for_store(store)
    pred_files, label_files, logs, labels = R.window_files(store, model, since, until, cache, warnings)
    con = connect(threads)
    _files_view(con, "events", pred_files, S.PREDICTION_SCHEMA, filename=True)
    _files_view(con, "labels", label_files, S.LABEL_SCHEMA)
    if not features:
        features = features_in_logs(con)
    if not features and registry_features is not None:
        row = con.execute(
            "SELECT model_version FROM events WHERE type = 'response' AND model_version IS NOT NULL LIMIT 1"
        ).fetchone()
        features = registry_features(row[0]) if row else None
    if not features:
        features = [f"f{j}" for j in range(widest_inputs(con))]
    if categorical is None:
        categorical = logged_categories(con, list(features))
    categorical = [f for f in features if f in set(categorical)]
    lo, hi = R.sql_time(R.as_utc(since)), R.sql_time(R.as_utc(until))
    file_stats = file_request_stats(pred_files)
    single = one_server(pred_files)
    proven = widths_proven(file_stats, len(features))  # the writer recorded every request row's width
    if materialize:  # only what the windows read: no ids unless the window orders by them (count windows)
        keep = ["model_version", "stage", "time", *features, "prediction", "truth", "truth_time"]
        if materialize == "with-keys":
            keep += ["request_id", "instance"]
        wrong = not proven  # counted by batch below, if any
        fixed = constant_columns(pred_files)  # one version and stage named by every event: not stored per row
        unique = materialise_joined(con, list(features), keep, categorical, single, lo, hi, fixed)
        # no pair twice: no repeated event among the pairs, so the plain pairing is the deduplicated one
        define_views(
            con,
            list(features),
            since,
            until,
            dedup=False if unique else None,
            categorical=categorical,
            one_server=single,
        )
        if not unique:
            cols = ", ".join(_quoted(c) for c in keep)
            con.execute(f"CREATE TEMP TABLE joined_rows AS SELECT {cols} FROM joined")
        joined_rows_view(con, keep, fixed if unique else None)
    else:
        if proven:  # no list read
            repeated, wrong = con.execute(J.duplicates_sql("events", single)).fetchone()[0], 0
        else:  # one scan, both checks
            repeated, wrong = con.execute(J.checks_sql("events", len(features), lo, hi, single)).fetchone()
        define_views(con, list(features), since, until, dedup=repeated > 0, categorical=categorical, one_server=single)
    if wrong:  # counted, or (materialised) not proven absent: which batches
        mismatch = J.mismatched_requests_sql("events", len(features), J.DUCKDB, lo, hi)
        bad = con.execute(
            mismatch.replace("SELECT count(*)", "SELECT filename, count(*)") + " GROUP BY filename"
        ).fetchall()
        if bad:
            where = ", ".join(sorted(cache.origin.get(f, f) for f, _ in bad)[:5])
            warnings.append(
                f"{sum(n for _, n in bad)} logged request instance(s) of {model!r} in {len(bad)} batch(es) do "
                f"not match the model's {len(features)} input features and were skipped (left in place): {where}"
            )
    etags = {
        store.uri(bucket, o.key): o.etag
        for bucket, b in ((S.LOG_BUCKET, logs), (S.LABEL_BUCKET, labels))
        for o in (*b.parquet, *b.legacy)
    }

    def read(files: list[str]) -> list[tuple[str, str, str]]:
        return [(cache.origin[f], etags.get(cache.origin[f], ""), f) for f in files if f in cache.origin]

    return WindowData(
        con,
        model,
        list(features),
        lo,
        hi,
        logs.keys,
        labels.keys,
        warnings,
        read(pred_files),
        read(label_files),
        categorical,
        file_stats,
    )
