"""The web UI's HTTP side: Starlette routes rendering Jinja2 templates (server-side, no JavaScript framework;
the monitoring charts are the monitoring page's plotly figures). Read-only: every route is a GET.

Routes: ``/`` (models, latest runs and decisions), ``/models/<model>`` (versions, stages, lineage),
``/models/<model>/versions/<V>`` (lineage, metrics, verdict, spec and build code, every decision with its
evidence, reports), ``/models/<model>/versions/<V>/reports/<file>`` (evaluation, shadow-gate, drift
reports as stored), ``/models/<model>/monitoring`` (the monitoring charts and latest windows),
``/experiments/<model>[/versions/<V>]`` (runs that were not merges: compared, never released),
``/runs``, ``/runs/<run id>`` (steps), ``/releases`` (every decision), ``/healthz``.

An unknown model, version, run or report is a 404 page naming what exists; an object store that cannot
answer is a 503 page; neither is ever a 500.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from kfrelease.errors import KfreleaseError, NotFound, StorageError
from kfrelease.registry.registry import EXPERIMENTS, REGISTRY
from kfrelease.ui import views
from kfrelease.ui.monitoring import monitoring_page

log = logging.getLogger(__name__)

TEMPLATES = Path(str(resources.files("kfrelease.ui") / "templates"))


def _fmt(value, digits: int = 4) -> str:
    """A number for a table cell: 4 significant digits; an em dash for nothing."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def create_app(reader: views.Reader) -> Starlette:
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.filters["num"] = _fmt

    def page(request: Request, name: str, status: int = 200, **context) -> Response:
        return templates.TemplateResponse(request, name, context, status_code=status)

    def failure(request: Request, exc: Exception) -> Response:
        if isinstance(exc, (NotFound, HTTPException)) or (
            isinstance(exc, KfreleaseError) and not isinstance(exc, StorageError)
        ):  # an unknown name, or a name that cannot be one (``V1.x``): nothing to show
            status = getattr(exc, "status_code", 404)
            message = getattr(exc, "detail", None) if isinstance(exc, HTTPException) else str(exc)
            return page(request, "error.html", status=status, title="Not found", message=message or "no such page")
        if isinstance(exc, StorageError):
            return page(
                request,
                "error.html",
                status=503,
                title="Object store unavailable",
                message=f"{exc} (is the stack up? `kfrelease status`)",
            )
        log.exception("page %s failed", request.url.path)
        return page(request, "error.html", status=500, title="Error", message=f"{type(exc).__name__}: {exc}")

    def index(request: Request) -> Response:
        return page(request, "index.html", **views.overview(reader))

    def model(request: Request) -> Response:
        space = request.scope.get("kf_space", REGISTRY)
        name = request.path_params["model"]
        data = views.model_page(reader, name, space)
        data["decisions"] = views.decisions(reader, name) if space == REGISTRY else []
        return page(request, "model.html", **data)

    def version(request: Request) -> Response:
        space = request.scope.get("kf_space", REGISTRY)
        p = request.path_params
        return page(request, "version.html", **views.version_page(reader, p["model"], p["version"], space))

    def report(request: Request) -> Response:
        p = request.path_params
        return HTMLResponse(views.report(reader, p["model"], p["version"], p["name"]))

    def monitoring(request: Request) -> Response:
        name = request.path_params["model"]
        views.model_page(reader, name)  # 404 for a model the registry does not know
        return page(request, "monitoring.html", **monitoring_page(reader, name))

    def runs(request: Request) -> Response:
        return page(request, "runs.html", runs=views.run_rows(reader))

    def run(request: Request) -> Response:
        return page(request, "run.html", **views.run_page(reader, request.path_params["run_id"]))

    def releases(request: Request) -> Response:
        return page(request, "releases.html", decisions=views.decisions(reader))

    def plotly_js(request: Request) -> Response:
        return FileResponse(
            str(resources.files("plotly") / "package_data" / "plotly.min.js"), media_type="application/javascript"
        )

    def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def experiments(endpoint):
        def handler(request: Request) -> Response:
            request.scope["kf_space"] = EXPERIMENTS
            return endpoint(request)

        return handler

    def guarded(endpoint):
        def handler(request: Request) -> Response:
            try:
                return endpoint(request)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a page, never a bare 500
                return failure(request, exc)

        return handler

    routes = [
        Route("/", guarded(index)),
        Route("/models/{model}", guarded(model)),
        Route("/models/{model}/versions/{version}", guarded(version)),
        Route("/models/{model}/versions/{version}/reports/{name}", guarded(report)),
        Route("/models/{model}/monitoring", guarded(monitoring)),
        Route("/experiments/{model}", guarded(experiments(model))),
        Route("/experiments/{model}/versions/{version}", guarded(experiments(version))),
        Route("/runs", guarded(runs)),
        Route("/runs/{run_id}", guarded(run)),
        Route("/releases", guarded(releases)),
        Route("/static/plotly.min.js", plotly_js),
        Route("/healthz", health),
    ]

    async def not_found(request: Request, exc: HTTPException) -> Response:
        return failure(request, exc)

    return Starlette(routes=routes, exception_handlers={HTTPException: not_found})
