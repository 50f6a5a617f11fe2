"""The predictor: a small ``kserve.Model`` for one registered regression model version.

Run it as ``python -m kfrelease.serving.predictor --model-dir DIR --name MODEL --stage production
--http-port P [--logger-url URL] [--cache lru|redis://...]`` (docs/CONTRACTS.md, "Serving processes").
KServe's ``ModelServer`` owns HTTP, the protocols and ``/metrics``; ``RegressionPredictor`` owns the model,
like KServe's own sklearn server (``kserve/kserve``, ``python/sklearnserver/sklearnserver/model.py``):
``load()`` reads the artifact folder (``kfrelease.registry.artifact``), ``preprocess()`` checks the request
against the input schema (``kfrelease.serving.decode``; a bad one is KServe's ``InvalidInput``, a 400),
``predict()`` answers. Every answer names the version (header ``x-model-version``, ``model_version`` in the
body) and carries the request id (``ce-id``, else ``x-request-id``, else a new one) as ``x-request-id``.
Its collaborators are optional and small: a prediction logger (``kfrelease.serving.logger``), an inference
cache (``kfrelease.serving.cache``) and the metrics (``kfrelease.serving.metrics``). The paths that go
around KServe's request handling (host binding, body limit, the fast lane) are ``kfrelease.serving.fastlane``.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np
import orjson
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest

from kfrelease.errors import KfreleaseError
from kfrelease.registry.artifact import LoadedModel, load_model_dir
from kfrelease.serving.decode import (
    DEFAULT_MAX_INSTANCES,
    Decoded,
    InvalidRequest,
    json_body,
    new_request_id,
    request_id_from,
    rows_from_v1,
    rows_from_v2,
)
from kfrelease.serving.fastlane import (
    DEFAULT_MAX_BODY_BYTES,
    FastLane,
    run_model_server,
)
from kfrelease.serving.metrics import ModelMetrics
from kfrelease.stack.slots import STAGES

log = logging.getLogger(__name__)


class RegressionPredictor(Model):
    """One model version. ``load()`` reads the folder; ``preprocess()`` checks; ``predict()`` answers."""

    def __init__(
        self,
        name: str,
        model_dir: Path,
        stage: str = "production",
        logger=None,
        cache=None,
        max_instances: int = DEFAULT_MAX_INSTANCES,
    ):
        super().__init__(name, return_response_headers=True)
        self.model_dir = Path(model_dir)
        self.stage = stage
        self.logger = logger
        self.cache = cache
        self.max_instances = max_instances
        self.model: LoadedModel | None = None
        self.metrics: ModelMetrics | None = None

    def load(self) -> bool:
        self.model = m = load_model_dir(self.model_dir, expected_name=self.name)
        self.metrics = ModelMetrics(m.name, m.version, self.stage)
        self.ready = True
        log.info(
            "loaded %s %s (%d features, %s flavour) from %s",
            m.name,
            m.version,
            len(m.features),
            m.flavour.name,
            self.model_dir,
        )
        return self.ready

    def get_input_types(self) -> list[dict]:
        if self.model.numeric:
            return [{"name": "input-0", "datatype": "FP64", "shape": [-1, len(self.model.features)]}]
        return [
            {"name": c.name, "datatype": "FP64" if c.numeric else "BYTES", "shape": [-1]} for c in self.model.columns
        ]

    def get_output_types(self) -> list[dict]:
        return [{"name": "predict", "datatype": "FP64", "shape": [-1]}]

    async def preprocess(self, payload, headers=None) -> Decoded:
        protocol = "v2" if isinstance(payload, InferRequest) else "v1"
        try:
            if isinstance(payload, (bytes, str)):  # sent without content-type: application/json
                payload = json_body(payload)
            if protocol == "v2":
                rows = rows_from_v2(payload, self.model, self.max_instances)
            else:
                rows = rows_from_v1(payload, self.model, self.max_instances)
        except InvalidRequest as exc:
            self.metrics.invalid[protocol].inc()
            raise InvalidInput(str(exc)) from None
        v2_id = payload.id if protocol == "v2" else None
        return Decoded(rows, protocol, request_id_from(headers) or v2_id or new_request_id(), v2_id)

    def validate(self, payload):
        return payload  # preprocess has checked it against the input schema

    async def predict(self, payload: Decoded, headers=None, response_headers=None):
        started = time.perf_counter()
        try:
            predictions = (
                self._predict_cached(payload.rows) if self.cache is not None else self.model.predict(payload.rows)
            )
        except Exception:
            self.metrics.error[payload.protocol].inc()  # answered 500 by kserve: the canary's error rate
            raise
        if response_headers is not None:
            response_headers["x-model-version"] = self.model.version
            response_headers["x-request-id"] = payload.request_id
        self.metrics.answered(payload.protocol, len(predictions), time.perf_counter() - started)
        if self.logger is not None:
            self.logger.log(payload.request_id, payload.rows, predictions)
        values = predictions.tolist()
        if payload.protocol == "v1":
            return {"predictions": values, "model_name": self.name, "model_version": self.model.version}
        # An Open Inference Protocol response serialized here: kserve's v2 endpoint sends bytes as they are,
        # which skips a pydantic round trip per request.
        return orjson.dumps(
            {
                "model_name": self.name,
                "model_version": self.model.version,
                "id": payload.v2_id or payload.request_id,
                "parameters": None,
                "outputs": [
                    {"name": "predict", "shape": [len(values)], "datatype": "FP64", "parameters": None, "data": values}
                ],
            }
        )

    def _predict_cached(self, rows: np.ndarray) -> np.ndarray:
        found = self.cache.get_many(rows)
        missing = [i for i, v in enumerate(found) if v is None]
        if not missing:
            return np.asarray(found, dtype="float64")
        computed = self.model.predict(rows[missing])
        self.cache.put_many(rows[missing], computed)
        out = np.asarray([0.0 if v is None else v for v in found], dtype="float64")
        out[missing] = computed
        return out

    def stop(self):
        if self.logger is not None:
            self.logger.close()
        super().stop()


# --- process entry --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m kfrelease.serving.predictor",
        description="Serve one registered regression model version with KServe's ModelServer.",
    )
    p.add_argument(
        "--model-dir",
        required=True,
        help="model directory, /mnt/models (ModelCar) or s3://models/artifacts/<model>/<V>/",
    )
    p.add_argument("--name", required=True, help="model name (the URL's /v1/models/<name>)")
    p.add_argument("--stage", default="production", choices=STAGES)
    p.add_argument("--http-port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0 in a pod)")
    p.add_argument("--logger-url", default=None, help="log sink URL; no logging without it")
    p.add_argument("--cache", default=None, help="off (default), lru, lru:N or redis://host:port/db")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    p.add_argument("--max-instances", type=int, default=DEFAULT_MAX_INSTANCES)
    p.add_argument(
        "--no-fast-lane",
        action="store_true",
        help="answer every request through kserve's FastAPI routes (slower; same answers)",
    )
    p.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "kfrelease"))
    p.add_argument(
        "--inference-service", default=None, help="InferenceService name in log events (default: the model name)"
    )
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> RegressionPredictor:
    """The predictor for parsed arguments (loaded; its logger started). Used by main and tests."""
    from kfrelease.config import Settings
    from kfrelease.serving.cache import cache_from_option
    from kfrelease.stack.model_files import resolve_model_dir

    settings = Settings.from_env()
    predictor = RegressionPredictor(
        args.name, resolve_model_dir(args.model_dir, settings), stage=args.stage, max_instances=args.max_instances
    )
    predictor.load()
    loaded = predictor.model
    if args.logger_url:
        from kfrelease.serving.logger import InferenceLogger

        predictor.logger = InferenceLogger(
            url=args.logger_url,
            wal_dir=settings.service_dir(f"predictor-{args.stage}") / "log-wal",
            model=loaded.name,
            version=loaded.version,
            stage=args.stage,
            features=list(loaded.features),
            namespace=args.namespace,
            inference_service=args.inference_service or loaded.name,
        )
        predictor.logger.start()
    predictor.cache = cache_from_option(args.cache, loaded.name, loaded.version)
    return predictor


def serve(
    predictor: RegressionPredictor,
    http_port: int,
    host: str = "127.0.0.1",
    max_body: int = DEFAULT_MAX_BODY_BYTES,
    fast_lane: bool = True,
) -> None:
    """Run KServe's ModelServer (REST only, one worker) for ``predictor`` on ``host:http_port``."""
    try:
        run_model_server([predictor], http_port, host, max_body, FastLane(predictor) if fast_lane else None)
    finally:
        predictor.stop()


def main(argv: list[str] | None = None) -> int:
    import sys

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    from kfrelease.config import LOG_FORMAT

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # else a line per prediction-log POST
    from kfrelease.serving.threads import pin_native_threads

    pin_native_threads()  # before a model loads: its OpenMP/BLAS pools get the cores this server is given
    try:
        predictor = build(args)
    except KfreleaseError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    serve(predictor, args.http_port, args.host, args.max_body_bytes, fast_lane=not args.no_fast_lane)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
