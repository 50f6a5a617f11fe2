"""Kubeflow's mesh-wide egress ``Sidecar`` and the Sidecars kfrelease renders over it (review eks2 C1, H2).

Kubeflow v1.11.0 and 26.03 apply ``istio-system/default`` (kubeflow/manifests
``common/istio/istio-install/base/sidecar-prune-egress.yaml``, vendored in ``schemas/kubeflow/sidecar-prune-egress/``):
every sidecar without a Sidecar of its own loads only ``./*``, ``kubeflow/*``, ``kubeflow-system/*``,
``knative-serving/*``, ``knative-eventing/*``, ``istio-system/*``. Anything else is reached in plain text, with no
peer identity (kubeflow/manifests ``common/istio/README.md`` "Istio Sidecar Egress"). These tests decide each
path with the offline evaluator (``kfrelease.k8s.policy.istio``): the egress scope of the caller's Sidecar gives
the principal the predictor's sidecar sees, the rendered AuthorizationPolicies decide on it."""

from __future__ import annotations

import hashlib

import pytest
import yaml

from kfrelease.k8s.environments import MANIFESTS_DIR, Environment
from kfrelease.k8s.policy.istio import (
    Request,
    Workload,
    decide,
    effective_sidecar,
    imports,
    in_scope,
    peer,
    upstream_policies,
    upstream_sidecars,
)
from kfrelease.k8s.policy.schemas import validate
from kfrelease.k8s.render.egress import (
    default_egress_hosts,
    egress_hosts,
    knative_sidecars,
    kubeflow_sidecars,
    mesh_client_sidecars,
)
from kfrelease.k8s.render.inference import production_name
from kfrelease.k8s.render.mesh import KNATIVE_ACTIVATOR, KNATIVE_AUTOSCALER, PREDICTOR_SELECTOR, principal
from kfrelease.resources import resource_dir

from .test_cluster_paths import bootstrap

#: kubeflow/manifests ``common/knative/knative-serving/base/upstream/serving-core.yaml`` (v1.11.0, 26.03): the
#: pod template labels and service accounts of Knative's activator and autoscaler Deployments.
ACTIVATOR = (Workload("knative-serving", {"app": "activator", "role": "activator"}), "activator")
AUTOSCALER = (
    Workload("knative-serving", {"app": "autoscaler", "app.kubernetes.io/component": "autoscaler"}),
    "controller",
)
#: git blob id of ``sidecar-prune-egress.yaml`` at kubeflow/manifests v1.11.0 (854bd3a) and 26.03 (d68ebc7)
UPSTREAM_BLOB = "e323320d833521748b5c577d876579ae08d24f36"


def mesh_clients_file(name: str) -> list[dict]:
    path = MANIFESTS_DIR / "eks" / name / "mesh-clients.yaml"
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def predictor(spec) -> Workload:
    return Workload(
        spec.serving.namespace, {**PREDICTOR_SELECTOR, "serving.kserve.io/inferenceservice": production_name(spec)}
    )


def policies_of(docs: list[dict]) -> list[dict]:
    return upstream_policies() + [d for d in docs if d["kind"] == "AuthorizationPolicy"]


def sidecars_of(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] == "Sidecar"]


def test_the_vendored_egress_sidecars_are_kubeflows_files_unchanged():
    for ref in ("v1.11.0", "26.03"):
        data = (resource_dir("schemas") / "kubeflow" / "sidecar-prune-egress" / f"{ref}.yaml").read_bytes()
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        assert blob == UPSTREAM_BLOB, ref
    assert UPSTREAM_BLOB in (resource_dir("schemas") / "kubeflow" / "SOURCE.md").read_text()
    assert (
        default_egress_hosts("1.11.0")
        == default_egress_hosts("26.03")
        == [
            "./*",
            "kubeflow/*",
            "kubeflow-system/*",
            "knative-serving/*",
            "knative-eventing/*",
            "istio-system/*",
        ]
    )
    assert kubeflow_sidecars("1.10.2") == [] and default_egress_hosts("1.10.2") == ["*/*"]


@pytest.mark.parametrize(
    "caller, port, path", [(ACTIVATOR, 8012, "/v1/models/m:predict"), (AUTOSCALER, 9090, "/metrics")]
)
def test_knatives_activator_and_autoscaler_reach_the_predictors_with_their_identity_only_with_the_rendered_sidecar(
    built, sources, caller, port, path
):
    """C1: under Kubeflow's default alone the activator's sidecar sends to ``kfrelease-serving`` in plain text and
    ``kfrelease-predictors`` refuses every Serverless request (403); the rendered ``knative-serving`` Sidecars
    (selecting the activator's and the autoscaler's pods) add the serving namespace and the request passes."""
    workload, sa = caller
    to = predictor(sources.spec)
    assert principal(workload.namespace, sa) in (KNATIVE_ACTIVATOR, KNATIVE_AUTOSCALER)  # the policies' names
    for name, docs in built.items():
        env = sources.envs.environments[name]
        policies, kubeflow = policies_of(docs), upstream_sidecars(env.kubeflow_version)
        assert kubeflow, f"{name}: Kubeflow {env.kubeflow_version} prunes egress"

        sent, why = peer(kubeflow, workload, sa, to)
        assert sent is None, why
        ok, decided = decide(policies, Request(to, port, path, "GET", sent))
        assert not ok, f"{name}: plain text from {sa} passed: {decided}"

        rendered = kubeflow + sidecars_of(docs)
        assert effective_sidecar(rendered, workload)["metadata"]["namespace"] == "knative-serving"
        sent, why = peer(rendered, workload, sa, to)
        assert sent == principal(workload.namespace, sa), why
        ok, decided = decide(policies, Request(to, port, path, "GET", sent))
        assert ok, f"{name}: {sa} refused with the rendered Sidecar: {decided}"


def test_an_in_mesh_client_loads_the_release_virtualservice_and_keeps_its_identity_only_with_its_sidecar(
    built, sources
):
    """H2: a ``mesh_clients`` namespace under Kubeflow's default never loads the release VirtualService (namespace
    ``kfrelease-serving``: its requests to the release host reach a Service without endpoints) and calls a
    predictor in plain text (403). With the rendered namespace-default Sidecar (``eks/<env>/mesh-clients.yaml``)
    it routes by the VirtualService and the predictor admits it."""
    spec = sources.spec
    to = predictor(spec)
    predict = f"/v1/models/{spec.model}:predict"
    for name, docs in built.items():
        env = sources.envs.environments[name]
        vs = next(d for d in bootstrap(name) if d["kind"] == "VirtualService")
        policies, kubeflow = policies_of(docs), upstream_sidecars(env.kubeflow_version)
        clients = mesh_clients_file(name)
        assert sorted(d["metadata"]["namespace"] for d in clients) == sorted(env.mesh_clients)
        for ns in env.mesh_clients:
            client = Workload(ns, {"app": "checkout"})
            assert not imports(kubeflow, client, vs)[0], f"{name}: {ns} loads the release VirtualService"
            sent, _ = peer(kubeflow, client, "default", to)
            assert sent is None and not decide(policies, Request(to, 8080, predict, "POST", sent))[0]

            rendered = kubeflow + sidecars_of(docs) + clients
            ok, why = imports(rendered, client, vs)
            assert ok, f"{name}: {ns} does not load the release VirtualService: {why}"
            sent, why = peer(rendered, client, "default", to)
            assert sent == principal(ns, "default"), why
            for port in (8080, 9081):
                ok, decided = decide(policies, Request(to, port, predict, "POST", sent))
                assert ok, f"{name}: {ns} refused with its Sidecar: {decided}"
            # what kfrelease renders changes nothing for a namespace that is not a client
            other = Workload("kfrelease-science", {})
            assert not in_scope(rendered, other, spec.serving.namespace)[0]


def test_the_rendered_sidecars_validate_against_istios_crd_and_keep_kubeflows_list(sources):
    for name, env in sources.envs.environments.items():
        for doc in mesh_clients_file(name):
            assert validate(doc).startswith("CRD"), doc
        hosts = default_egress_hosts(env.kubeflow_version)
        for doc in [*knative_sidecars(env, "kfrelease-serving"), *mesh_clients_file(name)]:
            assert doc["apiVersion"] == "networking.istio.io/v1"
            assert doc["spec"]["egress"] == [{"hosts": [*hosts, "kfrelease-serving/*"]}]


def test_on_a_kubeflow_without_egress_pruning_the_rendered_sidecars_keep_every_namespace(sources):
    """Kubeflow v1.10.x applies no mesh-wide Sidecar (Istio's default: every namespace); a Sidecar listing only
    Kubeflow's later namespaces would newly cut the activator off the other namespaces' revisions."""
    env = Environment(**{**sources.envs.environments["staging"].__dict__, "kubeflow_version": "1.10.2"})
    assert egress_hosts(env.kubeflow_version, "kfrelease-serving") == ["*/*"]
    for doc in [*knative_sidecars(env, "kfrelease-serving"), *mesh_client_sidecars(env, "kfrelease-serving")]:
        assert doc["spec"]["egress"] == [{"hosts": ["*/*"]}]
    workload, sa = ACTIVATOR
    assert peer([], workload, sa, predictor(sources.spec))[0] == KNATIVE_ACTIVATOR


def test_istios_choice_of_sidecar_selector_then_namespace_then_root():
    def sidecar(ns, name, hosts, selector=None):
        spec = {"egress": [{"hosts": hosts}]}
        if selector:
            spec["workloadSelector"] = {"labels": selector}
        return {
            "apiVersion": "networking.istio.io/v1",
            "kind": "Sidecar",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }

    root = sidecar("istio-system", "default", ["./*", "istio-system/*"])
    ns_default = sidecar("a", "default", ["b/*"])
    selected = sidecar("a", "web", ["c/svc.c.svc.cluster.local"], {"app": "web"})
    web, api, other = Workload("a", {"app": "web"}), Workload("a", {"app": "api"}), Workload("z", {})
    sidecars = [root, ns_default, selected]
    assert effective_sidecar(sidecars, web) is selected
    assert effective_sidecar(sidecars, api) is ns_default
    assert effective_sidecar(sidecars, other) is root and effective_sidecar([], other) is None
    assert in_scope(sidecars, other, "z")[0]  # "." is the workload's namespace under the root default
    assert not in_scope(sidecars, other, "a")[0]
    assert in_scope(sidecars, api, "b")[0] and not in_scope(sidecars, api, "a")[0]  # its own ns is not implied
    assert in_scope(sidecars, web, "c", "svc.c.svc.cluster.local")[0]
    assert not in_scope(sidecars, web, "c", "other.c.svc.cluster.local")[0]
    with pytest.raises(ValueError, match="not evaluated"):
        in_scope(
            [sidecar("a", "x", ["*/*"]) | {"spec": {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}}], api, "b"
        )
    with pytest.raises(ValueError, match="several"):
        effective_sidecar([selected, sidecar("a", "web2", ["*/*"], {"app": "web"})], web)
