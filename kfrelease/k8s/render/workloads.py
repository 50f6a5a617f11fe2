"""Serving and monitoring workloads on EKS: the ServingRuntime (``kfrelease.k8s.render.inference``), the log sink
(Service ``kfrelease-logsink``, the InferenceServices' default ``logger.url``) and the feedback service, the Pushgateway, ServiceMonitor/PodMonitor, the PrometheusRule and the Grafana dashboard.

The InferenceServices and the VirtualService come from ``kfrelease.k8s.render.inference`` and the PrometheusRule from
``kfrelease.monitoring.rules`` (their owners' renderers); this module only places them.
"""

from __future__ import annotations

import json
from importlib import resources

from kfrelease.k8s.environments import BASE_IMAGE, MONITORING_NS, PROFILE_SA, RELEASE_NS, Environment
from kfrelease.k8s.render.admission import driver_service_policy
from kfrelease.k8s.render.inference import (
    KNATIVE_USER_PORT_NAME,
    PREDICTOR_PORT_NAME,
    VERSION_LABEL,
    predictor_writers,
    production_name,
    render_release_service,
    render_serving_runtime,
)
from kfrelease.k8s.render.mesh import (
    feedback_gateway_policy,
    label_source_args,
    logsink_writer_args,
    predictor_peer_authentication,
    replay_gateway_policy,
    serving_policies,
)
from kfrelease.k8s.render.platform import PART_OF, RELEASE_DRIVER_SA, release_driver_rbac, s3_env, service_account
from kfrelease.monitoring.pushauth import SCRAPE_SECRET, WEB_CONFIG_KEY, WEB_CONFIG_SECRET
from kfrelease.monitoring.rules import render_prometheus_rule
from kfrelease.monitoring.scrape import PREDICTORS_MONITOR, PUSHGATEWAY_METRIC_RELABELINGS, PUSHGATEWAY_MONITOR
from kfrelease.monitoring.spark_app import SPARK_IMAGE_NAME, render_scheduled_monitoring, spark_rbac
from kfrelease.rollout.spec import RolloutSpec

HTTP_PORT = 8080
STATE_DIR = "/var/lib/kfrelease"
MONITORING_SA = "kfrelease-monitoring"
PUSHGATEWAY_IMAGE = "quay.io/prometheus/pushgateway:v1.11.1"
PUSHGATEWAY_WEB_DIR = "/etc/pushgateway"
METRICS_LABEL = {"kfrelease.io/metrics": "true"}
#: kube-prometheus-stack's Prometheus selects monitors and rules by its Helm release label (default
#: ``release: <release name>``); our docs install it as ``kube-prometheus-stack``.
PROMETHEUS_SELECTOR = {"release": "kube-prometheus-stack"}


def http_service(
    name: str,
    ns: str,
    module: str,
    env: Environment,
    role: str,
    replicas: int,
    sa: str,
    image: str = BASE_IMAGE,
    extra_args: tuple[str, ...] = (),
) -> list[dict]:
    """A Deployment + Service + HPA of one kfrelease HTTP process (log sink, feedback), as the role's IRSA SA.

    Its write-ahead log (``$KFRELEASE_HOME/services/<name>/wal``) is on an ``emptyDir``: it survives container
    restarts; on a normal stop the process uploads what it holds (``terminationGracePeriodSeconds``)."""
    labels = {"app.kubernetes.io/name": name, **PART_OF}
    probe = {"tcpSocket": {"port": "http"}, "periodSeconds": 5}
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {
                "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": sa,
                        "nodeSelector": {"kfrelease.io/pool": "serving"},
                        "terminationGracePeriodSeconds": 60,
                        "volumes": [{"name": "state", "emptyDir": {}}],
                        "containers": [
                            {
                                "name": name,
                                "image": image,
                                "command": ["python", "-m", module],
                                "args": [
                                    "--host",
                                    "0.0.0.0",
                                    "--port",
                                    str(HTTP_PORT),
                                    *extra_args,
                                ],
                                "env": [
                                    *s3_env(env, role),
                                    {"name": "KFRELEASE_HOME", "value": STATE_DIR},
                                ],
                                "volumeMounts": [{"name": "state", "mountPath": STATE_DIR}],
                                "ports": [{"name": "http", "containerPort": HTTP_PORT}],
                                "readinessProbe": probe,
                                "livenessProbe": {**probe, "periodSeconds": 20},
                                "resources": {
                                    "requests": {"cpu": "100m", "memory": "256Mi"},
                                    "limits": {"memory": "512Mi"},
                                },
                                "securityContext": {
                                    "runAsNonRoot": True,
                                    "allowPrivilegeEscalation": False,
                                },
                            }
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": {**labels, **METRICS_LABEL},
            },
            "spec": {
                "selector": {"app.kubernetes.io/name": name},
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
        },
        {
            # The HPA owns the replica count (the Deployment sets none, so `kubectl apply` never resets it).
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {
                "scaleTargetRef": {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": name,
                },
                "minReplicas": replicas,
                "maxReplicas": max(4, 2 * replicas),
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 70},
                        },
                    }
                ],
            },
        },
    ]


def serving_documents(
    spec: RolloutSpec, env: Environment, serving_sa: str, models: tuple[RolloutSpec, ...] = ()
) -> list[dict]:
    """The serving namespace: runtime, log sink, feedback, the predictors' own service accounts (each model's
    production's and shadow's: ``inference.predictor_writers``; no IRSA, no RBAC: the ModelCar image is pulled by the
    kubelet), the release driver's Role and the mesh's ALLOW policies (``kfrelease.k8s.render.mesh``)."""
    ns = spec.serving.namespace
    writers = predictor_writers(models or (spec,))  # one identity per InferenceService: per model and stage
    return [
        render_serving_runtime(spec, env.project_image),
        *[service_account(sa, ns) for sa in writers],
        *release_driver_rbac(ns, [production_name(s) for s in models or (spec,)]),
        *driver_service_policy(ns, [production_name(s) for s in models or (spec,)]),
        *[render_release_service(s) for s in models or (spec,)],
        *serving_policies(
            ns,
            tuple(writers),
            "kfrelease-logsink",
            "kfrelease-feedback",
            clients=env.mesh_clients,
            label_users=env.label_source_users,
        ),
        predictor_peer_authentication(ns),
        replay_gateway_policy(env.oidc_issuer, RELEASE_NS, RELEASE_DRIVER_SA),
        feedback_gateway_policy(env.oidc_issuer, env.label_sources),
        *http_service(
            "kfrelease-logsink",
            ns,
            "kfrelease.collectors.sink",
            env,
            "serving",
            env.logsink_replicas,
            serving_sa,
            env.project_image,
            extra_args=logsink_writer_args(ns, writers),  # which predictor identity logs which model's stages
        ),
        *http_service(
            "kfrelease-feedback",
            ns,
            "kfrelease.collectors.feedback",
            env,
            "serving",
            1,
            serving_sa,
            env.project_image,
            extra_args=label_source_args(env.mesh_clients, env.label_source_users),
        ),
    ]


#: The Pushgateway's Service labels that its own ServiceMonitor selects (not ``METRICS_LABEL``: the log sink's and
#: feedback's ServiceMonitor scrapes without ``honorLabels``)
PUSHGATEWAY_LABELS = {"app.kubernetes.io/name": PUSHGATEWAY_MONITOR}


def pushgateway() -> list[dict]:
    name = PUSHGATEWAY_MONITOR
    labels = {**PUSHGATEWAY_LABELS, **PART_OF}
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": MONITORING_NS, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "pushgateway",
                                "image": PUSHGATEWAY_IMAGE,
                                # basic auth for pushes and scrapes (kfrelease.monitoring.pushauth)
                                "args": [f"--web.config.file={PUSHGATEWAY_WEB_DIR}/{WEB_CONFIG_KEY}"],
                                "ports": [{"name": "http", "containerPort": 9091}],
                                # every HTTP endpoint asks for the credentials, /-/ready too (prometheus/pushgateway
                                # v1.11.1 README, "TLS and basic authentication"): the port answering is readiness
                                "readinessProbe": {"tcpSocket": {"port": "http"}},
                                "volumeMounts": [
                                    {"name": "web-config", "mountPath": PUSHGATEWAY_WEB_DIR, "readOnly": True}
                                ],
                                "resources": {
                                    "requests": {"cpu": "50m", "memory": "64Mi"},
                                    "limits": {"memory": "256Mi"},
                                },
                            }
                        ],
                        "volumes": [{"name": "web-config", "secret": {"secretName": WEB_CONFIG_SECRET}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": name,
                "namespace": MONITORING_NS,
                "labels": labels,
            },
            "spec": {
                "selector": {"app.kubernetes.io/name": name},
                "ports": [{"name": "http", "port": 9091, "targetPort": "http"}],
            },
        },
    ]


def monitors(spec: RolloutSpec) -> list[dict]:
    """ServiceMonitors (log sink and feedback; the Pushgateway on its own, with ``honorLabels`` and only what the
    monitoring steps push) and the PodMonitor of the model servers (``kfrelease.monitoring.scrape``)."""
    return [
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": {
                "name": "kfrelease",
                "namespace": MONITORING_NS,
                "labels": {**PART_OF, **PROMETHEUS_SELECTOR},
            },
            "spec": {
                "namespaceSelector": {"matchNames": [spec.serving.namespace]},
                "selector": {"matchLabels": METRICS_LABEL},
                # no honorLabels: a series these services expose never replaces a label the target sets
                "endpoints": [{"port": "http", "path": "/metrics", "interval": "30s"}],
            },
        },
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": {
                "name": PUSHGATEWAY_MONITOR,
                "namespace": MONITORING_NS,
                "labels": {**PART_OF, **PROMETHEUS_SELECTOR},
            },
            "spec": {
                "namespaceSelector": {"matchNames": [MONITORING_NS]},
                "selector": {"matchLabels": PUSHGATEWAY_LABELS},
                "endpoints": [
                    {
                        "port": "http",
                        "path": "/metrics",
                        "interval": "30s",
                        # keeps the model/version/stage labels pushed to the Pushgateway ...
                        "honorLabels": True,
                        # ... of what the monitoring steps push, and of nothing else (kfrelease.monitoring.scrape)
                        "metricRelabelings": [dict(r) for r in PUSHGATEWAY_METRIC_RELABELINGS],
                        # the Pushgateway asks every client for credentials; Prometheus's (prometheus-operator
                        # v0.93.0 pkg/apis/monitoring/v1/types.go BasicAuth: keys of a Secret in this namespace)
                        "basicAuth": {
                            "username": {"name": SCRAPE_SECRET, "key": "username"},
                            "password": {"name": SCRAPE_SECRET, "key": "password"},
                        },
                    }
                ],
            },
        },
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PodMonitor",
            "metadata": {
                "name": PREDICTORS_MONITOR,  # its targets' job: PREDICTORS_JOB, which the canary's queries match
                "namespace": MONITORING_NS,
                "labels": {**PART_OF, **PROMETHEUS_SELECTOR},
            },
            "spec": {
                "namespaceSelector": {"matchNames": [spec.serving.namespace]},
                "selector": {
                    "matchExpressions": [
                        {
                            "key": "serving.kserve.io/inferenceservice",
                            "operator": "Exists",
                        }
                    ]
                },
                # Each series of a predictor pod gets the pod's model version as kfrelease_io_version (KServe's
                # request_preprocess_seconds carries only model_name), so a canary's requests are told apart
                # from the stable predictor's (prometheus-operator pkg/prometheus/promcfg.go:
                # generatePodMonitorConfig, podTargetLabels).
                "podTargetLabels": [VERSION_LABEL],
                # Knative names the model server's container port "user-port"; scraping it directly bypasses the
                # queue-proxy, so scrapes never count as load for the autoscaler (knative/serving#5775). In raw
                # (Standard) mode the pod keeps the ServingRuntime's port name.
                "podMetricsEndpoints": [
                    {"port": KNATIVE_USER_PORT_NAME, "path": "/metrics", "interval": "15s"},
                    {"port": PREDICTOR_PORT_NAME, "path": "/metrics", "interval": "15s"},
                ],
            },
        },
    ]


def prometheus_rule() -> dict:
    """The PrometheusRule rendered by the monitoring part, in the monitoring namespace."""
    doc = render_prometheus_rule(namespace=MONITORING_NS, labels={**PART_OF, **PROMETHEUS_SELECTOR})
    meta = doc["metadata"]
    meta["labels"] = {**PART_OF, **PROMETHEUS_SELECTOR, **meta["labels"]}
    return doc


def dashboard_configmap() -> dict:
    """The Grafana dashboard (``kfrelease/monitoring/dashboard.json``) for the kube-prometheus-stack Grafana
    sidecar, which loads ConfigMaps labelled ``grafana_dashboard: "1"``."""
    text = (resources.files("kfrelease.monitoring") / "dashboard.json").read_text()
    json.loads(text)  # fail here, not in Grafana, on a broken dashboard
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "kfrelease-dashboard",
            "namespace": MONITORING_NS,
            "labels": {**PART_OF, "grafana_dashboard": "1"},
        },
        "data": {"kfrelease.json": text},
    }


def spark_monitoring() -> list[dict]:
    """The platform's part of monitoring on the Kubeflow Spark Operator (``kfrelease.monitoring.spark_app``):
    the driver's and the pipeline step's RBAC in the monitoring namespace (the driver runs as its IRSA
    service account). Each model's scheduled window is its own (``model_monitoring``)."""
    return spark_rbac(MONITORING_NS, MONITORING_SA, RELEASE_NS, PROFILE_SA)


def model_monitoring(spec: RolloutSpec, env: Environment, features: list[str]) -> list[dict]:
    """One model's nightly monitoring window (over its ``features``) as a suspended
    ``ScheduledSparkApplication``: it belongs to the model, not to the platform's overlay."""
    image = f"{SPARK_IMAGE_NAME}:base" if env.name == "base" else f"{env.registry}/{SPARK_IMAGE_NAME}:{env.image_tag}"
    return [
        render_scheduled_monitoring(
            spec.model,
            list(features),
            namespace=MONITORING_NS,
            image=image,
            bucket_prefix=env.bucket_prefix,
            service_account=MONITORING_SA,
        )
    ]


def monitoring_documents(spec: RolloutSpec, env: Environment | None = None) -> list[dict]:
    docs = [*pushgateway(), *monitors(spec), prometheus_rule(), dashboard_configmap()]
    if env is not None:
        docs += spark_monitoring()
    return docs
