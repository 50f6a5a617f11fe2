"""A recording server that stands in for the KFP API server (which cannot run on this machine): it answers
the KFP v2beta1 calls the SDK makes (create experiment, create run) and records each request with its
headers, so tests can check exactly what ``kfp.Client`` would have sent to a real cluster."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar


class RecordingKfpApi(BaseHTTPRequestHandler):
    """Records requests and answers like the KFP v2beta1 API for the calls the SDK makes."""

    requests: ClassVar[list] = []
    headers_seen: ClassVar[list] = []

    def _answer(self):
        size = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(size)) if size else None
        self.requests.append((self.command, self.path.split("?")[0], body))
        self.headers_seen.append((self.command, self.path.split("?")[0], dict(self.headers)))
        if self.command == "POST" and self.path.startswith("/apis/v2beta1/experiments"):
            out = {"experiment_id": "exp-1", "display_name": body["display_name"]}
        elif self.command == "POST" and self.path.startswith("/apis/v2beta1/runs"):
            out = {"run_id": "kfp-run-1", "display_name": body["display_name"], "state": "PENDING"}
        else:
            out = {}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass

    @classmethod
    def posted(cls, path: str) -> list[dict]:
        """Bodies of the POSTs to ``path`` (e.g. ``/apis/v2beta1/runs``)."""
        return [body for method, p, body in cls.requests if (method, p) == ("POST", path)]

    @classmethod
    def posted_headers(cls, path: str) -> list[dict]:
        """Headers (lower-case names) of the POSTs to ``path``."""
        return [
            {k.lower(): v for k, v in h.items()} for method, p, h in cls.headers_seen if (method, p) == ("POST", path)
        ]


@contextmanager
def recording_kfp_api():
    """Start the recording KFP API on 127.0.0.1 (a free port); yields (host URL, handler class)."""
    RecordingKfpApi.requests = []
    RecordingKfpApi.headers_seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), RecordingKfpApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", RecordingKfpApi
    finally:
        server.shutdown()
        server.server_close()
