"""``python -m kfrelease.release.runner MODEL VERSION [--spec FILE]``: one release, in the foreground."""

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
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        outcome = run_release(Settings.from_env(), args.model, args.version, load_rollout_spec(args.spec))
    except KfreleaseError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    print(f"{outcome.model} {outcome.candidate}: {outcome.result}; production {outcome.production_after}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
