"""What each pipeline step may use and how a failed step is retried, on the cluster and locally.

The steps whose size grows with the data (``MODEL_STEPS``: ``split`` and ``evaluate`` read the curated version,
``train`` and ``score-champion`` run model code on it) get the resources the model spec asks for::

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
from typing import Any

from pydantic import Field, field_validator, model_validator

from kfrelease.config import setting
from kfrelease.errors import ConfigError
from kfrelease.kfp.tasks import on_shallow_stack
from kfrelease.specs import Number, SpecDocument

#: Steps that get the model spec's resources (their memory grows with the data).
MODEL_STEPS = ("split", "train", "score-champion", "evaluate")
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


#: What the model steps get by default: they hold the data and the fit (FACTS: ~2.5 GB for 4.7M rows).
_MODEL = {"cpu": "1", "memory": "2Gi", "cpu_limit": "2", "memory_limit": "4Gi"}


class Resources(SpecDocument):
    """What the train and evaluate steps may use (Kubernetes quantities; every key optional)."""

    cpu: str | Number | None = Field(None, description=f"CPU request, e.g. 2 or 500m (default {_MODEL['cpu']}).")
    memory: str | None = Field(None, description=f"Memory request, e.g. 8Gi (default {_MODEL['memory']}).")
    cpu_limit: str | Number | None = Field(
        None, description=f"CPU limit, at least the request (default {_MODEL['cpu_limit']}, or the request)."
    )
    memory_limit: str | None = Field(
        None, description=f"Memory limit, at least the request (default {_MODEL['memory_limit']}, or the request)."
    )
    node_selector: dict[str, str] | None = Field(None, description="Node labels the steps must run on.")

    @field_validator("cpu", "cpu_limit")
    @classmethod
    def _cpu(cls, value):
        if value is not None and not _CPU.match(str(value)):
            raise ValueError(f"must be a CPU quantity such as 2 or 500m, not {value!r}")
        return None if value is None else str(value)

    @field_validator("memory", "memory_limit")
    @classmethod
    def _memory(cls, value):
        if value is not None and not _MEMORY.match(value):
            raise ValueError(f"must be a memory quantity such as 4Gi, not {value!r}")
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _effective(cls, data: Any, handler) -> Resources:
        """What a step gets: a key left out takes the model steps' default; a request above the default limit
        (and no limit given) is the limit too; a limit is at least its request."""
        declared = handler(data)
        given = {k: v for k, v in declared.model_dump().items() if v is not None}
        values = {**_MODEL, "node_selector": {}, **given}
        if "memory" in given and "memory_limit" not in given:
            big = memory_bytes(values["memory"]) > memory_bytes(_MODEL["memory_limit"])
            values["memory_limit"] = values["memory"] if big else _MODEL["memory_limit"]
        if "cpu" in given and "cpu_limit" not in given and cpu_cores(values["cpu"]) > cpu_cores(_MODEL["cpu_limit"]):
            values["cpu_limit"] = values["cpu"]
        if memory_bytes(values["memory_limit"]) < memory_bytes(values["memory"]):
            raise ValueError(f"memory_limit {values['memory_limit']} is below memory {values['memory']}")
        if cpu_cores(values["cpu_limit"]) < cpu_cores(values["cpu"]):
            raise ValueError(f"cpu_limit {values['cpu_limit']} is below cpu {values['cpu']}")
        return handler(values)


MODEL_DEFAULT = Resources()
STEP_DEFAULT = Resources(cpu="250m", memory="512Mi", cpu_limit="1", memory_limit="1Gi")


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
    seconds = setting("KFRELEASE_STEP_BACKOFF_SECONDS")
    return BACKOFF if seconds is None else {**BACKOFF, "backoff_duration": f"{seconds}s"}


def refuse_pickle(task):
    """Make a task refuse to unpickle a model (``KFRELEASE_REFUSE_PICKLE``): every task that is not untrusted
    (trusted training steps, release steps) runs no code from a model file; ``kfrelease.registry.artifact``
    raises if one tries. The compiled IR carries it, so a test can see it on every such task."""
    return task.set_env_variable("KFRELEASE_REFUSE_PICKLE", "1")


def apply_step_policy(task, model: dict | None = None, caching: bool = False, untrusted: bool = False):
    """Resources, retries and caching of one pipeline task; no pickle loads unless the task is ``untrusted`` (runs
    the merged model code: ``kfrelease.training.steps.Step.untrusted``). ``model`` holds the pipeline's ``model_*``
    parameters (channels) for the steps whose size grows with the data; other steps get ``STEP_DEFAULT``. Applied
    on a shallow stack: kfp's setters walk the caller's stack (``kfrelease.kfp.tasks``)."""
    return on_shallow_stack(_apply_step_policy, task, model, caching, untrusted)


def _apply_step_policy(task, model: dict | None, caching: bool, untrusted: bool):
    from kfp import kubernetes  # heavy: kfp

    if not untrusted:
        refuse_pickle(task)

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
