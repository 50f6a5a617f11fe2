"""The one alert rules file: valid for promtool, its unit tests pass, and the cluster rule is the same."""

import subprocess

from kfrelease.monitoring.rules import (
    load_rules,
    render_prometheus_rule,
    render_rules,
    rules_path,
)


def test_promtool_checks_the_rules():
    out = subprocess.run(
        ["promtool", "check", "rules", str(rules_path())],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 7 rules found" in out.stdout


def test_promtool_unit_tests_of_the_rules_pass():
    out = subprocess.run(
        ["promtool", "test", "rules", "rules_test.yaml"],
        cwd=rules_path().parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_a_broken_expectation_fails_promtool(tmp_path):
    # the unit tests can fail: flip one expectation and promtool must say FAILED
    text = (
        (rules_path().parent / "rules_test.yaml")
        .read_text()
        .replace("at most 0.200 (95% upper bound)", "at most 0.300 (95% upper bound)")
    )
    (tmp_path / "rules.yaml").write_text(rules_path().read_text())
    (tmp_path / "t.yaml").write_text(text)
    out = subprocess.run(
        ["promtool", "test", "rules", "t.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode != 0 and "FAILED" in out.stdout + out.stderr


def test_prometheus_rule_for_the_cluster_carries_the_same_groups():
    doc = render_prometheus_rule(namespace="monitoring")
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PrometheusRule"
    assert doc["spec"]["groups"] == load_rules()["groups"]
    alerts = {r["alert"]: r for g in doc["spec"]["groups"] for r in g["rules"]}
    assert {
        "ModelR2BelowFloor",
        "ModelRMSEAboveBaseline",
        "ModelInputDrift",
        "ModelNoPredictions",
        "ModelNoGroundTruth",
    } <= set(alerts)
    assert alerts["ModelR2BelowFloor"]["labels"]["kind"] == "quality"
    assert alerts["ModelInputDrift"]["labels"]["kind"] == "drift"


def test_local_rendering_can_shorten_the_pending_period():
    fast = render_rules("0s")
    assert {r["for"] for g in fast["groups"] for r in g["rules"]} == {"0s"}
    assert "10m" in {r["for"] for g in render_rules()["groups"] for r in g["rules"]}
