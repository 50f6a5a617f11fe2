"""What the CLI prints when nobody is at a terminal (a CI log, a pipe), the ``--json`` of its listings, and
the words it uses for a release's decisions (``kfrelease.training.results.decision_label``, ``standing``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from kfrelease.registry import ModelVersion
from kfrelease.training.results import decision_label, standing

BOX = set("┃│━─┏┓┗┛┡┩└┘╇╈")


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # what a CI runner has: no terminal, no width
    return subprocess.run(
        [sys.executable, "-m", "kfrelease.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, **(env or {})},
        check=False,
    )


def test_a_table_on_a_pipe_is_plain_text_with_nothing_cut():
    long = "run-" + "x" * 150
    script = (
        "from kfrelease.cli.output import table\n"
        f"table('runs', ['run', 'version', 'state'], [({long!r}, 'V1.12.0', 'queued: waiting for a run slot')])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True).stdout
    lines = out.splitlines()
    assert lines[0] == "runs" and lines[1].split() == ["run", "version", "state"]
    assert set(lines[2].replace(" ", "")) == {"-"}
    assert lines[3].split("  ")[0] == long and "V1.12.0" in lines[3] and lines[3].endswith("waiting for a run slot")
    assert "…" not in out and not BOX & set(out)


def test_listings_on_a_pipe_are_plain_and_their_json_parses(tmp_path):
    shown = _cli("access", "show")
    assert shown.returncode == 0, shown.stderr
    assert not BOX & set(shown.stdout) and "…" not in shown.stdout
    assert shown.stdout.splitlines()[1].split() == ["role", "bucket", "actions"]
    matrix = json.loads(_cli("access", "show", "--json").stdout)
    assert {"role", "bucket", "actions"} == set(matrix[0]) and any(r["role"] == "data-scientist" for r in matrix)

    home = {"KFRELEASE_HOME": str(tmp_path / "home"), "KFRELEASE_PORT_OFFSET": "7"}
    services = json.loads(_cli("status", "--json", env=home).stdout)
    assert {"s3", "registry", "watchdog"} <= {s["service"] for s in services}
    assert not any(s["healthy"] for s in services)  # nothing runs in an empty home
    assert isinstance(json.loads(_cli("workspace", "list", "--json").stdout), list)


def _event(stage: str, **evidence) -> dict:
    return {"stage": stage, "who": "release-controller", "why": "...", "evidence": evidence}


def test_a_decision_is_named_by_what_was_decided_not_by_one_of_its_checks():
    skipped = {"name": "accuracy", "status": "skipped", "value": 1.0, "interval": [0.8, 1.3], "n": 9}
    assert decision_label(_event("rejected", phase="rollback", action="rollback", checks=[skipped])) == "rolled back"
    assert decision_label(_event("staging", phase="rollback", action="rollback", checks=[skipped])) == "rolled back"
    assert decision_label(_event("production", phase="promote", action="promote")) == "promoted"
    assert decision_label(_event("staging", phase="canary", action="advance", weight=25)) == "canary 25%: advance"
    assert decision_label(_event("rejected", phase="shadow", decision="fail")) == "rejected by the shadow gate"
    assert decision_label(_event("staging", phase="shadow", decision="pass")) == "passed the shadow gate"
    assert decision_label(_event("staging", phase="shadow", decision="insufficient")).startswith("stopped")
    assert decision_label(_event("rejected", verdict={"passed": False})) == "rejected by validation"
    assert decision_label({"stage": "staging", "evidence": {"run_id": "r"}}) == "staged"
    assert decision_label({"stage": "archived", "evidence": {"replaced_by": "V1.2.0"}}) == "archived"


def test_a_version_rejected_by_its_release_says_so_in_one_statement():
    passed = ModelVersion({"version": "V1.2.0", "verdict": {"passed": True, "reasons": []}}, "rejected")
    events = [
        {"stage": "staging", "evidence": {"run_id": "r"}},
        _event("rejected", phase="shadow", decision="fail"),
    ]
    assert standing(passed, events) == {
        "stage": "rejected",
        "validation": "passed",
        "headline": "passed validation; rejected by the shadow gate",
    }
    refused = ModelVersion({"version": "V1.3.0", "verdict": {"passed": False, "reasons": ["rmse 9.1 > 5"]}}, "rejected")
    assert standing(refused, [_event("rejected", verdict={"passed": False})])["headline"] == (
        "rejected by validation: rmse 9.1 > 5"
    )
    staged = ModelVersion({"version": "V1.4.0", "verdict": {"passed": True}}, "staging")
    assert standing(staged, [{"stage": "staging", "evidence": {}}])["headline"] == "passed validation; in staging"


def test_each_command_loads_only_its_own_modules_and_the_table_matches_what_they_register():
    """``kfrelease.cli.COMMANDS`` is the one table of top-level commands: it must name exactly what the modules
    register (a command missing from it would vanish from the CLI), and a call must import only its modules."""
    import importlib

    import click

    from kfrelease.cli import COMMANDS

    registered = click.Group()
    for module in dict.fromkeys(m for modules in COMMANDS.values() for m in modules):
        importlib.import_module(f"kfrelease.cli.{module}").register(registered)
    assert set(registered.commands) == set(COMMANDS)
    modules = {m[len("kfrelease.cli.") :] for m in sys.modules if m.startswith("kfrelease.cli.")}
    assert {"stack", "data", "specs", "models"} <= modules
    assert set(registered.commands["data"].commands) >= {"init", "publish"}

    probe = (
        "import sys, kfrelease.cli as c\n"
        "c.cli.main(['status', '--help'], standalone_mode=False)\n"
        "print(sorted(m for m in sys.modules if m.startswith('kfrelease.cli.')), 'pandas' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "['kfrelease.cli.output', 'kfrelease.cli.stack'] False", out.stdout
    help_text = _cli("--help").stdout
    assert all(name in help_text for name in COMMANDS), help_text
    unknown = _cli("deploy")
    assert unknown.returncode == 2 and "No such command 'deploy'" in unknown.stderr
