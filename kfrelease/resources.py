"""The repository folders the library reads at run time, wherever kfrelease is installed.

``schemas/`` (vendored CRDs), ``manifests/`` (``sources/environments.yaml``, ``sources/workspaces/``) and ``examples/`` (the demo's
model project) live at the top of a checkout. An editable install (``make setup``) reads them there; a
built wheel (``pip install .``, the project image) carries a copy as package data under
``kfrelease/_resources/<folder>/`` (``setup.py``'s ``build_py`` writes it; ``RESOURCE_DIRS`` is the list both
agree on, and ``tests/manifests/test_ci_and_image.py`` checks the wheel has every file).
"""

from __future__ import annotations

from pathlib import Path

from kfrelease.errors import ConfigError

#: Top-level folders of the checkout that the library reads at run time.
RESOURCE_DIRS = ("schemas", "manifests", "examples")
BUNDLED = Path(__file__).resolve().parent / "_resources"
CHECKOUT = Path(__file__).resolve().parents[1]


def resource_path(name: str) -> Path:
    """Where the folder ``name`` (one of ``RESOURCE_DIRS``) is: the wheel's packaged copy when kfrelease
    was installed from a wheel, else the checkout's (which may not exist)."""
    if name not in RESOURCE_DIRS:
        raise ConfigError(f"{name!r} is not a packaged resource folder ({', '.join(RESOURCE_DIRS)})")
    return BUNDLED / name if (BUNDLED / name).is_dir() else CHECKOUT / name


def resource_dir(name: str) -> Path:
    """The folder ``name``, which must exist."""
    root = resource_path(name)
    if root.is_dir():
        return root
    raise ConfigError(
        f"the {name}/ folder is missing: neither {BUNDLED / name} (an installed wheel) nor {CHECKOUT / name} "
        "(a checkout) exists; reinstall kfrelease with `pip install .` from a checkout"
    )
