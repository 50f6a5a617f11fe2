"""On a cluster no predictor runs the judged model's code (review eks4 R2): the model server of every
InferenceService, run as KServe runs it from the rendered ServingRuntime and InferenceService (``predictor_pods``:
the runtime's container, the predictor's model env merged in), refuses to unpickle its version.

Why it matters: every predictor of a model (production, ``<model>-staging``, a canary) is a pod whose service
account is the identity the log sink's AuthorizationPolicy admits, and a KServe logger event carries nothing but
its attributes (kserve/kserve@v0.20.0 ``pkg/logger/worker.go``: ``SetID``, ``SetSource``, the extensions
``inferenceservicename``, ``namespace``, ``component``, ``endpoint``); Istio's peer identity is the pod's service
account, shared by every container of the pod. A pickle runs code when it is read (a ``__reduce__`` is enough, no
module of its own), so a candidate served from its pickle in the staging predictor could post "production's"
answers for the mirrored request ids (the shadow gate) and, as a canary, log inputs of its choosing that
production is then replayed on (the canary's labelled check). With no pickle read in a predictor, the model file is
data (an ONNX graph, a booster's trees) and the only code in the pod is the platform's: the events are what the
agent saw pass, and the canary's logged inputs are the requests clients sent.
"""

from __future__ import annotations

import os
import pickle
import subprocess

import httpx

from kfrelease import httpcalls
from kfrelease.k8s.render.inference import render_inference_services, staging_name
from kfrelease.k8s.render.tree import Sources, environment_documents
from kfrelease.rollout.traffic import TrafficState
from tests.serving.serving_helpers import make_model_dir
from tests.waiting import eventually

from . import free_port, predictor_pods

SOURCES = Sources.load()
ENV = SOURCES.envs.environments["staging"]
SPEC = SOURCES.spec
V1, V2 = ENV.production_version, "V1.2.0"
URIS = {v: f"oci://{ENV.registry}/kfrelease/{SPEC.model}:{v}" for v in (V1, V2)}


class _Forger:
    """Unpickled, it writes a file: what a candidate's pickle would do first (post forged events) in the process
    that reads it."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def staging_pod(formats: dict[str, str]):
    """The shadow's pod as KServe runs it: the rendered ServingRuntime (as the environment applies it) and the
    staging InferenceService the release driver renders for a shadow of ``V2``."""
    (runtime,) = [d for d in environment_documents(SOURCES, ENV) if d["kind"] == "ServingRuntime"]
    state = TrafficState(primary=V1, shadow=V2, mirror_percent=100)
    isvcs = render_inference_services(SPEC, state, URIS, model_formats=formats, kserve_version=ENV.kserve_version)
    (staging,) = [d for d in isvcs if d["metadata"]["name"] == staging_name(SPEC)]
    (pod,) = predictor_pods(staging, runtime, ENV.kserve_version)
    return pod


def start(pod, model_dir, home):
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **pod.env, "KFRELEASE_HOME": str(home)}
    log = open(home / "log", "w")  # noqa: SIM115 - the process writes it
    return port, subprocess.Popen(pod.argv(model_dir, port), env=env, stdout=subprocess.DEVNULL, stderr=log)


def test_a_predictor_run_from_the_rendered_serving_runtime_never_unpickles_its_version(tmp_path):
    pod = staging_pod({V1: "onnx", V2: "sklearn"})
    assert pod.env.get("KFRELEASE_REFUSE_PICKLE") == "1", pod.env  # the rendered runtime's own env

    # a candidate served from its pickle: the model server stops at load, and the pickle's code never ran
    forged = make_model_dir(tmp_path / "pickle", SPEC.model, V2)
    ran = tmp_path / "the-pickle-ran"
    (forged / "model.joblib").write_bytes(pickle.dumps(_Forger(str(ran))))
    _, process = start(pod, forged, tmp_path / "pickle-home")
    try:
        code = process.wait(timeout=120)
    finally:
        process.kill()
    log = (tmp_path / "pickle-home" / "log").read_text()
    assert code != 0 and "KFRELEASE_REFUSE_PICKLE" in log, log[-2000:]
    assert not ran.exists()  # on main the predictor unpickled it: the file was written, the server answered

    # the same rendered pod serves a version from its verified ONNX file (the model file is data)
    pod = staging_pod({V1: "onnx", V2: "onnx"})
    served = make_model_dir(tmp_path / "onnx", SPEC.model, V2, flavour="onnx")
    port, process = start(pod, served, tmp_path / "onnx-home")
    try:
        ready = f"http://127.0.0.1:{port}/v2/models/{SPEC.model}/ready"
        eventually(
            lambda: httpcalls.get(ready, timeout=2).status_code == 200,
            120,
            "ONNX model server ready",
            ignoring=(httpx.HTTPError,),
        )
    finally:
        process.kill()
        process.wait()
