"""The model spec: what a data scientist commits (``model.yaml``, plus optional Python code).

Example (``examples/diabetes-model/model.yaml``)::

    name: diabetes-progression     # model name in the registry
    tag: 1                         # Model_Tag: bump when the model's kind or input schema changes
    dataset: diabetes              # curated dataset to train on (latest version unless a run pins one)
    features: [age, sex, bmi, ...] # input schema, in order
    target: progression
    estimator:                     # any scikit-learn compatible estimator ...
      class: sklearn.linear_model.Ridge
      params: {alpha: 1.0}
    # build: model.py:build_model  # ... or a function in the project returning one (e.g. a Pipeline)
    split: {test_size: 0.2, seed: 42}
    validation:
      max_rmse: 70                 # absolute thresholds (any of max_mse, max_rmse, max_mae, min_r2)
      min_r2: 0.3
      tolerance: 0.02              # may be at most 2 % worse (RMSE) than production on the same test data
      max_drift_share: null        # drift is reported; set a share to also fail on it
    resources: {cpu: "2", memory: 8Gi} # optional: what train/evaluate may use (requests; limits and
                                       # node_selector too), see kfrelease.training.resources
    flavour: auto                  # the model file served: the fastest verified flavour (or onnx, sklearn, xgboost, lightgbm)
    flavour_tolerance: 0.0001      # how far a converted flavour may be from scikit-learn on held-out rows

The **fingerprint** is a SHA-256 of the model *definition* only: features, target, estimator (class and
hyper-parameters) or the build code's text, and the split. Name, tag, dataset, thresholds, resources, the
flavour keys and data versions are not part of it: a new fingerprint within a tag means a new manual revision
(the flavour keys apply from the next version trained).
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import types
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import yaml
from pydantic import Field, PrivateAttr, field_validator, model_validator

from kfrelease.errors import ConfigError
from kfrelease.git import git
from kfrelease.registry.artifact import AUTO, DEFAULT_TOLERANCE, FLAVOURS
from kfrelease.specs import Items, Section, SpecDocument, at_least, did_you_mean, parse, repeated
from kfrelease.training.estimator import check_estimator
from kfrelease.training.resources import Resources
from kfrelease.training.retrain import RetrainPolicy

if TYPE_CHECKING:
    from kfrelease.data.spec import DatasetSpec

log = logging.getLogger(__name__)

SPEC_FILE = "model.yaml"
THRESHOLD_KEYS = ("max_mse", "max_rmse", "max_mae", "min_r2")


#: The estimator libraries the project image installs (setup.py: scikit-learn, and the ``boosters`` extra). The
#: trigger imports an estimator's module only from these (``ModelSpec.check_definition``); any other is imported by
#: the untrusted train step alone.
ESTIMATOR_LIBRARIES = ("sklearn", "xgboost", "lightgbm")


def _import_estimator(path: str, where: str):
    """The class at an import path, or a ConfigError suggesting the closest scikit-learn regressor."""
    module_name, _, cls_name = path.rpartition(".")
    module = None
    try:
        module = importlib.import_module(module_name)
        return getattr(module, cls_name)
    except (ImportError, AttributeError, ValueError):
        pass
    raise _unknown_estimator(path, where, module)


def _unknown_estimator(path: str, where: str, module=None) -> ConfigError:
    """The error for an estimator path that names no class (``module``: its module, when that imported)."""
    module_name, _, cls_name = path.rpartition(".")
    names = [n for n in dir(module) if not n.startswith("_")] if module is not None else []
    close = difflib.get_close_matches(cls_name, names, n=1, cutoff=0.6)  # the module is right, the class is not
    hint = f" (did you mean {module_name + '.' + close[0]!r}?)" if close else ""
    if not hint:  # the module is wrong too: the closest scikit-learn regressor, by path or by class name
        paths = _regressor_paths()
        by_name = {p.rpartition(".")[2]: p for p in paths}
        close = difflib.get_close_matches(cls_name, by_name, n=1, cutoff=0.6)
        hint = did_you_mean(path, paths) or (f" (did you mean {by_name[close[0]]!r}?)" if close else "")
    return ConfigError(
        f"{where}: unknown estimator {path!r}{hint}; give an import path such as sklearn.linear_model.Ridge"
    )


def _regressor_paths() -> list[str]:
    """Import paths of scikit-learn's public regressors (only read to suggest a name)."""
    try:
        from sklearn.utils import all_estimators  # heavy: sklearn

        return [f"{c.__module__.rsplit('._', 1)[0]}.{n}" for n, c in all_estimators(type_filter="regressor")]
    except Exception:  # noqa: BLE001 - a suggestion is optional
        return []


def _param_names(cls) -> list[str]:
    """The hyper-parameters the class declares (scikit-learn's ``get_params``), or [] when it does not say."""
    getter = getattr(cls, "_get_param_names", None)  # the classmethod behind BaseEstimator.get_params
    try:
        if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls).parameters.values()):
            return []  # takes **kwargs (e.g. xgboost): any name may be valid
        if callable(getter):
            return list(getter())
        return list(cls().get_params(deep=False))
    except Exception:  # noqa: BLE001 - a class without defaults or get_params: let its constructor decide
        return []


class EstimatorSpec(SpecDocument):
    """A scikit-learn compatible estimator named by its import path."""

    class_: str = Field(
        alias="class",
        min_length=1,
        description="The estimator's import path, e.g. `sklearn.linear_model.Ridge` (a regressor).",
    )
    params: dict[str, Any] | None = Field(
        None, description="Its hyper-parameters, as keyword arguments (checked against the class's `get_params()`)."
    )


class SplitSpec(SpecDocument):
    """How the curated data is split into training and held-out test rows."""

    test_size: float = Field(0.2, description="Share of the rows held out for evaluation, between 0 and 1.")
    seed: int = Field(42, description="Seed of the split, so a retrain holds out the same rows.")

    @field_validator("test_size")
    @classmethod
    def _share(cls, value):
        if not 0 < value < 1:
            raise ValueError(f"must be between 0 and 1, not {value!r}")
        return value


class ValidationSpec(SpecDocument):
    """What a candidate must meet to be registered as validated (any key may be left out or null)."""

    max_mse: float | None = Field(None, description="Largest allowed mean squared error on the test rows.")
    max_rmse: float | None = Field(None, description="Largest allowed root mean squared error on the test rows.")
    max_mae: float | None = Field(None, description="Largest allowed mean absolute error on the test rows.")
    min_r2: float | None = Field(None, description="Smallest allowed R² on the test rows.")
    tolerance: float | None = Field(
        None,
        description="How much worse (a share of RMSE) than production on the same test rows is allowed, "
        "e.g. 0.02; null: no worse at all.",
    )
    max_drift_share: float | None = Field(
        None, description="Drift is always reported; a share of drifted features above this also fails validation."
    )


class ModelSpec(SpecDocument):
    """A model spec (`model.yaml`, committed by the data scientists at the root of their model project)."""

    name: str = Field(min_length=1, description="The model's name in the registry.")
    description: str = Field("", description="What the model predicts, for the people who read it.")
    tag: int = Field(description="The Model_Tag, a whole number >= 1: bump it when the model's kind or inputs change.")
    dataset: str = Field(
        min_length=1, description="The curated dataset to train on (its latest version unless a run pins one)."
    )
    features: Items[str] = Field(description="The input columns, in order (the model's input schema).")
    target: str = Field(min_length=1, description="The column to predict.")
    estimator: EstimatorSpec | None = Field(
        None, description="A scikit-learn compatible estimator `{class, params}`; give this or `build`."
    )
    build: str | None = Field(
        None,
        pattern=r"^[^:]+\.py(:[A-Za-z_][A-Za-z0-9_]*)?$",
        description="`file.py:function` in the project returning an unfitted estimator (e.g. a Pipeline); "
        "give this or `estimator`.",
    )
    split: Section[SplitSpec] = Field(None, description="How the data is split for evaluation.")
    validation: Section[ValidationSpec] = Field(None, description="The thresholds a candidate must meet.")
    resources: Section[Resources] = Field(None, description="What the train and evaluate steps may use.")
    retrain: Section[RetrainPolicy] = Field(None, description="When new data retrains the model automatically.")
    flavour: str = Field(
        AUTO,
        description="The model file served: `auto` (the fastest flavour whose predictions on the held-out rows "
        "agree with scikit-learn's within `flavour_tolerance`), or one flavour by name (`onnx`, `sklearn`, and "
        "`xgboost` or `lightgbm`: an XGBRegressor's or LGBMRegressor's own model file, for a booster that is the "
        "whole model); a flavour that does not verify is not served: the version keeps a verified one and its "
        "registry entry says why.",
    )
    flavour_tolerance: Annotated[float, at_least(0, above=True)] = Field(
        DEFAULT_TOLERANCE,
        description="How far a converted flavour's predictions may be from scikit-learn's on the held-out rows: "
        "the largest |flavour - sklearn| / (|sklearn| + spread of sklearn's predictions).",
    )
    _code: dict = PrivateAttr(default_factory=dict)  # file name -> source text (for ``build``)

    @field_validator("tag")
    @classmethod
    def _tag(cls, value):
        if value < 1:
            raise ValueError(f"must be a whole number >= 1 (the Model_Tag), not {value!r}")
        return value

    @field_validator("flavour")
    @classmethod
    def _flavour(cls, value):
        known = [AUTO, *FLAVOURS]
        if value not in known:
            raise ValueError(f"{value!r} is not a model flavour; use one of {', '.join(known)}")
        return value

    @field_validator("features")
    @classmethod
    def _features(cls, value):
        if not value:
            raise ValueError("must be a non-empty list of column names")
        twice = repeated(value)
        if twice:
            raise ValueError(f"lists {', '.join(twice)} twice")
        return value

    @model_validator(mode="after")
    def _one_definition(self):
        if self.target in self.features:
            raise ValueError(f"target {self.target!r} is also listed as a feature")
        if (self.estimator is None) == (self.build is None):
            raise ValueError("give exactly one of estimator {class, params} or build: file.py:function")
        return self

    # serialisation: components receive the spec as a typed ``dict`` parameter (KFP's STRUCT: model.yaml's text
    # and its code, strings only, so nothing is lost on the way); run records keep it as JSON --------------------
    def to_dict(self) -> dict:
        return {"text": self.text, "code": dict(self.code)}

    @classmethod
    def from_dict(cls, doc: dict) -> ModelSpec:
        return parse_spec(doc["text"], code=doc.get("code") or {})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, doc: str) -> ModelSpec:
        return cls.from_dict(json.loads(doc))

    def differences(self, other: ModelSpec) -> list[str]:
        """Where ``other`` differs from this spec: the dotted ``model.yaml`` keys whose values differ
        (``validation.max_rmse``), ``code:<file>`` for a code file, or ``model.yaml text`` when only its text does
        (comments, layout); empty when ``to_json()`` is equal."""

        def keys(a, b, at: str) -> list[str]:
            if isinstance(a, dict) and isinstance(b, dict):
                return [
                    k
                    for name in sorted(set(a) | set(b), key=str)
                    for k in keys(a.get(name), b.get(name), f"{at}.{name}")
                ]
            return [] if a == b else [at]

        if self.to_json() == other.to_json():
            return []
        found = [k.removeprefix(".") for k in keys(yaml.safe_load(self.text), yaml.safe_load(other.text), "")]
        found += [
            f"code:{f}" for f in sorted(set(self.code) | set(other.code)) if self.code.get(f) != other.code.get(f)
        ]
        return found or ["model.yaml text"]

    @property
    def code(self) -> dict:
        """The project's code the spec names (file name -> source text), for ``build``."""
        return self._code

    @property
    def definition(self) -> dict:
        """What decides the manual revision (see the module docstring)."""
        estimator = None
        if self.estimator is not None:  # as written: the fingerprint hashes it
            estimator = {"class": self.estimator.class_, "params": dict(self.estimator.params or {})}
        build_code = None
        if self.build:
            file = self.build.partition(":")[0]
            build_code = {"entry": self.build, "source": self.code.get(file, "")}
        return {
            "features": list(self.features),
            "target": self.target,
            "estimator": estimator,
            "build": build_code,
            "split": {"test_size": float(self.split.test_size), "seed": self.split.seed},
        }

    @property
    def fingerprint(self) -> str:
        canonical = json.dumps(self.definition, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def input_schema(self, dataset: DatasetSpec | None) -> list[dict]:
        """The registered model's input schema: its features as the dataset spec declares them
        (``DatasetSpec.input_schema``: a category column with its known values and serving policy); without the
        dataset's spec (a version published before specs were stored), every feature as float64."""
        if dataset is None:
            return [{"name": f, "dtype": "float64"} for f in self.features]
        return dataset.input_schema(self.features)

    def tolerance(self) -> float:
        return float(self.validation.tolerance or 0.0)

    def thresholds(self) -> dict[str, float]:
        limits = {k: getattr(self.validation, k) for k in THRESHOLD_KEYS}
        return {k: float(v) for k, v in limits.items() if v is not None}

    # the estimator ----------------------------------------------------------------------------------
    def build_estimator(self):
        """A fresh, unfitted estimator. Raises ConfigError for an unknown class, a build function that
        fails, or invalid hyper-parameters (scikit-learn's own parameter validation, before any fit)."""
        if self.build:
            est = self._from_build()
        else:
            est = self._from_class()

        check_estimator(est, f"model spec {self.name!r}")  # public API only: a project's own class passes too
        return est

    def check_definition(self) -> None:
        """Check the estimator definition **without running the project's code** (what ``kfrelease trigger``
        does before it starts a run; the untrusted train step then builds the estimator, ``build_estimator``).

        - ``estimator``: a dotted import path; from one of ``ESTIMATOR_LIBRARIES`` (installed code the platform
          pins, not the merge's) the class is imported and its hyper-parameters are checked by name and by its
          constructor, as ``build_estimator`` does; a path into any other installed package is only looked up
          (``importlib.util.find_spec`` of its top package, which executes nothing) and left to the train step;
        - ``build``: the file is in the project, parses (``ast``) and binds the named function at module level.

        What only running the code can show (the build function raising, a class without fit/predict) is the
        train step's failure, recorded in the run's ``train`` step with its cause (``model code``)."""
        where = f"model spec {self.name!r}"
        if self.build:
            file, _, func = self.build.partition(":")
            source = self.code.get(file)
            if source is None:
                raise ConfigError(f"{where}: build code {file!r} is not in the project")
            try:
                tree = ast.parse(source, filename=file)
            except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:  # what exec's compile would raise
                raise ConfigError(f"{where}: {file} failed to load: {type(exc).__name__}: {exc}") from None
            if (func or "build_model") not in _module_names(tree.body):
                raise ConfigError(f"{where}: {file} defines no function {func or 'build_model'!r}")
            return
        path = self.estimator.class_
        parts = path.split(".")
        if len(parts) < 2 or not all(p.isidentifier() for p in parts):
            raise _unknown_estimator(path, where)
        if parts[0] in ESTIMATOR_LIBRARIES and importlib.util.find_spec(parts[0]) is not None:
            check_estimator(self._from_class(), where)
        elif importlib.util.find_spec(parts[0]) is None:
            raise _unknown_estimator(path, where)
        else:
            log.info("%s: estimator %s is checked by the train step (not imported here)", where, path)

    def _from_class(self):
        path = self.estimator.class_
        cls = _import_estimator(path, f"model spec {self.name!r}")
        params = self.estimator.params or {}
        known = _param_names(cls)
        unknown = [p for p in params if known and p not in known]
        if unknown:
            raise ConfigError(
                f"model spec {self.name!r}: invalid hyper-parameter estimator.params.{unknown[0]}: {path} has no such "
                f"parameter{did_you_mean(unknown[0], known)}; its parameters: {', '.join(sorted(known))}"
            )
        try:
            return cls(**params)
        except TypeError as exc:
            raise ConfigError(f"model spec {self.name!r}: invalid hyper-parameter for {path}: {exc}") from None

    def _from_build(self):
        file, _, func = self.build.partition(":")
        source = self.code.get(file)
        if source is None:
            raise ConfigError(f"model spec {self.name!r}: build code {file!r} is not in the project")
        module = types.ModuleType(f"kfrelease_model_{Path(file).stem}")
        module.__file__ = file
        try:
            exec(compile(source, file, "exec"), module.__dict__)  # noqa: S102 - the project's own code, at its commit
        except Exception as exc:  # noqa: BLE001 - any error in user code becomes one clear message
            raise ConfigError(f"model spec {self.name!r}: {file} failed to load: {type(exc).__name__}: {exc}") from None
        fn = getattr(module, func or "build_model", None)
        if not callable(fn):
            raise ConfigError(f"model spec {self.name!r}: {file} defines no function {func or 'build_model'!r}")
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"model spec {self.name!r}: {self.build} raised {type(exc).__name__}: {exc}") from None


def _module_names(body: list[ast.stmt]) -> set[str]:
    """The names a module's top-level statements bind (defs, classes, assignments, imports), also inside
    ``if``/``try``/``with``/loop blocks at module level; never inside a function or class body."""
    names: set[str] = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            continue
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).partition(".")[0] for a in node.names)
        inner = [*getattr(node, "body", []), *getattr(node, "orelse", []), *getattr(node, "finalbody", [])]
        inner += [stmt for handler in getattr(node, "handlers", []) for stmt in handler.body]
        names |= _module_names([stmt for stmt in inner if isinstance(stmt, ast.stmt)])
    return names


def parse_spec(text: str, origin: str = SPEC_FILE, code: dict | None = None) -> ModelSpec:
    """Parse and check a model spec (structure only; the data is checked against it before training)."""
    shape = "a model spec is a mapping with name, tag, dataset, features, target, estimator"
    spec = parse(ModelSpec, text, origin, shape)
    spec._code = dict(code or {})
    return spec


def _code_files(spec_text: str) -> list[str]:
    try:
        doc = yaml.safe_load(spec_text)
    except yaml.YAMLError:
        return []
    build = doc.get("build") if isinstance(doc, dict) else None
    return [build.partition(":")[0]] if isinstance(build, str) and ":" in build else []


def load_project(path: str | Path, spec_file: str = SPEC_FILE) -> ModelSpec:
    """Load a model project from a folder (the spec and the code it names)."""
    root = Path(path)
    spec_path = root / spec_file if root.is_dir() else root
    if not spec_path.is_file():
        raise ConfigError(f"no model spec at {spec_path}; a model project has a {SPEC_FILE} at its root")
    text = spec_path.read_text()
    code = {}
    for name in _code_files(text):
        file = spec_path.parent / name
        if not file.is_file():
            raise ConfigError(f"{spec_path}: build code {name} does not exist beside it")
        code[name] = file.read_text()
    return parse_spec(text, str(spec_path), code)


def load_project_at_commit(repo: str | Path, commit: str, spec_file: str = SPEC_FILE) -> tuple[ModelSpec, str]:
    """The model spec (and its code) as committed at ``commit`` in the git repository ``repo``.

    Returns the spec and the full commit SHA."""
    if not Path(repo).is_dir():
        raise ConfigError(f"repository {repo} does not exist")
    try:
        sha = git(repo, "rev-parse", "--verify", f"{commit}^{{commit}}").strip()
    except ConfigError:
        raise ConfigError(f"commit {commit!r} is not in the repository {repo}; push or fetch it first") from None
    try:
        text = git(repo, "show", f"{sha}:{spec_file}")
    except ConfigError:
        raise ConfigError(
            f"commit {sha[:12]} in {repo} has no {spec_file}; a model project has one at its root"
        ) from None
    base = str(Path(spec_file).parent)
    code = {}
    for name in _code_files(text):
        rel = name if base in ("", ".") else f"{base}/{name}"
        try:
            code[name] = git(repo, "show", f"{sha}:{rel}")
        except ConfigError:
            raise ConfigError(
                f"commit {sha[:12]}: {spec_file} names build code {name}, which is not committed"
            ) from None
    return parse_spec(text, f"{spec_file}@{sha[:12]}", code), sha
