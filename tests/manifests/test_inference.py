"""Cluster rendering: InferenceServices and the VirtualService of each traffic state validate against the
vendored KServe and Istio CRD schemas and the Kubernetes schemas, and a traffic state becomes a patch."""

from __future__ import annotations

import pytest

from kfrelease.errors import ConfigError
from kfrelease.k8s.driver.patches import apply_traffic, traffic_patches
from kfrelease.k8s.policy.schemas import SchemaValidationError, crd_index, validate
from kfrelease.k8s.render.inference import (
    named_route,
    render_inference_services,
    render_release,
    render_serving_runtime,
    render_virtual_service,
)
from kfrelease.rollout.spec import RolloutSpecError, load_rollout_spec
from kfrelease.rollout.traffic import TrafficState


def predict_route(vs: dict) -> dict:
    return named_route(vs, "predict")


V1, V2 = "V1.1.0", "V1.2.0"
URIS = {
    V1: "oci://123456789012.dkr.ecr.us-east-1.amazonaws.com/kfrelease/diabetes-progression@sha256:" + "a" * 64,
    V2: "s3://models/artifacts/diabetes-progression/V1.2.0/",
}
SERVERLESS = load_rollout_spec(model="diabetes-progression")
RAW = SERVERLESS.with_changes(serving={"deployment_mode": "RawDeployment"})
STATES = [
    TrafficState(primary=V1),
    TrafficState(primary=V1, shadow=V2, mirror_percent=100),
    TrafficState(primary=V1, shadow=V2, mirror_percent=25),
    TrafficState(primary=V1, canary=V2, canary_weight=20),
    TrafficState(primary=V1, canary=V2, canary_weight=100),
    TrafficState(primary=V1, canary=V2, canary_weight=0),
    TrafficState(primary=V2),
]


def _by_name(docs):
    return {d["metadata"]["name"]: d for d in docs}


@pytest.mark.parametrize("spec", [SERVERLESS, RAW], ids=["serverless", "raw"])
@pytest.mark.parametrize(
    "state",
    STATES,
    ids=lambda s: f"{s.primary}-{s.shadow}-{s.canary}@{s.canary_weight}",
)
def test_every_rendered_object_validates_against_the_crd_schemas(spec, state):
    docs = render_release(spec, state, URIS) + [render_serving_runtime(spec, "123.dkr.ecr/kfrelease:0.1.0")]
    for doc in docs:  # a canary's logged Service is core v1: the Kubernetes schema
        assert validate(doc).startswith("Kubernetes" if doc["kind"] == "Service" else "CRD schema"), doc["kind"]


def test_serverless_canary_uses_canary_traffic_percent_on_the_newest_revision():
    isvc = _by_name(render_inference_services(SERVERLESS, TrafficState(primary=V1, canary=V2, canary_weight=20), URIS))
    pred = isvc["diabetes-progression"]["spec"]["predictor"]
    assert pred["canaryTrafficPercent"] == 20
    assert pred["model"]["storageUri"] == URIS[V2]  # the spec describes the newest revision
    assert pred["logger"] == {
        "mode": "all",
        "url": "http://kfrelease-logsink.kfrelease-serving.svc.cluster.local/",
    }
    assert pred["minReplicas"] == 1 and pred["maxReplicas"] == 4 and pred["scaleMetric"] == "concurrency"
    assert isvc["diabetes-progression"]["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert "canary" not in isvc["diabetes-progression"]["spec"]
    rollback = render_inference_services(SERVERLESS, TrafficState(primary=V1, canary=V2, canary_weight=0), URIS)
    assert rollback[0]["spec"]["predictor"]["canaryTrafficPercent"] == 0  # KServe's instant rollback
    promoted = render_inference_services(SERVERLESS, TrafficState(primary=V2), URIS)[0]["spec"]["predictor"]
    assert "canaryTrafficPercent" not in promoted and promoted["model"]["storageUri"] == URIS[V2]


def test_standard_mode_canary_uses_the_canary_list_with_fixed_replicas():
    isvc = render_inference_services(RAW, TrafficState(primary=V1, canary=V2, canary_weight=20), URIS)[0]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert isvc["spec"]["predictor"]["name"] == "v1-1-0" and "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    (canary,) = isvc["spec"]["canary"]
    assert canary["trafficPercent"] == 20 and canary["predictor"]["name"] == "v1-2-0"
    assert not {"maxReplicas", "scaleTarget", "scaleMetric", "autoScaling"} & set(canary["predictor"])
    vs = render_virtual_service(RAW, TrafficState(primary=V1, canary=V2, canary_weight=20))
    weights = [(r["destination"]["host"].split(".")[0], r["weight"]) for r in predict_route(vs)["route"]]
    # KServe 0.20 names every named predictor's Service <isvc>-<predictor name>-predictor, the stable one too
    # (kserve/kserve pkg/constants/constants.go PredictorServiceName at v0.20.0); the canary's share goes to the
    # Service in front of its KServe agent (test_a_standard_mode_canarys_share_reaches_its_kserve_agent)
    assert weights == [
        ("diabetes-progression-v1-1-0-predictor", 80),
        ("diabetes-progression-v1-2-0-logged", 20),
    ]
    # plain Services: no Host rewrite (Knative needs one); the KServe agents' CloudEvent id is the request id
    assert predict_route(vs)["headers"] == {"request": {"set": {"ce-id": "%REQ(x-request-id)%"}}}
    promoted = predict_route(render_virtual_service(RAW, TrafficState(primary=V2)))["route"]
    assert [r["destination"]["host"].split(".")[0] for r in promoted] == ["diabetes-progression-v1-2-0-predictor"]


def test_a_standard_mode_canarys_share_reaches_its_kserve_agent():
    """KServe 0.20 builds a ``spec.canary`` entry's Service with no logger in its ComponentExtensionSpec
    (kserve/kserve@v0.20.0 ``components/predictor.go`` ``reconcileCanaryDeployments`` 937-941), so
    ``createDefaultSvc`` (``reconcilers/service/service_reconciler.go`` 104-175) sends its port 80 to the model
    server's 8080, past the agent: the canary's requests would never be logged. The release renders a Service of
    its own selecting the canary Deployment's pods (KServe's ``app: isvc.<service>`` pod label) on the agent's
    9081, and routes the canary's share there."""
    from kfrelease.k8s.render.inference import LOGGED_CANARY_LABEL

    state = TrafficState(primary=V1, canary=V2, canary_weight=20)
    docs = render_release(RAW, state, URIS)
    (svc,) = [d for d in docs if d["kind"] == "Service"]
    assert svc["metadata"]["name"] == "diabetes-progression-v1-2-0-logged"
    assert svc["spec"]["selector"] == {"app": "isvc.diabetes-progression-v1-2-0-predictor"}
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 9081}]
    labels = svc["metadata"]["labels"]
    # KServe's orphan clean-up deletes every Service labelled with both (reconcileCanaryDeployments)
    assert not {"serving.kserve.io/inferenceservice", "component"} <= set(labels)
    assert labels[LOGGED_CANARY_LABEL] == "true" and labels["app.kubernetes.io/part-of"] == "kfrelease"
    (canary_dest,) = [
        r["destination"]
        for r in predict_route(docs[-1])["route"]
        if r["destination"]["host"].startswith(svc["metadata"]["name"])
    ]
    assert canary_dest["host"] == f"{svc['metadata']['name']}.{RAW.serving.namespace}.svc.cluster.local"
    # no canary, or Serverless (a Knative revision of the same Service, logged): no such Service
    assert not [d for d in render_release(RAW, TrafficState(primary=V2), URIS) if d["kind"] == "Service"]
    assert not [d for d in render_release(SERVERLESS, state, URIS) if d["kind"] == "Service"]


def test_predictor_service_names_follow_the_kserve_version():
    from kfrelease.k8s.render.inference import predictor_service

    assert predictor_service("m", "v1-1-0", "0.20.0") == "m-v1-1-0-predictor"
    assert predictor_service("m", "v1-1-0", "0.15.2") == "m-predictor"  # v0.15.2: PredictorServiceName(name)
    assert predictor_service("m", None, "0.20.0") == "m-predictor"
    vs = render_virtual_service(RAW, TrafficState(primary=V1), kserve_version="0.15.2")
    assert predict_route(vs)["route"][0]["destination"]["host"].startswith("diabetes-progression-predictor.")


@pytest.mark.parametrize("spec", [SERVERLESS, RAW], ids=["serverless", "raw"])
def test_the_release_hosts_are_the_releases_own_and_overlap_no_kserve_or_knative_host(spec):
    """Clients call the release hosts (``<model>.<domain>``, ``<model>-release.<ns>.svc.cluster.local``), which
    go through the mirroring route; none is a host KServe's top-level VirtualService or net-istio's mesh
    VirtualService of the predictor's Knative Service holds (two VirtualServices on one host and gateway have
    an undefined route order), so the cluster needs no cluster-wide ``disableIstioVirtualHost``."""
    from kfrelease.k8s.render.inference import client_hosts, release_service_name, render_release_service

    state = TrafficState(primary=V1, shadow=V2, mirror_percent=100)
    vs = render_virtual_service(spec, state, domain="models.example.org")
    ns, isvc = spec.serving.namespace, "diabetes-progression"
    assert (
        vs["spec"]["hosts"]
        == client_hosts(spec, "models.example.org")
        == [
            f"{isvc}.models.example.org",
            f"{isvc}-release.{ns}.svc.cluster.local",
        ]
    )
    kserve_and_knative = set()
    for name in (isvc, "diabetes-progression-predictor", "diabetes-progression-v1-1-0-predictor"):
        kserve_and_knative |= {
            f"{name}.{ns}.models.example.org",
            f"{name}-{ns}.models.example.org",
            f"{name}.{ns}.svc.cluster.local",
            f"{name}.{ns}.svc",
            f"{name}.{ns}",
        }
    assert not kserve_and_knative & set(vs["spec"]["hosts"])
    service = render_release_service(spec)
    assert service["metadata"]["name"] == release_service_name(spec) and "selector" not in service["spec"]
    assert validate(service)
    (predict,) = [h for h in vs["spec"]["http"] if h["name"] == "predict"]
    assert predict["mirror"]["host"].startswith("diabetes-progression-staging-predictor.")
    assert validate(vs).startswith("CRD schema")


def test_shadow_is_a_staging_service_and_an_istio_mirror():
    state = TrafficState(primary=V1, shadow=V2, mirror_percent=25)
    isvcs = _by_name(render_inference_services(SERVERLESS, state, URIS))
    staging = isvcs["diabetes-progression-staging"]
    assert staging["spec"]["predictor"]["model"]["storageUri"] == URIS[V2]
    assert staging["metadata"]["labels"]["kfrelease.io/stage"] == "staging"
    # a plain Service answers the mirrored request whatever its Host; a Knative route would not
    assert staging["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    http = predict_route(render_virtual_service(SERVERLESS, state))
    assert http["mirror"]["host"] == "diabetes-progression-staging-predictor.kfrelease-serving.svc.cluster.local"
    assert http["mirrorPercentage"] == {"value": 25.0}
    assert "mirror" not in predict_route(render_virtual_service(SERVERLESS, TrafficState(primary=V1)))


def test_bad_storage_uri_state_or_spec_is_refused():
    with pytest.raises(ConfigError, match="must start with oci:// .* or s3://"):
        render_inference_services(SERVERLESS, TrafficState(primary=V1), {V1: "http://example.com/model"})
    with pytest.raises(ConfigError, match="no storage URI for model version V9"):
        render_inference_services(SERVERLESS, TrafficState(primary="V9"), URIS)
    with pytest.raises(RolloutSpecError, match="no version"):
        render_inference_services(SERVERLESS, TrafficState(primary=None), URIS)
    with pytest.raises(RolloutSpecError, match="outside 0..100"):
        TrafficState(primary=V1, canary=V2, canary_weight=120)


def test_validation_catches_typos_wrong_types_and_unknown_kinds():
    isvc = render_inference_services(SERVERLESS, TrafficState(primary=V1, canary=V2, canary_weight=20), URIS)[0]
    typo = {
        **isvc,
        "spec": {"predictor": {**isvc["spec"]["predictor"], "canaryTraficPercent": 20}},
    }
    with pytest.raises(SchemaValidationError, match="canaryTraficPercent"):
        validate(typo)
    wrong_type = {
        **isvc,
        "spec": {"predictor": {**isvc["spec"]["predictor"], "canaryTrafficPercent": "20"}},
    }
    with pytest.raises(
        SchemaValidationError,
        match="canaryTrafficPercent: '20' is not of type 'integer'",
    ):
        validate(wrong_type)
    vs = render_virtual_service(SERVERLESS, TrafficState(primary=V1, shadow=V2))
    predict_route(vs)["mirrorPercentage"] = {"value": "all"}
    with pytest.raises(SchemaValidationError, match="mirrorPercentage"):
        validate(vs)
    with pytest.raises(SchemaValidationError, match="not a DNS-1123 name"):
        validate({**isvc, "metadata": {"name": "Diabetes_Model"}})
    with pytest.raises(SchemaValidationError, match="label kfrelease.io/version='V1.1.0!'"):
        validate({**isvc, "metadata": {**isvc["metadata"], "labels": {"kfrelease.io/version": "V1.1.0!"}}})
    with pytest.raises(SchemaValidationError, match="ObjectMeta"):
        validate({**isvc, "metadata": {**isvc["metadata"], "annotations": {"a": 1}}})
    with pytest.raises(SchemaValidationError, match="no schema for example.com/v1 Widget"):
        validate(
            {
                "apiVersion": "example.com/v1",
                "kind": "Widget",
                "metadata": {"name": "w"},
            }
        )


def test_built_in_kinds_are_checked_with_the_kubernetes_schemas():
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kfrelease-logsink"},
        "spec": {
            "selector": {"app": "logsink"},
            "ports": [{"port": 80, "targetPort": 8090}],
        },
    }
    assert validate(svc).startswith("Kubernetes")
    svc["spec"]["ports"][0]["port"] = "eighty"
    with pytest.raises(SchemaValidationError, match="Kubernetes"):
        validate(svc)


def test_crd_index_is_generic_over_every_vendored_file(tmp_path):
    index = crd_index()
    assert ("serving.kserve.io", "v1beta1", "InferenceService") in index
    assert ("networking.istio.io", "v1", "VirtualService") in index
    (tmp_path / "widgets.yaml").write_text(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: widgets.example.com}\n"
        "spec:\n  group: example.com\n  names: {kind: Widget, plural: widgets}\n  scope: Namespaced\n"
        "  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n"
        "        type: object\n        properties:\n          spec:\n            type: object\n"
        "            properties: {size: {type: integer}}\n"
    )
    doc = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w"},
        "spec": {"size": 3},
    }
    assert validate(doc, crd_dir=tmp_path).startswith("CRD schema")
    with pytest.raises(SchemaValidationError, match="colour"):
        validate({**doc, "spec": {"size": 3, "colour": "red"}}, crd_dir=tmp_path)


@pytest.mark.parametrize("spec", [SERVERLESS, RAW], ids=["serverless", "raw"])
def test_a_traffic_state_becomes_a_merge_patch_of_the_rendered_objects(spec):
    current = render_release(spec, TrafficState(primary=V1, shadow=V2, mirror_percent=100), URIS)
    for target in (
        TrafficState(primary=V1, canary=V2, canary_weight=20),
        TrafficState(primary=V1, canary=V2, canary_weight=50),
        TrafficState(primary=V2),
        TrafficState(primary=V1),  # rolled back
    ):
        plan = traffic_patches(current, spec, target, URIS)
        after = apply_traffic(current, spec, target, URIS)
        assert _by_name(after) == _by_name(render_release(spec, target, URIS))
        for doc in after:
            validate(doc)
        if target.canary and spec is SERVERLESS:
            (isvc_patch,) = [p for p in plan["patch"] if p["kind"] == "InferenceService"]
            assert isvc_patch["patch"]["spec"]["predictor"]["canaryTrafficPercent"] == target.canary_weight
        current = after
    # the staging candidate left with the shadow; nothing else was deleted
    names = {d["metadata"]["name"] for d in current}
    assert names == {"diabetes-progression", "diabetes-progression-release"}


def test_promotion_removes_canary_traffic_percent_with_a_null_in_the_patch():
    current = render_release(SERVERLESS, TrafficState(primary=V1, canary=V2, canary_weight=50), URIS)
    plan = traffic_patches(current, SERVERLESS, TrafficState(primary=V2), URIS)
    (isvc_patch,) = [p for p in plan["patch"] if p["kind"] == "InferenceService"]
    # exactly KServe's promotion: drop the field; nothing else changes, so Knative makes no new revision
    assert isvc_patch["patch"] == {"spec": {"predictor": {"canaryTrafficPercent": None}}}
    assert plan["create"] == [] and plan["delete"] == []


def test_each_predictor_declares_its_versions_model_format_and_the_runtime_serves_every_flavour():
    """modelFormat comes from the registry entry (``artifact.model_format(entry)``, passed as ``model_formats``),
    the ServingRuntime lists every flavour's format, and KServe's matching (``tests.twin.runtime_supports_model``,
    written from kserve/kserve ``pkg/apis/serving/v1beta1/predictor_model.go``) accepts every predictor."""
    from kfrelease.registry.artifact import FLAVOURS, model_format, model_formats
    from tests.twin import runtime_supports_model

    runtime = render_serving_runtime(RAW, "123.dkr.ecr/kfrelease:0.1.0")
    assert [f["name"] for f in runtime["spec"]["supportedModelFormats"]] == model_formats()
    assert set(model_formats()) == {f.model_format for f in FLAVOURS.values()} >= {"sklearn", "onnx"}
    formats = {V1: "sklearn", V2: "onnx"}
    for spec in (SERVERLESS, RAW):
        for state in STATES:
            for isvc in render_inference_services(spec, state, URIS, model_formats=formats):
                preds = [isvc["spec"]["predictor"], *(c["predictor"] for c in isvc["spec"].get("canary") or [])]
                for pred in preds:
                    version = next(e["value"] for e in pred["model"]["env"] if e["name"] == "KFRELEASE_MODEL_VERSION")
                    assert pred["model"]["modelFormat"] == {"name": formats[version]}
                    assert runtime_supports_model(pred["model"], runtime)
    # an entry that names no flavour (written before flavours) is sklearn, so is a version given no entry
    entry_less = render_inference_services(RAW, TrafficState(primary=V1), URIS)[0]["spec"]["predictor"]["model"]
    assert entry_less["modelFormat"] == {"name": model_format({})} == {"name": "sklearn"}
    # the matching can fail: a format the runtime does not list, or an autoSelect-only match without a runtime
    assert not runtime_supports_model({**entry_less, "modelFormat": {"name": "tensorflow"}}, runtime)
    assert not runtime_supports_model({k: v for k, v in entry_less.items() if k != "runtime"}, runtime)
    with pytest.raises(ConfigError, match="V1.2.0 is declared as format 'tflite', which the ServingRuntime"):
        render_inference_services(RAW, TrafficState(primary=V2), URIS, model_formats={V2: "tflite"})


def test_the_replay_route_reaches_production_alone_and_only_through_the_ingress_gateway():
    """The release steps' replay (the canary's labelled check asks production for its answers) is the first
    route, matched on the replay header at the ingress gateway only (an in-mesh client's sidecar never takes
    it), never mirrored, and sent to the host that serves production's version alone: the stable predictor's
    Service in RawDeployment (KServe 0.20 names it ``<isvc>-<predictor>-predictor``), Knative's ``prev`` tag
    in Serverless while a canary holds part of the traffic (kserve/kserve ``ksvc_reconciler.go``)."""
    from kfrelease.k8s.render.inference import DEFAULT_INGRESS_GATEWAY, REPLAY_HEADER, REPLAY_VALUE

    ns = "kfrelease-serving.svc.cluster.local"
    cases = [
        (RAW, TrafficState(primary=V1, canary=V2, canary_weight=20), f"diabetes-progression-v1-1-0-predictor.{ns}"),
        (RAW, TrafficState(primary=V1, shadow=V2), f"diabetes-progression-v1-1-0-predictor.{ns}"),
        (
            SERVERLESS,
            TrafficState(primary=V1, canary=V2, canary_weight=20),
            f"prev-diabetes-progression-predictor.{ns}",
        ),
        (SERVERLESS, TrafficState(primary=V1), f"diabetes-progression-predictor.{ns}"),
    ]
    for spec, state, host in cases:
        vs = render_virtual_service(spec, state)
        validate(vs)
        first = vs["spec"]["http"][0]
        assert first["name"] == "replay" and "mirror" not in first, state
        assert [r["destination"]["host"] for r in first["route"]] == [host], state
        for match in first["match"]:
            assert match["headers"] == {REPLAY_HEADER: {"exact": REPLAY_VALUE}}
            assert match["gateways"] == [DEFAULT_INGRESS_GATEWAY]  # not "mesh"
        assert first["headers"]["request"]["set"].get("Host") == (host if spec is SERVERLESS else None)
    # a provisional first model has no production to ask: no replay route
    provisional = render_virtual_service(RAW, TrafficState(primary=None, canary=V1, canary_weight=100))
    assert [r["name"] for r in provisional["spec"]["http"]] == ["predict", "feedback"]
