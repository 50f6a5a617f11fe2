"""Where monitoring keeps its records (``pipeline-root`` and ``models``): every key is built by ``key``.

``monitoring/<model>/runs/<run>.json`` (a monitoring run's windows), ``monitoring/<model>/reports/<run>/
<version>-<stage>-<start>.html`` (its drift reports), ``monitoring/alerts/<day>/...`` (every alert received),
``monitoring/retrains/<model>/...`` (every retrain decision) and ``monitoring/newdata/<model>/<dataset
version>.json`` (the new-data poller's claims). A part of a key is escaped (``safe``), so a
model name, a version or a time cannot add a level or an odd character to it.
"""

from __future__ import annotations

import re

ROOT = "monitoring"


def safe(text: str | None) -> str:
    """One part of a key: anything but letters, digits and ``._-`` becomes ``-``; nothing is ``none``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)) if text else "none"


def key(*parts: str | None, prefix: bool = False) -> str:
    """``monitoring/<part>/<part>...``, each part ``safe``; ``prefix``: ending in ``/``, to list under it."""
    path = "/".join([ROOT, *(safe(p) for p in parts)])
    return path + "/" if prefix else path
