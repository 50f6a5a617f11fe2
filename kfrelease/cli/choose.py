"""Which model a command about one model is about: ``--model``, or the only one there is (never a guess)."""

from __future__ import annotations

from kfrelease.config import Settings
from kfrelease.errors import ConfigError
from kfrelease.registry import ModelRegistry
from kfrelease.storage import store_for


def pick_model(model: str | None, names: list[str], command: str) -> str:
    """``model`` if given; else the only name in ``names``; else a one-line ``ConfigError`` naming them."""
    if model:
        return model
    names = sorted(names)
    if len(names) == 1:
        return names[0]
    if not names:
        raise ConfigError(f"kfrelease {command}: no model is registered yet; give --model NAME")
    raise ConfigError(f"kfrelease {command}: {len(names)} models exist ({', '.join(names)}); give --model NAME")


def one_model(settings: Settings, model: str | None, command: str) -> str:
    """``pick_model`` over the registered models (the registry is read only when ``--model`` is left out)."""
    if model:
        return model

    return pick_model(None, ModelRegistry(store_for("data-scientist", settings)).models(), command)
