"""Supported Kubeflow/KServe versions: every rendered object validates against the CRD schema and the
admission rules of each supported KServe version (CRDs vendored per release tag under
schemas/crds/kserve/<version>/; rules read from pkg/apis/serving/v1beta1/inference_service_validation.go
and pkg/constants/constants.go at each tag)."""

import copy

import pytest
import yaml

from kfrelease.errors import ConfigError
from kfrelease.k8s.environments import MANIFESTS_DIR, environments_file, load_environments, workspaces_dir
from kfrelease.k8s.policy.schemas import (
    SchemaValidationError,
    crd_index,
    validate,
    vendored_crds,
)
from kfrelease.k8s.render.inference import render_release
from kfrelease.k8s.versions import KSERVE_VERSIONS, KUBEFLOW_KSERVE, kserve_version
from kfrelease.rollout.spec import load_rollout_spec
from kfrelease.rollout.traffic import TrafficState

ISVC = ("serving.kserve.io", "v1beta1", "InferenceService")


def _isvc(mode=None, **predictor):
    doc = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "m", "namespace": "kfrelease-serving", "annotations": {}},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://b/m"}, **predictor}},
    }
    if mode:
        doc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = mode
    return doc


def test_each_supported_version_has_its_own_vendored_crds():
    folders = {p.name for p in (vendored_crds() / "kserve").iterdir() if p.is_dir()}
    assert folders == set(KSERVE_VERSIONS)
    # the schemas really differ per version: spec.canary only from 0.20, logger.storage from 0.16
    for version in KSERVE_VERSIONS:
        spec = crd_index(kserve=version)[ISVC]["properties"]["spec"]["properties"]
        logger = spec["predictor"]["properties"]["logger"]["properties"]
        assert ("canary" in spec) == kserve_version(version).has_canary_list, version
        assert ("storage" in logger) == kserve_version(version).has_logger_storage, version


def test_kubeflow_releases_map_to_the_kserve_they_ship():
    assert KUBEFLOW_KSERVE == {
        "1.10.0": "0.14.1",
        "1.10.1": "0.14.1",
        "1.10.2": "0.15.0",
        "1.11.0": "0.15.2",
        "26.03": "0.16.0",
    }
    assert [v for v in KSERVE_VERSIONS if kserve_version(v).has_standard_mode] == ["0.16.0", "0.20.0"]
    assert [v for v in KSERVE_VERSIONS if kserve_version(v).has_canary_list] == ["0.20.0"]


@pytest.mark.parametrize("version", list(KSERVE_VERSIONS))
def test_every_overlay_document_validates_against_each_supported_kserve(built, version):
    checked = 0
    for name, docs in built.items():
        boot = (MANIFESTS_DIR / "bootstrap" / name / "release.yaml").read_text()
        for doc in list(docs) + [d for d in yaml.safe_load_all(boot) if d]:
            try:
                validate(doc, kserve=version)
            except SchemaValidationError as exc:
                pytest.fail(f"overlay {name} on KServe {version}: {exc}")
            checked += doc["apiVersion"].startswith("serving.kserve.io/")
    assert checked >= 2 * len(built)  # the ServingRuntime and the production InferenceService of each


def test_standard_mode_is_unknown_before_0_16_and_falls_back_to_serverless():
    doc = _isvc("Standard", scaleMetric="cpu", scaleTarget=75)
    for version in ("0.14.1", "0.15.0", "0.15.2"):
        v = kserve_version(version)
        assert v.effective_mode("Standard") == "Serverless"
        with pytest.raises(SchemaValidationError, match="unknown to this version.*falls back to Serverless"):
            validate(doc, kserve=version)
        with pytest.raises(SchemaValidationError, match=r"scaleMetric 'cpu' is rejected.*concurrency, rps"):
            validate(doc, kserve=version)
    assert kserve_version("0.15.2").mode_annotation("RawDeployment") == "RawDeployment"
    for version in ("0.16.0", "0.20.0"):
        assert kserve_version(version).mode_annotation("RawDeployment") == "Standard"
        assert validate(doc, kserve=version).startswith("CRD schema")


def test_serverless_allows_only_knative_metrics_on_every_version():
    for version in KSERVE_VERSIONS:
        assert validate(_isvc("Serverless", scaleMetric="concurrency", scaleTarget=5), kserve=version)
        with pytest.raises(SchemaValidationError, match="scaleMetric 'cpu' is rejected"):
            validate(_isvc("Serverless", scaleMetric="cpu"), kserve=version)
        hpa = _isvc("Serverless", scaleMetric="cpu")
        hpa["metadata"]["annotations"]["autoscaling.knative.dev/class"] = "hpa.autoscaling.knative.dev"
        assert validate(hpa, kserve=version)


def test_0_16_switches_on_standard_so_legacy_raw_deployment_is_validated_as_knative():
    """0.16's validateAutoScalingCompExtension has `case Standard` only: "RawDeployment" with cpu is refused."""
    doc = _isvc("RawDeployment", scaleMetric="cpu")
    assert validate(doc, kserve="0.15.2")
    with pytest.raises(SchemaValidationError, match="scaleMetric 'cpu' is rejected"):
        validate(doc, kserve="0.16.0")


def test_the_canary_list_needs_0_20_standard_mode_and_fixed_replicas():
    doc = _isvc("Standard", name="v1-1-0")
    canary = {
        "trafficPercent": 10,
        "predictor": {"name": "v1-2-0", "model": {**doc["spec"]["predictor"]["model"], "name": "m"}},
    }
    doc["spec"]["canary"] = [canary]
    assert validate(doc, kserve="0.20.0")
    with pytest.raises(SchemaValidationError, match="does not match its CRD schema.*canary"):
        validate(doc, kserve="0.16.0")  # not in the 0.16 schema at all
    serverless = copy.deepcopy(doc)
    serverless["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "Serverless"
    with pytest.raises(SchemaValidationError, match="only accepted with deploymentMode 'Standard'"):
        validate(serverless, kserve="0.20.0")
    scaled = copy.deepcopy(doc)
    scaled["spec"]["canary"][0]["predictor"]["scaleMetric"] = "cpu"
    with pytest.raises(SchemaValidationError, match="must not set scaleMetric"):
        validate(scaled, kserve="0.20.0")


def test_an_unsupported_version_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"KServe '0\.13\.0' is not a supported version; use one of 0\.14\.1"):
        validate(_isvc("Serverless"), kserve="0.13.0")
    text = environments_file(MANIFESTS_DIR).read_text()
    bad = tmp_path / "environments.yaml"
    bad.write_text(text.replace('kserve_version: "0.20.0"', 'kserve_version: "0.13.0"', 1))
    with pytest.raises(ConfigError, match="environment 'staging' kserve_version: KServe '0.13.0'"):
        load_environments(bad)


def test_environments_declare_supported_kubeflow_and_kserve_versions(sources):
    for env in sources.envs.environments.values():
        assert env.kubeflow_version in KUBEFLOW_KSERVE
        assert env.kserve.version == env.kserve_version


V1, V2 = "V1.1.0", "V1.2.0"
STATES = {
    "production only": TrafficState(primary=V1),
    "shadow": TrafficState(primary=V1, shadow=V2, mirror_percent=100),
    "canary 10 %": TrafficState(primary=V1, canary=V2, canary_weight=10),
    "rolled back": TrafficState(primary=V1, canary=V2, canary_weight=0),
}
URIS = {
    V1: "oci://111111111111.dkr.ecr.eu-west-1.amazonaws.com/kfrelease/m:V1.1.0",
    V2: "oci://111111111111.dkr.ecr.eu-west-1.amazonaws.com/kfrelease/m:V1.2.0",
}


@pytest.mark.parametrize("version", list(KSERVE_VERSIONS))
def test_every_release_state_renders_valid_objects_for_each_supported_kserve(version):
    """Serverless canaries (the default spec) on every version; RawDeployment canaries only where spec.canary
    exists. What the release driver writes is checked with each version's schema and webhook rules."""
    serverless = load_rollout_spec(model="diabetes-progression")
    raw = serverless.with_changes(serving={"deployment_mode": "RawDeployment"})
    for spec in (serverless, raw):
        for state_name, state in STATES.items():
            docs = render_release(spec, state, URIS, kserve_version=version)
            errors = []
            for doc in docs:
                try:
                    validate(doc, kserve=version)
                except SchemaValidationError as exc:
                    errors.append(str(exc))
            if spec is serverless or kserve_version(version).has_canary_list:
                assert errors == [], (spec.serving.deployment_mode, state_name, errors)
            elif state.canary:
                assert any("canary" in e for e in errors), (state_name, errors)


def test_render_refuses_a_rollout_mode_the_declared_kserve_lacks(tmp_path):
    from kfrelease.k8s.render.tree import Sources, models_file, render_tree

    text = environments_file(MANIFESTS_DIR).read_text()
    workspaces_dir(tmp_path).mkdir(parents=True)
    environments_file(tmp_path).write_text(text.replace('kserve_version: "0.20.0"', 'kserve_version: "0.15.2"', 1))
    models_file(tmp_path).write_text(models_file(MANIFESTS_DIR).read_text())
    src = Sources.load(tmp_path)
    raw = Sources(**{**src.__dict__, "spec": src.spec.with_changes(serving={"deployment_mode": "RawDeployment"})})
    with pytest.raises(ConfigError, match="'staging' declares KServe 0.15.2, which has no spec.canary"):
        render_tree(raw, tmp_path)
    assert render_tree(src, tmp_path)  # Serverless renders for 0.15.2
