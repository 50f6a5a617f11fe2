"""What the gateway tests run against: a real KServe model server hosting recording models.

Run as ``python -m tests.serving.recording_host --slot S --stage ST --manifest FILE --http-port P
--record-dir DIR``. It is the stack's own multi-model host (``kfrelease.serving.host.ModelHost``: the same
manifest, sync call and in-place swaps) whose models are tiny ``kserve.Model``s: each prediction appends
``<x-request-id> <ce-id> <version>`` to ``DIR/<model>-<version>.log`` and answers
``{"predictions": [...], "model_name": M, "model_version": V}``, so the shadow's share and the ids can be
checked even though the shadow's answers never come back through the gateway.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from kfrelease import httpcalls


def recording_model(name: str, version: str, record: Path):
    import kserve

    class _Version:
        def __init__(self, v):
            self.version = v

    class RecordingModel(kserve.Model):
        def __init__(self):
            super().__init__(name)
            self.fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self.model = _Version(version)
            self.logger = None
            self.ready = True

        def load(self) -> bool:
            return True

        async def predict(self, payload, headers=None, response_headers=None):
            headers = {k.lower(): v for k, v in (headers or {}).items()}
            os.write(self.fd, f"{headers.get('x-request-id', '-')} {headers.get('ce-id', '-')} {version}\n".encode())
            if response_headers is not None:
                response_headers["x-model-version"] = version
            instances = payload.get("instances", []) if isinstance(payload, dict) else []
            return {"predictions": [float(sum(row)) for row in instances], "model_name": name, "model_version": version}

    return RecordingModel()


def recording_command(record_dir: Path):
    """A ``host_command`` for ``LocalGatewayDriver`` that starts the recording model host."""
    from kfrelease.stack.hosts import host_argv

    def command(slot, manifest: Path, port: int) -> list[str]:
        return host_argv(slot, manifest, port, "--record-dir", str(record_dir), module="tests.serving.recording_host")

    return command


def recorded(record_dir: Path, version: str, model: str = "m") -> list[tuple[str, str]]:
    path = record_dir / f"{model}-{version}.log"
    if not path.exists():
        return []
    return [tuple(line.split()[:2]) for line in path.read_text().splitlines() if line.strip()]


class Load:
    """Bounded continuous load: ``threads`` clients each sending predictions until stopped."""

    def __init__(self, url: str, threads: int = 4, max_requests: int = 20000, body: dict | None = None):
        self.url, self.threads, self.max_requests = url, threads, max_requests
        self.body = body or {"instances": [[1.0, 2.0]]}
        self.stop_event = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.versions: dict[str, int] = {}
        self.models: dict[str, int] = {}
        self.ids: list[str] = []
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(threads)
        self.futures = []

    def _client(self):
        with httpcalls.client(timeout=10.0) as client:
            while not self.stop_event.is_set():
                with self.lock:
                    if self.ok + len(self.failures) >= self.max_requests:
                        return
                try:
                    r = client.post(self.url, json=self.body)
                    good = r.status_code == 200
                    doc = r.json() if good else {}
                    err = None if good else f"HTTP {r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as exc:
                    doc, err = {}, f"{type(exc).__name__}: {exc}"
                with self.lock:
                    if err:
                        self.failures.append(err)
                    else:
                        self.ok += 1
                        v, m = doc.get("model_version"), doc.get("model_name")
                        self.versions[v] = self.versions.get(v, 0) + 1
                        self.models[m] = self.models.get(m, 0) + 1
                        self.ids.append(r.headers.get("x-request-id", ""))

    def __enter__(self):
        self.futures = [self.pool.submit(self._client) for _ in range(self.threads)]
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        for f in self.futures:
            f.result()
        self.pool.shutdown()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--slot", required=True)
    p.add_argument("--stage", required=True)
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--record-dir", required=True, type=Path)
    a = p.parse_args()
    sys.argv = sys.argv[:1]
    from kfrelease.serving.fastlane import run_model_server
    from kfrelease.serving.host import HostControl, ModelHost

    class RecordingHost(ModelHost):
        def _build(self, name, entry):
            return recording_model(name, entry["version"], a.record_dir / f"{name}-{entry['version']}.log")

        def fast_lane(self, predictor):
            return None

    host = RecordingHost(a.slot, a.stage, a.manifest, None, a.record_dir)
    host.sync()

    def keep(server) -> None:
        host.repository = server.registered_models

    run_model_server(
        list(host.predictors.values()),
        a.http_port,
        fast_lane=host,
        middleware=((HostControl, {"host": host}),),
        on_start=keep,
    )


if __name__ == "__main__":
    main()
