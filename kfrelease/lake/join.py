"""The one "latest label wins" rule and the one prediction-to-truth join, as SQL that DuckDB and Spark both run.

- **Predictions**: a request row and a response row of the same request id, instance and answering server
  make one predicted instance. The server is ``(source, inferenceservicename, endpoint)``: the primary, the
  shadow and the canary answer the same request id, and every KServe agent sends the same default source
  ``http://localhost:9081/`` (kserve/kserve cmd/agent/main.go ``--source-uri``), so the source alone does
  not tell them apart. A repeated event counts once; the version and stage are the
  response's (the KServe agent's request event names neither), else the request's.
- **Latest label wins**: one truth per ``(request_id, instance)``: the label with the latest ``time``. A
  correction sent later replaces an earlier value. Two labels of one instance with the very same
  timestamp (to the microsecond; the feedback service stamps each record when it receives it) have no
  defined order: a tie-break on the value cost 7x the rule's time at 1M labels (a struct ordering key).
- **Join**: predictions left-joined with the latest labels on ``(request_id, instance)``; a non-finite truth
  counts as no truth.

The SQL is written once with two dialect holes (a struct constructor and the list index base), filled for
DuckDB (``kfrelease.lake.engine``) or Spark SQL (``kfrelease.lake.spark``).
"""

from __future__ import annotations

from dataclasses import dataclass

PAIR_COLUMNS = ["request_id", "instance", "truth", "candidate", "production"]
KEYS = ["request_id", "instance"]


@dataclass(frozen=True)
class Dialect:
    name: str
    struct: str  # format with the fields, e.g. "struct_pack(a := {0}, b := {1})"
    first_index: int  # list element index base
    finite: str  # a predicate on {0}: the value is a finite double
    size: str  # the length of list {0}
    timestamp: str  # the literal of an instant

    def element(self, column: str, i: int) -> str:
        return f"{column}[{i + self.first_index}]"


DUCKDB = Dialect(
    "duckdb",
    "struct_pack(t := {0}, v := {1})",
    1,
    "isfinite({0})",
    "len({0})",
    "TIMESTAMPTZ",
)
SPARK = Dialect(
    "spark",
    "struct({0}, {1})",
    0,
    "NOT (isnan({0}) OR abs({0}) = CAST('Infinity' AS DOUBLE))",
    "size({0})",
    "TIMESTAMP",
)


def _time_filter(column: str, since: str | None, until: str | None, dialect: Dialect) -> str:
    parts = []
    if since:
        parts.append(f"{column} >= {dialect.timestamp} '{since}'")
    if until:
        parts.append(f"{column} < {dialect.timestamp} '{until}'")
    return " AND ".join(parts) or "TRUE"


def predictions_sql(
    events: str,
    features: list[str],
    dialect: Dialect,
    since: str | None = None,
    until: str | None = None,
    dedup: bool = True,
    categorical: frozenset[str] | set[str] | tuple[str, ...] = (),
    one_server: bool = False,
    pair_key: bool = False,
) -> str:
    """One row per predicted instance: ``request_id, instance, time, model_version, stage, <features>,
    prediction`` from the event table ``events`` (requests in ``[since, until)``, inputs of the right width).
    A feature named in ``categorical`` is its category value as logged (``inputs_text`` at its position, a
    string); the others are numbers (``inputs``).
    ``dedup=False`` skips counting repeated events once: only for tables known to hold none
    (``duplicates_sql``), where it saves two aggregations of every event. ``one_server=True`` pairs by request
    id and instance alone: only for tables whose every event names the same server (``one_server``), where
    the server's three columns add nothing to the pairing but its cost. ``pair_key=True`` adds ``_pair``, a
    hash of the pairing key (request id, instance and server), equal on the rows of one pair. DuckDB."""
    quote = _quote(dialect)

    def element(j: int) -> str:
        return dialect.element("inputs_text" if features[j] in categorical else "inputs", j)

    server = "" if one_server else "source, coalesce(inferenceservicename, '') AS isvc, coalesce(endpoint, '') AS ep, "
    by = "" if one_server else "source, isvc, ep, "
    same = "" if one_server else " AND q.source = r.source AND q.isvc = r.isvc AND q.ep = r.ep"
    cols = "".join(f"q.inputs_{j} AS {quote(f)}, " for j, f in enumerate(features))
    if pair_key:
        cols += f"hash(q.request_id, q.instance{'' if one_server else ', q.source, q.isvc, q.ep'}) AS _pair, "
    width = f"{dialect.size.format('inputs')} = {len(features)}"
    when = _time_filter("time", since, until, dialect)
    if dedup:
        firsts = "".join(f"first({element(j)}) AS inputs_{j}, " for j in range(len(features)))
        req = f"""
      SELECT request_id, {server}instance, min(time) AS time, {firsts}
             first(model_version) AS model_version, first(stage) AS stage
      FROM {events}
      WHERE type = 'request' AND instance IS NOT NULL AND {width} AND {when}
      GROUP BY request_id, {by}instance"""
        resp = f"""
      SELECT request_id, {server}instance, first(model_version) AS model_version, first(stage) AS stage,
             first(prediction) AS prediction
      FROM {events}
      WHERE type = 'response' AND instance IS NOT NULL AND prediction IS NOT NULL
      GROUP BY request_id, {by}instance"""
    else:
        elems = "".join(f"{element(j)} AS inputs_{j}, " for j in range(len(features)))
        req = f"""
      SELECT request_id, {server}instance, time, {elems} model_version, stage
      FROM {events}
      WHERE type = 'request' AND instance IS NOT NULL AND {width} AND {when}"""
        resp = f"""
      SELECT request_id, {server}instance, model_version, stage, prediction
      FROM {events}
      WHERE type = 'response' AND instance IS NOT NULL AND prediction IS NOT NULL"""
    return f"""
    WITH req AS ({req}
    ), resp AS ({resp}
    )
    SELECT q.request_id, q.instance, q.time,
           coalesce(r.model_version, q.model_version) AS model_version,
           coalesce(r.stage, q.stage) AS stage, {cols}r.prediction
    FROM req q JOIN resp r
      ON q.request_id = r.request_id AND q.instance = r.instance{same}
    """


def duplicates_sql(events: str, one_server: bool = False) -> str:
    """How many events repeat an earlier one (same server, id, type, instance; ``one_server``: every event
    names the same server); a hash collision can only over-count, which merely selects the deduplicating
    plan. DuckDB."""
    server = "" if one_server else "source, coalesce(inferenceservicename, ''), coalesce(endpoint, ''), "
    key = f"hash(request_id, {server}type, instance)"
    # one grouping of the keys (count(*) - count(DISTINCT) plans a second pass over a materialised CTE)
    return f"SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM {events} WHERE instance IS NOT NULL GROUP BY {key})"


def checks_sql(events: str, width: int, since=None, until=None, one_server: bool = False) -> str:
    """One scan of the events for both checks of a window: ``(repeated events, request rows whose inputs do
    not have the model's width)`` (``duplicates_sql``, ``mismatched_requests_sql``). DuckDB."""
    server = "" if one_server else "source, coalesce(inferenceservicename, ''), coalesce(endpoint, ''), "
    key = f"hash(request_id, {server}type, instance)"
    wrong = f"type = 'request' AND len(inputs) <> {int(width)} AND {_time_filter('time', since, until, DUCKDB)}"
    return f"SELECT count(*) - count(DISTINCT {key}), count(*) FILTER (WHERE {wrong}) FROM {events} WHERE instance IS NOT NULL"


def mismatched_requests_sql(events: str, width: int, dialect: Dialect, since=None, until=None) -> str:
    """Request rows whose inputs do not have the model's width (skipped by ``predictions_sql``)."""
    return (
        f"SELECT count(*) FROM {events} WHERE type = 'request' AND instance IS NOT NULL "
        f"AND {dialect.size.format('inputs')} <> {width} AND {_time_filter('time', since, until, dialect)}"
    )


def _counted_labels(dialect: Dialect, since: str | None) -> str:
    return f"truth IS NOT NULL AND {dialect.finite.format('truth')} AND {_time_filter('time', since, None, dialect)}"


def latest_labels_sql(labels: str, dialect: Dialect, since: str | None = None) -> str:
    """The one "latest label wins" rule: ``request_id, instance, truth, truth_time``."""
    return f"""
    SELECT request_id, instance, max_by(truth, time) AS truth, max(time) AS truth_time
    FROM {labels}
    WHERE {_counted_labels(dialect, since)}
    GROUP BY request_id, instance
    """


def labels_sql(labels: str, dialect: Dialect, since: str | None = None) -> str:
    """Every label the rule weighs (``request_id, instance, truth, truth_time``), ungrouped: the latest labels
    themselves when no instance has two (``kfrelease.lake.engine.materialise_joined`` checks it)."""
    return (
        f"SELECT request_id, instance, truth, time AS truth_time FROM {labels} WHERE {_counted_labels(dialect, since)}"
    )


def joined_sql(predictions: str, truth: str) -> str:
    """The one join: every prediction, with ``truth`` (NULL when unlabelled) and ``truth_time``."""
    return f"""
    SELECT p.*, t.truth, t.truth_time
    FROM {predictions} p LEFT JOIN {truth} t
      ON p.request_id = t.request_id AND p.instance = t.instance
    """


def _quote(dialect: Dialect):
    if dialect.name == "spark":
        return lambda n: "`" + n.replace("`", "``") + "`"
    return lambda n: '"' + n.replace('"', '""') + '"'
