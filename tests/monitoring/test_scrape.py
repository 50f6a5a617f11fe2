"""What Prometheus keeps of the Pushgateway, and which series the canary's queries read (review eks5 S2).

Anybody who reaches the Pushgateway can push any metric name with any labels, and it is scraped with honor_labels:
a pushed ``kfrelease_predictor_requests_total{model, version, outcome="ok"}`` used to add into a canary's traffic
evidence (requests and ok rise, the error rate falls: a failing canary passes), and a pushed ``outcome="error"``
rolled back any model's canary. The embedded stack's real Prometheus and Pushgateway run here with the scrape
configuration built from the same declarations as the rendered ServiceMonitors and PodMonitor."""

from __future__ import annotations

import base64
import re

import pytest

from kfrelease import httpcalls
from kfrelease.config import Settings
from kfrelease.k8s.render.inference import version_slug
from kfrelease.k8s.render.workloads import monitors, pushgateway
from kfrelease.monitoring.push import push_windows
from kfrelease.monitoring.pushauth import PUSH_USER, SCRAPE_USER, embedded_credentials
from kfrelease.monitoring.scrape import PREDICTORS_JOB, prometheus_relabel, pushgateway_scrape
from kfrelease.monitoring.services import prometheus_config, prometheus_service, pushgateway_service
from kfrelease.release.signals import PrometheusMetrics, prometheus_query
from kfrelease.rollout.spec import parse_rollout_spec
from kfrelease.stack import supervisor
from tests.conftest import free_port_offset
from tests.monitoring.test_push import window
from tests.waiting import eventually

SPEC = parse_rollout_spec("model: m\n")
CANARY = "V2.0.0"


def _kept(relabelings: list[dict], name: str) -> bool:
    """Whether Prometheus keeps a series of this name through ``metric_relabel_configs`` (keep/drop on __name__)."""
    for r in relabelings:
        assert r["source_labels"] == ["__name__"], r
        matched = re.fullmatch(r["regex"], name) is not None  # Prometheus anchors relabel regexes
        if (r["action"] == "keep") != matched:
            return False
    return True


def test_the_rendered_pushgateway_monitor_keeps_only_what_the_monitoring_steps_push():
    docs = monitors(SPEC)
    (pushed,) = [
        d
        for d in docs
        if d["kind"] == "ServiceMonitor"
        and d["spec"]["selector"]["matchLabels"].items() <= pushgateway()[1]["metadata"]["labels"].items()
    ]
    (endpoint,) = pushed["spec"]["endpoints"]
    relabel = [prometheus_relabel(r) for r in endpoint["metricRelabelings"]]
    # the embedded stack's Pushgateway job is what the operator generates from the rendered endpoint
    assert {"honor_labels": endpoint["honorLabels"], "metric_relabel_configs": relabel} == pushgateway_scrape()
    for name in (
        "kfrelease_predictor_requests_total",
        "kfrelease_predictor_request_seconds_bucket",
        "request_preprocess_seconds_count",
        "request_predict_seconds_bucket",
        "not_kfrelease_model_r2",
    ):
        assert not _kept(relabel, name), name
    for name in ("kfrelease_model_r2", "kfrelease_model_window_insufficient", "push_time_seconds"):
        assert _kept(relabel, name), name
    # the other ServiceMonitor (log sink, feedback) neither selects the Pushgateway nor honours labels
    others = [d for d in docs if d["kind"] == "ServiceMonitor" and d is not pushed]
    assert others and all(not e.get("honorLabels") for d in others for e in d["spec"]["endpoints"])
    assert all(
        not d["spec"]["selector"]["matchLabels"].items() <= pushgateway()[1]["metadata"]["labels"].items()
        for d in others
    )


def test_the_predictors_job_is_the_podmonitors_and_set_by_prometheus(tmp_path):
    (pm,) = [d for d in monitors(SPEC) if d["kind"] == "PodMonitor"]
    # prometheus-operator pkg/prometheus/promcfg.go generatePodMonitorConfig: job = <namespace>/<name>
    assert f"{pm['metadata']['namespace']}/{pm['metadata']['name']}" == PREDICTORS_JOB
    assert not any(e.get("honorLabels") for e in pm["spec"]["podMetricsEndpoints"])
    embedded = prometheus_config(Settings(home=tmp_path), "1s", "1s")
    jobs = {j["job_name"]: j for j in embedded["scrape_configs"]}
    assert PREDICTORS_JOB in jobs and not jobs[PREDICTORS_JOB].get("honor_labels")
    assert {k: jobs["pushgateway"][k] for k in pushgateway_scrape()} == pushgateway_scrape()
    for q in PrometheusMetrics("http://prometheus", "m", CANARY, namespace=SPEC.serving.namespace).queries(30).values():
        assert f'job="{PREDICTORS_JOB}"' in q and f'namespace="{SPEC.serving.namespace}"' in q, q


@pytest.fixture(scope="module")
def monitoring(tmp_path_factory) -> Settings:
    """The embedded stack's Prometheus (1 s scrapes) and Pushgateway, alone, on free ports."""
    settings = Settings(home=tmp_path_factory.mktemp("scrape-home"), port_offset=free_port_offset())
    supervisor.up(settings, [pushgateway_service(settings), prometheus_service(settings, "1s", "10s")])
    yield settings
    supervisor.down(settings)


def _forged(n: int) -> str:
    """What any pod could push: the canary's traffic series, all answered fast and well."""
    mine = f'model="m",version="{CANARY}",stage="production"'
    kserve = f'model_name="m",kfrelease_io_version="{version_slug(CANARY)}"'
    return (
        "# TYPE kfrelease_predictor_requests_total counter\n"
        f'kfrelease_predictor_requests_total{{{mine},outcome="ok"}} {n}\n'
        "# TYPE kfrelease_predictor_request_seconds histogram\n"
        f'kfrelease_predictor_request_seconds_bucket{{{mine},le="0.005"}} {n}\n'
        f'kfrelease_predictor_request_seconds_bucket{{{mine},le="+Inf"}} {n}\n'
        f"kfrelease_predictor_request_seconds_sum{{{mine}}} {n * 0.001}\n"
        f"kfrelease_predictor_request_seconds_count{{{mine}}} {n}\n"
        "# TYPE request_preprocess_seconds histogram\n"
        f'request_preprocess_seconds_bucket{{{kserve},le="+Inf"}} {n}\n'
        f"request_preprocess_seconds_sum{{{kserve}}} {n * 0.001}\n"
        f"request_preprocess_seconds_count{{{kserve}}} {n}\n"
    )


@pytest.mark.integration
def test_a_series_pushed_with_the_canarys_labels_does_not_change_its_health(monitoring):
    prom, gateway = monitoring.url("prometheus"), monitoring.url("pushgateway")
    # the group even names the predictors' job and the serving namespace (honor_labels would keep both)
    job = base64.urlsafe_b64encode(PREDICTORS_JOB.encode()).decode()
    group = f"{gateway}/metrics/job@base64/{job}/namespace/{SPEC.serving.namespace}"
    embedded = PrometheusMetrics(prom, "m", CANARY)
    cluster = PrometheusMetrics(prom, "m", CANARY, namespace=SPEC.serving.namespace)
    before = [m.health(None, 120) for m in (embedded, cluster)]
    assert all(h.requests == 0 for h in before)

    # even with the monitoring steps' own credentials (the Pushgateway takes any name and label from them)
    pusher, scraper = embedded_credentials(monitoring, PUSH_USER), embedded_credentials(monitoring, SCRAPE_USER)
    for n in (1000, 5000):  # a rising counter, each push scraped (its push_time_seconds reaches Prometheus)
        httpcalls.put(group, content=_forged(n), auth=pusher).raise_for_status()
        pushed_at = float(
            re.search(
                rf'push_time_seconds\{{[^}}]*job="{re.escape(PREDICTORS_JOB)}"[^}}]*\}} (\S+)',
                httpcalls.get(f"{gateway}/metrics", auth=scraper).text,
            ).group(1)
        )
        eventually(
            lambda t=pushed_at: prometheus_query(prom, f'push_time_seconds{{job="{PREDICTORS_JOB}"}}') == t,
            30,
            "Prometheus scraping the forged push",
        )
    # a genuine monitoring push still arrives, with its labels
    assert push_windows(monitoring, [window()]).ok
    eventually(
        lambda: prometheus_query(prom, 'kfrelease_model_r2{model="m",version="V1.1.0",stage="production"}') == 0.5,
        30,
        "Prometheus scraping the monitoring step's push",
    )
    after = [m.health(None, 120) for m in (embedded, cluster)]
    assert after == before, after  # main: requests 5000, error rate 0, p99 5 ms
    assert prometheus_query(prom, 'count({__name__=~"kfrelease_predictor_.*|request_.*"})') is None


@pytest.mark.integration
def test_the_pushgateway_takes_pushes_only_with_the_monitoring_steps_credentials(monitoring, tmp_path, monkeypatch):
    """Review eks5 S2 part 3: the Pushgateway took pushes from anybody who reached it (no --web.config.file)."""
    gateway = monitoring.url("pushgateway")
    group = f"{gateway}/metrics/job/kfrelease-monitor/model/m/version/V6.6.6/stage/production"
    body = "# TYPE kfrelease_model_r2 gauge\nkfrelease_model_r2 0.99\n"
    user, _ = embedded_credentials(monitoring, PUSH_USER)
    for auth in (None, (user, "guessed"), ("admin", "admin")):
        assert httpcalls.put(group, content=body, auth=auth).status_code == 401, auth  # main: 200, stored
    scraper = embedded_credentials(monitoring, SCRAPE_USER)
    assert httpcalls.get(f"{gateway}/metrics").status_code == 401
    assert 'version="V6.6.6"' not in httpcalls.get(f"{gateway}/metrics", auth=scraper).text
    # a monitoring step with its mounted credentials (KFRELEASE_PUSHGATEWAY_CREDENTIALS) pushes
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    for name, value in zip(("username", "password"), embedded_credentials(monitoring, PUSH_USER), strict=True):
        (mounted / name).write_text(value + "\n")
    monkeypatch.setenv("KFRELEASE_PUSHGATEWAY_CREDENTIALS", str(mounted))
    monkeypatch.setenv("KFRELEASE_PUSHGATEWAY_URL", gateway)
    out = push_windows(Settings(home=tmp_path), [window(version="V6.6.7")])
    assert out.ok, out.message
    assert 'version="V6.6.7"' in httpcalls.get(f"{gateway}/metrics", auth=scraper).text
