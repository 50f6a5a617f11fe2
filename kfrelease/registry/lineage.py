"""What produced an artifact: code version, git commit, run id, time."""

from __future__ import annotations

import datetime as dt
import os
import subprocess

import kfrelease
from kfrelease.config import setting


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def git_commit(path: str = ".") -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def code_version() -> dict:
    """kfrelease's version and, when known, the commit it was built from (``KFRELEASE_COMMIT`` in images)."""
    return {
        "kfrelease": kfrelease.__version__,
        "commit": setting("KFRELEASE_COMMIT")
        or git_commit(os.path.dirname(os.path.dirname(os.path.abspath(kfrelease.__file__)))),
    }
