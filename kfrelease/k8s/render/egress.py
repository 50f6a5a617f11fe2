"""Istio ``Sidecar`` objects that let the callers of the models reach the serving namespace with their identity.

Kubeflow v1.11.0 and 26.03 install a mesh-wide ``Sidecar`` ``istio-system/default``
(kubeflow/manifests ``common/istio/istio-install/base/sidecar-prune-egress.yaml``, taken by ``example/`` through
``common/istio/istio-install/overlays/oauth2-proxy``; vendored unchanged in ``schemas/kubeflow/sidecar-prune-egress/``).
A Sidecar without ``workloadSelector`` in the root namespace is the default of every namespace that has none of
its own, and its ``egress.hosts`` are the only services (and VirtualServices) a sidecar loads: ``./*`` (the
workload's own namespace), ``kubeflow/*``, ``kubeflow-system/*``, ``knative-serving/*``, ``knative-eventing/*``,
``istio-system/*``. A request to anything else leaves through Envoy's PassthroughCluster, in plain text, so the
destination's sidecar sees no peer identity (kubeflow/manifests ``common/istio/README.md`` "Istio Sidecar
Egress": "RBAC: Access Denied" where AuthorizationPolicies "use MTLS required rules"). The serving namespace's
policies (``kfrelease.k8s.render.mesh``) admit callers by principal or namespace only, so on such a cluster:

- the Knative activator (in the request path of a Serverless predictor whenever its spare capacity is below
  ``target-burst-capacity``) and the autoscaler (it scrapes the queue-proxy's 9090) reach ``kfrelease-serving``
  without their identity: every Serverless request is refused;
- a ``mesh_clients`` namespace's sidecars never load the release VirtualService (namespace ``kfrelease-serving``),
  so its clients' requests to the release host go nowhere, and a predictor called directly gets them in plain
  text (403).

Istio picks one Sidecar per workload (https://istio.io/latest/docs/reference/config/networking/sidecar/): one
whose ``workloadSelector`` selects the pod, else the namespace's selector-less one, else the root namespace's.
So this module renders, from the vendored default's own list plus ``<serving namespace>/*``:

- ``knative_sidecars``: ``knative-serving/kfrelease-activator`` (``workloadSelector`` ``app: activator``) and
  ``knative-serving/kfrelease-autoscaler`` (``app: autoscaler``): the pod labels of Knative's Deployments
  (kubeflow/manifests ``common/knative/knative-serving/base/upstream/serving-core.yaml`` at v1.11.0 and 26.03;
  every Deployment there gets a sidecar: ``patches/sidecar-injection.yaml``). Part of the kustomize base.
- ``mesh_client_sidecars``: a selector-less ``default`` Sidecar in each ``mesh_clients`` namespace (Istio's
  recommended name of a namespace default). Not part of the overlay: those namespaces are the clients', so they
  go to ``manifests/eks/<env>/mesh-clients.yaml``, applied once each namespace exists. A namespace that has a
  Sidecar of its own (any, selector or not) must add ``<serving namespace>/*`` to it instead.

A Kubeflow release without the pruning Sidecar (v1.10.x) leaves Istio's default, every namespace (``*/*``); the
rendered Sidecars then keep ``*/*`` and change nothing.
"""

from __future__ import annotations

import copy
from functools import cache

import yaml

from kfrelease.k8s.environments import Environment
from kfrelease.k8s.render.platform import PART_OF
from kfrelease.k8s.versions import kubeflow_ref
from kfrelease.resources import resource_dir

NETWORKING_API = "networking.istio.io/v1"
KNATIVE_NS = "knative-serving"
#: Knative's pods whose requests reach the predictors (``serving-core.yaml``: Deployment ``activator`` with pod
#: labels ``app: activator``, ``role: activator``; ``autoscaler`` with ``app: autoscaler``).
KNATIVE_CALLERS = {"kfrelease-activator": {"app": "activator"}, "kfrelease-autoscaler": {"app": "autoscaler"}}
#: Istio's egress scope without any Sidecar: every namespace.
ISTIO_DEFAULT_EGRESS = ("*/*",)
#: The mesh-wide default's ``metadata`` in kubeflow/manifests (the root namespace of Kubeflow's Istio).
KUBEFLOW_DEFAULT = ("istio-system", "default")


@cache
def _vendored(ref: str) -> tuple[dict, ...]:
    path = resource_dir("schemas") / "kubeflow" / "sidecar-prune-egress" / f"{ref}.yaml"
    if not path.is_file():
        return ()
    return tuple(d for d in yaml.safe_load_all(path.read_text()) if d)


def kubeflow_sidecars(kubeflow_version: str) -> list[dict]:
    """The Sidecars Kubeflow's own install applies at that release (none before v1.11.0)."""
    return copy.deepcopy(list(_vendored(kubeflow_ref(kubeflow_version))))


def default_egress_hosts(kubeflow_version: str) -> list[str]:
    """The egress hosts of every sidecar without a Sidecar of its own namespace or selector, at that Kubeflow
    release: the list of Kubeflow's ``istio-system/default``, or Istio's ``*/*`` when it has none."""
    for d in kubeflow_sidecars(kubeflow_version):
        meta = d["metadata"]
        if (meta["namespace"], meta["name"]) == KUBEFLOW_DEFAULT and not d["spec"].get("workloadSelector"):
            (listener,) = d["spec"]["egress"]
            return list(listener["hosts"])
    return list(ISTIO_DEFAULT_EGRESS)


def egress_hosts(kubeflow_version: str, serving_ns: str) -> list[str]:
    """Kubeflow's default list plus the serving namespace (unless the list already reaches every namespace)."""
    hosts = default_egress_hosts(kubeflow_version)
    return hosts if "*/*" in hosts else [*hosts, f"{serving_ns}/*"]


def _sidecar(name: str, ns: str, hosts: list[str], selector: dict | None = None) -> dict:
    spec: dict = {"egress": [{"hosts": hosts}]}
    if selector:
        spec = {"workloadSelector": {"labels": dict(selector)}, **spec}
    return {
        "apiVersion": NETWORKING_API,
        "kind": "Sidecar",
        "metadata": {"name": name, "namespace": ns, "labels": dict(PART_OF)},
        "spec": spec,
    }


def knative_sidecars(env: Environment, serving_ns: str) -> list[dict]:
    """The activator's and the autoscaler's Sidecars (see the module docstring)."""
    hosts = egress_hosts(env.kubeflow_version, serving_ns)
    return [_sidecar(name, KNATIVE_NS, hosts, selector) for name, selector in KNATIVE_CALLERS.items()]


def mesh_client_sidecars(env: Environment, serving_ns: str) -> list[dict]:
    """A namespace-default Sidecar per ``mesh_clients`` namespace (see the module docstring)."""
    hosts = egress_hosts(env.kubeflow_version, serving_ns)
    return [_sidecar("default", ns, hosts) for ns in sorted(env.mesh_clients)]
