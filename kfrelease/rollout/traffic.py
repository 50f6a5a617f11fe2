"""The traffic state a release is in, and the driver protocol that applies it.

The release controller only ever computes ``TrafficState`` values; a driver applies them: locally the
nginx gateway (``kfrelease.stack.gateway``), on a cluster a patch of the InferenceService / VirtualService.
Renderers (gateway config, InferenceService, VirtualService) take a ``RolloutSpec`` and a ``TrafficState``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from kfrelease.rollout.spec import RolloutSpecError


@dataclass(frozen=True)
class TrafficState:
    """Who serves: ``primary`` answers clients; ``shadow`` gets mirrored copies whose answers are
    discarded; ``canary`` answers ``canary_weight`` percent of client requests (a canary at 100 with no
    primary serves alone: a first model, provisional). ``unavailable``: no version serves, and why (a first
    model withdrawn by its release); clients get a 503 that says so."""

    primary: str | None  # model version, e.g. "V1.1.0"
    shadow: str | None = None
    canary: str | None = None
    canary_weight: int = 0
    mirror_percent: float = 0.0
    unavailable: str = ""

    def __post_init__(self):
        if self.unavailable and (self.primary or self.shadow or self.canary):
            raise RolloutSpecError(
                f"a traffic state that serves {', '.join(self.versions())} cannot also be unavailable; "
                "no traffic was moved"
            )
        if not 0 <= self.canary_weight <= 100:
            raise RolloutSpecError(f"canary weight {self.canary_weight} is outside 0..100; no traffic was moved")
        if self.canary_weight and not self.canary:
            raise RolloutSpecError("a canary weight above 0 needs a canary version; no traffic was moved")
        if not 0 <= self.mirror_percent <= 100:
            raise RolloutSpecError(f"mirror percent {self.mirror_percent} is outside 0..100; no traffic was moved")

    def with_canary(self, version: str | None, weight: int) -> TrafficState:
        return replace(self, canary=version, canary_weight=weight)

    def promoted(self) -> TrafficState:
        """The canary becomes the primary; no canary, no shadow."""
        return TrafficState(primary=self.canary or self.primary)

    def rolled_back(self) -> TrafficState:
        """The canary gets nothing; the primary is untouched."""
        return TrafficState(primary=self.primary)

    def versions(self) -> list[str]:
        return [v for v in (self.primary, self.shadow, self.canary) if v]

    def describe(self) -> str:
        """One line for people: ``primary V1.1.0, canary V1.2.0 at 25%, shadow V1.3.0 (100% mirrored)``."""
        if self.unavailable:
            return f"unavailable: {self.unavailable}"
        parts = [f"primary {self.primary}"] if self.primary else []
        if self.canary:
            parts.append(f"canary {self.canary} at {self.canary_weight}%")
        if self.shadow:
            parts.append(f"shadow {self.shadow} ({self.mirror_percent:g}% mirrored)")
        return ", ".join(parts)


class TrafficDriver(Protocol):
    """Applies a traffic state; must be idempotent and must not drop in-flight requests."""

    def apply(self, state: TrafficState) -> None: ...

    def current(self) -> TrafficState | None: ...
