"""A release on the embedded stack: one release per model at a time (``ReleaseLock``), either the controller
in this process (``run_release``: the serving services, the local gateway and the controller) or the release
pipeline on ``kfp.local`` (``run_release_pipeline``).

``python -m kfrelease.release.embedded MODEL VERSION [--spec FILE] [--wait-for-lock SECONDS] [--inline]`` runs
one release in the foreground: the release pipeline (default) or the controller in this process
(``--inline``); the hand-over (``kfrelease.release.handover``) starts it as a detached process, with
``--wait-for-lock``: a running release of the model is waited for (the hand-over's releases queue).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from kfrelease.config import LOG_FORMAT, Settings, exit_without_collecting
from kfrelease.errors import Conflict, KfreleaseError
from kfrelease.kfp.runner import run_local
from kfrelease.locks import exclusive_lock
from kfrelease.registry import ModelRegistry
from kfrelease.release.controller import ReleaseController, ReleaseOutcome
from kfrelease.rollout.spec import RolloutSpec, bind_model, load_rollout_spec
from kfrelease.stack import supervisor
from kfrelease.stack.services import declared_services
from kfrelease.storage import store_for

log = logging.getLogger(__name__)


def ensure_serving_services(settings: Settings) -> None:
    """The log sink and the feedback service (the gateway starts on the first traffic change)."""
    others = [s for s in declared_services(settings, ("serving",)) if s.name != "gateway"]
    supervisor.up(settings, others)


def lock_path(settings: Settings, model: str) -> Path:
    return settings.home / "releases" / f"{model}.lock"


def lock_holder(path: Path) -> str | None:
    """The version whose release holds a model's release lock (``lock_path``: ``<pid> <version> <start
    time>``, the holder's ``process_identity``), None when no live process holds it: the holder ended, or its
    pid is another program's now."""
    try:
        pid, version, *started = path.read_text().split()
        holder = {"pid": int(pid), "pid_started": int(started[0]) if started else None}
    except (OSError, ValueError):
        return None
    return version if supervisor.record_alive(holder) else None


class ReleaseLock:
    """One release per model at a time on this stack: a record ``<pid> <version> <start time>`` at
    ``lock_path``; a dead holder's is taken over (see ``lock_holder``). Every taker checks and takes it in turn,
    holding the record's guard (``kfrelease.locks.exclusive_lock`` on ``<lock>.guard``, released by the kernel if the
    taker dies), and the record is written whole (a temporary file renamed over it): no reader sees it half
    written, and two takers that both found a dead holder cannot both take it over. ``wait``: seconds to wait for
    a running release of the model to end (the hand-over's releases queue: a merge that trains while the previous
    candidate is still in shadow or canary is released after it, against the production it leaves); 0 raises
    ``Conflict`` at once."""

    def __init__(self, settings: Settings, model: str, version: str, wait: float = 0.0, poll: float = 0.5):
        self.path, self.version, self.wait, self.poll = lock_path(settings, model), version, wait, poll
        self.guard = self.path.with_name(self.path.name + ".guard")
        self.record = ""

    def __enter__(self):
        deadline = time.monotonic() + self.wait
        waited = None
        while True:
            holder = self._try_take()
            if holder is None:
                return self
            if time.monotonic() >= deadline:
                raise Conflict(
                    f"a release of {holder} is running ({self.path}); wait for it (`kfrelease release status`)"
                )
            if waited != holder:
                log.info("waiting for the release of %s to end before releasing %s", holder, self.version)
                waited = holder
            time.sleep(self.poll)

    def _try_take(self) -> str | None:
        """Take the lock; None when taken, else the version whose release holds it."""
        with exclusive_lock(self.guard):
            holder = lock_holder(self.path)
            if holder is not None:
                return holder
            me = supervisor.process_identity()
            self.record = f"{me['pid']} {self.version} {me['pid_started']}\n"
            supervisor.write_whole(self.path, self.record, 0o600)
            return None

    def __exit__(self, *exc):
        with exclusive_lock(self.guard):
            try:
                ours = self.path.read_text() == self.record
            except OSError:
                ours = False
            if ours:  # never another taker's record
                self.path.unlink(missing_ok=True)


def run_release(
    settings: Settings,
    model: str,
    version: str,
    spec: RolloutSpec | None = None,
    on_decision: Callable[[dict], None] | None = None,
) -> ReleaseOutcome:
    """Release ``version`` of ``model`` on the embedded stack (see ``kfrelease.release.controller``)."""
    from kfrelease.stack.gateway import LocalGatewayDriver, predictor_port  # heavy: jinja2

    spec = bind_model(spec or load_rollout_spec(), model)
    with ReleaseLock(settings, model, version):
        ensure_serving_services(settings)
        driver = LocalGatewayDriver(settings, spec)
        current = driver.current()
        preflight = (
            f"http://127.0.0.1:{predictor_port(settings, 'production')}" if current and current.primary else None
        )
        controller = ReleaseController(settings, spec, driver, preflight_url=preflight, on_decision=on_decision)
        return controller.run(version)


def run_release_pipeline(
    settings: Settings, model: str, version: str, spec_path: str | None = None, wait_for_lock: float = 0.0
) -> str:
    """The release pipeline on kfp.local (one release per model at a time: waits up to ``wait_for_lock``
    seconds for a running one); returns the version's final stage."""
    from kfrelease.pipelines.release_pipeline import release_pipeline  # heavy: kfp

    spec_yaml = Path(spec_path).read_text() if spec_path else ""
    load_rollout_spec(spec_path)  # a bad spec fails before the pipeline starts
    with ReleaseLock(settings, model, version, wait=wait_for_lock):
        run_local(
            settings,
            release_pipeline,
            model=model,
            version=version,
            spec_yaml=spec_yaml,
        )
    return ModelRegistry(store_for("pipeline", settings)).get(model, version).stage or "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kfrelease.release.embedded")
    p.add_argument("model")
    p.add_argument("version")
    p.add_argument("--spec", default=None)
    p.add_argument(
        "--wait-for-lock",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for a running release of the model to end (default: fail at once)",
    )
    p.add_argument(
        "--inline",
        action="store_true",
        help="run the controller in this process, not the pipeline",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    exit_without_collecting()  # the process ends with its release
    settings = Settings.from_env()
    try:
        if args.inline:
            outcome = run_release(settings, args.model, args.version, load_rollout_spec(args.spec))
            print(f"{outcome.model} {outcome.candidate}: {outcome.result}; production {outcome.production_after}")
        else:
            stage = run_release_pipeline(settings, args.model, args.version, args.spec, args.wait_for_lock)
            print(f"{args.model} {args.version}: {stage}")
    except KfreleaseError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
