"""Pipeline tasks are configured on a shallow stack (``kfrelease.kfp.tasks``): kfp's container setters walk the
caller's whole stack with ``inspect.stack()``, which cost 3.1 of the 3.4 CPU-s of importing the four pipelines."""

# (no ``from __future__ import annotations``: kfp reads the component's annotations as types)

import inspect
import sys
import threading
import types

import pytest
from kfp import dsl
from kfp.dsl import pipeline_task

from kfrelease.kfp.tasks import on_shallow_stack
from kfrelease.training.resources import STEP_DEFAULT, apply_step_policy


@dsl.component
def echo(text: str) -> str:
    return text


def _depth() -> int:
    frame, n = sys._getframe(1), 0
    while frame is not None:
        frame, n = frame.f_back, n + 1
    return n


def _deep(levels: int, then):
    return _deep(levels - 1, then) if levels else then()


def _pipeline_tasks(configure) -> list:
    """The tasks of a one-step pipeline whose task ``configure`` is called on, as a pipeline module does."""
    tasks = []

    @dsl.pipeline(name="shallow-stack")
    def pipeline():
        task = echo(text="a")
        configure(task)
        tasks.append(task)

    return tasks


def test_kfps_setters_see_a_shallow_stack_however_deep_the_caller(monkeypatch):
    depths = []  # how deep the stack is each time a kfp setter walks it

    def stack(context=1):
        depths.append(_depth())
        return inspect.stack(context)

    monkeypatch.setattr(pipeline_task, "inspect", types.SimpleNamespace(stack=stack))
    called_at = []
    tasks = _deep(150, lambda: _pipeline_tasks(lambda t: (called_at.append(_depth()), apply_step_policy(t))))
    assert called_at[0] > 150  # the policy was applied 150 frames down
    assert len(depths) == 5 and max(depths) < 15, depths  # 4 resources + the refuse-pickle variable, each shallow
    r = STEP_DEFAULT
    direct = _pipeline_tasks(  # what kfp makes of the same values, set directly
        lambda t: (
            t.set_cpu_request(r.cpu)
            .set_memory_request(r.memory)
            .set_cpu_limit(r.cpu_limit)
            .set_memory_limit(r.memory_limit)
        )
    )
    assert tasks[0].container_spec.resources == direct[0].container_spec.resources
    assert tasks[0].container_spec.env == {"KFRELEASE_REFUSE_PICKLE": "1"}


def test_the_shallow_stack_configures_a_task_as_a_direct_call_does():
    direct = _pipeline_tasks(lambda t: t.set_cpu_request("500m").set_memory_limit("2Gi").set_env_variable("A", "1"))
    shallow = _pipeline_tasks(
        lambda t: on_shallow_stack(lambda: t.set_cpu_request("500m").set_memory_limit("2Gi").set_env_variable("A", "1"))
    )
    assert shallow[0].container_spec == direct[0].container_spec


def test_what_the_function_returns_or_raises_reaches_the_caller():
    assert on_shallow_stack(lambda a, b=0: a + b, 1, b=2) == 3
    assert on_shallow_stack(threading.current_thread) is not threading.current_thread()

    class Refused(Exception):
        pass

    error = Refused("no")

    def refuse():
        raise error

    with pytest.raises(Refused) as caught:
        on_shallow_stack(refuse)
    assert caught.value is error
    with pytest.raises(ValueError, match="cpu"):  # kfp's own check of a setter's value, raised here
        _pipeline_tasks(lambda t: on_shallow_stack(t.set_cpu_request, "a lot"))
