"""Offline evaluation of rendered documents as the cluster would judge them: Kubernetes RBAC (``rbac``),
Istio authorization (``istio``), CRD/OpenAPI schemas and KServe admission (``schemas``), and the checks of
``kfrelease manifests check`` (``checks``, ``release_checks``)."""
