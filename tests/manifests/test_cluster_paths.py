"""Blocking findings of the EKS review (issue 24), each on what an overlay builds to (`kubectl kustomize`)
and the one-time bootstrap: the paths a request, a mirrored copy and a release step take on the cluster."""

from __future__ import annotations

import re

import pytest
import yaml

from kfrelease.k8s.environments import MANIFESTS_DIR, RELEASE_NS
from kfrelease.k8s.policy.istio import Request, Workload, decide, upstream_policies
from kfrelease.k8s.render.inference import production_name, staging_name
from kfrelease.k8s.render.mesh import INGRESS_GATEWAY, PREDICTOR_SELECTOR, principal
from kfrelease.k8s.render.platform import RELEASE_DRIVER_STEP, STEP_LABEL


def bootstrap(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((MANIFESTS_DIR / "bootstrap" / name / "release.yaml").read_text()) if d]


def ingress_admits(rule_host: str, host: str) -> bool:
    """networking.k8s.io/v1 IngressRule.host: exact, or ``*.`` + suffix where ``*`` is exactly one DNS label."""
    if rule_host.startswith("*."):
        return re.fullmatch(r"[^.]+" + re.escape(rule_host[1:]), host) is not None
    return rule_host == host


def test_the_alb_ingress_accepts_every_model_host_the_virtualservice_serves(built):
    """Finding: the ALB Ingress had only ``kubeflow_host``, so every request for a model host got the ALB's
    404 and the shadow never saw traffic. Each external host of the release's VirtualService must match a
    rule; a host of no rule still gets the 404."""
    for name, docs in built.items():
        ingress = next(d for d in docs if d["kind"] == "Ingress")
        rules = [r["host"] for r in ingress["spec"]["rules"]]
        vs = next(d for d in bootstrap(name) if d["kind"] == "VirtualService")
        external = [h for h in vs["spec"]["hosts"] if not h.endswith(".svc.cluster.local")]
        assert external, vs["spec"]["hosts"]
        for host in external:
            assert any(ingress_admits(r, host) for r in rules), f"{name}: ALB answers 404 for {host} ({rules})"
        assert not any(ingress_admits(r, "a.b.c.unrelated.example.org") for r in rules)
        assert ingress["metadata"]["annotations"]["alb.ingress.kubernetes.io/certificate-arn"]


def test_a_mirrored_copy_from_an_in_mesh_clients_sidecar_passes_the_rendered_policies(built, sources):
    """Finding: an in-mesh client's own sidecar applies the VirtualService (gateway ``mesh``) and sends the
    mirrored copy with the client's identity, but the predictors trusted only the ingress gateway, so every
    copy got Envoy's 403 and the shadow gate saw 0 pairs. The copy now passes; a pod of a namespace that is
    not a declared client is still refused."""
    spec = sources.spec
    ns = spec.serving.namespace
    predict = f"/v1/models/{spec.model}:predict"
    for name, docs in built.items():
        env = sources.envs.environments[name]
        assert env.mesh_clients, "the example environments declare an in-mesh client namespace"
        policies = upstream_policies() + [d for d in docs if d["kind"] == "AuthorizationPolicy"]
        shadow = Workload(ns, {**PREDICTOR_SELECTOR, "serving.kserve.io/inferenceservice": staging_name(spec)})
        stable = Workload(ns, {**PREDICTOR_SELECTOR, "serving.kserve.io/inferenceservice": production_name(spec)})
        for client in env.mesh_clients:
            sidecar = principal(client, "default")
            for port in (8080, 9081):  # model server, KServe agent (logger on)
                ok, why = decide(policies, Request(shadow, port, predict, "POST", sidecar))
                assert ok, f"{name}: mirrored copy from {sidecar} refused: {why}"
                assert decide(policies, Request(stable, port, predict, "POST", sidecar))[0]
        assert decide(policies, Request(shadow, 8080, predict, "POST", INGRESS_GATEWAY))[0]
        outsider = principal("kfrelease-science", "default-editor")
        assert not decide(policies, Request(shadow, 8080, predict, "POST", outsider))[0]


@pytest.mark.parametrize("env_name", ["staging", "production"])
def test_release_steps_are_told_the_clusters_kserve_version_and_model_domain(built, sources, env_name, monkeypatch):
    """Finding: no pod was told ``KFRELEASE_KSERVE_VERSION``, so on KServe 0.14/0.15 the driver rendered
    ``deploymentMode: Standard`` (unknown there: Serverless) and the shadow was refused. The release steps'
    PodDefault carries the environment's version and model domain, and the driver built from that env renders
    what the bootstrap rendered: its first move patches no host of the VirtualService."""
    from kfrelease.k8s.driver.kserve import InMemoryObjects
    from kfrelease.release.pipeline_steps import driver_for
    from kfrelease.rollout.traffic import TrafficState

    env = sources.envs.environments[env_name]
    docs = built[env_name]
    pod_default = next(
        d
        for d in docs
        if d["kind"] == "PodDefault"
        and (d["spec"]["selector"].get("matchLabels") or {}).get(STEP_LABEL) == RELEASE_DRIVER_STEP
    )
    assert pod_default["metadata"]["namespace"] == RELEASE_NS
    values = {e["name"]: e["value"] for e in pod_default["spec"]["env"]}
    assert values["KFRELEASE_KSERVE_VERSION"] == env.kserve_version
    assert values["KFRELEASE_SERVING_DOMAIN"] == env.model_domain
    for k, v in values.items():  # the step's pod, as the PodDefault webhook leaves it
        monkeypatch.setenv(k, v)
    import kfrelease.registry
    from kfrelease.release import pipeline_steps

    monkeypatch.setattr(pipeline_steps, "KubernetesObjects", lambda: InMemoryObjects(bootstrap(env_name)))
    monkeypatch.setattr(kfrelease.registry.ModelRegistry, "list", lambda self, model: [])
    monkeypatch.setattr(pipeline_steps, "store_for", lambda *a, **k: None)
    driver = driver_for(None, sources.spec, "V9.9.9")
    assert driver.kserve_version == env.kserve_version and driver.domain == env.model_domain
    isvc = next(d for d in bootstrap(env_name) if d["kind"] == "InferenceService")
    uri = isvc["spec"]["predictor"]["model"]["storageUri"]
    driver.storage_uris = {env.production_version: uri, "V9.9.9": "oci://x/y@sha256:" + "a" * 64}
    plan = driver._plan(TrafficState(primary=env.production_version, shadow="V9.9.9", mirror_percent=100))
    vs_patches = [p for p in plan["patch"] if p["kind"] == "VirtualService"]
    assert all("hosts" not in (p["patch"].get("spec") or {}) for p in vs_patches), vs_patches


def _tasks(package: dict) -> dict[str, dict]:
    """Task name -> task of every DAG of a compiled pipeline (``root`` and the components' DAGs)."""
    out = {}
    for comp in [package["root"], *package["components"].values()]:
        out.update((comp.get("dag") or {}).get("tasks") or {})
    return out


def _compile(pipeline, tmp_path) -> dict:
    from kfp import compiler

    path = tmp_path / "p.yaml"
    compiler.Compiler().compile(pipeline, str(path))
    return list(yaml.safe_load_all(path.read_text()))


def test_release_steps_have_resources_retries_no_cache_and_are_not_evicted_by_the_autoscaler(tmp_path):
    """Finding: the release steps had no resources, no retries and could be evicted by a scale-down in the
    middle of a canary step; monitoring steps were cached, so a scheduled run replayed an old window."""
    from kfrelease.pipelines.monitoring_pipeline import monitoring_pipeline
    from kfrelease.pipelines.release_pipeline import SAFE_TO_EVICT, release_pipeline

    package, platform = _compile(release_pipeline, tmp_path)[:2]
    tasks = _tasks(package)
    release = {k: v for k, v in tasks.items() if not k.startswith("condition")}
    # the rollout step of each branch: after a passed shadow gate, a tag bump with other inputs, a first model
    assert set(release) == {"release-preflight", "shadow-gate", "rollout", "rollout-2", "rollout-3"}, set(release)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    containers = package["deploymentSpec"]["executors"]
    for name, task in release.items():
        assert task["cachingOptions"] == {}, name  # enableCache false is the empty message
        assert task["retryPolicy"]["maxRetryCount"] >= 1, name
        exe = task["componentRef"]["name"].replace("comp-", "exec-")
        assert containers[exe]["container"]["resources"]["resourceCpuLimit"], name
        assert executors[exe]["podMetadata"]["annotations"][SAFE_TO_EVICT] == "false", name
        assert executors[exe]["podMetadata"]["labels"][STEP_LABEL] == RELEASE_DRIVER_STEP, name
    monitoring = _compile(monitoring_pipeline, tmp_path)[0]
    for name, task in _tasks(monitoring).items():
        if not name.startswith(("condition", "for-loop")):
            assert task["cachingOptions"] == {}, name


def test_kubeflow_manifests_are_fetched_at_the_tags_upstream_has(sources):
    """Finding: Kubeflow 26.03 was rendered and documented as ``ref=v26.03``; kubeflow/manifests tags its
    calendar releases without the ``v`` (tags ``v1.11.0`` and ``26.03``)."""
    import dataclasses

    from kfrelease.k8s.render.kubeflow import dex_kustomization, oauth2_proxy_kustomization
    from kfrelease.k8s.versions import KUBEFLOW_KSERVE, kubeflow_ref

    assert kubeflow_ref("26.03") == "26.03" and kubeflow_ref("1.11.0") == "v1.11.0"
    assert "26.03" in KUBEFLOW_KSERVE
    env = dataclasses.replace(sources.envs.environments["staging"], kubeflow_version="26.03", kserve_version="0.16.0")
    for doc in (oauth2_proxy_kustomization(env), dex_kustomization(env)):
        assert doc["resources"][0].endswith("?ref=26.03"), doc["resources"]


def _upstream_stand_in(root):
    """The objects of kubeflow/manifests (26.03) our kustomizations replace, with upstream's published values:
    ``common/oauth2-proxy/base/kustomization.yaml`` (secretGenerator ``oauth2-proxy``),
    ``common/oauth2-proxy/components/istio-m2m/requestauthentication.yaml`` (``m2m-token-issuer``, no
    audiences), ``common/dex/base/kustomization.yaml`` + ``secret_params.env`` (``dex-oidc-client``) and
    ``dex-passwords.yaml`` (the hash of ``12341234``). Written here, not vendored: the shapes are what count."""
    oauth = root / "oauth2-proxy"
    oauth.mkdir(parents=True)
    (oauth / "ra.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "security.istio.io/v1beta1",
                "kind": "RequestAuthentication",
                "metadata": {"name": "m2m-token-issuer", "namespace": "istio-system"},
                "spec": {"jwtRules": [{"issuer": "PATCH_ME", "forwardOriginalToken": True}]},
            }
        )
    )
    (oauth / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": ["ra.yaml"],
                "secretGenerator": [
                    {
                        "name": "oauth2-proxy",
                        "namespace": "oauth2-proxy",
                        "literals": [
                            "client-id=kubeflow-oidc-authservice",
                            "client-secret=pUBnBOY80SnXgjibTYM9ZWNzY2xreNGQok",
                            "cookie-secret=7d16fee92f8d11b8940b081b3f8b8acb",
                        ],
                    }
                ],
            }
        )
    )
    dex = root / "dex"
    dex.mkdir()
    (dex / "passwords.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "dex-passwords", "namespace": "auth"},
                "stringData": {"DEX_USER_PASSWORD": "$2y$12$4K/VkmDd1q1Orb3xAt82zu8gk7Ad6ReFR4LCP9UeYE90NLiN9Df72"},
            }
        )
    )
    (dex / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": ["passwords.yaml"],
                "generatorOptions": {"disableNameSuffixHash": True},
                "secretGenerator": [
                    {
                        "name": "dex-oidc-client",
                        "namespace": "auth",
                        "literals": [
                            "OIDC_CLIENT_ID=kubeflow-oidc-authservice",
                            "OIDC_CLIENT_SECRET=pUBnBOY80SnXgjibTYM9ZWNzY2xreNGQok",
                        ],
                    }
                ],
            }
        )
    )
    return oauth, dex


def test_the_public_endpoint_keeps_none_of_kubeflows_published_credentials(tmp_path, sources):
    """Finding: the internet-facing ALB kept Dex's default user and password and oauth2-proxy re-applied
    Kubeflow's published client and cookie secrets. The rendered kustomizations replace all three from the
    environment's own files (built here with the real ``kubectl kustomize`` over a stand-in of upstream's
    objects), a missing file fails the build instead of falling back, and the m2m RequestAuthentication
    accepts only tokens minted for KFP."""
    import base64
    import shutil as sh
    import subprocess

    from kfrelease.k8s.render.kubeflow import (
        DEX_CLIENT_SECRET_FILE,
        DEX_PASSWORDS_FILE,
        OAUTH2_PROXY_SECRET_FILE,
        dex_kustomization,
        oauth2_proxy_kustomization,
    )

    env = sources.envs.environments["staging"]
    upstream_oauth, upstream_dex = _upstream_stand_in(tmp_path / "upstream")
    built = {}
    for name, doc, upstream, files in (
        (
            "oauth2-proxy",
            oauth2_proxy_kustomization(env),
            upstream_oauth,
            {
                OAUTH2_PROXY_SECRET_FILE: "client-id=kubeflow-oidc-authservice\nclient-secret=ours-0123\ncookie-secret="
                + "c" * 32
                + "\n"
            },
        ),
        (
            "dex",
            dex_kustomization(env),
            upstream_dex,
            {
                DEX_CLIENT_SECRET_FILE: "OIDC_CLIENT_ID=kubeflow-oidc-authservice\nOIDC_CLIENT_SECRET=ours-0123\n",
                DEX_PASSWORDS_FILE: yaml.safe_dump(
                    {
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "metadata": {"name": "dex-passwords", "namespace": "auth"},
                        "stringData": {"DEX_USER_PASSWORD": "$2y$12$ours"},
                    }
                ),
            },
        ),
    ):
        d = tmp_path / name
        d.mkdir()
        (d / "kustomization.yaml").write_text(yaml.safe_dump({**doc, "resources": [f"../upstream/{upstream.name}"]}))
        proc = subprocess.run(
            [sh.which("kubectl"), "kustomize", str(d)], check=False, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode != 0 and "secret" in proc.stderr.lower(), "a missing secret file must fail the build"
        for fname, text in files.items():
            (d / fname).write_text(text)
        proc = subprocess.run(
            [sh.which("kubectl"), "kustomize", str(d)], check=False, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        built[name] = {
            (
                x["kind"],
                x["metadata"]["name"].rsplit("-", 1)[0]
                if x["kind"] == "Secret" and name == "oauth2-proxy"
                else x["metadata"]["name"],
            ): x
            for x in yaml.safe_load_all(proc.stdout)
        }
    text = yaml.safe_dump(built)
    for published in (
        "pUBnBOY80SnXgjibTYM9ZWNzY2xreNGQok",
        "7d16fee92f8d11b8940b081b3f8b8acb",
        "4K/VkmDd1q1Orb3xAt82zu8gk7Ad6ReFR4LCP9UeYE90NLiN9Df72",
    ):
        encoded = base64.b64encode(published.encode()).decode()
        assert published not in text and encoded not in text, published
    ra = built["oauth2-proxy"][("RequestAuthentication", "m2m-token-issuer")]
    assert ra["spec"]["jwtRules"][0]["audiences"] == ["pipelines.kubeflow.org"]
    assert ra["spec"]["jwtRules"][0]["issuer"] == env.oidc_issuer
    assert built["dex"][("Secret", "dex-passwords")]["stringData"]["DEX_USER_PASSWORD"] == "$2y$12$ours"
