"""The monitoring group of the embedded stack: Prometheus, Pushgateway, Alertmanager (Debian packages) and
our Alertmanager webhook receiver, each on 127.0.0.1 with its own data directory and rendered config.

Prometheus scrapes itself, the Pushgateway (``honor_labels: true`` keeps the pushed model/version/stage
labels; only what the monitoring steps push is kept), every model server of the stack's table
(``kfrelease.stack.slots``: each stage and replica, with a ``stage`` label; job ``kfrelease-monitoring/
kfrelease-predictors`` as the cluster's PodMonitor gives it), the log sink, the feedback service, Alertmanager and
the receiver, as the cluster's ServiceMonitors and PodMonitor do (``kfrelease.monitoring.scrape``). Targets that
are not running are simply ``up == 0``.

Tunables (environment, read when a service is (re)started):
``KFRELEASE_PROMETHEUS_SCRAPE_INTERVAL`` (default 10s), ``KFRELEASE_PROMETHEUS_EVAL_INTERVAL`` (10s),
``KFRELEASE_ALERT_FOR`` (override every rule's ``for``; default: the rules file's values),
``KFRELEASE_ALERTMANAGER_GROUP_WAIT`` (10s), ``..._GROUP_INTERVAL`` (1m), ``..._REPEAT_INTERVAL`` (4h).
Readiness: ``/-/ready`` for the three Prometheus programs, ``/healthz`` for the receiver.
"""

from __future__ import annotations

import json

import yaml

from kfrelease.config import Settings, setting
from kfrelease.monitoring.pushauth import SCRAPE_USER, WEB_CONFIG_KEY, embedded_dir, ensure_embedded
from kfrelease.monitoring.rules import render_rules
from kfrelease.monitoring.scrape import PREDICTORS_JOB, pushgateway_scrape
from kfrelease.stack.service import Service, python_service
from kfrelease.stack.slots import all_slots

GROUP = "monitoring"


def prometheus_config(settings: Settings, scrape_interval: str, eval_interval: str) -> dict:
    def job(name, ports, **extra):
        return {
            "job_name": name,
            "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports]}],
            **extra,
        }

    return {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": eval_interval,
        },
        "rule_files": [str(settings.service_dir("prometheus") / "rules.yaml")],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{settings.port('alertmanager')}"]}]}]
        },
        "scrape_configs": [
            job("prometheus", [settings.port("prometheus")]),
            job(
                "pushgateway",
                [settings.port("pushgateway")],
                **pushgateway_scrape(),
                basic_auth={
                    "username": SCRAPE_USER,
                    "password_file": str(embedded_dir(settings) / SCRAPE_USER / "password"),
                },
            ),
            {
                "job_name": PREDICTORS_JOB,  # the cluster's PodMonitor job: what the canary's queries match
                "static_configs": [
                    {"targets": [f"127.0.0.1:{slot.port(settings)}"], "labels": {"stage": slot.stage}}
                    for slot in all_slots()
                ],
            },
            job("logsink", [settings.port("logsink")]),
            job("feedback", [settings.port("feedback")]),
            job("alertmanager", [settings.port("alertmanager")]),
            job("alert-receiver", [settings.port("alert-receiver")]),
        ],
    }


def alertmanager_config(settings: Settings, group_wait: str, group_interval: str, repeat_interval: str) -> dict:
    return {
        "route": {
            "receiver": "kfrelease",
            "group_by": ["alertname", "model", "version", "stage"],
            "group_wait": group_wait,
            "group_interval": group_interval,
            "repeat_interval": repeat_interval,
        },
        "receivers": [
            {
                "name": "kfrelease",
                "webhook_configs": [
                    {
                        "url": settings.url("alert-receiver", "/alerts"),
                        "send_resolved": True,
                        "max_alerts": 0,
                    }
                ],
            }
        ],
    }


def prometheus_service(
    settings: Settings,
    scrape_interval: str | None = None,
    eval_interval: str | None = None,
    alert_for: str | None = None,
) -> Service:
    d = settings.service_dir("prometheus")
    scrape = scrape_interval or setting("KFRELEASE_PROMETHEUS_SCRAPE_INTERVAL")
    evaluation = eval_interval or setting("KFRELEASE_PROMETHEUS_EVAL_INTERVAL")
    for_override = alert_for or setting("KFRELEASE_ALERT_FOR")

    def prepare(s: Settings) -> None:
        (d / "data").mkdir(parents=True, exist_ok=True)
        ensure_embedded(s)  # the Pushgateway's scrape password file
        (d / "rules.yaml").write_text(yaml.safe_dump(render_rules(for_override), sort_keys=False))
        (d / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(s, scrape, evaluation), sort_keys=False))

    return Service(
        name="prometheus",
        port=settings.port("prometheus"),
        command=[
            "prometheus",
            f"--config.file={d / 'prometheus.yml'}",
            f"--storage.tsdb.path={d / 'data'}",
            f"--web.listen-address=127.0.0.1:{settings.port('prometheus')}",
            "--storage.tsdb.retention.time=15d",
            "--web.enable-lifecycle",
        ],
        health_path="/-/ready",
        prepare=prepare,
        group=GROUP,
        executables={"prometheus": "prometheus"},
    )


def pushgateway_service(settings: Settings) -> Service:
    """The Pushgateway, as on the cluster with basic auth for pushes and scrapes (``kfrelease.monitoring.pushauth``;
    its ``/-/ready`` answers 401 without them, which the supervisor counts as ready: below 500)."""
    d = settings.service_dir("pushgateway")
    return Service(
        name="pushgateway",
        port=settings.port("pushgateway"),
        command=[
            "prometheus-pushgateway",
            f"--web.listen-address=127.0.0.1:{settings.port('pushgateway')}",
            f"--web.config.file={embedded_dir(settings) / WEB_CONFIG_KEY}",
            f"--persistence.file={d / 'metrics.db'}",
            "--persistence.interval=30s",
        ],
        prepare=ensure_embedded,
        health_path="/-/ready",
        group=GROUP,
        executables={"prometheus-pushgateway": "prometheus-pushgateway"},
    )


def alertmanager_service(
    settings: Settings,
    group_wait: str | None = None,
    group_interval: str | None = None,
    repeat_interval: str | None = None,
) -> Service:
    d = settings.service_dir("alertmanager")
    wait = group_wait or setting("KFRELEASE_ALERTMANAGER_GROUP_WAIT")
    interval = group_interval or setting("KFRELEASE_ALERTMANAGER_GROUP_INTERVAL")
    repeat = repeat_interval or setting("KFRELEASE_ALERTMANAGER_REPEAT_INTERVAL")

    def prepare(s: Settings) -> None:
        (d / "data").mkdir(parents=True, exist_ok=True)
        (d / "alertmanager.yml").write_text(json.dumps(alertmanager_config(s, wait, interval, repeat), indent=2))

    return Service(
        name="alertmanager",
        port=settings.port("alertmanager"),
        command=[
            "prometheus-alertmanager",
            f"--config.file={d / 'alertmanager.yml'}",
            f"--storage.path={d / 'data'}",
            f"--web.listen-address=127.0.0.1:{settings.port('alertmanager')}",
            "--cluster.listen-address=",  # empty: no HA gossip port (one instance, 127.0.0.1 only)
        ],
        health_path="/-/ready",
        prepare=prepare,
        group=GROUP,
        executables={"prometheus-alertmanager": "prometheus-alertmanager"},
    )


def receiver_service(settings: Settings) -> Service:
    return python_service(settings, "alert-receiver", "kfrelease.monitoring.receiver", group=GROUP)


def services(settings: Settings) -> list[Service]:
    """The monitoring group, in start order (the receiver first: Alertmanager posts to it)."""
    return [
        receiver_service(settings),
        pushgateway_service(settings),
        alertmanager_service(settings),
        prometheus_service(settings),
    ]
