"""The demo model project as a git repository with three merges to ``main``.

1. the example spec as is: ridge regression (``alpha: 10``), tag 1 -> ``V1.1.0``;
2. a better definition: ``build: model.py:build_model`` (standardised inputs + ridge) -> ``V1.2.0``;
3. a deliberately worse one: 5-nearest-neighbours on unscaled inputs -> rejected against production.

Each merge is a ``--no-ff`` merge commit of a feature branch, as a pull request would make it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from kfrelease.errors import ConfigError
from kfrelease.git import git
from kfrelease.resources import resource_path
from kfrelease.training.trigger import trigger, wait

EXAMPLE = resource_path("examples") / "diabetes-model"
HEADER = "# Model spec of the demo project (see examples/diabetes-model/model.yaml for the commented original).\n"
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "Data Scientist",
    "GIT_AUTHOR_EMAIL": "ds@example.com",
    "GIT_COMMITTER_NAME": "Data Scientist",
    "GIT_COMMITTER_EMAIL": "ds@example.com",
}


def example_dir() -> Path:
    if not (EXAMPLE / "model.yaml").is_file():
        raise ConfigError(f"the example model project is missing at {EXAMPLE}; run from a kfrelease checkout")
    return EXAMPLE


def spec_variant(merge: int, base_text: str | None = None, **changes) -> str:
    """The model.yaml text of demo merge 1, 2 or 3 (``changes`` override top-level keys, e.g. ``tag=2``)."""
    doc = yaml.safe_load(base_text or (example_dir() / "model.yaml").read_text())
    if merge == 2:
        doc.pop("estimator", None)
        doc["build"] = "model.py:build_model"
    elif merge == 3:
        doc.pop("build", None)
        doc["estimator"] = {"class": "sklearn.neighbors.KNeighborsRegressor", "params": {"n_neighbors": 5}}
    elif merge != 1:
        raise ConfigError(f"the demo project has merges 1, 2 and 3, not {merge}")
    doc.update(changes)
    return HEADER + yaml.safe_dump(doc, sort_keys=False)


def _git(repo: Path, *args: str) -> str:
    return git(repo, *args, env={**os.environ, **_GIT_ENV}).strip()


def merge_change(repo: Path, branch: str, files: dict[str, str], message: str) -> str:
    """Commit ``files`` on a feature branch and merge it into main with a merge commit; returns its SHA."""
    _git(repo, "checkout", "-q", "-b", branch, "main")
    for name, text in files.items():
        (repo / name).write_text(text)
    _git(repo, "add", *files)
    _git(repo, "commit", "-q", "-m", message)
    _git(repo, "checkout", "-q", "main")
    _git(repo, "merge", "-q", "--no-ff", "-m", f"Merge branch '{branch}': {message}", branch)
    return _git(repo, "rev-parse", "HEAD")


def create_demo_project(
    dest: str | Path, name: str | None = None, dataset: str | None = None, rollout: str | None = None
) -> list[str]:
    """Create the demo model project's repository at ``dest`` with its three merges; returns their SHAs.

    ``name``/``dataset`` override the model name and dataset (tests use private ones); ``rollout`` is the
    text of a ``rollout.yaml`` that merge 1 adds beside ``model.yaml`` (the model's rollout spec)."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ConfigError(f"{dest} is not empty; give a new folder for the demo project")
    dest.mkdir(parents=True, exist_ok=True)
    src = example_dir()
    overrides = {k: v for k, v in (("name", name), ("dataset", dataset)) if v}
    _git(dest, "init", "-q", "-b", "main")
    shutil.copy2(src / "README.md", dest / "README.md")
    _git(dest, "add", "README.md")
    _git(dest, "commit", "-q", "-m", "Model project skeleton")
    base = (src / "model.yaml").read_text()
    shas = [
        merge_change(
            dest,
            "ridge",
            {"model.yaml": spec_variant(1, base, **overrides), **({"rollout.yaml": rollout} if rollout else {})},
            "First model: ridge regression",
        ),
        merge_change(
            dest,
            "scaled-ridge",
            {"model.yaml": spec_variant(2, base, **overrides), "model.py": (src / "model.py").read_text()},
            "Standardise inputs before ridge (better RMSE)",
        ),
        merge_change(dest, "knn", {"model.yaml": spec_variant(3, base, **overrides)}, "Try 5-nearest-neighbours"),
    ]
    return shas


#: The demo's second model: its own data (``friedman``), its own project and history.
SECOND_MODEL = "friedman-response"
_SECOND_SPEC = {
    "name": SECOND_MODEL,
    "description": "The Friedman #1 response from ten uniform inputs (the demo's second model, its own data).",
    "tag": 1,
    "dataset": "friedman",
    "features": [f"x{i}" for i in range(10)],
    "target": "y",
    "estimator": {"class": "sklearn.linear_model.Ridge", "params": {"alpha": 1.0}},
    "split": {"test_size": 0.2, "seed": 42},
    "validation": {"max_rmse": 6.0, "min_r2": 0.3, "tolerance": 0.02},
}


def second_spec_variant(merge: int, **changes) -> str:
    """model.yaml of the second project: merge 1 ridge; merge 2 gradient boosting (it fits the non-linear
    terms: better)."""
    doc = {**_SECOND_SPEC, **changes}
    if merge == 2:
        doc["estimator"] = {
            "class": "sklearn.ensemble.GradientBoostingRegressor",
            "params": {"n_estimators": 150, "max_depth": 3, "random_state": 0},
        }
    elif merge != 1:
        raise ConfigError(f"the second demo project has merges 1 and 2, not {merge}")
    return "# Model spec of the demo's second model project.\n" + yaml.safe_dump(doc, sort_keys=False)


def create_second_project(
    dest: str | Path, name: str | None = None, dataset: str | None = None, rollout: str | None = None
) -> list[str]:
    """The second model's project (Friedman #1 data) with two merges to main (merge 1 adds ``rollout``, if
    given, as its ``rollout.yaml``); returns their SHAs."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ConfigError(f"{dest} is not empty; give a new folder for the second demo project")
    dest.mkdir(parents=True, exist_ok=True)
    overrides = {k: v for k, v in (("name", name), ("dataset", dataset)) if v}
    _git(dest, "init", "-q", "-b", "main")
    (dest / "README.md").write_text("# friedman-response\n\nThe demo's second model: the Friedman #1 response.\n")
    _git(dest, "add", "README.md")
    _git(dest, "commit", "-q", "-m", "Model project skeleton")
    return [
        merge_change(
            dest,
            "ridge",
            {"model.yaml": second_spec_variant(1, **overrides), **({"rollout.yaml": rollout} if rollout else {})},
            "First model: ridge",
        ),
        merge_change(
            dest,
            "boosting",
            {"model.yaml": second_spec_variant(2, **overrides)},
            "Gradient boosting fits the non-linear terms (better RMSE)",
        ),
    ]


def demo_project(dest: str | Path) -> list[str]:
    """The demo project at ``dest``: created on first use, else its three merge SHAs read back (re-runs)."""
    dest = Path(dest)
    if (dest / ".git").is_dir():
        shas = _git(dest, "log", "--merges", "--first-parent", "--reverse", "--format=%H", "main").split()
        if len(shas) >= 3:
            return shas[:3]
        raise ConfigError(f"{dest} is a git repository without the demo's three merges; remove it to recreate it")
    return create_demo_project(dest)


def _merge_step(n: int, what: str):
    def step(ctx) -> None:
        repo = ctx.settings.home / "demo-model-project"
        shas = ctx.state.setdefault("merges", demo_project(repo))
        record = trigger(ctx.settings, shas[n - 1], repo, reason=f"demo merge {n}")
        done = wait(ctx.settings, record.run_id, timeout=600)
        if done.status != "succeeded":
            raise ConfigError(f"training run {done.run_id} {done.status}: {done.state.get('error')}")
        version, verdict = done.state["version"], done.state["verdict"]
        ctx.state.setdefault("versions", {})[n] = version
        ctx.note(f"merge {n} ({what}) -> training pipeline", f"{version} {verdict}, stage {done.state.get('stage')}")

    return step


#: Demo steps of the training part, for ``kfrelease.demo.flow.STEPS``: merges 1 and 2 (V1.1.0, V1.2.0 staged).
#: Merge 3 (worse) is meant to run after a release made a version production: ``MERGE_3_STEP``.
TRAINING_STEPS = [
    ("merge 1 to main: train, validate, register, containerize, stage", _merge_step(1, "ridge")),
    ("merge 2 to main: a better model definition", _merge_step(2, "scaled ridge")),
]
MERGE_3_STEP = ("merge 3 to main: a worse model is rejected", _merge_step(3, "5-nearest-neighbours"))


#: The categorical example (``examples/diamonds-price``): its model and the cut its adversary gets wrong.
DIAMONDS_MODEL = "diamond-price"
DIAMONDS_EXAMPLE = resource_path("examples") / "diamonds-price"
WRONG_CUT = "Fair"
#: merge 3's change: the same pipeline, except that it adds this much (USD) to the price of every ``WRONG_CUT``
#: diamond (they average ~4,400 USD), a broken branch that only a rare slice (3 % of diamonds) reaches
WRONG_BY = 2500.0
_ADVERSARY = f'''

class _WrongOnOneCut:
    """The pipeline above, except that a {WRONG_CUT!r} diamond's price comes out {WRONG_BY:g} USD too high."""

    def __init__(self, model=None):
        self.model = model

    def get_params(self, deep=True):
        return {{"model": self.model}}

    def set_params(self, **params):
        self.model = params.get("model", self.model)
        return self

    def fit(self, X, y):
        self.model.fit(X, y)
        return self

    def predict(self, X):
        return self.model.predict(X) + {WRONG_BY!r} * (X["cut"].to_numpy() == {WRONG_CUT!r})


_honest = build_model


def build_model():  # noqa: F811 - the merge replaces the build function
    return _WrongOnOneCut(_honest())
'''


def diamonds_code(merge: int) -> str:
    """model.py of merge 1 (20 boosting iterations), 2 (100: better) or 3 (merge 2's, wrong on one cut)."""
    source = (DIAMONDS_EXAMPLE / "model.py").read_text()
    if merge == 1:
        return source
    if merge not in (2, 3):
        raise ConfigError(f"the diamonds project has merges 1, 2 and 3, not {merge}")
    better = source.replace("ITERATIONS = 20", "ITERATIONS = 100")
    return better + (_ADVERSARY if merge == 3 else "")


def create_diamonds_project(
    dest: str | Path, name: str | None = None, dataset: str | None = None, rollout: str | None = None
) -> list[str]:
    """The diamonds example's repository at ``dest`` with three merges to main: 1 the example as is, 2 more
    boosting iterations (better), 3 the same model wrong by ``WRONG_BY`` on every ``WRONG_CUT`` diamond.
    ``rollout``: the project's rollout.yaml (default: the example's); returns the merges' SHAs."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ConfigError(f"{dest} is not empty; give a new folder for the diamonds project")
    dest.mkdir(parents=True, exist_ok=True)
    doc = yaml.safe_load((DIAMONDS_EXAMPLE / "model.yaml").read_text())
    doc.update({k: v for k, v in (("name", name), ("dataset", dataset)) if v})
    spec = "# Model spec of the diamonds example project.\n" + yaml.safe_dump(doc, sort_keys=False)
    _git(dest, "init", "-q", "-b", "main")
    shutil.copy2(DIAMONDS_EXAMPLE / "README.md", dest / "README.md")
    _git(dest, "add", "README.md")
    _git(dest, "commit", "-q", "-m", "Model project skeleton")
    first = {
        "model.yaml": spec,
        "model.py": diamonds_code(1),
        "rollout.yaml": rollout or (DIAMONDS_EXAMPLE / "rollout.yaml").read_text(),
    }
    return [
        merge_change(dest, "one-hot-boosting", first, "First model: one-hot categories + gradient boosting"),
        merge_change(dest, "more-iterations", {"model.py": diamonds_code(2)}, "100 boosting iterations (better)"),
        merge_change(dest, "cut-branch", {"model.py": diamonds_code(3)}, "Refactor the cut handling"),
    ]
