"""The Grafana dashboard (``dashboard.json``: accuracy and drift per model version and stage, from the
Pushgateway gauges). The manifests part ships it as a ConfigMap labelled ``grafana_dashboard: "1"`` for the
kube-prometheus-stack Grafana sidecar (``kfrelease.k8s.render.workloads.dashboard_configmap``)."""

from __future__ import annotations

import json
from importlib import resources

DASHBOARD_FILE = "dashboard.json"


def load_dashboard() -> dict:
    return json.loads((resources.files("kfrelease.monitoring") / DASHBOARD_FILE).read_text(encoding="utf-8"))


def panel_queries(dashboard: dict | None = None) -> list[str]:
    """Every PromQL expression of the dashboard (panels, nested rows, annotations, variables)."""
    d = dashboard or load_dashboard()
    out = []

    def walk(panels):
        for p in panels:
            out.extend(t["expr"] for t in p.get("targets", []) if "expr" in t)
            walk(p.get("panels", []))

    walk(d.get("panels", []))
    out.extend(a["expr"] for a in d.get("annotations", {}).get("list", []) if "expr" in a)
    return out
