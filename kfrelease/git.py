"""Running ``git`` on a repository (a model project): one way to call it and to report its failure."""

from __future__ import annotations

import subprocess
from pathlib import Path

from kfrelease.errors import ConfigError


def git(repo: str | Path, *args: str, env: dict[str, str] | None = None) -> str:
    """The standard output of ``git -C repo ARGS``, or a ``ConfigError`` with git's own message."""
    proc = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30, check=False, env=env
    )
    if proc.returncode != 0:
        raise ConfigError(f"git {' '.join(args)} in {repo} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout
