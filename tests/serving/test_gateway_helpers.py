"""Helpers of the gateway tests (no tests here): a tiny real KServe model server that records request ids.

Run as ``python -m tests.serving.test_gateway_helpers --name M --version V --http-port P --record FILE``.
It is a real ``kserve.ModelServer`` (the same framework as our predictor); each prediction appends
``<x-request-id> <ce-id> <version>`` to FILE and answers ``{"predictions": [...], "model_version": V}``.
"""

from __future__ import annotations

import argparse
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx


def serve(name: str, version: str, port: int, record: str) -> None:
    import kserve

    class RecordingModel(kserve.Model):
        def __init__(self):
            super().__init__(name)
            self.fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self.ready = True

        def load(self) -> bool:
            self.ready = True
            return True

        async def predict(self, payload, headers=None, response_headers=None):
            headers = {k.lower(): v for k, v in (headers or {}).items()}
            os.write(self.fd, f"{headers.get('x-request-id', '-')} {headers.get('ce-id', '-')} {version}\n".encode())
            if response_headers is not None:
                response_headers["x-model-version"] = version
            instances = payload.get("instances", []) if isinstance(payload, dict) else []
            return {"predictions": [float(sum(row)) for row in instances], "model_version": version}

    kserve.ModelServer(http_port=port, workers=1, enable_grpc=False, enable_latency_logging=False).start(
        [RecordingModel()]
    )


def recording_command(record_dir: Path):
    """A ``predictor_command`` for ``LocalGatewayDriver`` that starts the recording model server."""
    import sys

    def command(stage: str, version: str, model_dir: Path, port: int) -> list[str]:
        record = record_dir / f"{version}.log"
        return [
            sys.executable,
            "-m",
            "tests.serving.test_gateway_helpers",
            "--name",
            "m",
            "--version",
            version,
            "--http-port",
            str(port),
            "--record",
            str(record),
        ]

    return command


def recorded(record_dir: Path, version: str) -> list[tuple[str, str]]:
    path = record_dir / f"{version}.log"
    if not path.exists():
        return []
    return [tuple(line.split()[:2]) for line in path.read_text().splitlines() if line.strip()]


class Load:
    """Bounded continuous load: ``threads`` clients each sending predictions until stopped."""

    def __init__(self, url: str, threads: int = 4, max_requests: int = 20000):
        self.url, self.threads, self.max_requests = url, threads, max_requests
        self.stop_event = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.versions: dict[str, int] = {}
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(threads)
        self.futures = []

    def _client(self):
        with httpx.Client(timeout=10.0) as client:
            while not self.stop_event.is_set():
                with self.lock:
                    if self.ok + len(self.failures) >= self.max_requests:
                        return
                try:
                    r = client.post(self.url, json={"instances": [[1.0, 2.0]]})
                    good = r.status_code == 200
                    version = r.json().get("model_version") if good else None
                    err = None if good else f"HTTP {r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as exc:
                    version, err = None, f"{type(exc).__name__}: {exc}"
                with self.lock:
                    if err:
                        self.failures.append(err)
                    else:
                        self.ok += 1
                        self.versions[version] = self.versions.get(version, 0) + 1

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
    p.add_argument("--name", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--record", required=True)
    a = p.parse_args()
    serve(a.name, a.version, a.http_port, a.record)


if __name__ == "__main__":
    main()
