"""New curated data retrains by default: an auto revision through the training trigger, rate-limited.

When a new curated dataset version is published, every model whose *production* version was trained on
an older version of that dataset is retrained on the new one, through the same path as quality alerts
(``AlertReceiver.request_retrain``: recorded, one at a time; it calls the training trigger with
``auto=True``, i.e. ``kfrelease.training.trigger.start_auto_revision``: the auto revision +1, then staging,
shadow and rollout like any other candidate).

Per model, the ``retrain`` section of the production version's ``model.yaml`` decides
(``kfrelease.training.retrain``): ``on_new_data`` (default true) and ``min_interval_minutes`` (default
``NEW_DATA_MIN_INTERVAL_MINUTES``, 60): at most one new-data retrain per model in that interval.

Records (``pipeline-root`` bucket): one per (model, dataset version),
``monitoring/newdata/<model>/<dataset version>.json``, written with a conditional write (``If-None-Match``,
or ``If-Match`` on its ETag to take it over), so two pollers never both retrain. Its ``action`` is
``triggered`` (with the receiver's decision ``key``), ``rate-limited`` or ``busy`` (with ``detail``: why; the
version is looked at again on the next check, and retrained once the interval has passed), or the
receiver's other decisions. ``disabled`` and ``up-to-date`` are returned, not recorded.

Configuration (environment of the receiver service): ``KFRELEASE_RETRAIN_ON_NEW_DATA=off`` turns it off for
every model; ``KFRELEASE_NEWDATA_POLL_SECONDS`` how often the embedded stack's receiver service looks for new
versions (default ``POLL_SECONDS``, 30; 0 turns the poller off, as the test suite does so that publishing
data never starts a run behind a test's back). ``kfrelease newdata`` (CLI, CI, a cron job or a step
after the data pipeline) checks once.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

from kfrelease.config import setting
from kfrelease.errors import Conflict, KfreleaseError
from kfrelease.monitoring.keys import key as monitoring_key
from kfrelease.registry import ModelRegistry
from kfrelease.training.retrain import policy_of_spec

log = logging.getLogger(__name__)

BUCKET = "pipeline-root"
#: How often the receiver service looks for new curated versions, unless KFRELEASE_NEWDATA_POLL_SECONDS says.
POLL_SECONDS = 30.0
#: Claims in these states are final for their data version (others are looked at again).
HANDLED = ("triggered", "no-new-data", "data-refused")
#: A claim not followed by a decision within this long (its poller died) may be taken over.
CLAIM_SECONDS = 300.0


def enabled() -> bool:
    return setting("KFRELEASE_RETRAIN_ON_NEW_DATA")


def claim_key(model: str, dataset_version: str) -> str:
    return monitoring_key("newdata", model, f"{dataset_version}.json")


def records(store, model: str) -> list[dict]:
    """The model's new-data records, oldest first."""
    docs = [store.get_json(BUCKET, o.key) for o in store.iter(BUCKET, monitoring_key("newdata", model, prefix=True))]
    return sorted(docs, key=lambda d: d.get("at_epoch", 0))


def _last_started(store, model: str) -> dict | None:
    started = [d for d in records(store, model) if d.get("action") == "triggered"]
    return started[-1] if started else None


def check_new_data(receiver, models: list[str] | None = None) -> list[dict]:
    """One pass: for each model in production, retrain if its dataset has a newer curated version.

    Returns one entry per model looked at: ``{model, dataset, production_version, trained_on, latest,
    action}`` with action ``disabled``, ``up-to-date``, ``already-handled``, ``rate-limited`` (``detail``
    says why) or the receiver's retrain decision."""
    from kfrelease.data.publish import latest_version_id  # heavy: pandas

    store = receiver.store
    registry = ModelRegistry(store)
    out = []
    for model in models if models is not None else registry.models():
        prod = registry.current(model, "production")
        if prod is None:
            continue
        dataset, trained_on = (
            prod.entry.get("dataset"),
            prod.entry.get("dataset_version"),
        )
        if not dataset:
            continue
        latest = latest_version_id(store, dataset)
        row = {
            "model": model,
            "dataset": dataset,
            "production_version": prod.version,
            "trained_on": trained_on,
            "latest": latest,
        }
        policy = policy_of_spec((prod.entry.get("spec") or {}).get("text"))
        if not enabled() or not policy.on_new_data:
            why = "KFRELEASE_RETRAIN_ON_NEW_DATA is off" if not enabled() else "retrain.on_new_data is false"
            out.append({**row, "action": "disabled", "detail": why})
            continue
        if latest is None or latest == trained_on:
            out.append({**row, "action": "up-to-date"})
            continue
        out.append(_consider(receiver, store, row, policy, prod))
    return out


def _consider(receiver, store, row: dict, policy, prod) -> dict:
    """Claim (model, latest) and retrain, or record why not now."""
    model, latest = row["model"], row["latest"]
    key = claim_key(model, latest)
    now = time.time()
    info = store.stat(BUCKET, key)
    previous = store.get_json(BUCKET, key) if info is not None else {}
    claimed = previous.get("action") == "claimed" and now - float(previous.get("at_epoch", 0)) < CLAIM_SECONDS
    if previous.get("action") in HANDLED or claimed:
        return {**row, "action": "already-handled", "detail": previous.get("detail", "")}
    doc = {**row, "at": datetime.now(UTC).isoformat(), "at_epoch": now}
    last = _last_started(store, model)
    if last is not None and now - float(last["at_epoch"]) < policy.min_interval_seconds:
        doc["action"] = "rate-limited"
        doc["detail"] = (
            f"a new-data retrain of {model} was started {now - float(last['at_epoch']):.0f} s ago (on {last['dataset']} "
            f"{last['latest']}); at most one per {policy.min_interval_minutes:g} min (retrain.min_interval_minutes "
            f"in model.yaml); {latest} is retrained once that has passed"
        )
        if previous.get("action") != "rate-limited":  # recorded once per data version, not at every poll
            _write(store, key, doc, info)
        log.info("new data for %s: rate-limited: %s", model, doc["detail"])
        return {**row, "action": "rate-limited", "detail": doc["detail"]}
    try:  # take the claim: two pollers never both retrain
        etag = _write(store, key, {**doc, "action": "claimed"}, info)
    except Conflict:
        return {**row, "action": "already-handled"}
    decision = receiver.request_retrain(
        model,
        f"new curated data: {row['dataset']} {latest} (production {prod.version} was trained on {row['trained_on']})",
        {
            "version": prod.version,
            "stage": "production",
            "dataset": row["dataset"],
            "dataset_version": latest,
        },
    )
    doc.update(action=decision["decision"], key=decision["key"], detail=decision.get("detail", ""))
    store.put_json(BUCKET, key, doc, if_match=etag)
    return {**row, "action": decision["decision"], "key": decision["key"], "detail": doc["detail"]}


def _write(store, key: str, doc: dict, info) -> str:
    """Create the record, or replace the one ``info`` describes (conditional both ways); its new ETag."""
    if info is None:
        return store.put_json(BUCKET, key, doc, if_none_match=True)
    return store.put_json(BUCKET, key, doc, if_match=info.etag)


def poll_seconds() -> float:
    return float(setting("KFRELEASE_NEWDATA_POLL_SECONDS"))


def start_poller(receiver, interval: float | None = None) -> threading.Thread | None:
    """Check for new data every ``interval`` seconds in a daemon thread (None when turned off)."""
    interval = float(interval if interval is not None else poll_seconds())
    if interval <= 0 or not enabled():
        return None
    stop = threading.Event()

    def loop():
        while not stop.wait(interval):
            try:
                for row in check_new_data(receiver):
                    if row["action"] not in ("up-to-date", "already-handled", "disabled"):
                        log.info("new data: %s", row)
            except KfreleaseError as exc:
                log.warning("new-data check failed (retried in %.0f s): %s", interval, exc)
            except Exception:
                log.exception("new-data check failed")

    t = threading.Thread(target=loop, daemon=True, name="newdata-poller")
    t.stop = stop  # type: ignore[attr-defined]
    t.start()
    return t
