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

import yaml
from pydantic import Field, ValidationError

from kfrelease.specs import SpecDocument

#: At most one new-data retrain per model per this many minutes, unless its model.yaml says otherwise.
NEW_DATA_MIN_INTERVAL_MINUTES = 60.0


class RetrainPolicy(SpecDocument):
    """When the model is retrained automatically (``kfrelease.training.retrain``; not part of the definition)."""

    on_new_data: bool = Field(
        True, description="Retrain production's definition on a newer curated version of `dataset` (an auto revision)."
    )
    min_interval_minutes: float = Field(
        NEW_DATA_MIN_INTERVAL_MINUTES,
        ge=0,
        description="At most one new-data retrain of this model per this many minutes (a newer version within it "
        "is recorded as rate-limited and retrained once it has passed).",
    )

    @property
    def min_interval_seconds(self) -> float:
        return self.min_interval_minutes * 60.0


def policy_of_spec(text: str | None) -> RetrainPolicy:
    """The policy in a recorded model spec's text (a version registered before this section existed, or a
    spec that cannot be read: the defaults)."""
    try:
        doc = yaml.safe_load(text or "") or {}
    except yaml.YAMLError:
        return RetrainPolicy()
    section = doc.get("retrain") if isinstance(doc, dict) else None
    try:
        return RetrainPolicy.model_validate(section or {})
    except ValidationError:
        return RetrainPolicy()
