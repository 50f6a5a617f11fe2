"""A model server that hosts many models: one ``kserve.ModelServer`` process per (stage, replica) slot.

Run as ``python -m kfrelease.serving.host --slot predictor-production --http-port P --manifest FILE
[--logger-url URL]``. The manifest (written by the gateway driver, ``{"models": {name: {"version", "dir"}}}``)
says which version of which model this server holds. On start every entry is loaded; afterwards
``POST /kfrelease/host/sync`` re-reads it and changes only what changed, in place, without a restart:

- a new model is loaded, then registered under its name (``/v1/models/<name>:predict``, ``/v2/models/<name>/...``);
- a new version of a model is loaded beside the old one, then swapped in atomically (requests in flight
  finish on the old object);
- a model no longer listed is unregistered.

A retired version's prediction logger keeps running until it has delivered everything it queued or
spooled (bounded by ``DRAIN_TIMEOUT``), then closes: no answered request goes missing from the logs. Each
(model, version) has its own write-ahead folder (``log-wal/<model>/<version>/``, the events there carry no
version of their own), and a folder left behind by a crash is drained when the server starts
(``drain_orphans``), with the logger settings recorded beside it (``logger.json``): its write-ahead file
holds every prediction a killed server had answered (``kfrelease.serving.logger``).

A model that fails to load leaves every other model as it was; the sync answers 422 naming it.
``GET /kfrelease/host`` answers ``{"slot", "stage", "models": {name: version}, "failed": {name: error}}``
(it is the readiness probe). Each model keeps its own metrics labels (model, version, stage).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import threading
import time
from pathlib import Path

import orjson

from kfrelease.errors import KfreleaseError

log = logging.getLogger(__name__)

CONTROL_PATH = "/kfrelease/host"
SYNC_PATH = "/kfrelease/host/sync"
#: Seconds an unloaded or replaced version keeps serving requests already in flight before its logger drains.
HANDOFF_GRACE = 1.0
#: Longest a retired version's logger keeps trying to deliver its backlog (the sink may be down).
DRAIN_TIMEOUT = 600.0


def read_manifest(path: Path) -> dict[str, dict]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise KfreleaseError(
            f"model-server manifest {path} is unreadable ({exc}); apply the traffic state again"
        ) from None
    return dict(doc.get("models", {}))


def write_manifest(path: Path, models: dict[str, dict]) -> None:
    """Atomically replace a server's manifest (the driver writes it; the server reads it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"models": models}, indent=2, sort_keys=True))
    os.replace(tmp, path)


class ModelHost:
    """The models of one slot, their fast lanes and loggers; ``sync`` makes them match the manifest."""

    def __init__(
        self,
        slot: str,
        stage: str,
        manifest: Path,
        logger_url: str | None,
        wal_root: Path,
        namespace: str = "kfrelease",
    ):
        self.slot, self.stage, self.manifest = slot, stage, manifest
        self.logger_url, self.wal_root, self.namespace = logger_url, wal_root, namespace
        self.predictors: dict[str, object] = {}
        self.failed: dict[str, str] = {}
        self.lanes: dict[str, object] = {}
        self.repository = None  # the ModelServer's ModelRepository, set when the server exists
        self._lock = threading.Lock()

    # --- loading --------------------------------------------------------------------------------
    def _build(self, name: str, entry: dict):
        from kfrelease.serving.predictor import RegressionPredictor

        predictor = RegressionPredictor(name, Path(entry["dir"]), stage=self.stage)
        predictor.load()
        if predictor.model.version != entry["version"]:
            raise KfreleaseError(
                f"{entry['dir']} holds {name} {predictor.model.version}, not {entry['version']}; "
                "clear the model cache folder and apply again"
            )
        if self.logger_url:
            m = predictor.model
            predictor.logger = self._logger(m.name, m.version, list(m.features))
        return predictor

    def _logger(self, model: str, version: str, features: list[str]):
        from kfrelease.serving.logger import InferenceLogger

        wal = self.wal_root / model / version
        wal.mkdir(parents=True, exist_ok=True)
        (wal / "logger.json").write_text(json.dumps({"model": model, "version": version, "features": features}))
        return InferenceLogger(
            url=self.logger_url,
            wal_dir=wal,
            model=model,
            version=version,
            stage=self.stage,
            features=features,
            namespace=self.namespace,
            inference_service=model,
        )

    def drain_orphans(self) -> None:
        """Deliver what a previous run of this server spooled for versions it no longer serves."""
        if not self.logger_url or not self.wal_root.exists():
            return
        serving = {(n, p.model.version) for n, p in self.predictors.items()}
        for meta in sorted(self.wal_root.glob("*/*/logger.json")):
            try:
                doc = json.loads(meta.read_text())
            except (OSError, ValueError):
                continue
            left = any(meta.parent.glob("*.jsonl"))
            if (doc["model"], doc["version"]) in serving or not left:
                continue
            logger = self._logger(doc["model"], doc["version"], list(doc["features"]))
            logger.start()
            log.info("%s: delivering the spooled prediction logs of %s %s", self.slot, doc["model"], doc["version"])
            threading.Thread(target=_drain_then_close, args=(logger,), name="log-drain", daemon=True).start()

    def fast_lane(self, predictor):
        """The request guard's fast lane for a hosted predictor (None: every request takes kserve's routes)."""
        from kfrelease.serving.fastlane import FastLane

        return FastLane(predictor)

    def _register(self, name: str, predictor) -> None:
        lane = self.fast_lane(predictor)
        if lane is not None:
            self.lanes[lane.v1_path] = lane
            self.lanes[lane.v2_path] = lane
        self.predictors[name] = predictor
        if self.repository is not None:
            self.repository.update(predictor)

    def _unregister(self, name: str):
        old = self.predictors.pop(name, None)
        for path in (f"/v1/models/{name}:predict", f"/v2/models/{name}/infer"):
            self.lanes.pop(path, None)
        if self.repository is not None:
            self.repository.models.pop(name, None)
        return old

    def sync(self) -> dict:
        """Make the hosted models match the manifest; returns ``status()``."""
        with self._lock:
            wanted = read_manifest(self.manifest)
            for name in [n for n in self.predictors if n not in wanted]:
                self._retire(self._unregister(name))
                log.info("%s: unloaded %s", self.slot, name)
            for name, entry in sorted(wanted.items()):
                current = self.predictors.get(name)
                if current is not None and current.model.version == entry["version"]:
                    continue
                try:
                    new = self._build(name, entry)
                except Exception as exc:  # noqa: BLE001 - one model's bad files never touch another model
                    self.failed[name] = f"{type(exc).__name__}: {exc}"
                    log.error("%s: could not load %s %s: %s", self.slot, name, entry.get("version"), exc)
                    continue
                self.failed.pop(name, None)
                old = self._unregister(name) if current is not None else None
                if new.logger is not None:
                    new.logger.start()
                self._register(name, new)
                if old is not None:
                    self._retire(old)
                log.info("%s: serves %s %s", self.slot, name, entry["version"])
            for name in [n for n in self.failed if n not in wanted]:
                self.failed.pop(name)
            return self.status()

    def _retire(self, old) -> None:
        """Stop ``old`` once its in-flight requests are answered and its logger has delivered them."""

        def retire():
            time.sleep(HANDOFF_GRACE)
            if old.logger is not None:
                _drain(old.logger)
            old.stop()

        threading.Thread(target=retire, name="model-retire", daemon=True).start()

    def status(self) -> dict:
        return {
            "slot": self.slot,
            "stage": self.stage,
            "models": {n: p.model.version for n, p in sorted(self.predictors.items())},
            "failed": dict(self.failed),
        }

    # --- the request guard's fast lane: the hosted model the path names -----------------------------
    async def answer(self, scope, body: bytes):
        lane = self.lanes.get(scope["path"])
        return None if lane is None else await lane.answer(scope, body)

    def stop(self) -> None:
        for name in list(self.predictors):
            self._unregister(name).stop()


def _drain(logger, timeout: float = DRAIN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while logger.backlog() and time.monotonic() < deadline:
        time.sleep(0.2)


def _drain_then_close(logger) -> None:
    _drain(logger)
    logger.close()


class HostControl:
    """ASGI middleware: ``GET /kfrelease/host`` (status, readiness) and ``POST /kfrelease/host/sync``."""

    def __init__(self, app, host: ModelHost):
        self.app, self.host = app, host

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(CONTROL_PATH):
            return await self.app(scope, receive, send)
        if scope["path"] == SYNC_PATH and scope["method"] == "POST":
            status = await asyncio.get_running_loop().run_in_executor(None, self.host.sync)
            code = 422 if status["failed"] else 200
        elif scope["path"] == CONTROL_PATH and scope["method"] == "GET":
            status, code = self.host.status(), 200
        else:
            status, code = {"error": f"{scope['method']} {scope['path']} is not a model-host call"}, 404
        body = orjson.dumps(status)
        await send(
            {
                "type": "http.response.start",
                "status": code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from kfrelease.stack.slots import STAGES

    p = argparse.ArgumentParser(
        prog="python -m kfrelease.serving.host",
        description="One model server slot hosting the models its manifest lists.",
    )
    p.add_argument("--slot", required=True, help="slot name, e.g. predictor-production")
    p.add_argument("--stage", required=True, choices=STAGES)
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--logger-url", default=None, help="log sink URL; no logging without it")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import sys

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    sys.argv = sys.argv[:1]  # kserve.model_server parses sys.argv when imported
    from kfrelease.config import LOG_FORMAT

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # else a line per prediction-log POST
    from kfrelease.serving.threads import pin_native_threads

    pin_native_threads()  # before a model loads: its OpenMP/BLAS pools get the cores this server is given
    from kfrelease.config import Settings
    from kfrelease.serving.fastlane import run_model_server

    settings = Settings.from_env()
    host = ModelHost(args.slot, args.stage, args.manifest, args.logger_url, settings.service_dir(args.slot) / "log-wal")
    try:
        host.sync()
    except KfreleaseError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    host.drain_orphans()
    models = list(host.predictors.values())

    def keep(server) -> None:
        host.repository = server.registered_models

    try:
        run_model_server(
            models,
            args.http_port,
            "127.0.0.1",
            fast_lane=host,
            middleware=((HostControl, {"host": host}),),
            on_start=keep,
        )
    finally:
        host.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
