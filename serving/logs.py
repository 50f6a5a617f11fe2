"""Reading prediction logs back: ``read_predictions`` (docs/CONTRACTS.md, "Prediction logs").

Only the day partitions ``inference-logs/<model>/<YYYY-MM-DD>/`` that overlap ``[since, until)`` are
listed and read, and of each JSON line only the fields a row needs are kept. Requests and responses are
joined on (id, source): the primary, the shadow and the canary answer the same request id, each from its
own source, so each gives its own rows. Duplicate events (same source, id and type) count once.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator

import orjson
import pandas as pd

from kfrelease.errors import NotFound
from kfrelease.storage import ObjectStore

log = logging.getLogger(__name__)

BUCKET = "inference-logs"
BASE_COLUMNS = ["request_id", "instance", "time", "model_version", "stage"]


def _ts(value) -> pd.Timestamp | None:
    if value is None:
        return None
    t = pd.Timestamp(value)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def day_partitions(
    store: ObjectStore, bucket: str, model: str, since=None, until=None
) -> list[str]:
    """``<model>/<day>/`` prefixes whose day overlaps [since, until)."""
    lo, hi = _ts(since), _ts(until)
    if lo is not None and hi is not None and (hi - lo) <= pd.Timedelta(days=62):
        days, d = [], lo.normalize()
        while d < hi:
            days.append(d.strftime("%Y-%m-%d"))
            d += pd.Timedelta(days=1)
        return [f"{model}/{day}/" for day in days]
    found = set()
    for obj in store.iter(bucket, f"{model}/", recursive=True):
        parts = obj.key.split("/")
        if len(parts) >= 3 and len(parts[1]) == 10:
            found.add(parts[1])
    keep = [
        d
        for d in sorted(found)
        if (lo is None or d >= lo.strftime("%Y-%m-%d"))
        and (hi is None or d <= hi.strftime("%Y-%m-%d"))
    ]
    return [f"{model}/{day}/" for day in keep]


def iter_lines(
    store: ObjectStore, bucket: str, model: str, since=None, until=None
) -> Iterator[dict]:
    """Every JSON line of the partitions in the window (not yet filtered by exact time)."""
    for prefix in day_partitions(store, bucket, model, since, until):
        try:
            objects = store.list(bucket, prefix)
        except NotFound:
            continue
        for obj in objects:
            for n, raw in enumerate(store.get_bytes(bucket, obj.key).splitlines(), 1):
                if not raw.strip():
                    continue
                try:
                    yield orjson.loads(raw)
                except orjson.JSONDecodeError:
                    log.warning(
                        "%s line %d is not JSON; skipped", store.uri(bucket, obj.key), n
                    )


def _features_from_registry(
    store: ObjectStore, model: str, version: str | None
) -> list[str] | None:
    if not version:
        return None
    try:
        entry = store.get_json(
            "models", f"registry/{model}/versions/{version}/entry.json"
        )
        return [c["name"] for c in entry["input_schema"]]
    except Exception:  # noqa: BLE001 - the names are a convenience; positions still work
        return None


def read_predictions(
    store: ObjectStore,
    model: str,
    since=None,
    until=None,
    features: list[str] | None = None,
) -> pd.DataFrame:
    """One row per predicted instance: ``request_id, instance, time, model_version, stage, <features...>,
    prediction``. ``since``/``until`` (datetimes or ISO strings, UTC when naive) bound the request time."""
    lo, hi = _ts(since), _ts(until)
    requests: dict[tuple, dict] = {}
    responses: dict[tuple, dict] = {}
    for line in iter_lines(store, BUCKET, model, since, until):
        kind = line.get("type")
        key = (line.get("id"), line.get("source"))
        if kind == "request" and line.get("instances") is not None:
            requests.setdefault(key, line)
        elif kind == "response" and line.get("predictions") is not None:
            responses.setdefault(key, line)
    rows = []
    names: list[str] | None = features
    for key, resp in responses.items():
        req = requests.get(key)
        if req is None:
            continue
        t = req.get("time") or resp.get("time")
        ts = _ts(t)
        if (lo is not None and ts < lo) or (hi is not None and ts >= hi):
            continue
        version = resp.get("model_version") or req.get("model_version")
        if names is None:
            names = req.get("features") or _features_from_registry(
                store, model, version
            )
        instances, predictions = req["instances"], resp["predictions"]
        for i, (x, y) in enumerate(zip(instances, predictions)):
            rows.append(
                (key[0], i, ts, version, resp.get("stage") or req.get("stage"), *x, y)
            )
    if names is None:
        width = max((len(r) - 6 for r in rows), default=0)
        names = [f"f{j}" for j in range(width)]
    rows = [r for r in rows if len(r) == len(names) + 6]
    frame = pd.DataFrame(rows, columns=[*BASE_COLUMNS, *names, "prediction"])
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    frame["instance"] = frame["instance"].astype("int64")
    for c in (*names, "prediction"):
        frame[c] = pd.to_numeric(frame[c], errors="coerce")
    return frame.sort_values(
        ["time", "request_id", "instance"], kind="stable"
    ).reset_index(drop=True)


def count_events(
    store: ObjectStore, model: str, since=None, until=None
) -> dict[str, int]:
    """Distinct logged events by type (dedup by source, id, type): what the loss-free checks count."""
    seen: set[tuple] = set()
    counts = {"request": 0, "response": 0}
    for line in iter_lines(store, BUCKET, model, since, until):
        key = (line.get("source"), line.get("id"), line.get("type"))
        if key not in seen and line.get("type") in counts:
            seen.add(key)
            counts[line["type"]] += 1
    return counts


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
