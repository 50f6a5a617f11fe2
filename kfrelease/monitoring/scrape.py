"""What Prometheus keeps of kfrelease's targets, declared once for the cluster and the embedded stack.

The cluster's Prometheus (kube-prometheus-stack) scrapes what the rendered ServiceMonitors and PodMonitor name
(``kfrelease.k8s.render.workloads.monitors``); the embedded stack's Prometheus scrapes what its ``prometheus.yml``
names (``kfrelease.monitoring.services.prometheus_config``). Both are built from these declarations, and the canary's
queries (``kfrelease.release.signals.series_selectors``) match the labels they give:

- **The Pushgateway keeps only what the monitoring steps push.** Anybody who reaches it could push any metric name
  with any labels, and it is scraped with ``honorLabels`` (the pushed model/version/stage labels must survive), so a
  pushed ``kfrelease_predictor_requests_total{model=..., version=..., outcome="ok"}`` would add into a canary's
  traffic evidence. Its scrape keeps ``PUSHED_SERIES`` only (``metricRelabelings``, action ``keep`` on
  ``__name__``: prometheus-operator ``pkg/apis/monitoring/v1/prometheus_types.go`` ``RelabelConfig``; rendered into
  the job's ``metric_relabel_configs`` by ``pkg/prometheus/promcfg.go`` ``generateServiceMonitorConfig``), on a
  ServiceMonitor of its own: the log sink and feedback service are scraped without ``honorLabels``.
- **The predictors' series carry a job no push can give them.** The model servers are scraped by the PodMonitor
  ``PREDICTORS_MONITOR`` without ``honorLabels``, so Prometheus sets their ``job`` to ``<namespace>/<name>`` of
  the PodMonitor (``generatePodMonitorConfig``: ``target_label: job``, ``replacement: <ns>/<name>``) and their
  ``namespace`` to the pod's; a series a target exposes with its own ``job`` keeps it as ``exported_job``. The
  canary's queries match ``job="<PREDICTORS_JOB>"`` (and, on a cluster, the serving ``namespace``). The embedded
  stack names its predictors' scrape job the same.

Upstream: prometheus-operator v0.93 (kube-prometheus-stack 88.5.3's ``appVersion`` v0.93.1, whose ``values.yaml``
keeps ``overrideHonorLabels: false``).
"""

from __future__ import annotations

from kfrelease.k8s.environments import MONITORING_NS

#: The PodMonitor of the model servers, and the ``job`` label prometheus-operator gives its targets' series.
PREDICTORS_MONITOR = "kfrelease-predictors"
PREDICTORS_JOB = f"{MONITORING_NS}/{PREDICTORS_MONITOR}"
#: The ServiceMonitor of the Pushgateway alone (``honorLabels``, ``PUSHGATEWAY_METRIC_RELABELINGS``).
PUSHGATEWAY_MONITOR = "kfrelease-pushgateway"
#: What the monitoring steps push (``kfrelease.monitoring.push``: every gauge is ``kfrelease_model_*``) and the
#: Pushgateway's own per-group timestamps (prometheus/pushgateway README, "About timestamps"); nothing else a push
#: carries reaches Prometheus.
PUSHED_SERIES = "kfrelease_model_.*|push_time_seconds|push_failure_time_seconds"
#: The Pushgateway endpoint's ``metricRelabelings`` (prometheus-operator's camelCase form).
PUSHGATEWAY_METRIC_RELABELINGS = ({"sourceLabels": ["__name__"], "regex": PUSHED_SERIES, "action": "keep"},)

#: prometheus-operator's RelabelConfig field -> Prometheus' relabel_config key (pkg/prometheus/promcfg.go
#: ``generateRelabelConfig``)
_RELABEL_KEYS = {
    "sourceLabels": "source_labels",
    "separator": "separator",
    "targetLabel": "target_label",
    "regex": "regex",
    "modulus": "modulus",
    "replacement": "replacement",
    "action": "action",
}


def prometheus_relabel(config: dict) -> dict:
    """One prometheus-operator ``RelabelConfig`` as Prometheus' ``relabel_config`` (the operator lower-cases the
    action: ``generateRelabelConfig``)."""
    unknown = set(config) - set(_RELABEL_KEYS)
    if unknown:
        raise ValueError(f"relabel fields {sorted(unknown)} are not translated; known: {', '.join(_RELABEL_KEYS)}")
    out = {_RELABEL_KEYS[k]: v for k, v in config.items()}
    if "action" in out:
        out["action"] = out["action"].lower()
    return out


def pushgateway_scrape() -> dict:
    """The Pushgateway job's ``honor_labels`` and ``metric_relabel_configs`` in Prometheus' form (the embedded
    stack's ``prometheus.yml``; the operator generates the same from the rendered ServiceMonitor)."""
    return {
        "honor_labels": True,
        "metric_relabel_configs": [prometheus_relabel(r) for r in PUSHGATEWAY_METRIC_RELABELINGS],
    }
