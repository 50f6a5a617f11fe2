"""Submitting a pipeline to a KFP API server (multi-user Kubeflow), shared by the merge trigger and the
training pipeline's hand-over to the release pipeline.

Authentication follows KFP's in-cluster pattern: a projected service-account token with audience
``pipelines.kubeflow.org`` whose path is ``KF_PIPELINES_SA_TOKEN_PATH`` (``kfp.client.
ServiceAccountTokenVolumeCredentials``); runs go into ``KFRELEASE_NAMESPACE`` (default ``kfrelease-release``),
the only namespace where runs may be created (docs/platform-engineer-eks.md).

Every submitted package runs on the project image named by digest (``KFRELEASE_IMAGE``,
``kfrelease.images.project``): a submission without one is refused before anything is sent.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from kfrelease.config import setting
from kfrelease.errors import ConfigError
from kfrelease.images.project import compile_package, pinned_project_image

#: Where runs are created on the cluster, unless ``KFRELEASE_NAMESPACE`` says otherwise.
DEFAULT_NAMESPACE = "kfrelease-release"
#: The KFP API from inside a Kubeflow cluster, as Kubeflow documents it ("Connect the SDK to the API", Kubeflow
#: Platform inside the cluster: ``http://ml-pipeline-ui.kubeflow.svc.cluster.local`` with a projected token);
#: the pipeline pods' PodDefault names it in ``KFRELEASE_KFP_HOST``.
IN_CLUSTER_HOST = "http://ml-pipeline-ui.kubeflow.svc.cluster.local"
#: Kubeflow's projected-token convention (the ``access-ml-pipeline`` PodDefault): audience, mount, file.
TOKEN_AUDIENCE = "pipelines.kubeflow.org"
TOKEN_DIR = "/var/run/secrets/kubeflow/pipelines"


def namespace() -> str:
    return setting("KFRELEASE_NAMESPACE")


def client(host: str):
    """A ``kfp.Client`` for ``host`` in the release namespace, with the service-account token when one is set."""
    from kfp import Client  # heavy: kfp

    credentials = None
    token_path = os.environ.get("KF_PIPELINES_SA_TOKEN_PATH")
    if token_path:
        if not Path(token_path).is_file():
            raise ConfigError(
                f"KF_PIPELINES_SA_TOKEN_PATH={token_path} does not exist; mint the token first "
                "(kubectl create token kfrelease-ci, or the PodDefault's projected token in a pipeline pod) "
                "or unset it for an unauthenticated KFP"
            )
        from kfp.client import ServiceAccountTokenVolumeCredentials  # heavy: kfp

        credentials = ServiceAccountTokenVolumeCredentials(path=token_path)
    return Client(host=host, namespace=namespace(), credentials=credentials)


def submit_run(host: str, pipeline: Callable, arguments: dict, run_name: str, experiment: str) -> str:
    """Compile ``pipeline`` on the pinned project image and create one run of it (caching off: every run
    really runs); returns the run id."""
    image = pinned_project_image()
    with tempfile.TemporaryDirectory() as tmp:
        package = str(compile_package(pipeline, Path(tmp) / "pipeline.yaml", image))
        result = client(host).create_run_from_pipeline_package(
            package,
            namespace=namespace(),
            arguments=arguments,
            run_name=run_name,
            experiment_name=experiment,
            enable_caching=False,  # idempotency is the registry's and the run record's job
        )
    return result.run_id
