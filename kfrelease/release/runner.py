"""``python -m kfrelease.release.runner MODEL VERSION [--spec FILE] [--inline]``: one release, in the
foreground: the release pipeline on ``kfp.local`` (default), or the controller in this process (``--inline``)."""

from __future__ import annotations

import argparse
import logging
import sys

from kfrelease.config import Settings
from kfrelease.errors import KfreleaseError
from kfrelease.release.run import run_release
from kfrelease.rollout.spec import load_rollout_spec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kfrelease.release.runner")
    p.add_argument("model")
    p.add_argument("version")
    p.add_argument("--spec", default=None)
    p.add_argument(
        "--inline",
        action="store_true",
        help="run the controller in this process, not the pipeline",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    try:
        if args.inline:
            outcome = run_release(settings, args.model, args.version, load_rollout_spec(args.spec))
            print(f"{outcome.model} {outcome.candidate}: {outcome.result}; production {outcome.production_after}")
        else:
            print(f"{args.model} {args.version}: {run_release_pipeline(settings, args.model, args.version, args.spec)}")
    except KfreleaseError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0


def run_release_pipeline(settings: Settings, model: str, version: str, spec_path: str | None = None) -> str:
    """The release pipeline on kfp.local (one release per model at a time); returns the version's final stage."""
    from pathlib import Path

    from kfrelease.kfp_runner import run_local
    from kfrelease.pipelines.release_pipeline import release_pipeline
    from kfrelease.registry import ModelRegistry
    from kfrelease.release.run import ReleaseLock
    from kfrelease.storage import store_for

    spec_yaml = Path(spec_path).read_text() if spec_path else ""
    load_rollout_spec(spec_path)  # a bad spec fails before the pipeline starts
    with ReleaseLock(settings, model, version):
        run_local(
            settings,
            release_pipeline,
            model=model,
            version=version,
            spec_yaml=spec_yaml,
        )
    return ModelRegistry(store_for("pipeline", settings)).get(model, version).stage or "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
