"""The optional inference cache: off by default; LRU in-process or Redis; same answers as the model; hits
and misses counted; a Redis outage is a miss, never a failed prediction."""

from __future__ import annotations

import asyncio
import subprocess
import time

import numpy as np
import pytest
import redis as redis_client

from kfrelease.errors import ConfigError
from kfrelease.serving.cache import (
    CACHE_LOOKUPS,
    RedisCache,
    cache_from_option,
)
from kfrelease.serving.predictor import build, parse_args
from tests.serving.serving_helpers import (
    DIAMONDS_FEATURES,
    FEATURES,
    curated_frame,
    diamonds_frame,
    expected_predictions,
    free_port,
    make_diamonds_model_dir,
    make_model_dir,
)


def _count(model, version, result) -> float:
    return CACHE_LOOKUPS.labels(model, version, result)._value.get()


def _predictor(tmp_path, cache: str | None):
    model_dir = make_model_dir(tmp_path / "models", name="cache-test", version="V1.1.0")
    args = parse_args(
        ["--model-dir", str(model_dir), "--name", "cache-test", "--http-port", "1"]
        + (["--cache", cache] if cache else [])
    )
    return build(args), model_dir


def _ask(predictor, rows) -> list[float]:
    response, headers = asyncio.run(predictor({"instances": rows}, {"x-request-id": "r"}))
    assert headers["x-model-version"] == "V1.1.0"
    return response["predictions"]


def test_the_cache_is_off_by_default(tmp_path):
    predictor, _ = _predictor(tmp_path, None)
    assert predictor.cache is None
    assert cache_from_option("off", "m", "V1") is None


def test_lru_answers_like_the_model_and_counts_hits_and_misses(tmp_path):
    predictor, model_dir = _predictor(tmp_path, "lru:50")
    frame = curated_frame().iloc[:30]
    rows = frame[FEATURES].values.tolist()
    hits0, misses0 = (
        _count("cache-test", "V1.1.0", "hit"),
        _count("cache-test", "V1.1.0", "miss"),
    )
    first = _ask(predictor, rows[:20])
    mixed = _ask(predictor, rows[10:30])  # 10 cached, 10 new
    assert first == expected_predictions(model_dir, frame.iloc[:20])
    assert mixed == expected_predictions(model_dir, frame.iloc[10:30])
    assert _count("cache-test", "V1.1.0", "hit") - hits0 == 10
    assert _count("cache-test", "V1.1.0", "miss") - misses0 == 30
    many = np.arange(200 * 11, dtype="float64").reshape(200, 11)
    predictor.cache.put_many(many, np.zeros(200))
    assert len(predictor.cache) == 50, "the LRU is bounded"


def test_rows_with_categories_are_cached_by_their_values(tmp_path):
    model_dir = make_diamonds_model_dir(tmp_path / "models", name="cache-categories")
    predictor = build(
        parse_args(["--model-dir", str(model_dir), "--name", "cache-categories", "--http-port", "1", "--cache", "lru"])
    )
    frame = diamonds_frame(200).iloc[100:120][DIAMONDS_FEATURES]
    rows = frame.to_dict(orient="records")
    hits0 = _count("cache-categories", "V1.1.0", "hit")
    first = _ask(predictor, rows)
    again = _ask(predictor, rows[::-1])
    assert first == predictor.model.predict(frame).tolist() and again == first[::-1]
    assert _count("cache-categories", "V1.1.0", "hit") - hits0 == 20
    other = {**rows[0], "cut": next(c for c in ("Fair", "Good") if c != rows[0]["cut"])}
    assert _ask(predictor, [other]) == predictor.model.predict(frame.iloc[:1].assign(cut=other["cut"])).tolist()
    assert _count("cache-categories", "V1.1.0", "hit") - hits0 == 20  # another category is another row


def test_bad_cache_options_are_refused():
    for option in ("lru:x", "memcached://x"):
        with pytest.raises(ConfigError, match="--cache"):
            cache_from_option(option, "m", "V1")


def test_redis_cache_is_shared_per_version_and_an_outage_is_a_miss(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis_client.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis_client.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        url = f"redis://127.0.0.1:{port}/0"
        a, b, other = (
            RedisCache("m", "V1", url),
            RedisCache("m", "V1", url),
            RedisCache("m", "V2", url),
        )
        rows = np.array([[1.0, 2.0], [3.0, 4.0]])
        assert a.get_many(rows) == [None, None]
        a.put_many(rows, np.array([10.5, 20.25]))
        assert b.get_many(rows) == [10.5, 20.25], "replicas share entries"
        assert other.get_many(rows) == [None, None], "another version never answers from these entries"
        predictor, model_dir = _predictor(tmp_path, url)
        frame = curated_frame().iloc[:5]
        assert _ask(predictor, frame[FEATURES].values.tolist()) == expected_predictions(model_dir, frame)
        assert _ask(predictor, frame[FEATURES].values.tolist()) == expected_predictions(model_dir, frame)
        assert _count("cache-test", "V1.1.0", "hit") >= 5
    finally:
        proc.terminate()
        proc.wait(10)
    errors = _count("m", "V1", "error")
    assert a.get_many(rows) == [None, None]
    assert _count("m", "V1", "error") == errors + 2
    assert _ask(predictor, frame[FEATURES].values.tolist()) == expected_predictions(model_dir, frame)
