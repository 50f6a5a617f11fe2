"""``kfrelease release run --background`` says what actually happened: started, already running, started
again after an earlier release of the version ended, or nothing at all because the version's release has
ended (an error, exit 1). It starts the release even when the training hand-over is off
(``KFRELEASE_AUTO_RELEASE=0``, as on the test stack): a person asked for it."""

from __future__ import annotations

import re

import pytest

from kfrelease.demo.flow import create_release_demo_project
from kfrelease.release.handover import wait_release
from kfrelease.stack.supervisor import pid_alive, stop_process_group
from kfrelease.training.spec import load_project_at_commit
from kfrelease.training.steps import run_inline
from tests.release.conftest import small_spec, traffic

pytestmark = pytest.mark.integration


def _pid(text: str) -> int:
    return int(re.search(r"pid (\d+)", text).group(1))


@pytest.mark.slow(seconds=50, waits=True)
def test_release_run_in_the_background_says_what_happened(release_env, run_cli):
    settings, ds, name, tmp = release_env
    repo = tmp / "project"
    shas = create_release_demo_project(repo, name=name, dataset=ds.name)
    # small steps, so the first model's live evidence is quick: an inline run records no rollout.yaml with the
    # version (a merge-trigger run does), so the spec is passed as a person would; without it the packaged
    # default's 30 s steps held the first model for ~80 s
    rollout = tmp / "rollout.yaml"
    rollout.write_text(small_spec(name).to_yaml())

    def staged(sha):
        spec, commit = load_project_at_commit(repo, sha)
        return run_inline(spec, commit, settings=settings, containerize=False).version

    first = staged(shas[0])
    with traffic(settings, name, wait_served=300, rate=60.0):  # provisional until its thresholds pass live
        out = run_cli("release", "run", name, first, "--background", "--spec", str(rollout), check=True).stdout
        assert f"release of {name} {first} started (pid " in out and "; log " in out, out
        assert wait_release(settings, name, first, timeout=300) == "production"
    ended = run_cli("release", "run", name, first, "--background")
    assert ended.returncode == 1 and "Traceback" not in ended.stderr
    assert f"error: {name} {first} is production, not in staging: its release has ended" in ended.stderr
    assert f"last decision: promoted: first model of {name} (tag 1), provisional: " in ended.stderr
    assert "nothing was started" in ended.stderr

    second = staged(shas[1])
    started = run_cli("release", "run", name, second, "--background", "--spec", str(rollout), check=True).stdout
    assert f"release of {name} {second} started (pid " in started, started
    pid = _pid(started)
    try:
        again = run_cli("release", "run", name, second, "--background", check=True).stdout
        assert f"the release of {name} {second} is already running (pid {pid}, started earlier)" in again, again
        assert "nothing new was started" in again
    finally:
        stop_process_group(pid)  # the release ends without a verdict: the version stays in staging
    restarted = run_cli("release", "run", name, second, "--background", "--spec", str(rollout), check=True).stdout
    try:
        assert f"release of {name} {second} started again (pid " in restarted, restarted
        assert "the earlier one ended with the version still in staging (last decision: " in restarted
        assert _pid(restarted) != pid and pid_alive(_pid(restarted))
    finally:
        stop_process_group(_pid(restarted))
