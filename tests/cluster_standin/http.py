"""The cluster stand-in (``tests.cluster_standin.Cluster``) served over HTTP on 127.0.0.1 with the Kubernetes API's
paths, so a process the test starts talks to it through the real ``kubernetes`` client (``KubernetesObjects``)
as a release step talks to the API server. Every request is made as one requester (the service account the
server is started for: authentication is not modelled). Paths served: the namespaced custom objects of the
kinds the release touches (``/apis/<group>/<version>/namespaces/<ns>/<plural>[/<name>]``: GET, list with an
equality ``labelSelector``, POST, PUT, merge PATCH, DELETE), the core kinds it touches the same way
(``/api/v1/namespaces/<ns>/<plural>[/<name>]``: Services), ``selfsubjectaccessreviews`` and
``[local]subjectaccessreviews`` (``Cluster.access_review``). Errors are a
``Status`` with the stand-in's code (403, 404, 409, 422), as the API server answers.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from tests.cluster_standin import RESOURCES, ApiError, Cluster

_KINDS = {resource: kind for kind, (_group, resource) in RESOURCES.items()}


def send_json(handler: BaseHTTPRequestHandler, code: int, doc: dict) -> None:
    """Answer ``doc`` as JSON with status ``code``, as the API server does."""
    body = json.dumps(doc).encode()
    handler.send_response(code)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class StandInServer:
    """``with StandInServer(cluster, who) as url:`` the stand-in at ``url`` until the block ends."""

    def __init__(self, cluster: Cluster, who):
        self.cluster, self.who = cluster, who
        self.lock = cluster.lock  # the stand-in is not thread-safe; the API server serializes per object
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                url = urlparse(self.path)
                outer.requests.append((self.command, url.path))
                try:
                    with outer.lock:
                        code, doc = outer.answer(self.command, url.path, parse_qs(url.query), body)
                except ApiError as exc:
                    code, doc = (
                        exc.status,
                        {
                            "apiVersion": "v1",
                            "kind": "Status",
                            "status": "Failure",
                            "reason": exc.reason,
                            "message": str(exc),
                            "code": exc.status,
                        },
                    )
                send_json(self, code, doc)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    def answer(self, verb: str, path: str, query: dict, body) -> tuple[int, dict]:
        parts = path.strip("/").split("/")
        if parts[-1] == "selfsubjectaccessreviews":
            attrs = body["spec"]["resourceAttributes"]
            kind = _KINDS[attrs["resource"]]
            allowed = self.cluster.can(self.who, attrs["verb"], kind, attrs["namespace"], attrs.get("name") or "")
            return 201, {**body, "status": {"allowed": allowed}}
        if parts[-1] in ("subjectaccessreviews", "localsubjectaccessreviews") and verb == "POST":
            body.setdefault("kind", _KINDS[parts[-1]])
            if parts[-1] == "localsubjectaccessreviews":  # the namespace of the path is the object's
                body.setdefault("metadata", {}).setdefault("namespace", parts[-2])
            return 201, self.cluster.access_review(self.who, body)
        # apis/<group>/<version>/namespaces/<ns>/<plural>[/<name>], or api/v1/namespaces/<ns>/<plural>[/<name>]
        if parts[0] == "api":
            parts = ["api", "", *parts[1:]]
        _apis, _group, _version, _namespaces, ns, plural, *rest = parts
        kind = _KINDS[plural]
        name = rest[0] if rest else None
        c, who = self.cluster, self.who
        if verb == "GET" and name:
            return 200, c.get(who, kind, ns, name)
        if verb == "GET":
            selector = (query.get("labelSelector") or [""])[0]
            labels = dict(term.split("=", 1) for term in selector.split(",") if term)
            return 200, {"apiVersion": "v1", "kind": f"{kind}List", "items": c.list(who, kind, ns, labels)}
        if verb == "POST":
            return 201, c.create(who, body)
        if verb == "PUT":
            return 200, c.replace(who, body)
        if verb == "PATCH":
            return 200, c.patch(who, kind, ns, name, body)
        if verb == "DELETE":
            c.delete(who, kind, ns, name)
            return 200, {"apiVersion": "v1", "kind": "Status", "status": "Success"}
        raise ApiError(405, "MethodNotAllowed", f"{verb} {path}")

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
