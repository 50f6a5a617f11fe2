"""Bounded demo traffic with delayed ground truth, to 127.0.0.1 only.

``TrafficGenerator`` replays the curated held-out rows (``kfrelease.demo.data.holdout()``, which never
entered training) in a fixed cycle through the gateway at a steady rate, each request with its own
``x-request-id``; ``truth_delay`` seconds after an answer it posts that row's true target to the feedback
service under the same id (as a label arriving later would). A row's features are a list (KServe v1
``instances`` in input-schema order) or a mapping from feature name to value (v1 instances as objects, as a
client with category features sends them: ``{"cut": "Ideal", "carat": 0.23, ...}``); with ``v2_every=k``
every k-th request of mapping rows goes to ``/v2/models/<name>/infer`` instead, one tensor per feature
(``BYTES`` for text, ``FP64`` for numbers: the pandas-codec layout of MLServer and KServe's v2 docs). It stops after ``max_requests`` or
``max_seconds``, whichever comes first, or on ``stop()``. ``stats()`` counts sent, ok and failed requests
and which version answered: the loss-free checks compare ``sent`` with the prediction logs.

The predictions go over the standard library's keep-alive ``http.client`` (a third of httpx's CPU per
request: the generator shares two cores with everything it exercises). A request on a kept-alive
connection that the gateway closed while it was idle (an nginx reload closes idle connections) is sent
again once on a new connection, as httpx and urllib3 do; nothing was answered on the closed one.
"""

from __future__ import annotations

import heapq
import http.client
import json
import logging
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx

from kfrelease import httpcalls
from kfrelease.errors import ConfigError

log = logging.getLogger(__name__)

FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6", "bmi_bp"]


def _local(url: str) -> str:
    if urlparse(url).hostname not in ("127.0.0.1", "localhost"):
        raise ConfigError(f"demo traffic goes to 127.0.0.1 only, not {url}")
    return url


def friedman_rows() -> list[tuple[list[float], float]]:
    """(x0..x9, y) of every held-out row of the demo's second dataset."""
    from kfrelease.demo.data import FRIEDMAN_FEATURES, holdout_of  # heavy: sklearn

    frame = holdout_of("friedman")
    return [([float(v) for v in row[FRIEDMAN_FEATURES]], float(row["y"])) for _, row in frame.iterrows()]


def holdout_rows(features: list[str] | None = None) -> list[tuple[list[float], float]]:
    """(feature values in input-schema order, truth) of every held-out row, curated as the data pipeline does."""
    from kfrelease.data.features import diabetes_features  # heavy: pandas
    from kfrelease.demo.data import holdout  # heavy: sklearn

    frame = diabetes_features(holdout())
    cols = features or FEATURES
    return [([float(v) for v in row[cols]], float(row["progression"])) for _, row in frame.iterrows()]


def _model_name(body: bytes) -> str:
    try:
        return str(json.loads(body).get("model_name", "?"))
    except (ValueError, AttributeError):
        return "?"


class _KeepAlive:
    """One keep-alive HTTP/1.1 connection (``http.client``) for a sender thread."""

    def __init__(self, url: str, timeout: float):
        parsed = urlparse(url)
        self.host, self.port, self.path, self.timeout = parsed.hostname, parsed.port, parsed.path, timeout
        self.conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes, headers: dict) -> tuple[int, dict, bytes]:
        for attempt in (0, 1):
            reused = self.conn is not None
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request("POST", self.path, body, headers)
                r = self.conn.getresponse()
                data = r.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if reused and attempt == 0:  # closed while idle: nothing was answered on it
                    continue
                raise
            except (OSError, http.client.HTTPException):
                self.close()
                raise
            if r.getheader("connection", "").lower() == "close":
                self.close()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        raise ConnectionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@dataclass
class TrafficStats:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    labelled: int = 0
    v2: int = 0  # of ``ok``: answered over the v2 protocol
    versions: Counter = field(default_factory=Counter)
    models: Counter = field(default_factory=Counter)  # model_name of each answer (the model asked for?)
    errors: list[str] = field(default_factory=list)
    ok_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "sent": self.sent,
            "ok": self.ok,
            "failed": self.failed,
            "labelled": self.labelled,
            "v2": self.v2,
            "versions": dict(self.versions),
            "models": dict(self.models),
            "errors": self.errors[:5],
        }


class TrafficGenerator:
    """Steady, bounded prediction traffic with delayed ground truth (see the module docstring)."""

    def __init__(
        self,
        gateway_url: str,
        feedback_url: str,
        model: str,
        *,
        rate: float = 20.0,
        max_requests: int = 10_000,
        max_seconds: float = 600.0,
        truth_delay: float = 0.5,
        features: list[str] | None = None,
        threads: int = 2,
        rows: list[tuple[list[float] | dict, float]] | None = None,
        v2_every: int = 0,
        label_token: str | None = None,
    ):
        if rate <= 0 or max_requests < 1 or max_seconds <= 0:
            raise ConfigError("demo traffic needs a rate above 0 and positive bounds")
        if v2_every and not all(isinstance(features, dict) for features, _ in rows or []):
            raise ConfigError("v2 requests need rows whose features are named (a mapping per row)")
        self.predict_url = _local(gateway_url).rstrip("/") + f"/v1/models/{model}:predict"
        self.infer_url = _local(gateway_url).rstrip("/") + f"/v2/models/{model}/infer"
        self.v2_every = v2_every
        self.feedback_url = _local(feedback_url).rstrip("/") + "/v1/feedback"
        # the label source the feedback service counts these labels from (kfrelease.access.credentials)
        self.label_headers = {"authorization": f"Bearer {label_token}"} if label_token else {}
        self.model, self.rate, self.max_requests, self.max_seconds = (
            model,
            rate,
            max_requests,
            max_seconds,
        )
        self.truth_delay = truth_delay
        self.rows = rows or holdout_rows(features)
        self.threads = threads
        self._stats = TrafficStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._done_sending = threading.Event()
        self._labels: list[tuple[float, str, float]] = []  # (due time, request id, truth)
        self._workers: list[threading.Thread] = []
        self._next = 0

    # --- control ------------------------------------------------------------------------------------
    def start(self, wait_served: float | None = None) -> TrafficGenerator:
        """Start sending (once; starting again changes nothing). ``wait_served``: first wait, at most that many
        seconds, until the gateway serves the model (its ``/v1/models/<model>`` answers 200: e.g. a first
        model its release is about to serve as provisional); the bounds count from then. Not served by then:
        nothing is sent, and ``stats().errors`` says so."""
        if self._workers:
            return self
        self._started = time.monotonic()
        self._served = threading.Event()
        self._workers = [
            threading.Thread(target=self._send_loop, args=(k,), daemon=True, name=f"traffic-{k}")
            for k in range(self.threads)
        ]
        self._workers.append(threading.Thread(target=self._label_loop, daemon=True, name="traffic-labels"))
        if wait_served is None:
            self._served.set()
        else:
            threading.Thread(target=self._wait_served, args=(wait_served,), daemon=True, name="traffic-ready").start()
        for w in self._workers:
            w.start()
        return self

    def _wait_served(self, timeout: float) -> None:
        url = self.predict_url.removesuffix(":predict")
        deadline = time.monotonic() + timeout
        with httpcalls.client(timeout=5.0) as client:
            while not self._stop.is_set():
                try:
                    if client.get(url).status_code == 200:
                        self._started = time.monotonic()
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() >= deadline:
                    with self._lock:
                        self._stats.errors.append(f"{self.model} was not served within {timeout:g} s; nothing sent")
                    self._stop.set()
                    break
                self._stop.wait(0.2)  # the next readiness poll
        self._served.set()

    def stop(self, flush_labels: bool = True, timeout: float = 30.0) -> TrafficStats:
        """Stop sending; by default wait until every answered request's label has been posted."""
        self._stop.set()
        for w in self._workers[:-1]:
            w.join(timeout)
        self._done_sending.set()
        if not flush_labels:
            with self._lock:
                self._labels.clear()
        self._workers[-1].join(timeout)
        return self.stats()

    def wait(self, timeout: float | None = None) -> TrafficStats:
        """Wait until the bounds are reached (then labels are flushed)."""
        for w in self._workers[:-1]:
            w.join(timeout)
        return self.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def stats(self) -> TrafficStats:
        with self._lock:
            s = self._stats
            return TrafficStats(
                sent=s.sent,
                ok=s.ok,
                failed=s.failed,
                labelled=s.labelled,
                v2=s.v2,
                versions=Counter(s.versions),
                models=Counter(s.models),
                errors=list(s.errors),
                ok_ids=list(s.ok_ids),
            )

    # --- workers ------------------------------------------------------------------------------------
    def _claim(self) -> int | None:
        with self._lock:
            if self._stop.is_set() or self._next >= self.max_requests:
                return None
            if time.monotonic() - self._started >= self.max_seconds:
                return None
            n = self._next
            self._next += 1
            self._stats.sent += 1
            return n

    def _send_loop(self, k: int) -> None:
        self._served.wait()
        clients = {1: _KeepAlive(self.predict_url, timeout=30.0), 2: _KeepAlive(self.infer_url, timeout=30.0)}
        try:
            self._send(clients)
        finally:
            for client in clients.values():
                client.close()

    def _body(self, n: int, features) -> tuple[int, bytes]:
        """(protocol, body) of request ``n``: v2 tensors for every ``v2_every``-th request, else v1 instances."""
        if self.v2_every and n % self.v2_every == self.v2_every - 1:
            inputs = [
                {"name": name, "shape": [1], "datatype": "BYTES" if isinstance(v, str) else "FP64", "data": [v]}
                for name, v in features.items()
            ]
            return 2, json.dumps({"inputs": inputs}).encode()
        return 1, json.dumps({"instances": [features]}).encode()

    def _send(self, clients: dict[int, _KeepAlive]) -> None:
        while True:
            n = self._claim()
            if n is None:
                return
            due = self._started + n / self.rate
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                with self._lock:  # claimed but never sent
                    self._stats.sent -= 1
                return
            features, truth = self.rows[n % len(self.rows)]
            rid = f"demo-{uuid.uuid4().hex}"
            protocol, payload = self._body(n, features)
            try:
                status, headers, body = clients[protocol].post(
                    payload, {"x-request-id": rid, "content-type": "application/json"}
                )
                ok = status == 200
                detail = f"HTTP {status}: {body[:200].decode(errors='replace')}" if not ok else ""
                version = headers.get("x-model-version", "?") if ok else None
                answered_by = _model_name(body) if ok else None
            except (OSError, http.client.HTTPException) as exc:
                ok, detail, version, answered_by = False, f"{type(exc).__name__}: {exc}", None, None
            with self._lock:
                if ok:
                    self._stats.ok += 1
                    self._stats.v2 += protocol == 2
                    self._stats.versions[version] += 1
                    self._stats.models[answered_by] += 1
                    self._stats.ok_ids.append(rid)
                    heapq.heappush(
                        self._labels,
                        (time.monotonic() + self.truth_delay, rid, truth),
                    )
                else:
                    self._stats.failed += 1
                    self._stats.errors.append(detail)

    def _label_loop(self) -> None:
        with httpcalls.client(timeout=10.0) as client:
            while True:
                batch = []
                now = time.monotonic()
                with self._lock:
                    while self._labels and (self._labels[0][0] <= now or self._done_sending.is_set()):
                        _, rid, truth = heapq.heappop(self._labels)
                        batch.append({"request_id": rid, "truth": truth, "model": self.model})
                    empty = not self._labels
                if batch:
                    try:
                        r = client.post(self.feedback_url, json=batch, headers=self.label_headers)
                        r.raise_for_status()
                        with self._lock:
                            self._stats.labelled += len(batch)
                    except httpx.HTTPError as exc:
                        log.warning(
                            "ground truth for %d requests was not accepted: %s",
                            len(batch),
                            exc,
                        )
                elif empty and self._done_sending.is_set():
                    return
                else:
                    time.sleep(0.1)
