"""A model's automatic-retrain policy: the ``retrain`` section of its ``model.yaml``.

::

    retrain:
      on_new_data: true          # default: a newer curated version of the dataset retrains production's
                                 # definition on it (an auto revision V<tag>.<manual>.<auto+1>)
      min_interval_minutes: 60   # default NEW_DATA_MIN_INTERVAL_MINUTES: at most one new-data retrain per model
                                 # per this many minutes; a newer version within it is recorded as rate-limited
                                 # and retrained once the interval has passed

Not part of the model definition (the fingerprint). The policy of the *production* version's recorded spec
applies (``kfrelease.monitoring.newdata``).
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from kfrelease.errors import ConfigError

#: At most one new-data retrain per model per this many minutes, unless its model.yaml says otherwise.
NEW_DATA_MIN_INTERVAL_MINUTES = 60.0
KEYS = ("on_new_data", "min_interval_minutes")


@dataclass(frozen=True)
class RetrainPolicy:
    on_new_data: bool = True
    min_interval_minutes: float = NEW_DATA_MIN_INTERVAL_MINUTES

    @property
    def min_interval_seconds(self) -> float:
        return self.min_interval_minutes * 60.0


def parse_retrain_policy(doc, origin: str = "model.yaml") -> RetrainPolicy:
    """The ``retrain`` section (None: the defaults); a bad one is a ``ConfigError`` saying what to write."""
    if doc is None:
        return RetrainPolicy()
    if not isinstance(doc, dict) or set(doc) - set(KEYS):
        raise ConfigError(
            f"{origin}: retrain takes {', '.join(KEYS)}, e.g. retrain: {{on_new_data: true, "
            f"min_interval_minutes: {NEW_DATA_MIN_INTERVAL_MINUTES:g}}}"
        )
    on = doc.get("on_new_data", True)
    if not isinstance(on, bool):
        raise ConfigError(f"{origin}: retrain.on_new_data must be true or false, not {on!r}")
    minutes = doc.get("min_interval_minutes", NEW_DATA_MIN_INTERVAL_MINUTES)
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes < 0:
        raise ConfigError(f"{origin}: retrain.min_interval_minutes must be a number of minutes >= 0, not {minutes!r}")
    return RetrainPolicy(on_new_data=on, min_interval_minutes=float(minutes))


def policy_of_spec(text: str | None) -> RetrainPolicy:
    """The policy in a recorded model spec's text (a version registered before this section existed, or a
    spec that cannot be read: the defaults)."""
    try:
        doc = yaml.safe_load(text or "") or {}
    except yaml.YAMLError:
        return RetrainPolicy()
    try:
        return parse_retrain_policy(doc.get("retrain") if isinstance(doc, dict) else None)
    except ConfigError:
        return RetrainPolicy()
