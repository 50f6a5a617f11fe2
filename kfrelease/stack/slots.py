"""The one table of model servers on the embedded stack: which server plays which role, on which port.

How model versions map to processes (measured in ``bench/bench_models.py``, see docs/serving.md): a
``kserve`` process costs ~230 MB of private memory before it holds any model, a small scikit-learn model
a few MB more. A process per (model, role) would put 10 models in production over 2 GiB, so one
``ModelServer`` process per (stage, replica) hosts *many models* (``kfrelease.serving.host``): every model's
production version lives in ``predictor-production`` and ``predictor-production-1`` (two replicas by
default, ``KFRELEASE_PRODUCTION_REPLICAS``; more when its rollout spec's ``serving.min_replicas`` asks for
more), its staging candidate (shadow) in ``predictor-staging``, its canary in ``predictor-canary``. Inside a server each model is a separate ``kserve.Model`` under its own name,
loaded, replaced and unloaded in place (no restart), so a release of one model never restarts a server
another model uses.

Ports: ``settings.port("predictor")`` + the slot's index in this table; replica 0 of the three stages
keeps the first three ports (what Prometheus scrapes), further replicas take the next ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from kfrelease.config import Settings, setting
from kfrelease.errors import ConfigError

ROLES = ("primary", "shadow", "canary")
#: Which stage's model server plays which role of a traffic state.
ROLE_STAGE = {"primary": "production", "shadow": "staging", "canary": "canary"}
STAGES = ("production", "staging", "canary")
#: Most replicas of a model's primary (and canary) on one machine.
MAX_REPLICAS = 4


@dataclass(frozen=True, order=True)
class ServerSlot:
    """One model server: a stage (production, staging, canary) and a replica number."""

    stage: str
    replica: int = 0

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ConfigError(f"stage {self.stage!r} is not one of {', '.join(STAGES)}")
        if not 0 <= self.replica < MAX_REPLICAS or (self.stage == "staging" and self.replica):
            raise ConfigError(
                f"replica {self.replica} of the {self.stage} model server is not allowed: "
                f"0..{MAX_REPLICAS - 1} for production and canary, only 0 for staging (the shadow)"
            )

    @property
    def name(self) -> str:
        """The stack service name: ``predictor-<stage>`` for replica 0, ``predictor-<stage>-<n>`` after."""
        return f"predictor-{self.stage}" + (f"-{self.replica}" if self.replica else "")

    @property
    def index(self) -> int:
        if self.replica == 0:
            return STAGES.index(self.stage)
        return 3 + 2 * (self.replica - 1) + (0 if self.stage == "production" else 1)

    def port(self, settings: Settings) -> int:
        return settings.port("predictor") + self.index


def all_slots() -> list[ServerSlot]:
    out = [ServerSlot(stage) for stage in STAGES]
    for r in range(1, MAX_REPLICAS):
        out += [ServerSlot("production", r), ServerSlot("canary", r)]
    return out


def slot_named(name: str) -> ServerSlot:
    for slot in all_slots():
        if slot.name == name:
            return slot
    raise ConfigError(f"{name!r} is not a model server of this stack; known: {', '.join(s.name for s in all_slots())}")


def production_replicas() -> int:
    """``KFRELEASE_PRODUCTION_REPLICAS`` (default 2): the fewest model servers holding production versions."""
    n = setting("KFRELEASE_PRODUCTION_REPLICAS")
    if not 1 <= n <= MAX_REPLICAS:
        raise ConfigError(
            f"KFRELEASE_PRODUCTION_REPLICAS={n} is outside 1..{MAX_REPLICAS}; give the number of production "
            "model servers (2: one killed, the other answers)"
        )
    return n


def slots_for(role: str, replicas: int) -> list[ServerSlot]:
    """The servers that play ``role`` for a model with ``replicas`` replicas (the shadow always has one)."""
    stage = ROLE_STAGE[role]
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ConfigError(
            f"replicas {replicas} is outside 1..{MAX_REPLICAS}; set serving.min_replicas in the rollout spec"
        )
    return [ServerSlot(stage, r) for r in range(1 if role == "shadow" else replicas)]


def predictor_port(settings: Settings, stage: str, replica: int = 0) -> int:
    """Port of the model server of ``stage`` (replica 0 unless given)."""
    return ServerSlot(stage, replica).port(settings)
