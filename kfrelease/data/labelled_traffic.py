"""Labelled traffic is new data: a data-pipeline source that turns a window of logged requests joined with
their ground truth into a curated dataset version, so that a retrain learns from what production saw.

The rows come from the one lake reader and join (``kfrelease.lake.engine.open_window``): every labelled
request instance of the window, once (the primary, the shadow and the canary answer the same request), with
the latest label as the target. They are then taken through the data pipeline's own steps, on the dataset's
latest version plus the new rows: ``validate`` against the dataset spec (the spec the base version was
published with: its feature columns and target; a request instance keeps a stable row id derived from its
request id, so a request already in the dataset is never added twice), the spec's feature step, and
``publish`` (the data first, the manifest with ``If-None-Match``, ``latest`` last: never a half-published
version). Invalid traffic rows are quarantined or refuse the whole version, as the spec's ``on_invalid``
says. The manifest's ``sources`` name the base version and every log and label object read (URI, ETag, row
count), and its ``lineage`` the window, the production version and the counts.

All of it runs as the data engineers' role (``data-engineer``: it reads ``inference-logs`` and
``feedback``, writes ``curated``). ``curate_labelled_traffic`` returns what it did; when the window holds
no labelled request the dataset lacks and production was trained on the latest version, nothing is
published and ``reason`` says why (an alert then starts no run, ``kfrelease.monitoring.receiver``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from kfrelease.config import setting
from kfrelease.data.features import apply_features
from kfrelease.data.ingest import LINE_COL, SOURCE_COL, Source
from kfrelease.data.publish import DatasetVersion, load_dataset, publish
from kfrelease.data.spec import DatasetSpec, parse_spec
from kfrelease.data.validate import validate
from kfrelease.errors import ConfigError, KfreleaseError
from kfrelease.lake.engine import open_window
from kfrelease.registry import ModelRegistry
from kfrelease.storage import ObjectStore, store_for

log = logging.getLogger(__name__)

ROLE = "data-engineer"
#: How far back an alert looks for labelled traffic (``KFRELEASE_LABELLED_TRAFFIC_DAYS``).
DEFAULT_LOOKBACK_DAYS = 7.0
_ORIGIN = "labelled request "


@dataclass(frozen=True)
class Curation:
    """What ``curate_labelled_traffic`` found and did (JSON-able with ``as_dict``)."""

    model: str
    dataset: str
    production_version: str
    trained_on: str | None  # the dataset version production was trained on
    base_version: str  # the latest version the new rows were added to
    since: str
    until: str
    labelled: int  # labelled request instances in the window
    added: int  # of them, rows the dataset did not have and validation accepted
    quarantined: int  # of them, rows validation refused (``on_invalid: quarantine``)
    version: str | None  # the version to retrain on (None: no newer data than production's)
    reason: str

    @property
    def newer(self) -> bool:
        return self.version is not None

    def as_dict(self) -> dict:
        return {**asdict(self), "newer": self.newer}


def lookback() -> dt.timedelta:
    days = setting("KFRELEASE_LABELLED_TRAFFIC_DAYS")
    if days <= 0:
        raise ConfigError(f"KFRELEASE_LABELLED_TRAFFIC_DAYS is {days!r}; give a positive number of days")
    return dt.timedelta(days=days)


def labelled_requests(window) -> pd.DataFrame:
    """Every labelled request instance of an open window once: ``request_id, instance, time, <features>,
    truth`` (ordered by time, request id, instance)."""
    feats = ", ".join(f'first("{f}") AS "{f}"' for f in window.features)
    return window.con.execute(
        f"SELECT request_id, instance, min(time) AS time, {feats}, first(truth) AS truth FROM joined "
        "WHERE truth IS NOT NULL GROUP BY request_id, instance ORDER BY time, request_id, instance"
    ).df()


def row_ids(requests: pd.DataFrame, dtype: str) -> pd.Series:
    """A stable row id per request instance (the same request always gets the same id): the request id and
    instance for a ``string`` id column, else a positive 62-bit integer from their SHA-256."""
    keys = requests["request_id"].astype(str) + "/" + requests["instance"].astype(str)
    if dtype == "string":
        return keys
    return keys.map(lambda k: int.from_bytes(hashlib.sha256(k.encode()).digest()[:8], "big") >> 2).astype("int64")


def traffic_rows(requests: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    """Labelled requests as rows of the dataset spec's columns (the id derived, the target from the label,
    the feature columns from the logged inputs), with the request as each row's origin for validation."""
    rows = pd.DataFrame(index=requests.index)
    for c in spec.columns.values():
        if c.name == spec.id_column:
            rows[c.name] = row_ids(requests, c.dtype)
        elif c.name == spec.target:
            rows[c.name] = requests["truth"].astype("float64")
        elif c.name in requests.columns:
            rows[c.name] = requests[c.name]
        elif not c.nullable:
            raise ConfigError(
                f"dataset {spec.name!r} requires column {c.name!r}, which the model's logged inputs do not carry "
                "(they are the model's features); make the column nullable or log it as a feature"
            )
    rows[SOURCE_COL] = _ORIGIN + requests["request_id"].astype(str)
    rows[LINE_COL] = requests["instance"].astype("int64")
    return rows


def _base_rows(base: pd.DataFrame, spec: DatasetSpec, dv: DatasetVersion) -> pd.DataFrame:
    rows = base[[c for c in spec.column_names if c in base.columns]].copy()  # the feature step runs again
    rows[SOURCE_COL] = f"curated/{dv.dataset}/versions/{dv.version}"
    rows[LINE_COL] = np.arange(1, len(rows) + 1)
    return rows


def _read_sources(objects: list[tuple[str, str, str]]) -> list[Source]:
    return [Source(uri, etag.strip('"'), pq.read_metadata(path).num_rows) for uri, etag, path in objects]


def curate_labelled_traffic(
    store: ObjectStore,
    model: str,
    since: dt.datetime,
    until: dt.datetime,
    run_id: str = "",
) -> Curation:
    """Build (or find) the curated version of ``model``'s dataset that adds the labelled traffic of
    ``[since, until)`` to its latest version, as the data engineers' ``store``. See the module docstring."""
    prod = ModelRegistry(store).current(model, "production")
    if prod is None:
        raise KfreleaseError(f"model {model!r} has no production version; labelled traffic is curated for one")
    dataset, trained_on = prod.entry.get("dataset"), prod.entry.get("dataset_version")
    if not dataset:
        raise KfreleaseError(f"{model} {prod.version} records no dataset; its labelled traffic has nowhere to go")
    features = [c["name"] for c in prod.entry.get("input_schema") or []] or None
    window = open_window(store, model, since, until, features)
    requests = labelled_requests(window)
    base, dv = load_dataset(store, dataset)
    spec = parse_spec(dv.manifest["schema"], f"dataset spec of {dataset} {dv.version}")
    outcome = {
        "model": model,
        "dataset": dataset,
        "production_version": prod.version,
        "trained_on": trained_on,
        "base_version": dv.version,
        "since": window.since,
        "until": window.until,
        "labelled": len(requests),
    }
    new = traffic_rows(requests, spec)
    if spec.id_column and spec.id_column in base.columns:
        new = new[~new[spec.id_column].isin(base[spec.id_column])]
    checked = validate(pd.concat([_base_rows(base, spec, dv), new], ignore_index=True), spec)
    added = int(checked.valid[SOURCE_COL].str.startswith(_ORIGIN).sum())
    quarantined = len(checked.invalid)
    outcome.update(added=added, quarantined=quarantined)
    if added == 0:
        if dv.version != trained_on:
            return Curation(
                **outcome,
                version=dv.version,
                reason=(
                    f"no labelled request new to {dataset} in the window, but {dataset} {dv.version} is newer than "
                    f"{trained_on}, which {prod.version} was trained on"
                ),
            )
        why = (
            "no labelled request in the window"
            if not len(requests)
            else f"its {len(requests)} labelled request(s) are in {dataset} {dv.version} already"
            if not quarantined
            else f"validation refused all {quarantined} new labelled request(s)"
        )
        return Curation(
            **outcome,
            version=None,
            reason=(
                f"no newer data than production's: {prod.version} was trained on {dataset} {trained_on}, the latest "
                f"version, and {why} ({window.since} to {window.until})"
            ),
        )
    rows = apply_features(checked.valid, spec)
    sources = [
        Source(f"curated/{dv.data_key}", dv.manifest.get("data_etag", ""), len(base)),
        *_read_sources(window.log_objects),
        *_read_sources(window.label_objects),
    ]
    lineage = {"kind": "labelled-traffic", **outcome}
    published = publish(
        rows,
        spec,
        store,
        sources,
        run_id or f"labelled-traffic-{model}",
        quarantined=checked.invalid if quarantined else None,
        lineage=lineage,
    )
    log.info("labelled traffic of %s: %d new row(s) -> %s %s", model, added, dataset, published.version)
    return Curation(
        **outcome,
        version=published.version,
        reason=(f"{added} labelled request(s) of {model} added to {dataset} {dv.version} as {published.version}"),
    )


def curate_for_alert(settings, model: str, now: dt.datetime | None = None) -> Curation:
    """The labelled traffic of the last ``KFRELEASE_LABELLED_TRAFFIC_DAYS`` (default 7), as the data
    engineers' role: what an accuracy alert retrains on."""
    until = now or dt.datetime.now(dt.UTC)
    return curate_labelled_traffic(store_for(ROLE, settings), model, until - lookback(), until)
