"""Ground truth: the feedback service (``POST /v1/feedback``) and batch files in ``feedback``.

``POST /v1/feedback`` with ``{"request_id": "...", "truth": 151.0}`` (or ``"truth": [..]``, one value per
instance of that request, in order; optionally ``"model"``, default the service's ``--model``), or a JSON
array of such objects. Each record is checked (a non-empty request id, finite numbers), made durable in the
local write-ahead file (the log sink's ``BatchWriter``), acknowledged, then written in Parquet batches to
``feedback/model=<model>/date=<YYYY-MM-DD>/hour=<HH>/<uuid>.parquet`` (``kfrelease.lake.schema``: one row per
instance, ``request_id, instance, truth, time``). Labels held in bulk go through the same endpoint (a JSON
array per POST): ``feedback`` is both release gates' ground truth, so the access policy lets only this
service's role (``serving``) write it; data engineers read it (``write_feedback`` writes batches with a store of
that role).

The request id is the one the gateway returns to the client as ``x-request-id`` (and logs as the
CloudEvent id), so the lake's ``read_labels`` joins ``read_predictions`` on (request_id, instance)
(``kfrelease.lake``).

Label provenance (``LabelSources``): a label is stored only from a declared label source, and carries that source
(the ``source`` column). On the embedded stack a request names its source by a bearer token declared under the
data dir (``kfrelease.access.credentials``, ``label-sources.json``, mode 0600); on a cluster by the caller's mesh
identity, declared as the feedback AuthorizationPolicy declares it (``kfrelease.k8s.render.mesh.label_sources``),
and for a request the ingress gateway relays, by the verified user the gateway names (``kubeflow-userid``), one of
the environment's ``label_sources``. Anything else gets a 403 JSON message saying how to post as a declared
source; nothing is stored. The release gates count only the labels whose ``source`` a declaration holds
(``LabelSources.declares``, ``declared_label_sources``): a label stored before its source was declared, or written
in bulk under another name, decides nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import orjson
import pandas as pd
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from kfrelease.access.credentials import ensure_label_source, label_source_tokens, label_sources_path
from kfrelease.collectors.peer import XFCC_HEADER, peer_principal
from kfrelease.collectors.sink import BatchWriter
from kfrelease.config import LOG_FORMAT, Settings, setting
from kfrelease.errors import KfreleaseError
from kfrelease.lake.schema import LABEL_BUCKET
from kfrelease.lake.write import write_records
from kfrelease.storage import ObjectStore, store_for

log = logging.getLogger(__name__)

BUCKET = LABEL_BUCKET
DEFAULT_MODEL = "diabetes-progression"
MAX_TRUTH_VALUES = 10_000


class InvalidFeedback(KfreleaseError):
    """A feedback record that cannot be stored; answered with 400."""


class UndeclaredSource(KfreleaseError):
    """Labels from a source that is not declared; answered with 403."""


#: What Kubeflow's gateway sets from the verified token (``m2m-token-issuer``: ``sub``; ``dex-jwt``: ``email``):
#: the user behind a request the ingress gateway forwards.
USER_HEADER = "kubeflow-userid"


@dataclass(frozen=True)
class LabelSources:
    """Who may label, and how a request says who it is (see the module docstring): ``tokens`` (a callable
    returning token -> name, read on each request so a newly declared source counts at once) on the embedded
    stack; ``principals`` and ``namespaces`` (mesh identities) on a cluster."""

    tokens: Callable[[], Mapping[str, str]] | None = None
    #: gateways that relay requests of verified users (the ingress gateway's principal): only ``users``' count
    principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    #: the ``kubeflow-userid`` values a gateway of ``principals`` may relay labels of
    users: tuple[str, ...] = ()
    where: str = ""  # where the declared tokens are kept, for the refusal's message

    @property
    def mesh(self) -> bool:
        return bool(self.principals or self.namespaces or self.users)

    @classmethod
    def from_declaration(cls, doc: Mapping) -> LabelSources:
        """From ``kfrelease.k8s.render.mesh.label_source_declaration`` (``KFRELEASE_LABEL_SOURCES``)."""
        return cls(
            principals=tuple(doc.get("principals") or ()),
            namespaces=tuple(doc.get("namespaces") or ()),
            users=tuple(doc.get("users") or ()),
        )

    def declares(self, source) -> bool:
        """Whether a stored label's ``source`` is one of these declared sources (the gates count only those)."""
        if not isinstance(source, str) or not source:
            return False
        if not self.mesh:
            return source in set((self.tokens() if self.tokens else {}).values())
        peer, relayed, user = source.partition(" user=")
        if relayed:
            return peer in self.principals and user in self.users
        return _namespace_of(peer) in self.namespaces

    def source_of(self, headers: Mapping[str, str]) -> str:
        """The declared source a request comes from; raises ``UndeclaredSource`` saying what to do."""
        if self.mesh:
            peer = peer_principal(headers.get(XFCC_HEADER))
            ns = _namespace_of(peer)
            user = headers.get(USER_HEADER)
            if peer and peer in self.principals and user and user in self.users:
                return f"{peer} user={user}"
            if peer and ns in self.namespaces:
                return peer
            if peer and peer in self.principals:
                raise UndeclaredSource(
                    f"labels of {user or 'a request without a verified user'} are not accepted: ground truth decides "
                    f"the release gates, so only declared label sources may post it through the ingress gateway "
                    f"({', '.join(self.users) or 'none is declared'}); post with the projected token of a service "
                    "account listed in label_sources of manifests/sources/environments.yaml; nothing was stored"
                )
            declared = ", ".join(
                [
                    *(f"{p} for {', '.join(self.users)}" for p in self.principals),
                    *(f"namespace {n}" for n in self.namespaces),
                ]
            )
            raise UndeclaredSource(
                f"labels from {peer or 'a caller without a mesh identity'} are not accepted: ground truth decides "
                f"the release gates, so only declared label sources may post it ({declared}); post through the "
                "model's release host (the ingress gateway) or from a namespace listed in mesh_clients of "
                "manifests/sources/environments.yaml; nothing was stored"
            )
        auth = headers.get("authorization", "")
        token = auth[len("Bearer ") :].strip() if auth.startswith("Bearer ") else ""
        name = (self.tokens() if self.tokens else {}).get(token) if token else None
        if name:
            return name
        raise UndeclaredSource(
            f"labels {'with an unknown token' if token else 'without a label source token'} are not accepted: "
            "ground truth decides the release gates, so only declared label sources may post it; send "
            "'Authorization: Bearer <token>' with a declared source's token (kept in "
            f"{self.where or 'the data dir'}: kfrelease.access.credentials.ensure_label_source(settings, name) "
            "declares one); nothing was stored"
        )


def _namespace_of(peer: str | None) -> str | None:
    """``<trust domain>/ns/<ns>/sa/<sa>`` -> ``<ns>``."""
    parts = (peer or "").split("/")
    return parts[2] if len(parts) >= 5 and parts[1] == "ns" else None


def declared_label_sources(settings: Settings) -> LabelSources:
    """Who may label, as the release gates read it: on a cluster the release step's ``KFRELEASE_LABEL_SOURCES``
    (the feedback service's own declaration, rendered into the step's PodDefault); on the embedded stack the
    data dir's declared tokens (``label-sources.json``)."""
    text = setting("KFRELEASE_LABEL_SOURCES")
    if text:
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise KfreleaseError(
                f"KFRELEASE_LABEL_SOURCES is not JSON ({exc}); it is rendered by `kfrelease manifests render` "
                "into the release steps' PodDefault"
            ) from None
        return LabelSources.from_declaration(doc)

    return LabelSources(tokens=lambda: label_source_tokens(settings), where=str(label_sources_path(settings)))


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _finite(value, where: str) -> float:
    if type(value) not in (int, float):
        raise InvalidFeedback(
            f"{where} is {'a string' if isinstance(value, str) else type(value).__name__}; expected a number"
        )
    f = float(value)
    if not math.isfinite(f):
        raise InvalidFeedback(f"{where} is {value}; only finite numbers are accepted")
    return f


def feedback_record(doc, default_model: str | None, where: str = "the record") -> dict:
    """Check one ``{"request_id", "truth"[, "model", "time"]}`` object; returns the line to store."""
    if not isinstance(doc, dict):
        raise InvalidFeedback(f"{where} must be a JSON object with request_id and truth")
    unknown = sorted(set(doc) - {"request_id", "truth", "model", "time"})
    if unknown:
        raise InvalidFeedback(
            f"{where} has unknown field(s) {unknown}; expected request_id, truth (and optionally model)"
        )
    rid = doc.get("request_id")
    if not isinstance(rid, str) or not rid.strip() or len(rid) > 200:
        raise InvalidFeedback(f"{where}: request_id must be a non-empty string (the x-request-id of the prediction)")
    if "truth" not in doc:
        raise InvalidFeedback(f"{where} has no truth value")
    truth = doc["truth"]
    if isinstance(truth, list):
        if not truth or len(truth) > MAX_TRUTH_VALUES:
            raise InvalidFeedback(f"{where}: truth must hold 1 to {MAX_TRUTH_VALUES} values, one per instance")
        truth = [_finite(v, f"{where}: truth[{i}]") for i, v in enumerate(truth)]
    else:
        truth = _finite(truth, f"{where}: truth")
    model = doc.get("model") or default_model
    if model is None:  # several models share this service: a label filed under a guessed one is lost
        raise InvalidFeedback(
            f'{where} names no model; add "model": "<name>" (the model that answered request {rid}); nothing was stored'
        )
    if not isinstance(model, str) or "/" in model or model.startswith("."):
        raise InvalidFeedback(f"{where}: model must be a model name")
    when = doc.get("time")
    if when is not None:
        try:
            when = pd.Timestamp(when).isoformat()
        except (ValueError, TypeError):
            raise InvalidFeedback(f"{where}: time {when!r} is not an ISO timestamp") from None
    return {"request_id": rid, "truth": truth, "time": when or _now(), "model": model}


def write_feedback(store: ObjectStore, model: str, records: list[dict], source: str) -> str:
    """Write checked records as Parquet batches (labels held in bulk, with the store of the ``serving`` role,
    the only one that may write ``feedback``), each carrying ``source``; returns the key of the first."""
    lines = [
        {**feedback_record({**r, "model": model}, model, f"record {i}"), "source": source}
        for i, r in enumerate(records)
    ]
    if not lines:
        raise InvalidFeedback("no feedback records to write")
    return write_records(store, BUCKET, model, lines, origin=f"bulk:{uuid.uuid4()}")[0]


def create_app(writer: BatchWriter, default_model: str, sources: LabelSources):
    from starlette.applications import Starlette  # heavy: starlette
    from starlette.responses import JSONResponse, Response  # heavy: starlette
    from starlette.routing import Route  # heavy: starlette

    records_total = Counter(
        "kfrelease_feedback_records",
        "Feedback records, by result (stored, invalid, undeclared source).",
        ["result"],
    )
    max_body = 4 * 1024 * 1024

    async def post(request):
        try:
            source = sources.source_of(request.headers)
        except UndeclaredSource as exc:
            records_total.labels("undeclared").inc()
            return JSONResponse({"error": str(exc)}, 403)
        body = await request.body()
        if len(body) > max_body:
            return JSONResponse({"error": f"body is {len(body)} bytes; the limit is {max_body}"}, 413)
        try:
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise InvalidFeedback(f"the body is not valid JSON: {exc}") from None
            docs = doc if isinstance(doc, list) else [doc]
            if not docs:
                raise InvalidFeedback("the list of feedback records is empty")
            lines = [
                {
                    **feedback_record(d, default_model, f"record {i}" if isinstance(doc, list) else "the record"),
                    "source": source,
                }
                for i, d in enumerate(docs)
            ]
        except InvalidFeedback as exc:
            records_total.labels("invalid").inc()
            return JSONResponse({"error": str(exc)}, 400)
        try:
            await writer.append([orjson.dumps(x) + b"\n" for x in lines])
        except OSError as exc:
            return JSONResponse({"error": f"feedback could not be stored durably: {exc}"}, 503)
        records_total.labels("stored").inc(len(lines))
        return JSONResponse({"stored": len(lines)}, 200)

    async def health(_request):
        return JSONResponse({"ok": True, "pending": writer.pending})

    async def metrics(_request):
        return Response(generate_latest(), headers={"content-type": CONTENT_TYPE_LATEST})

    return Starlette(
        routes=[
            Route("/v1/feedback", post, methods=["POST"]),
            Route("/healthz", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    import uvicorn  # heavy: uvicorn

    p = argparse.ArgumentParser(prog="python -m kfrelease.collectors.feedback", description="Ground-truth service.")
    p.add_argument("--port", type=int, default=None, help="default: the stack's feedback port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--model", default=None, help="model of records that name none (default: such records are refused)")
    p.add_argument("--flush-interval", type=float, default=2.0)
    p.add_argument(
        "--source-principal",
        action="append",
        default=[],
        help="a declared label source by mesh principal (cluster; repeat); with none, sources are the data dir's tokens",
    )
    p.add_argument("--source-namespace", action="append", default=[], help="a declared label source by namespace")
    p.add_argument(
        "--source-user",
        action="append",
        default=[],
        help="a declared label source by the kubeflow-userid a --source-principal gateway relays (repeat)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    settings = Settings.from_env()
    if args.source_principal or args.source_namespace or args.source_user:
        sources = LabelSources(
            principals=tuple(args.source_principal),
            namespaces=tuple(args.source_namespace),
            users=tuple(args.source_user),
        )
    else:
        ensure_label_source(settings)  # the stack's own clients' source
        sources = LabelSources(tokens=lambda: label_source_tokens(settings), where=str(label_sources_path(settings)))
    writer = BatchWriter(
        store_for("serving", settings),
        BUCKET,
        settings.service_dir("feedback") / "wal",
        args.flush_interval,
    )
    writer.start()
    try:
        uvicorn.run(
            create_app(writer, args.model, sources),
            host=args.host,
            port=args.port or settings.port("feedback"),
            log_level="warning",
            access_log=False,
        )
    finally:
        writer.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
