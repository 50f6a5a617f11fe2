"""The platform's ceiling on one model's predictors (review eks5 S4): every model shares the cluster's serving node
group, and neither KServe (kserve v0.20.0 ``pkg/apis/serving/v1beta1/inference_service_validation.go``: metric,
target and class checks only) nor Kubernetes bounds one InferenceService's ``minReplicas`` or requests, so a merge's
``serving:`` could take every serving node from the other models. environments.yaml ``serving_limits`` is rendered
onto the release steps' pods and the release refuses a recorded spec above it before any traffic moves."""

from __future__ import annotations

import json
import os

import pytest

from kfrelease.config import Settings
from kfrelease.k8s.environments import ServingLimits, load_environments
from kfrelease.k8s.render.platform import RELEASE_NS, step_identities
from kfrelease.release.controller import ReleaseController, ReleaseError, serving_limit_problems
from kfrelease.rollout.spec import load_rollout_spec, parse_rollout_spec

GREEDY = "model: m\nserving: {min_replicas: 60, max_replicas: 60, cpu: '3', memory: 6Gi}\n"


def test_a_spec_above_the_limits_names_each_excess_and_one_within_them_none():
    limits = ServingLimits(max_replicas=8, cpu="2", memory="4Gi")
    problems = serving_limit_problems(parse_rollout_spec(GREEDY).serving, limits)
    assert problems == [
        "serving.min_replicas 60 > 8",
        "serving.max_replicas 60 > 8",
        "serving.cpu 3 > 2",
        "serving.memory 6Gi > 4Gi",
    ]
    assert serving_limit_problems(parse_rollout_spec("model: m\n").serving, limits) == []  # the packaged defaults
    within = "model: m\nserving: {min_replicas: 2, max_replicas: 8, cpu: 2000m, memory: 4096Mi}\n"
    assert serving_limit_problems(parse_rollout_spec(within).serving, limits) == []  # equal is within


class RegistryReached(Exception):
    """preflight went on to read the candidate from the registry."""


def controller(spec_text: str, monkeypatch, tmp_path) -> ReleaseController:
    """A controller for ``spec_text`` built off the cluster (on one, its constructor wants the replay token the
    PodDefault mounts); ``preflight`` reads ``KFRELEASE_TARGET`` when it runs."""
    target = os.environ.get("KFRELEASE_TARGET")
    monkeypatch.delenv("KFRELEASE_TARGET", raising=False)
    monkeypatch.setenv("KFRELEASE_HOME", str(tmp_path))
    monkeypatch.setenv("KFRELEASE_S3_ENDPOINT", "127.0.0.1:9")  # an external S3 that is never reached
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unused")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unused")
    ctl = ReleaseController(
        Settings.from_env(), parse_rollout_spec(spec_text), None, signals=lambda v: None, production_scorer=None
    )

    def reached(*_args):
        raise RegistryReached()

    monkeypatch.setattr(ctl.registry, "get", reached)
    if target:
        monkeypatch.setenv("KFRELEASE_TARGET", target)
    return ctl


def test_a_release_on_a_cluster_refuses_a_spec_above_the_rendered_limits_before_anything_else(monkeypatch, tmp_path):
    monkeypatch.setenv("KFRELEASE_TARGET", "cluster")
    (env,) = [e for e in load_environments().environments.values() if e.name == "production"]
    pod_default = next(
        d for d in step_identities(env, RELEASE_NS) if d["kind"] == "PodDefault" and d["spec"].get("env")
    )
    rendered = {e["name"]: e["value"] for e in pod_default["spec"]["env"]}["KFRELEASE_SERVING_LIMITS"]
    assert json.loads(rendered) == {"max_replicas": 8, "cpu": "2", "memory": "4Gi"}  # environments.yaml's
    monkeypatch.setenv("KFRELEASE_SERVING_LIMITS", rendered)
    with pytest.raises(ReleaseError) as refused:
        controller(GREEDY, monkeypatch, tmp_path).preflight("V1.2.0")
    message = str(refused.value)
    assert message.startswith("m V1.2.0: its rollout spec asks more of the serving nodes than the platform allows")
    assert "serving.min_replicas 60 > 8" in message and "serving.memory 6Gi > 4Gi" in message
    assert "serving_limits in environments.yaml" in message and message.endswith("no traffic was moved")
    # within the limits the release goes on to the registry's checks of the candidate
    with pytest.raises(RegistryReached):
        controller("model: m\n", monkeypatch, tmp_path).preflight("V1.2.0")
    # unset on a cluster: the stated defaults still hold
    monkeypatch.delenv("KFRELEASE_SERVING_LIMITS")
    with pytest.raises(ReleaseError, match=r"serving.max_replicas 60 > 8"):
        controller(GREEDY, monkeypatch, tmp_path).preflight("V1.2.0")
    # a limit that is not JSON: one line naming the variable and the fix
    monkeypatch.setenv("KFRELEASE_SERVING_LIMITS", "{max: 8")
    with pytest.raises(ReleaseError, match=r"KFRELEASE_SERVING_LIMITS .* is not the JSON.*kfrelease manifests render"):
        controller(GREEDY, monkeypatch, tmp_path).preflight("V1.2.0")


def test_one_machine_has_no_platform_ceiling(monkeypatch, tmp_path):
    """The embedded stack runs one predictor process per model whatever ``serving:`` says (it reads the namespace
    only), so the ceiling is the cluster's: off the cluster the spec goes on to the registry's checks."""
    monkeypatch.delenv("KFRELEASE_TARGET", raising=False)
    with pytest.raises(RegistryReached):
        controller(GREEDY, monkeypatch, tmp_path).preflight("V1.2.0")


def test_the_environments_file_states_its_limits_and_refuses_a_wrong_one(tmp_path):
    from kfrelease.errors import ConfigError
    from kfrelease.k8s.environments import MANIFESTS_DIR, environments_file

    text = environments_file(MANIFESTS_DIR).read_text()
    assert load_environments().environments["staging"].serving_limits == ServingLimits()
    bad = tmp_path / "environments.yaml"
    bad.write_text(text.replace("serving_limits: {max_replicas: 8,", "serving_limits: {max_replicas: 0,", 1))
    with pytest.raises(ConfigError, match="serving_limits.max_replicas must be at least 1"):
        load_environments(bad)
    bad.write_text(text.replace("serving_limits: {max_replicas: 8,", "serving_limits: {replicas: 8,", 1))
    with pytest.raises(ConfigError, match="malformed"):
        load_environments(bad)
    assert load_rollout_spec(model="m").serving.max_replicas <= ServingLimits().max_replicas  # the default fits
