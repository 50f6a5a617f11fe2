"""Helpers of the serving tests: a model directory fitted on the curated demo columns, and model servers
started the way the stack starts them (``predictor_service`` + the supervisor, readiness-probed)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from kfrelease.config import Settings
from kfrelease.data.features import diabetes_features
from kfrelease.demo.data import diabetes_frame
from kfrelease.serving.services import predictor_service
from kfrelease.stack import supervisor

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
) -> Path:
    """Fit a small non-linear regressor on the curated columns and write model.joblib + model.json
    (docs/CONTRACTS.md, "Model directory")."""
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
    (d / "model.json").write_text(json.dumps(entry, indent=2))
    return d


def expected_predictions(model_dir: Path, rows: pd.DataFrame) -> list[float]:
    """What the joblib model itself answers (the same call as training's evaluation)."""
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
