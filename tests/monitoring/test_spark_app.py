"""The monitoring window as a Kubeflow Spark Operator SparkApplication: valid against the vendored CRD
(kubeflow/spark-operator v2.5.2), submitted once and waited on until the operator's terminal state."""

import pytest
import yaml

from kfrelease.k8s.policy.schemas import SchemaValidationError, validate
from kfrelease.monitoring.spark_app import (
    SparkApplicationFailed,
    choose_engine,
    render_spark_application,
    submit_and_wait,
)

FEATURES = ["age", "sex", "bmi"]


def _app(**kw):
    return render_spark_application(
        "diabetes-progression",
        FEATURES,
        run_id="20261201T2200Z",
        namespace="kfrelease-monitoring",
        image="123.dkr.ecr.eu-west-1.amazonaws.com/kfrelease-spark:0.1.0",
        bucket_prefix="acme-",
        **kw,
    )


def test_the_spark_application_matches_the_operators_crd():
    doc = _app(since="2026-12-01T00:00:00Z")
    assert validate(doc)
    spec = doc["spec"]
    assert spec["mainApplicationFile"].endswith("kfrelease/lake/spark.py")
    assert "s3a://acme-inference-logs/model=diabetes-progression/" in spec["arguments"]
    broken = {**doc, "spec": {**spec, "type": "Rust"}}
    with pytest.raises(SchemaValidationError, match="type"):
        validate(broken)


def test_the_rendered_manifests_carry_the_nightly_spark_window_valid_against_the_operators_crd():
    """The platform's monitoring carries the Spark driver's RBAC; the model's nightly window is the model's
    own (``bootstrap/<env>/monitoring.yaml``, rendered from its project, not the platform overlay)."""
    from kfrelease.k8s.environments import MONITORING_NS
    from kfrelease.k8s.render.tree import Sources, base_files, render_tree

    src = Sources.load()
    env = src.envs.environments["staging"]
    platform = base_files(src, env)["monitoring.yaml"]
    assert not [d for d in platform if d["kind"] == "ScheduledSparkApplication"]
    model_docs = list(yaml.safe_load_all(render_tree(src)["bootstrap/staging/monitoring.yaml"]))
    docs = {
        d["kind"]: d
        for d in platform + model_docs
        if d["kind"] == "ScheduledSparkApplication" or d["metadata"]["name"] == "kfrelease-spark-driver"
    }
    scheduled = docs["ScheduledSparkApplication"]
    assert validate(scheduled) and scheduled["spec"]["suspend"] is True  # the pipeline's engine switch runs first
    template = scheduled["spec"]["template"]
    assert template["image"].endswith("/kfrelease-spark:0.1.0") and template["driver"]["serviceAccount"]
    assert "s3a://example-kfrelease-staging-inference-logs/model=diabetes-progression/" in template["arguments"]
    assert docs["RoleBinding"]["metadata"]["namespace"] == MONITORING_NS
    with pytest.raises(SchemaValidationError, match="concurrencyPolicy|schedule"):
        validate({**scheduled, "spec": {**scheduled["spec"], "schedule": 15}})


class SparkOperatorStandIn:
    """Stands in for the Kubernetes API + Spark Operator (neither runs here): create refuses a second
    object of the same name with 409 as the API server does; each get advances the operator's
    ``status.applicationState.state`` along ``states``."""

    def __init__(self, states):
        self.objects, self.states, self.created = {}, list(states), 0

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        key = (namespace, body["metadata"]["name"])
        if key in self.objects:
            err = Exception("AlreadyExists")
            err.status = 409
            raise err
        assert (group, version, plural) == ("sparkoperator.k8s.io", "v1beta2", "sparkapplications")
        self.objects[key] = body
        self.created += 1

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        obj = dict(self.objects[(namespace, name)])
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        obj["status"] = {
            "applicationState": {"state": state, "errorMessage": "executor lost" if "FAIL" in state else ""}
        }
        return obj


def test_submit_waits_for_completion_and_a_retried_step_does_not_submit_twice():
    api = SparkOperatorStandIn(["", "SUBMITTED", "RUNNING", "COMPLETED"])
    doc = _app()
    out = submit_and_wait(api, doc, poll=0, sleep=lambda s: None)
    assert out["status"]["applicationState"]["state"] == "COMPLETED"
    api.states = ["COMPLETED"]
    submit_and_wait(api, doc, poll=0, sleep=lambda s: None)  # the same step retried
    assert api.created == 1


def test_a_failed_application_fails_the_step_with_the_operators_message():
    api = SparkOperatorStandIn(["RUNNING", "FAILED"])
    with pytest.raises(SparkApplicationFailed, match="FAILED: executor lost"):
        submit_and_wait(api, _app(), poll=0, sleep=lambda s: None)


def test_the_engine_switches_to_spark_beyond_one_machine():
    assert choose_engine(10_000_000) == "duckdb"
    assert choose_engine(80_000_000) == "spark"
    assert choose_engine(1_000, days=90) == "spark"
