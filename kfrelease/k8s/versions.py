"""The Kubeflow and KServe versions kfrelease supports, and what each KServe version can do.

One table (``KSERVE_VERSIONS``), read from the upstream sources at each release tag of kserve/kserve:

- deployment modes: ``pkg/constants/constants.go`` (``DeploymentModeType``). ``Standard`` (and ``Knative``)
  exist from 0.16; 0.14/0.15 know ``Serverless``, ``RawDeployment`` and ``ModelMesh``, and an annotation
  value they do not know falls back to the controller's default, ``Serverless``.
- autoscaling: ``pkg/apis/serving/v1beta1/inference_service_validation.go``
  (``validateAutoScalingCompExtension``): the webhook checks ``scaleMetric`` against the HPA list
  (``cpu``, ``memory``) only when the annotation names the raw mode (``RawDeployment`` up to 0.15,
  ``Standard`` from 0.16) with ``serving.kserve.io/autoscalerClass: hpa``, or when Knative's class annotation
  is ``hpa``; in every other case (Serverless, and any mode value that version does not switch on) it
  allows only Knative's ``concurrency`` and ``rps`` (``AutoscalerAllowedKPAMetricsList``).
- ``spec.canary`` (a list of canary predictors with ``trafficPercent``): 0.20 (kserve/kserve#5672,
  ``validateCanarySpecs``): only with ``deploymentMode: Standard``; a canary may not set ``maxReplicas``,
  ``scaleTarget``, ``scaleMetric`` or ``autoScaling``.
- Kubeflow -> KServe: kubeflow/manifests README at each tag (v1.10.0 -> 0.14.1, v1.10.2 -> 0.15.0,
  v1.11.0 -> 0.15.2, 26.03 -> 0.16.0); 0.20 ships with no Kubeflow release yet (install KServe's own
  release manifests over Kubeflow's).

The CRD schema of each version is vendored under ``schemas/crds/kserve/<version>/`` (``schemas.py``).
Rendering code asks the environment's ``KServeVersion`` what it supports instead of assuming one version.
"""

from __future__ import annotations

from dataclasses import dataclass

from kfrelease.errors import ConfigError

MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
AUTOSCALER_CLASS_ANNOTATION = "serving.kserve.io/autoscalerClass"
KNATIVE_CLASS_ANNOTATION = "autoscaling.knative.dev/class"
KNATIVE_HPA_CLASS = "hpa.autoscaling.knative.dev"
KPA_METRICS = ("concurrency", "rps")
HPA_METRICS = ("cpu", "memory")


@dataclass(frozen=True)
class KServeVersion:
    """What one KServe release accepts (from its webhook and constants at the release tag)."""

    version: str
    kubeflow: tuple[str, ...]  # Kubeflow releases that ship this KServe (empty: install KServe yourself)
    deployment_modes: tuple[str, ...]  # annotation values the controller knows
    raw_mode: str  # the annotation value of the plain-Deployment ("raw") mode
    has_canary_list: bool  # spec.canary (Standard-mode canaries with trafficPercent)
    has_logger_storage: bool  # logger.storage (the InferenceLogger writes to S3)

    @property
    def has_standard_mode(self) -> bool:
        return "Standard" in self.deployment_modes

    @property
    def crd_dir_name(self) -> str:
        return self.version

    def effective_mode(self, annotation: str | None) -> str:
        """The mode the controller runs for a ``deploymentMode`` annotation (unknown values fall back to
        Serverless, the default of every supported version's ``inferenceservice-config``)."""
        if annotation in self.deployment_modes:
            return {"Knative": "Serverless", "Standard": "RawDeployment"}.get(annotation, annotation)
        return "Serverless"

    def mode_annotation(self, mode: str) -> str:
        """The annotation value that selects ``mode`` (``Serverless`` or ``RawDeployment``) on this version."""
        if mode == "Serverless":
            return "Serverless"
        if mode == "RawDeployment":
            return self.raw_mode
        raise ConfigError(f"deployment mode {mode!r} is not Serverless or RawDeployment")

    def allowed_scale_metrics(self, annotations: dict[str, str]) -> tuple[str, ...] | None:
        """``scaleMetric`` values the webhook accepts for a component with these annotations (None: the
        webhook does not check the metric). Mirrors ``validateAutoScalingCompExtension`` at the tag."""
        mode = annotations.get(MODE_ANNOTATION, "")
        hpa_by_knative = annotations.get(KNATIVE_CLASS_ANNOTATION) == KNATIVE_HPA_CLASS
        if self.version.startswith("0.14."):  # raw mode or Knative's HPA class: HPA metrics, else KPA
            return HPA_METRICS if mode == "RawDeployment" or hpa_by_knative else KPA_METRICS
        if mode == self.raw_mode:
            return HPA_METRICS if annotations.get(AUTOSCALER_CLASS_ANNOTATION) == "hpa" else None
        return HPA_METRICS if hpa_by_knative else KPA_METRICS

    def admission_errors(self, isvc: dict) -> list[str]:
        """What this version's controller and webhook would refuse or silently change in an InferenceService
        (beyond its CRD schema): an unknown deployment mode, a scaleMetric the webhook rejects, a
        ``spec.canary`` this version does not have or does not accept."""
        meta = isvc.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        where = f"InferenceService {meta.get('namespace', '')}/{meta.get('name', '?')} on KServe {self.version}"
        errors = []
        mode = annotations.get(MODE_ANNOTATION)
        if mode is not None and mode not in self.deployment_modes:
            errors.append(
                f"{where}: deploymentMode {mode!r} is unknown to this version (it knows "
                f"{', '.join(self.deployment_modes)}); the controller falls back to Serverless"
            )
        spec = isvc.get("spec") or {}
        allowed = self.allowed_scale_metrics(annotations)
        for component in ("predictor", "transformer", "explainer"):
            metric = (spec.get(component) or {}).get("scaleMetric")
            if metric is not None and allowed is not None and metric not in allowed:
                errors.append(
                    f"{where}: {component}.scaleMetric {metric!r} is rejected by the webhook "
                    f"(with deploymentMode {mode!r} it allows {', '.join(allowed)})"
                )
        canaries = spec.get("canary")
        if canaries:
            if not self.has_canary_list:
                errors.append(f"{where}: spec.canary needs KServe 0.20 or newer")
            elif mode != "Standard":
                errors.append(f"{where}: spec.canary is only accepted with deploymentMode 'Standard', not {mode!r}")
            for canary in canaries if self.has_canary_list else []:
                pred = canary.get("predictor") or {}
                for field in ("maxReplicas", "scaleTarget", "scaleMetric", "autoScaling"):
                    if pred.get(field) is not None:
                        errors.append(
                            f"{where}: canary {pred.get('name')!r} must not set {field} (canaries use fixed replicas)"
                        )
        return errors


_PRE_016 = ("Serverless", "RawDeployment", "ModelMesh")
_FROM_016 = ("Serverless", "Knative", "RawDeployment", "Standard", "ModelMesh")

#: Every supported KServe version, oldest first.
KSERVE_VERSIONS: dict[str, KServeVersion] = {
    v.version: v
    for v in (
        KServeVersion("0.14.1", ("1.10.0", "1.10.1"), _PRE_016, "RawDeployment", False, False),
        KServeVersion("0.15.0", ("1.10.2",), _PRE_016, "RawDeployment", False, False),
        KServeVersion("0.15.2", ("1.11.0",), _PRE_016, "RawDeployment", False, False),
        KServeVersion("0.16.0", ("26.03",), _FROM_016, "Standard", False, True),
        KServeVersion("0.20.0", (), _FROM_016, "Standard", True, True),
    )
}

#: Kubeflow release -> the KServe version its manifests install.
KUBEFLOW_KSERVE = {kf: v.version for v in KSERVE_VERSIONS.values() for kf in v.kubeflow}


def kubeflow_ref(version: str) -> str:
    """The git tag of a Kubeflow manifests release: ``v1.11.0`` up to 1.x, then the calendar releases are
    tagged without the ``v`` (kubeflow/manifests has tags ``v1.11.0`` and ``26.03``, no ``v26.03``)."""
    version = str(version).removeprefix("v")
    return version if int(version.split(".")[0]) >= 20 else f"v{version}"


def kserve_version(version: str) -> KServeVersion:
    """The capabilities of a supported KServe version; a clear error for any other."""
    try:
        return KSERVE_VERSIONS[str(version).removeprefix("v")]
    except KeyError:
        raise ConfigError(
            f"KServe {version!r} is not a supported version; use one of {', '.join(KSERVE_VERSIONS)} "
            "(kfrelease/k8s/versions.py; each has its CRDs under schemas/crds/kserve/<version>/)"
        ) from None


def newest() -> KServeVersion:
    return list(KSERVE_VERSIONS.values())[-1]
