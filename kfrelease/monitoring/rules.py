"""The alert rules (``rules.yaml``, the one rules file) rendered for the local Prometheus and the cluster.

Locally the rules are copied into Prometheus' data directory; ``for_override`` (e.g. ``"0s"`` in tests,
``KFRELEASE_ALERT_FOR``) shortens every rule's pending period so an integration test sees an alert fire
within seconds. On the cluster they become a ``PrometheusRule`` (monitoring.coreos.com/v1) that
kube-prometheus-stack's Prometheus selects by its ``release`` label (the chart's default
``ruleSelector``: prometheus-community/helm-charts, kube-prometheus-stack values.yaml
``ruleSelectorNilUsesHelmValues``).
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path

import yaml

RULES_FILE = "rules.yaml"


def rules_path() -> Path:
    return Path(str(resources.files("kfrelease.monitoring") / RULES_FILE))


def load_rules() -> dict:
    return yaml.safe_load(rules_path().read_text())


def render_rules(for_override: str | None = None) -> dict:
    """The rule groups, with every ``for`` replaced by ``for_override`` when given."""
    doc = copy.deepcopy(load_rules())
    if for_override:
        for group in doc["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rule["for"] = for_override
    return doc


def render_prometheus_rule(
    namespace: str = "monitoring",
    release: str = "kube-prometheus-stack",
    name: str = "kfrelease-model-alerts",
    labels: dict | None = None,
) -> dict:
    """The PrometheusRule for kube-prometheus-stack, from the same rules file (``labels`` are added)."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "release": release,
                "app.kubernetes.io/part-of": "kfrelease",
                **(labels or {}),
            },
        },
        "spec": {"groups": load_rules()["groups"]},
    }
