"""The one project image: base image of every KFP component and the ServingRuntime image on EKS.

``KFRELEASE_IMAGE`` overrides it at compile time (e.g. the ECR repository of your cluster). Locally,
``kfp.local``'s SubprocessRunner ignores the image and runs components in the current environment.
"""

import os

DEFAULT_PROJECT_IMAGE = "public.ecr.aws/kfrelease/kfrelease:0.1.0"


def project_image() -> str:
    return os.environ.get("KFRELEASE_IMAGE") or DEFAULT_PROJECT_IMAGE
