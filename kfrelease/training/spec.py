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

The **fingerprint** is a SHA-256 of the model *definition* only: features, target, estimator (class and
hyper-parameters) or the build code's text, and the split. Name, tag, dataset, thresholds, resources and
data versions are not part of it: a new fingerprint within a tag means a new manual revision.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import types
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kfrelease.errors import ConfigError
from kfrelease.training.resources import MODEL_DEFAULT, Resources, parse_resources

SPEC_FILE = "model.yaml"
THRESHOLD_KEYS = ("max_mse", "max_rmse", "max_mae", "min_r2")
VALIDATION_KEYS = (*THRESHOLD_KEYS, "tolerance", "max_drift_share")
TOP_KEYS = ("name", "tag", "dataset", "features", "target", "estimator", "build", "split", "validation", "description",
            "resources")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    tag: int
    dataset: str
    features: tuple[str, ...]
    target: str
    estimator: dict | None = None  # {"class": "pkg.mod.Class", "params": {...}}
    build: str | None = None  # "file.py:function"
    test_size: float = 0.2
    seed: int = 42
    validation: dict = field(default_factory=dict)
    code: dict = field(default_factory=dict)  # file name -> source text (for ``build``)
    description: str = ""
    resources: Resources = MODEL_DEFAULT  # what train/evaluate may use (kfrelease.training.resources)
    text: str = field(default="", repr=False, compare=False)

    # serialisation: components receive the spec as JSON (text + code) ---------------------------------
    def to_json(self) -> str:
        return json.dumps({"text": self.text, "code": self.code}, sort_keys=True)

    @classmethod
    def from_json(cls, doc: str) -> ModelSpec:
        data = json.loads(doc)
        return parse_spec(data["text"], code=data.get("code") or {})

    @property
    def definition(self) -> dict:
        """What decides the manual revision (see the module docstring)."""
        build_code = None
        if self.build:
            file = self.build.partition(":")[0]
            build_code = {"entry": self.build, "source": self.code.get(file, "")}
        return {
            "features": list(self.features),
            "target": self.target,
            "estimator": self.estimator,
            "build": build_code,
            "split": {"test_size": self.test_size, "seed": self.seed},
        }

    @property
    def fingerprint(self) -> str:
        canonical = json.dumps(self.definition, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def input_schema(self) -> list[dict]:
        return [{"name": f, "dtype": "float64"} for f in self.features]

    def tolerance(self) -> float:
        return float(self.validation.get("tolerance") or 0.0)

    def thresholds(self) -> dict[str, float]:
        return {k: float(self.validation[k]) for k in THRESHOLD_KEYS if self.validation.get(k) is not None}

    # the estimator ----------------------------------------------------------------------------------
    def build_estimator(self):
        """A fresh, unfitted estimator. Raises ConfigError for an unknown class, a build function that
        fails, or invalid hyper-parameters (scikit-learn's own parameter validation, before any fit)."""
        if self.build:
            est = self._from_build()
        else:
            est = self._from_class()
        if not (hasattr(est, "fit") and hasattr(est, "predict")):
            raise ConfigError(f"model spec {self.name!r}: {type(est).__name__} has no fit/predict; use a regressor")
        validate = getattr(est, "_validate_params", None)  # scikit-learn >= 1.2 parameter constraints
        if callable(validate):
            try:
                validate()
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"model spec {self.name!r}: invalid hyper-parameter: {exc}") from None
        return est

    def _from_class(self):
        path = self.estimator["class"]
        module_name, _, cls_name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError, ValueError):
            raise ConfigError(
                f"model spec {self.name!r}: unknown estimator {path!r}; give an import path such as "
                "sklearn.linear_model.Ridge"
            ) from None
        params = self.estimator.get("params") or {}
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


def _fail(origin: str, msg: str) -> ConfigError:
    return ConfigError(f"{origin}: {msg}")


def parse_spec(text: str, origin: str = SPEC_FILE, code: dict | None = None) -> ModelSpec:
    """Parse and check a model spec (structure only; the data is checked against it before training)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _fail(origin, f"not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise _fail(origin, "a model spec is a mapping with name, tag, dataset, features, target, estimator")
    unknown = sorted(set(doc) - set(TOP_KEYS))
    if unknown:
        raise _fail(origin, f"unknown key(s) {unknown}; known: {', '.join(TOP_KEYS)}")
    missing = [k for k in ("name", "tag", "dataset", "features", "target") if not doc.get(k) and doc.get(k) != 0]
    if missing:
        raise _fail(origin, f"missing key(s) {', '.join(missing)}")
    tag = doc["tag"]
    if isinstance(tag, bool) or not isinstance(tag, int) or tag < 1:
        raise _fail(origin, f"tag must be a whole number >= 1 (the Model_Tag), not {tag!r}")
    features = doc["features"]
    if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
        raise _fail(origin, "features must be a non-empty list of column names")
    if len(set(features)) != len(features):
        raise _fail(origin, "features lists a column twice")
    if doc["target"] in features:
        raise _fail(origin, f"target {doc['target']!r} is also listed as a feature")
    estimator, build = doc.get("estimator"), doc.get("build")
    if bool(estimator) == bool(build):
        raise _fail(origin, "give exactly one of estimator {class, params} or build: file.py:function")
    if estimator is not None:
        if not isinstance(estimator, dict) or not isinstance(estimator.get("class"), str):
            raise _fail(origin, "estimator must be {class: import.path.Class, params: {...}}")
        if set(estimator) - {"class", "params"}:
            raise _fail(origin, f"estimator has unknown key(s) {sorted(set(estimator) - {'class', 'params'})}")
        if not isinstance(estimator.get("params") or {}, dict):
            raise _fail(origin, "estimator.params must be a mapping of hyper-parameters")
        estimator = {"class": estimator["class"], "params": dict(estimator.get("params") or {})}
    if build is not None and (not isinstance(build, str) or not build.partition(":")[0].endswith(".py")):
        raise _fail(origin, f"build must look like model.py:build_model, not {build!r}")
    split = doc.get("split") or {}
    if not isinstance(split, dict) or set(split) - {"test_size", "seed"}:
        raise _fail(origin, "split takes test_size (0..1) and seed")
    test_size = split.get("test_size", 0.2)
    if not isinstance(test_size, (int, float)) or not 0 < float(test_size) < 1:
        raise _fail(origin, f"split.test_size must be between 0 and 1, not {test_size!r}")
    validation = doc.get("validation") or {}
    if not isinstance(validation, dict) or set(validation) - set(VALIDATION_KEYS):
        raise _fail(origin, f"validation takes {', '.join(VALIDATION_KEYS)}")
    for k, v in validation.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise _fail(origin, f"validation.{k} must be a number, not {v!r}")
    return ModelSpec(
        name=str(doc["name"]),
        tag=tag,
        dataset=str(doc["dataset"]),
        features=tuple(features),
        target=str(doc["target"]),
        estimator=estimator,
        build=build,
        test_size=float(test_size),
        seed=int(split.get("seed", 42)),
        validation=dict(validation),
        code=dict(code or {}),
        description=str(doc.get("description", "")),
        resources=parse_resources(doc.get("resources"), origin),
        text=text,
    )


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
    import subprocess

    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30, check=False)
        if proc.returncode != 0:
            raise ConfigError(f"git {' '.join(args)} in {repo} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    if not Path(repo).is_dir():
        raise ConfigError(f"repository {repo} does not exist")
    try:
        sha = git("rev-parse", "--verify", f"{commit}^{{commit}}").strip()
    except ConfigError:
        raise ConfigError(f"commit {commit!r} is not in the repository {repo}; push or fetch it first") from None
    try:
        text = git("show", f"{sha}:{spec_file}")
    except ConfigError:
        raise ConfigError(f"commit {sha[:12]} in {repo} has no {spec_file}; a model project has one at its root") from None
    base = str(Path(spec_file).parent)
    code = {}
    for name in _code_files(text):
        rel = name if base in ("", ".") else f"{base}/{name}"
        try:
            code[name] = git("show", f"{sha}:{rel}")
        except ConfigError:
            raise ConfigError(f"commit {sha[:12]}: {spec_file} names build code {name}, which is not committed") from None
    return parse_spec(text, f"{spec_file}@{sha[:12]}", code), sha
