"""Kubeflow Spark Operator ``SparkApplication`` objects: one builder for every kfrelease job that runs on Spark
(the data pipeline's ``engine: spark``, ``kfrelease.data.spark``; a monitoring window beyond one machine,
``kfrelease.monitoring.spark_app``).

Schema: the ``sparkoperator.k8s.io/v1beta2`` CRD vendored from kubeflow/spark-operator v2.5.2
(``schemas/crds/spark-operator/``, ``api/v1beta2/sparkapplication_types.go``). Both jobs share the image (Apache
Spark 4.0 with Python 3 and kfrelease), the retry rule and the clean-up; they differ in entry point, arguments,
Spark settings and identity.
"""

from __future__ import annotations

import re

API_VERSION = "sparkoperator.k8s.io/v1beta2"
SPARK_VERSION = "4.0.1"
PART_OF = {"app.kubernetes.io/part-of": "kfrelease"}
# An infrastructure failure (a lost node, a failed submission) is retried twice, 30 s apart; a job that finds bad
# data or too few labels ends with exit 0 and says so in its result, so it is never retried.
RESTART_POLICY = {
    "type": "OnFailure",
    "onFailureRetries": 2,
    "onFailureRetryInterval": 30,
    "onSubmissionFailureRetries": 2,
    "onSubmissionFailureRetryInterval": 30,
}
TIME_TO_LIVE_SECONDS = 86400  # the operator deletes a finished application (and its pods) a day later


def application_name(*parts: str) -> str:
    """A DNS-1123 name of at most 63 characters from ``parts`` joined by ``-`` (lower-cased, other characters
    become ``-``)."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:63].rstrip("-")


def spark_application(
    *,
    name: str,
    namespace: str,
    labels: dict[str, str],
    image: str,
    entrypoint: str,
    arguments: list[str],
    spark_conf: dict[str, str],
    service_account: str,
    executors: int,
    executor_memory: str,
) -> dict:
    """A Python ``SparkApplication`` in cluster mode: a 1-core 2 GiB driver and ``executors`` executors of 2 cores
    and ``executor_memory``, driver and executors under ``service_account`` (its IRSA role is the job's only
    credential), labelled ``app.kubernetes.io/part-of: kfrelease`` besides ``labels``."""
    return {
        "apiVersion": API_VERSION,
        "kind": "SparkApplication",
        "metadata": {"name": name, "namespace": namespace, "labels": {**PART_OF, **labels}},
        "spec": {
            "type": "Python",
            "pythonVersion": "3",
            "mode": "cluster",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "mainApplicationFile": entrypoint,
            "arguments": list(arguments),
            "sparkVersion": SPARK_VERSION,
            "sparkConf": dict(spark_conf),
            "restartPolicy": dict(RESTART_POLICY),
            "timeToLiveSeconds": TIME_TO_LIVE_SECONDS,
            "driver": {"cores": 1, "memory": "2g", "serviceAccount": service_account, "labels": dict(PART_OF)},
            "executor": {
                "cores": 2,
                "instances": int(executors),
                "memory": executor_memory,
                "serviceAccount": service_account,
                "labels": dict(PART_OF),
            },
        },
    }
