"""Where a model's rollout spec comes from: ``rollout.yaml`` beside ``model.yaml`` in the model project.

It travels with the merge: ``trigger`` reads it at the merged commit (a bad one is refused before any run
exists), records its text in the run record (``rollout_yaml``), the register step keeps it in the version's
registry entry (``rollout``), and the deploy-staging step hands it to the release of that version
(``kfrelease.release.handover.start_release(..., spec_yaml=...)``). An auto revision takes the rollout spec
recorded with the production version it retrains. A project without ``rollout.yaml`` is released with
``KFRELEASE_ROLLOUT_SPEC`` (a file) or else the packaged default (``kfrelease/rollout/default.yaml``).
"""

from __future__ import annotations

from pathlib import Path

from kfrelease.config import setting
from kfrelease.git import git
from kfrelease.rollout.spec import bind_model, load_rollout_spec, parse_rollout_spec
from kfrelease.training import run_records

ROLLOUT_FILE = "rollout.yaml"


def rollout_path(spec_file: str) -> str:
    """The rollout spec's path in the repository: beside the model spec."""
    base = str(Path(spec_file).parent)
    return ROLLOUT_FILE if base in ("", ".") else f"{base}/{ROLLOUT_FILE}"


def checked(text: str, model: str, origin: str) -> str:
    """``text`` if it is a valid rollout spec for ``model`` (else a ``RolloutSpecError`` saying why)."""
    bind_model(parse_rollout_spec(text, origin), model, origin)
    return text


def rollout_at_commit(repo: str | Path, sha: str, spec_file: str, model: str) -> str | None:
    """The text of the project's rollout spec at ``sha`` (checked for ``model``), or None if it has none."""
    path = rollout_path(spec_file)
    if not git(repo, "ls-tree", "--name-only", sha, "--", path).strip():
        return None
    return checked(git(repo, "show", f"{sha}:{path}"), model, f"{path}@{sha[:12]}")


def rollout_of_run(store, run_id: str) -> str | None:
    """The rollout spec text recorded with training run ``run_id`` (None: none, or no such run)."""
    if not run_id or store.stat(run_records.BUCKET, run_records.run_key(run_id, "run.json")) is None:
        return None
    return run_records.get_run(store, run_id).record.get("rollout_yaml") or None


def rollout_spec_of_run(store, run_id: str, model: str):
    """The rollout spec a training run's version will be released with (``RolloutSpec``): the one recorded with
    the run, else ``KFRELEASE_ROLLOUT_SPEC`` (a file), else the packaged default, as the hand-over resolves it.
    Offline validation takes its paired test's rule (margin, error rate, slices) from its ``shadow`` section."""
    text = rollout_of_run(store, run_id)
    if text:
        return bind_model(parse_rollout_spec(text, f"the rollout spec of run {run_id}"), model)
    return load_rollout_spec(setting("KFRELEASE_ROLLOUT_SPEC") or None, model)
