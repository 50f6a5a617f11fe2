"""What each pipeline step may use and how a failed step is retried, on the cluster and locally.

The steps that run merged model code (``train``, ``evaluate``) get the resources the model spec asks for::

    resources: {cpu: "2", memory: 8Gi, cpu_limit: "4", memory_limit: 8Gi, node_selector: {pool: training}}

(every key optional; defaults below). They reach the compiled pipeline as run parameters (``model_cpu`` ...,
see ``pipeline_arguments``), so one compiled package serves every model. The other steps get fixed defaults.

Retries on the cluster: KFP's ``set_retry`` compiles to an Argo ``retryStrategy`` with a limit and a backoff
and no ``retryPolicy`` (kubeflow/pipelines ``backend/src/v2/compiler/argocompiler/container.go``,
``getTaskRetryStrategyFromInput``), so Argo applies its default ``OnFailure``: any failure of the step's main
container is retried, whatever its cause. KFP cannot filter by cause, so the step itself does: each failure
is recorded with its cause (``kfrelease.training.failures``), and a retried attempt of a step whose previous
attempt failed because of the model code or the data fails at once with that reason, without running the
model code again (``run_records.step_record``). An OOM kill or a lost node (exit 137, no record written) is
retried in full. ``kfp.local`` (2.17) honours the same retry policy, so local steps are retried in place
the same way; the local runner adds one retry of the whole run on top (``execution``). Caching is off for
every training step: ``latest`` data and the registry change between merges, so a cached output would be a
stale one.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from kfrelease.errors import ConfigError

#: Steps whose code is the merged model code.
MODEL_STEPS = ("train", "evaluate")
RETRIES = 2
BACKOFF = {"backoff_duration": "5s", "backoff_factor": 2.0, "backoff_max_duration": "120s"}
_MEMORY = re.compile(r"^[0-9]+(\.[0-9]+)?(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$")
_CPU = re.compile(r"^([0-9]+(\.[0-9]+)?|[0-9]+m)$")
_UNITS = {
    "": 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def memory_bytes(text: str) -> int:
    """``"2Gi"`` -> 2147483648 (Kubernetes quantity notation)."""
    m = re.match(r"^([0-9.]+)([A-Za-z]*)$", str(text))
    if not m or m.group(2) not in _UNITS:
        raise ConfigError(f"memory {text!r} is not a Kubernetes quantity such as 512Mi or 4Gi")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def cpu_cores(text: str) -> float:
    text = str(text)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


@dataclass(frozen=True)
class Resources:
    cpu: str
    memory: str
    cpu_limit: str
    memory_limit: str
    node_selector: dict = field(default_factory=dict)


#: Defaults: the model steps hold the data and the fit (FACTS: ~2.5 GB for 4.7M rows); the rest is small.
MODEL_DEFAULT = Resources(cpu="1", memory="2Gi", cpu_limit="2", memory_limit="4Gi")
STEP_DEFAULT = Resources(cpu="250m", memory="512Mi", cpu_limit="1", memory_limit="1Gi")
KEYS = ("cpu", "memory", "cpu_limit", "memory_limit", "node_selector")


def parse_resources(doc, origin: str) -> Resources:
    """The model spec's ``resources`` mapping, checked (limits at least the requests)."""
    if doc is None:
        return MODEL_DEFAULT
    if not isinstance(doc, dict) or set(doc) - set(KEYS):
        raise ConfigError(f"{origin}: resources takes {', '.join(KEYS)} (e.g. {{cpu: '2', memory: 8Gi}})")
    values = {**asdict(MODEL_DEFAULT), **{k: v for k, v in doc.items() if v is not None}}
    for key in ("cpu", "cpu_limit"):
        values[key] = str(values[key])
        if not _CPU.match(values[key]):
            raise ConfigError(f"{origin}: resources.{key} {values[key]!r} is not a CPU quantity such as 2 or 500m")
    for key in ("memory", "memory_limit"):
        values[key] = str(values[key])
        if not _MEMORY.match(values[key]):
            raise ConfigError(f"{origin}: resources.{key} {values[key]!r} is not a memory quantity such as 4Gi")
    if "memory" in doc and "memory_limit" not in doc:
        values["memory_limit"] = (
            values["memory"]
            if memory_bytes(values["memory"]) > memory_bytes(MODEL_DEFAULT.memory_limit)
            else MODEL_DEFAULT.memory_limit
        )
    if "cpu" in doc and "cpu_limit" not in doc and cpu_cores(values["cpu"]) > cpu_cores(MODEL_DEFAULT.cpu_limit):
        values["cpu_limit"] = values["cpu"]
    if memory_bytes(values["memory_limit"]) < memory_bytes(values["memory"]):
        raise ConfigError(
            f"{origin}: resources.memory_limit {values['memory_limit']} is below memory {values['memory']}"
        )
    if cpu_cores(values["cpu_limit"]) < cpu_cores(values["cpu"]):
        raise ConfigError(f"{origin}: resources.cpu_limit {values['cpu_limit']} is below cpu {values['cpu']}")
    selector = values["node_selector"]
    if not isinstance(selector, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in selector.items()
    ):
        raise ConfigError(f"{origin}: resources.node_selector maps node label names to values (strings)")
    return Resources(**values)


def pipeline_arguments(resources: Resources) -> dict:
    """The training pipeline's run parameters that carry the model steps' resources."""
    return {
        "model_cpu": resources.cpu,
        "model_memory": resources.memory,
        "model_cpu_limit": resources.cpu_limit,
        "model_memory_limit": resources.memory_limit,
        "model_node_selector": dict(resources.node_selector),
    }


def step_backoff() -> dict:
    """``BACKOFF``, or with ``KFRELEASE_STEP_BACKOFF_SECONDS`` (the fault tests' local runs) that first backoff
    (whole seconds: kfp.local reads the seconds of the compiled duration), the same factor and maximum."""
    from kfrelease.config import setting

    seconds = setting("KFRELEASE_STEP_BACKOFF_SECONDS")
    return BACKOFF if seconds is None else {**BACKOFF, "backoff_duration": f"{seconds}s"}


def apply_step_policy(task, step: str, model: dict | None = None, caching: bool = False):
    """Resources, retries and caching of one pipeline task. ``model`` holds the pipeline's ``model_*``
    parameters (channels) for the model steps; other steps get ``STEP_DEFAULT``."""
    from kfp import kubernetes

    if model is not None:
        task.set_cpu_request(model["cpu"]).set_memory_request(model["memory"])
        task.set_cpu_limit(model["cpu_limit"]).set_memory_limit(model["memory_limit"])
        kubernetes.add_node_selector_json(task, model["node_selector"])
    else:
        r = STEP_DEFAULT
        task.set_cpu_request(r.cpu).set_memory_request(r.memory).set_cpu_limit(r.cpu_limit).set_memory_limit(
            r.memory_limit
        )
    task.set_retry(RETRIES, **step_backoff())
    task.set_caching_options(caching)
    return task
