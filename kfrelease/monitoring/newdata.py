"""New curated data triggers an auto-revision retrain (configurable).

When a new curated dataset version is published, every model whose *production* version was trained on
an older version of that dataset is retrained on the new one, through the same path as quality alerts
(``AlertReceiver.request_retrain``: recorded, rate-limited, one at a time; the training trigger's
``auto=True`` gives the auto revision +1, and the candidate then goes through staging, shadow and rollout
like any other).

Each (model, dataset version) is handled once: a claim ``monitoring/newdata/<model>/<dataset version>.json``
is created with ``If-None-Match`` before triggering, so two pollers never both retrain.

Configuration (environment of the receiver service):
``KFRELEASE_RETRAIN_ON_NEW_DATA`` ``on`` (default) or ``off``; ``KFRELEASE_NEWDATA_POLL_SECONDS`` how often the
receiver service looks for new versions (default 0: no poller, so that publishing data never starts a
training run behind a test's back; set e.g. 300 to turn it on). ``kfrelease newdata`` (CLI, CI, a cron job or
a step after the data pipeline) checks once.
"""

from __future__ import annotations

import logging
import threading

from kfrelease.config import setting
from kfrelease.errors import Conflict, KfreleaseError

log = logging.getLogger(__name__)

BUCKET = "pipeline-root"


def enabled() -> bool:
    return setting("KFRELEASE_RETRAIN_ON_NEW_DATA")


def check_new_data(receiver, models: list[str] | None = None) -> list[dict]:
    """One pass: for each model in production, retrain if its dataset has a newer curated version.

    Returns one entry per model looked at: ``{model, dataset, production_version, trained_on, latest,
    action}`` with action ``disabled``, ``up-to-date``, ``already-handled`` or the retrain decision."""
    from kfrelease.data.publish import latest_version_id
    from kfrelease.registry import ModelRegistry

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
        if not enabled():
            out.append({**row, "action": "disabled"})
            continue
        if latest is None or latest == trained_on:
            out.append({**row, "action": "up-to-date"})
            continue
        try:
            store.put_json(
                BUCKET,
                f"monitoring/newdata/{model}/{latest}.json",
                row,
                if_none_match=True,
            )
        except Conflict:
            out.append({**row, "action": "already-handled"})
            continue
        decision = receiver.request_retrain(
            model,
            f"new curated data: {dataset} {latest} (production {prod.version} was trained on {trained_on})",
            {
                "version": prod.version,
                "stage": "production",
                "dataset": dataset,
                "dataset_version": latest,
            },
        )
        out.append({**row, "action": decision["decision"], "key": decision["key"]})
    return out


def start_poller(receiver, interval: float | None = None) -> threading.Thread | None:
    """Check for new data every ``interval`` seconds in a daemon thread (None when turned off)."""
    interval = float(
        interval
        if interval is not None
        else setting("KFRELEASE_NEWDATA_POLL_SECONDS")
    )
    if interval <= 0 or not enabled():
        return None
    stop = threading.Event()

    def loop():
        while not stop.wait(interval):
            try:
                for row in check_new_data(receiver):
                    if row["action"] not in ("up-to-date", "already-handled"):
                        log.info("new data: %s", row)
            except KfreleaseError as exc:
                log.warning(
                    "new-data check failed (retried in %.0f s): %s", interval, exc
                )
            except Exception:
                log.exception("new-data check failed")

    t = threading.Thread(target=loop, daemon=True, name="newdata-poller")
    t.stop = stop  # type: ignore[attr-defined]
    t.start()
    return t
