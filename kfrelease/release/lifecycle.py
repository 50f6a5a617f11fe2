"""Releases across ``kfrelease down`` and ``kfrelease up`` on the embedded stack.

- ``stop_releases``: every release runner still running (``releases/<model>/<V>.json`` holds its pid and its
  start time: a pid the kernel gave to another program since is not the runner; it runs in a process group
  of its own, with its kfp.local tasks) is stopped, and its record says ``interrupted``: nothing it would
  have done later (start the gateway again, move a stage) happens.
- ``resume_releases``: each interrupted release whose candidate is still in ``staging`` is started again.
  Its traffic goes back to what the registry says (production answers, the candidate is a shadow again:
  the safe state), and the release runs from its last recorded decision's phase, i.e. from the shadow
  gate, since a canary step's evidence does not outlive the interruption. A candidate that was decided
  meanwhile (production, rejected, archived) is not started again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from kfrelease.config import Settings
from kfrelease.registry import ModelRegistry
from kfrelease.release.handover import start_release
from kfrelease.stack.supervisor import record_alive, stop_process_group, write_whole
from kfrelease.storage import store_for

log = logging.getLogger(__name__)

STOP_TIMEOUT = 15.0


def release_records(settings: Settings) -> list[tuple[Path, dict]]:
    root = settings.home / "releases"
    out = []
    for path in sorted(root.glob("*/*.json")) if root.exists() else []:
        try:
            out.append((path, json.loads(path.read_text() or "{}")))
        except (OSError, ValueError):
            log.warning("release record %s is unreadable; left as it is", path)
    return out


def _write(path: Path, record: dict) -> None:
    write_whole(path, json.dumps(record))


def stop_releases(settings: Settings) -> list[str]:
    """Stop every running release runner; returns ``model version`` of each one stopped."""
    stopped = []
    for path, record in release_records(settings):
        if not record_alive(record):  # ended, or its pid is another program's now
            continue
        record["interrupted"] = True
        _write(path, record)
        stop_process_group(record["pid"], STOP_TIMEOUT, started=record.get("pid_started"))
        stopped.append(f"{record.get('model')} {record.get('version')}")
    return stopped


def resume_releases(settings: Settings) -> list[str]:
    """Start again each interrupted release whose candidate is still in staging; returns what was resumed."""
    interrupted = [(p, r) for p, r in release_records(settings) if r.get("interrupted")]
    if not interrupted:
        return []
    registry = ModelRegistry(store_for("pipeline", settings))
    resumed = []
    for path, record in interrupted:
        model, version = record["model"], record["version"]
        stage = registry.get(model, version).stage
        if stage != "staging":
            record["interrupted"] = False
            record["resumed"] = f"not resumed: {version} is {stage or 'not staged'} now"
            _write(path, record)
            continue
        path.unlink()  # the hand-over starts a version's release once per record
        start_release(settings, model, version, record.get("spec"))
        resumed.append(f"{model} {version}")
    return resumed
