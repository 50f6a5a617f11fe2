"""A release step as a process of its own, for ``test_driver``'s SIGTERM tests: ``python -m
tests.manifests.sigterm_step <api url> <raw|serverless> <ready file>``. It reads the release's traffic state from
the stand-in API server through the real ``kubernetes`` client (``KubernetesObjects``) as the canary step's
driver (holder V1.2.0, production V1.1.0), enters ``terminable`` as ``rollout_step`` does, writes ``ready file``
(its process id) and waits for a signal."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from kubernetes import client

from kfrelease.k8s.driver.kserve import KServeTrafficDriver, KubernetesObjects
from kfrelease.release.pipeline_steps import READY_TIMEOUT_SECONDS, terminable
from kfrelease.rollout.traffic import TrafficState
from tests.manifests.test_driver import ENV, RAW, SERVERLESS, URIS, V1, V2


def main(url: str, mode: str, ready: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(created).3f %(name)s %(message)s")
    config = client.Configuration(host=url)
    client.Configuration.set_default(config)
    spec = RAW if mode == "raw" else SERVERLESS
    driver = KServeTrafficDriver(
        spec,
        URIS,
        KubernetesObjects(api=client.CustomObjectsApi(client.ApiClient(config))),
        holder=V2,
        kserve_version=ENV.kserve_version,
        domain=ENV.model_domain,
        ready_timeout=READY_TIMEOUT_SECONDS,
    )
    driver.apply(TrafficState(primary=V1, canary=V2, canary_weight=25))  # the canary step's last move (no-op)
    with terminable(driver, V1):
        Path(ready).write_text(str(os.getpid()))
        while True:  # the canary interval; the signal interrupts it
            time.sleep(0.05)


if __name__ == "__main__":
    main(*sys.argv[1:])
