"""The serving group of the embedded stack: the log sink, the feedback service, the gateway and its hold
(``kfrelease serve`` starts them), plus ``predictor_service``: one model version in a process of its own
(tests and benchmarks; the stack's model servers host many models, ``kfrelease.stack.hosts``). The port
table is ``kfrelease.stack.slots``."""

from __future__ import annotations

import sys
from pathlib import Path

from kfrelease.config import Settings
from kfrelease.errors import ConfigError
from kfrelease.stack.gateway import gateway_dir, gateway_service
from kfrelease.stack.service import Service, python_service
from kfrelease.stack.slots import STAGES, predictor_port


def predictor_argv(
    model_dir: str | Path,
    model_name: str,
    stage: str,
    port: int,
    logger_url: str | None = None,
    cache: str | None = None,
) -> list[str]:
    """The predictor's command line (docs/CONTRACTS.md, "Serving processes"): one place for every caller."""
    argv = [
        sys.executable,
        "-m",
        "kfrelease.serving.predictor",
        "--model-dir",
        str(model_dir),
        "--name",
        model_name,
        "--stage",
        stage,
        "--http-port",
        str(port),
    ]
    if logger_url:
        argv += ["--logger-url", logger_url]
    if cache:
        argv += ["--cache", cache]
    return argv


def logsink_service(settings: Settings) -> Service:
    return python_service(
        settings, "logsink", "kfrelease.collectors.sink", group="serving", startup_timeout=60, restart=True
    )


def feedback_service(settings: Settings, model: str | None = None) -> Service:
    args = ("--model", model) if model else ()
    return python_service(
        settings, "feedback", "kfrelease.collectors.feedback", *args, group="serving", startup_timeout=60, restart=True
    )


def hold_service(settings: Settings) -> Service:
    """The gateway's hold (``kfrelease.stack.hold``): the last server of every primary and canary upstream."""
    return python_service(
        settings,
        "gateway-hold",
        "kfrelease.stack.hold",
        "--gateway-port",
        str(settings.port("gateway")),
        "--gateway-config",
        str(gateway_dir(settings) / "nginx.conf"),
        group="serving",
        startup_timeout=60,
        restart=True,
    )


def predictor_service(
    settings: Settings,
    stage: str,
    model_dir: str | Path,
    model_name: str,
    port: int | None = None,
    logger_url: str | None = "default",
    cache: str | None = None,
    extra_args: tuple[str, ...] = (),
) -> Service:
    """A model server for one version as a stack service ``predictor-<stage>`` (start it with
    ``supervisor.start_service``). ``logger_url="default"`` logs to the stack's sink; ``None`` disables logging."""
    if stage not in STAGES:
        raise ConfigError(f"stage {stage!r} is not one of {', '.join(STAGES)}")
    port = port or predictor_port(settings, stage)
    command = predictor_argv(
        model_dir,
        model_name,
        stage,
        port,
        logger_url=settings.url("logsink", "/") if logger_url == "default" else logger_url,
        cache=cache,
    )
    command += list(extra_args)
    return Service(
        name=f"predictor-{stage}",
        port=port,
        command=command,
        health_path="/v2/health/ready",
        group="serving-models",  # started per version by the gateway driver, not by `kfrelease serve` itself
        startup_timeout=90,
    )


def services(settings: Settings) -> list[Service]:
    """The ``serving`` group: log sink and feedback first (model servers log from their first request), then
    the hold page and the gateway."""
    return [logsink_service(settings), feedback_service(settings), hold_service(settings), gateway_service(settings)]
