"""The Alertmanager webhook receiver: records every alert in the object store and, for firing quality or
drift alerts, triggers an auto-revision retrain through the training trigger, rate-limited and one at a time.

Alertmanager posts its webhook payload (``version: "4"``, ``alerts[]`` with ``status``, ``labels``,
``annotations``, ``startsAt``, ``fingerprint``; prometheus.io/docs/alerting/latest/configuration/#webhook_config)
to ``POST /alerts``. Records (``pipeline-root`` bucket, ``pipeline`` role)::

    monitoring/alerts/<YYYY-MM-DD>/<HHMMSS>-<fingerprint>-<status>-<id>.json     one per alert notification
    monitoring/retrains/<model>/<YYYYmmddTHHMMSSZ>-<id>.json                    one per retrain decision
    monitoring/retrains/<model>/<YYYYmmddTHHMMSSZ>-<id>.result.json             what the trigger returned

Before a quality or drift alert retrains, the labelled traffic is new data: the receiver builds (or finds)
the curated version that adds the model's labelled requests of the last ``KFRELEASE_LABELLED_TRAFFIC_DAYS``
to its dataset (``kfrelease.data.labelled_traffic:curate_for_alert``, as the data engineers' role;
``KFRELEASE_RETRAIN_CURATE=module:function`` replaces it, an empty value skips it).

A decision is ``triggered`` (then ``result`` or ``error`` once the trigger returns), ``rate-limited`` (a
retrain of this model was triggered less than ``KFRELEASE_RETRAIN_MIN_INTERVAL`` seconds ago, default 3600),
``busy`` (another retrain is still running), ``no-new-data`` (production was trained on the latest curated
version and the labelled traffic adds nothing to it: no run starts, ``detail`` says why) or ``data-refused``
(the labelled traffic could not become a version, e.g. it fails the dataset spec: no run, ``detail`` is the
error). A decision after a curation records it (``curation``: versions, counts, reason). If the object store cannot
take the record, the receiver answers 503 so that Alertmanager retries the notification: nothing is lost.

The trigger is the training trigger's one entry point for automatic retrains,
``kfrelease.training.trigger:start_auto_revision(settings, model, reason)`` (the production definition on the
latest curated version: the one the curation just published); ``KFRELEASE_RETRAIN_TRIGGER=module:function``
replaces it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import threading
import time
import uuid
from dataclasses import asdict
from datetime import UTC, datetime

from kfrelease.config import LOG_FORMAT, Settings, setting
from kfrelease.errors import KfreleaseError, StoreUnavailable
from kfrelease.monitoring.keys import key as monitoring_key
from kfrelease.monitoring.keys import safe
from kfrelease.monitoring.newdata import start_poller
from kfrelease.storage import store_for

log = logging.getLogger(__name__)

BUCKET = "pipeline-root"
RETRAIN_KINDS = ("quality", "drift")
DEFAULT_TRIGGER = "kfrelease.training.trigger:start_auto_revision"
DEFAULT_CURATE = "kfrelease.data.labelled_traffic:curate_for_alert"


def _stamp(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


class AlertReceiver:
    """The receiver's logic, independent of HTTP (tested directly and through the server)."""

    def __init__(
        self,
        settings: Settings,
        store=None,
        min_interval: float | None = None,
        trigger_path: str | None = None,
        curate_path: str | None = None,
    ):
        self.settings = settings
        self.store = store or store_for("pipeline", settings)
        self.min_interval = float(
            min_interval if min_interval is not None else setting("KFRELEASE_RETRAIN_MIN_INTERVAL")
        )
        self.trigger_path = trigger_path or setting("KFRELEASE_RETRAIN_TRIGGER") or DEFAULT_TRIGGER
        self.curate_path = curate_path if curate_path is not None else setting("KFRELEASE_RETRAIN_CURATE")
        self._curation = threading.Lock()
        self._lock = threading.Lock()  # one retrain at a time
        self._decide = threading.Lock()  # decisions are serialised
        self.threads: list[threading.Thread] = []

    # records ---------------------------------------------------------------------------------------
    def record_alert(self, alert: dict, receiver: str = "") -> str:
        now = datetime.now(UTC)
        key = monitoring_key(
            "alerts",
            now.strftime("%Y-%m-%d"),
            f"{now.strftime('%H%M%S')}-{safe(alert.get('fingerprint'))}-{safe(alert.get('status'))}-"
            f"{uuid.uuid4().hex[:8]}.json",
        )
        self.store.put_json(
            BUCKET,
            key,
            {**alert, "received_at": now.isoformat(), "receiver": receiver},
            if_none_match=True,
        )
        return key

    def alerts(self) -> list[dict]:
        return [
            self.store.get_json(BUCKET, o.key) for o in self.store.iter(BUCKET, monitoring_key("alerts", prefix=True))
        ]

    @staticmethod
    def _retrain_key(model: str) -> str:
        return monitoring_key("retrains", model, f"{_stamp()}-{time.time_ns()}-{uuid.uuid4().hex[:6]}.json")

    def retrains(self, model: str | None = None) -> list[dict]:
        prefix = monitoring_key("retrains", *([model] if model else []), prefix=True)
        return [
            self.store.get_json(BUCKET, o.key) for o in sorted(self.store.iter(BUCKET, prefix), key=lambda o: o.key)
        ]

    def _last_triggered(self, model: str) -> float | None:
        last = None
        for doc in self.retrains(model):
            if doc.get("decision") == "triggered":
                last = max(last or 0.0, float(doc.get("at_epoch", 0)))
        return last

    # handling --------------------------------------------------------------------------------------
    def handle(self, payload: dict) -> dict:
        """Record the alerts of one webhook payload and decide on retrains. Returns a summary."""
        if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
            raise ValueError(  # noqa: TRY004 - a bad payload is a value problem (HTTP 400)
                "expected an Alertmanager webhook payload: a JSON object with an 'alerts' list"
            )
        recorded, decisions = [], []
        for alert in payload["alerts"]:
            if not isinstance(alert, dict) or not isinstance(alert.get("labels"), dict):
                raise ValueError("every alert needs a 'labels' object")  # noqa: TRY004
        for alert in payload["alerts"]:
            recorded.append(self.record_alert(alert, payload.get("receiver", "")))
        for alert in payload["alerts"]:
            labels = alert["labels"]
            if alert.get("status") == "firing" and labels.get("kind") in RETRAIN_KINDS and labels.get("model"):
                decisions.append(self.consider_retrain(alert))
        return {"recorded": recorded, "decisions": decisions}

    def consider_retrain(self, alert: dict) -> dict:
        """A firing quality or drift alert: unless a retrain would be rate-limited or busy anyway, build (or
        find) the curated version that adds the labelled traffic (``curate``); retrain only on newer data
        than production's, else record why no run starts (``no-new-data``, or ``data-refused`` when the
        labelled traffic cannot become a version)."""
        labels = alert["labels"]
        model = labels["model"]
        reason = f"alert {labels.get('alertname')} on {model} {labels.get('version', '')} ({labels.get('stage', '')})"
        details = {
            "version": labels.get("version"),
            "stage": labels.get("stage"),
            "alert": labels.get("alertname"),
            "fingerprint": alert.get("fingerprint"),
        }
        with self._curation:  # one curation at a time; the alerts after it see its decision
            if self.curate_path and self._would_start(model):
                try:
                    curation = self._curate_function()(self.settings, model)
                except StoreUnavailable:
                    raise  # 503: Alertmanager retries the notification
                except KfreleaseError as exc:  # e.g. the labelled traffic fails the dataset spec
                    return self._record_decision(model, reason, details, "data-refused", f"{exc}")
                details["curation"] = _jsonable(curation)
                if not curation.newer:
                    return self._record_decision(model, reason, details, "no-new-data", curation.reason)
                details["dataset"], details["dataset_version"] = curation.dataset, curation.version
            return self.request_retrain(model, reason, details)

    def _would_start(self, model: str) -> bool:
        last = self._last_triggered(model)
        return (last is None or time.time() - last >= self.min_interval) and not self._lock.locked()

    def _curate_function(self):
        module, _, attr = self.curate_path.partition(":")
        return getattr(importlib.import_module(module), attr)

    def _record_decision(self, model: str, reason: str, details: dict, decision: str, detail: str) -> dict:
        """Record a decision that starts no run (with why)."""
        with self._decide:
            doc = {
                "model": model,
                **details,
                "reason": reason,
                "at": datetime.now(UTC).isoformat(),
                "at_epoch": time.time(),
                "decision": decision,
                "detail": detail,
            }
            key = self._retrain_key(model)
            self.store.put_json(BUCKET, key, doc, if_none_match=True)
        log.info("retrain decision for %s: %s (%s)", model, decision, detail)
        return {**doc, "key": key}

    def request_retrain(self, model: str, reason: str, details: dict | None = None) -> dict:
        """Decide (triggered, rate-limited, busy), record the decision, start the trigger in the background."""
        with self._decide:
            now = time.time()
            doc = {
                "model": model,
                **(details or {}),
                "reason": reason,
                "at": datetime.now(UTC).isoformat(),
                "at_epoch": now,
            }
            last = self._last_triggered(model)
            if last is not None and now - last < self.min_interval:
                doc["decision"] = "rate-limited"
                doc["detail"] = (
                    f"a retrain of {model} was triggered {now - last:.0f} s ago (< {self.min_interval:.0f} s)"
                )
            elif not self._lock.acquire(blocking=False):
                doc["decision"] = "busy"
                doc["detail"] = "another retrain is still running; only one runs at a time"
            else:
                doc["decision"] = "triggered"
            key = self._retrain_key(model)
            try:
                self.store.put_json(BUCKET, key, doc, if_none_match=True)
            except BaseException:
                if doc["decision"] == "triggered":
                    self._lock.release()
                raise
        log.info("retrain decision for %s: %s (%s)", model, doc["decision"], reason)
        if doc["decision"] == "triggered":
            t = threading.Thread(
                target=self._run_trigger,
                args=(key, doc),
                daemon=True,
                name=f"retrain-{model}",
            )
            self.threads.append(t)
            t.start()
        return {**doc, "key": key}

    def _trigger_function(self):
        module, _, attr = self.trigger_path.partition(":")
        return getattr(importlib.import_module(module), attr)

    def _run_trigger(self, key: str, doc: dict) -> None:
        outcome = dict(doc)
        try:
            record = self._trigger_function()(self.settings, doc["model"], doc["reason"])
            outcome["result"] = _jsonable(record)
            outcome["status"] = "done"
        except Exception as exc:  # noqa: BLE001 - recorded, never crashes the receiver
            outcome["status"] = "failed"
            outcome["error"] = f"{type(exc).__name__}: {exc}"
            log.error("auto retrain of %s failed: %s", doc["model"], outcome["error"])
        finally:
            outcome["finished_at"] = datetime.now(UTC).isoformat()
            try:
                self.store.put_json(
                    BUCKET,
                    key[: -len(".json")] + ".result.json",
                    outcome,
                    if_none_match=True,
                )
            except KfreleaseError as exc:
                log.error("could not record the retrain result %s: %s", key, exc)
            self._lock.release()


def _jsonable(obj):
    if obj is None or isinstance(obj, (str, int, float, bool, list, dict)):
        return obj
    for attr in ("as_dict", "to_dict", "dict"):
        if hasattr(obj, attr):
            try:
                return getattr(obj, attr)()
            except Exception:  # noqa: BLE001 - fall back to the next representation
                log.debug("%s.%s() failed; trying the next form", type(obj).__name__, attr)
    if hasattr(obj, "__dataclass_fields__"):
        return json.loads(json.dumps(asdict(obj), default=str))
    return str(obj)


def create_app(receiver: AlertReceiver):
    """The receiver's HTTP API (Starlette, served by uvicorn like the sink and the feedback service):
    ``POST /alerts``, ``GET /healthz``, ``GET /metrics``. The handling (object store, curation) blocks, so
    it runs in the thread pool."""
    from starlette.applications import Starlette  # heavy: starlette
    from starlette.concurrency import run_in_threadpool  # heavy: starlette
    from starlette.responses import JSONResponse, Response  # heavy: starlette
    from starlette.routing import Route  # heavy: starlette

    def answer(code: int, doc: dict) -> JSONResponse:
        return JSONResponse(json.loads(json.dumps(doc, default=str)), code)

    async def alerts(request):
        try:
            payload = json.loads(await request.body() or b"null")
            return answer(200, await run_in_threadpool(receiver.handle, payload))
        except ValueError as exc:
            return answer(400, {"error": f"bad alert payload: {exc}"})
        except KfreleaseError as exc:  # store down: 503 makes Alertmanager retry (nothing lost)
            log.error("could not record alerts: %s", exc)
            return answer(503, {"error": str(exc)})

    async def health(_request):
        return answer(200, {"status": "ok"})

    async def metrics(_request):
        return Response(
            "# TYPE kfrelease_alert_receiver_up gauge\nkfrelease_alert_receiver_up 1\n",
            headers={"content-type": "text/plain; version=0.0.4"},
        )

    async def not_found(request, _exc):
        return answer(404, {"error": f"no such path {request.method} {request.url.path}; POST /alerts, GET /healthz"})

    return Starlette(
        routes=[
            Route("/alerts", alerts, methods=["POST"]),
            Route("/healthz", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: not_found},
    )


def serve(settings: Settings, port: int) -> None:
    import uvicorn  # heavy: uvicorn

    receiver = AlertReceiver(settings)
    start_poller(receiver)
    log.info("alert receiver on 127.0.0.1:%d", port)
    uvicorn.run(create_app(receiver), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="kfrelease Alertmanager webhook receiver")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    settings = Settings.from_env()
    serve(settings, args.port or settings.port("alert-receiver"))


if __name__ == "__main__":
    main()
