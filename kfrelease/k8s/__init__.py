"""The EKS side of kfrelease, in three packages and two shared tables:

- ``kfrelease.k8s.render``: everything rendered for a cluster (InferenceServices and the release's
  VirtualService, the platform's Kubeflow, IAM, RBAC, mesh and monitoring objects, the ``manifests/`` tree);
- ``kfrelease.k8s.driver``: what moves a release on a live cluster (the KServe traffic driver, its JSON
  merge patches and the release Lease);
- ``kfrelease.k8s.policy``: offline evaluation of rendered documents as the cluster would judge them
  (Kubernetes RBAC, Istio authorization, schemas and admission, ``kfrelease manifests check``);
- ``versions`` (what each supported Kubeflow and KServe version can do) and ``environments`` (the
  environments file and the names every manifest agrees on), read by all three.

``render`` imports neither ``driver`` nor ``policy``; both of those read what ``render`` produces.
"""
