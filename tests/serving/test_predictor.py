"""The predictor (a kserve.Model on KServe's ModelServer): exact answers over v1 and v2, the version and
request id on every answer, and a clear 4xx JSON for every bad request (fuzzed with hypothesis)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from kfrelease import httpcalls
from kfrelease.config import Settings
from kfrelease.stack import supervisor
from tests.serving.serving_helpers import (
    DIAMONDS_CATEGORIES,
    DIAMONDS_FEATURES,
    FEATURES,
    curated_frame,
    diamonds_frame,
    expected_predictions,
    make_diamonds_model_dir,
    make_model_dir,
    start_predictor,
)

MODEL = "diabetes-progression"


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    root = tmp_path_factory.mktemp("predictor")
    settings = Settings(home=root / "home")
    model_dir = make_model_dir(root / "models")
    url = start_predictor(settings, model_dir, extra_args=("--max-body-bytes", "200000"))
    client = httpcalls.client(base_url=url, timeout=30)
    yield client, model_dir
    client.close()
    supervisor.down(settings)


@pytest.fixture(scope="module")
def rows():
    return curated_frame().iloc[:60]


def test_v1_lists_and_named_instances_equal_the_joblib_model_exactly(predictor, rows):
    client, model_dir = predictor
    expected = expected_predictions(model_dir, rows)
    as_lists = client.post(
        f"/v1/models/{MODEL}:predict",
        json={"instances": rows[FEATURES].values.tolist()},
    )
    named = rows[FEATURES].to_dict(orient="records")
    as_objects = client.post(f"/v1/models/{MODEL}:predict", json={"instances": named[::-1]})
    assert as_lists.status_code == 200, as_lists.text
    assert as_lists.json()["predictions"] == expected
    assert as_objects.json()["predictions"] == expected[::-1]


def test_v2_tensor_and_per_feature_inputs_equal_the_joblib_model_exactly(predictor, rows):
    client, model_dir = predictor
    expected = expected_predictions(model_dir, rows)
    matrix = rows[FEATURES].values
    one_tensor = {
        "inputs": [
            {
                "name": "input-0",
                "shape": list(matrix.shape),
                "datatype": "FP64",
                "data": matrix.ravel().tolist(),
            }
        ]
    }
    per_feature = {
        "inputs": [
            {
                "name": f,
                "shape": [len(rows)],
                "datatype": "FP64",
                "data": rows[f].tolist(),
            }
            for f in reversed(FEATURES)
        ]
    }
    for body in (one_tensor, per_feature):
        r = client.post(f"/v2/models/{MODEL}/infer", json=body)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["outputs"][0]["data"] == expected
        assert doc["outputs"][0]["shape"] == [len(rows)]
        assert doc["model_version"] == "V1.1.0"
        assert r.headers["content-type"] == "application/json"


def test_every_answer_names_the_version_and_carries_the_request_id(predictor, rows):
    client, _ = predictor
    body = {"instances": [rows[FEATURES].iloc[0].tolist()]}
    by_ce = client.post(f"/v1/models/{MODEL}:predict", json=body, headers={"ce-id": "req-ce-1"})
    by_xrid = client.post(f"/v1/models/{MODEL}:predict", json=body, headers={"x-request-id": "req-x-1"})
    fresh = client.post(f"/v1/models/{MODEL}:predict", json=body)
    for r in (by_ce, by_xrid, fresh):
        assert r.headers["x-model-version"] == "V1.1.0"
        assert r.json()["model_version"] == "V1.1.0"
    assert by_ce.headers["x-request-id"] == "req-ce-1"
    assert by_xrid.headers["x-request-id"] == "req-x-1"
    assert len(fresh.headers["x-request-id"]) >= 16
    v2 = client.post(
        f"/v2/models/{MODEL}/infer",
        headers={"x-request-id": "req-v2"},
        json={
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, 11],
                    "datatype": "FP64",
                    "data": body["instances"][0],
                }
            ]
        },
    )
    assert v2.headers["x-model-version"] == "V1.1.0" and v2.json()["id"] == "req-v2"


def test_health_readiness_and_metrics(predictor):
    client, _ = predictor
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get(f"/v2/models/{MODEL}/ready").status_code == 200
    assert client.get(f"/v1/models/{MODEL}").json()["ready"] is True
    metrics = client.get("/metrics").text
    assert 'kfrelease_predictor_requests_total{model="diabetes-progression",outcome="ok",protocol="v1"' in metrics
    assert "kfrelease_predictor_request_seconds_bucket" in metrics


BAD_REQUESTS = [
    # (path suffix, raw body, status, fragment of the error message)
    ("v1", b'{"instances": [[1, 2', 400, "JSON"),
    ("v1", b'{"rows": [[1]]}', 400, "no 'instances'"),
    ("v1", b'{"inputs": [1]}', 400, "/v2/models"),
    ("v1", b'{"instances": [], "x": 1}', 400, "unknown field"),
    ("v1", b'{"instances": []}', 400, "empty"),
    ("v1", b'{"instances": 5}', 400, "must be a list"),
    ("v1", b'{"instances": [[1,2,3]]}', 400, "has 3 values; the model takes 11"),
    (
        "v1",
        json.dumps({"instances": [[1.0] * 10 + ["7"]]}).encode(),
        400,
        "is a string",
    ),
    ("v1", json.dumps({"instances": [[1.0] * 10 + [None]]}).encode(), 400, "is null"),
    (
        "v1",
        json.dumps({"instances": [[1.0] * 10 + [True]]}).encode(),
        400,
        "is a boolean",
    ),
    ("v1", json.dumps({"instances": [[1.0] * 10 + [float("nan")]]}).encode(), 400, ""),
    ("v1", json.dumps({"instances": [{"age": 1}]}).encode(), 400, "missing ['sex'"),
    (
        "v1",
        json.dumps({"instances": [dict.fromkeys(FEATURES[:-1] + ["bmi_xx"], 1.0)]}).encode(),
        400,
        "unknown ['bmi_xx']",
    ),
    ("v1", b"[1, 2]", 400, "JSON object"),
    (
        "v2",
        b'{"inputs": [{"name": "x", "shape": [1, 11], "datatype": "INT64", "data": [' + b"1" * 400 + b"]}]}",
        400,
        "too large",
    ),
    ("v2", b'{"inputs": 5}', 400, "inputs"),
    ("v2", b'{"inputs": [1', 400, "not valid JSON"),
    ("v2", b'{"instances": [[1]]}', 400, "/v1/models"),
    (
        "v2",
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [1, 11],
                        "datatype": "FP64",
                        "data": [1.0] * 10 + [math.inf],
                    }
                ]
            },
            allow_nan=True,
        ).encode(),
        400,
        "finite",
    ),
    (
        "v2",
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [1, 11],
                        "datatype": "BYTES",
                        "data": ["a"] * 11,
                    }
                ]
            }
        ).encode(),
        400,
        "datatype",
    ),
    (
        "v2",
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [2, 11],
                        "datatype": "FP64",
                        "data": [1.0] * 11,
                    }
                ]
            }
        ).encode(),
        400,
        "needs 22",
    ),
    (
        "v2",
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [1, 3],
                        "datatype": "FP64",
                        "data": [1.0] * 3,
                    }
                ]
            }
        ).encode(),
        400,
        "expected [n, 11]",
    ),
    (
        "v2",
        json.dumps(
            {
                "inputs": [
                    {"name": "age", "shape": [1], "datatype": "FP64", "data": [1.0]},
                    {"name": "sex", "shape": [1], "datatype": "FP64", "data": [1.0]},
                ]
            }
        ).encode(),
        400,
        "missing",
    ),
]


@pytest.mark.parametrize("kind,body,status,fragment", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_json_saying_what_is_wrong(predictor, kind, body, status, fragment):
    client, _ = predictor
    path = f"/v1/models/{MODEL}:predict" if kind == "v1" else f"/v2/models/{MODEL}/infer"
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


def test_unknown_model_oversized_body_and_missing_content_type(predictor, rows):
    client, _ = predictor
    r = client.post("/v1/models/no-such-model:predict", json={"instances": [[1.0] * 11]})
    assert r.status_code == 404 and "no-such-model" in r.json()["error"]
    big = json.dumps({"instances": [[1.0] * 11] * 5000}).encode()  # > the 200 kB limit set for this server
    r = client.post(
        f"/v1/models/{MODEL}:predict",
        content=big,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and "limit" in r.json()["error"]
    chunked = client.post(f"/v1/models/{MODEL}:predict", content=iter([big[:100_000], big[100_000:]]))
    assert chunked.status_code == 413
    # curl's default form content type: still decoded as JSON
    r = client.post(
        f"/v1/models/{MODEL}:predict",
        content=json.dumps({"instances": [rows[FEATURES].iloc[0].tolist()]}),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200, r.text


# --- categories: a mixed numeric / category model served as a verified ONNX flavour ------------------

DIAMONDS = "diamond-price"


@pytest.fixture(scope="module")
def diamonds(tmp_path_factory):
    from kfrelease.registry.artifact import load_model_dir

    root = tmp_path_factory.mktemp("diamonds")
    settings = Settings(home=root / "home")
    model_dir = make_diamonds_model_dir(root / "models", DIAMONDS)
    url = start_predictor(settings, model_dir, name=DIAMONDS)
    client = httpcalls.client(base_url=url, timeout=30)
    yield client, load_model_dir(model_dir), load_model_dir(model_dir, flavour="sklearn")
    client.close()
    supervisor.down(settings)


def _v2_columns(frame) -> dict:
    """One tensor per column, strings as BYTES (MLServer's pandas codec, KServe's v2 docs)."""
    return {
        "parameters": {"content_type": "pd"},
        "inputs": [
            {
                "name": c,
                "shape": [len(frame), 1],
                "datatype": "BYTES" if c in DIAMONDS_CATEGORIES else "FP64",
                "parameters": {"content_type": "str"} if c in DIAMONDS_CATEGORIES else None,
                "data": frame[c].tolist(),
            }
            for c in reversed(DIAMONDS_FEATURES)
        ],
    }


def test_categories_are_sent_as_values_over_v1_and_v2_and_answered_by_the_onnx_flavour(diamonds):
    from kfrelease.registry.artifact import agreement

    client, onnx, sklearn = diamonds
    frame = diamonds_frame(3000).iloc[2900:][DIAMONDS_FEATURES]
    assert onnx.flavour.name == "onnx"
    expected = onnx.predict(frame).tolist()
    assert agreement(expected, sklearn.predict(frame)) <= 1e-4  # verified at registration, and still
    objects = client.post(f"/v1/models/{DIAMONDS}:predict", json={"instances": frame.to_dict(orient="records")})
    lists = client.post(f"/v1/models/{DIAMONDS}:predict", json={"instances": frame.values.tolist()})
    columns = client.post(f"/v2/models/{DIAMONDS}/infer", json=_v2_columns(frame))
    for r in (objects, lists, columns):
        assert r.status_code == 200, r.text
    assert objects.json()["predictions"] == expected and lists.json()["predictions"] == expected
    assert columns.json()["outputs"][0]["data"] == expected
    metadata = client.get(f"/v2/models/{DIAMONDS}").json()
    assert {i["name"]: i["datatype"] for i in metadata["inputs"]}["cut"] == "BYTES"


def _instances_total(client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("kfrelease_predictor_instances_total{") and f'model="{DIAMONDS}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize(
    "column,value,fragment",
    [
        ("cut", "Perfect", "not a known value; known: ['Fair', 'Good', 'Ideal', 'Premium', 'Very Good']"),
        ("cut", 3, "is a number (3); this feature takes one of ['Fair'"),
        ("carat", "big", "is a string ('big'); expected a finite number"),
        ("color", None, "is null; this feature takes one of ['D'"),
    ],
)
def test_a_bad_category_or_number_gets_a_400_naming_the_column_and_reaches_no_model(diamonds, column, value, fragment):
    client, _, _ = diamonds
    row = diamonds_frame(10)[DIAMONDS_FEATURES].iloc[0].to_dict()
    before = _instances_total(client)
    v1 = client.post(f"/v1/models/{DIAMONDS}:predict", json={"instances": [row, {**row, column: value}]})
    assert v1.status_code == 400, v1.text
    assert f"instances[1].{column} (feature {column!r})" in v1.json()["error"] and fragment in v1.json()["error"]
    frame = diamonds_frame(10)[DIAMONDS_FEATURES].iloc[:1].astype(object)
    frame.loc[frame.index[0], column] = value
    body = _v2_columns(frame)
    v2 = client.post(f"/v2/models/{DIAMONDS}/infer", json=body)
    assert v2.status_code == 400, v2.text
    assert repr(column) in v2.json()["error"]
    assert _instances_total(client) == before  # nothing was predicted (and so nothing logged)


def test_a_number_tensor_for_a_category_column_is_refused_with_its_known_values(diamonds):
    client, _, _ = diamonds
    frame = diamonds_frame(10)[DIAMONDS_FEATURES].iloc[:1]
    body = _v2_columns(frame)
    for t in body["inputs"]:
        if t["name"] == "clarity":
            t.update(datatype="FP64", data=[1.0], parameters=None)
    r = client.post(f"/v2/models/{DIAMONDS}/infer", json=body)
    assert r.status_code == 400
    assert "feature 'clarity' is a category: send a BYTES tensor of its values, each one of ['I1'" in r.json()["error"]
    one = {"inputs": [{"name": "input-0", "shape": [1, 9], "datatype": "FP64", "data": [1.0] * 9}]}
    r = client.post(f"/v2/models/{DIAMONDS}/infer", json=one)
    assert r.status_code == 400 and "has category features: send one tensor named after each" in r.json()["error"]


# --- fuzzing: >= 1,000 generated bad payloads, no 5xx ------------------------------------------------

LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
)
ANY_JSON = st.recursive(
    LEAF,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=16,
)
GOOD = st.floats(-1000, 1000, allow_nan=False)
ROW = st.lists(st.one_of(GOOD, GOOD, GOOD, LEAF), min_size=0, max_size=13)
NAMED = st.dictionaries(
    st.sampled_from(FEATURES + ["bmi_xx", "AGE", ""]),
    st.one_of(GOOD, LEAF),
    max_size=12,
)
V1 = st.fixed_dictionaries(
    {"instances": st.one_of(st.lists(st.one_of(ROW, NAMED, LEAF), max_size=3), LEAF)},
    optional={"parameters": ANY_JSON, "extra": ANY_JSON},
)
TENSOR = st.fixed_dictionaries(
    {
        "name": st.one_of(st.sampled_from(FEATURES + ["input-0"]), st.text(max_size=5)),
        "shape": st.one_of(st.lists(st.integers(-2, 12), max_size=3), ANY_JSON),
        "datatype": st.one_of(
            st.sampled_from(["FP64", "FP32", "INT64", "BYTES", "BOOL", "FP16", "UINT8"]),
            st.text(max_size=4),
        ),
        "data": st.one_of(
            st.lists(st.one_of(GOOD, LEAF, st.lists(GOOD, max_size=11)), max_size=24),
            ANY_JSON,
        ),
    }
)
V2 = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(TENSOR, max_size=3), ANY_JSON)},
    optional={"id": ANY_JSON, "parameters": ANY_JSON, "outputs": ANY_JSON},
)
PATHS = st.sampled_from(
    [
        f"/v1/models/{MODEL}:predict",
        f"/v2/models/{MODEL}/infer",
        "/v1/models/nope:predict",
        "/v2/models/nope/infer",
    ]
)
HEADERS = st.one_of(
    st.just({"content-type": "application/json"}),
    st.just({"content-type": "text/plain"}),
    st.builds(
        lambda n: {
            "content-type": "application/json",
            "inference-header-content-length": n,
        },
        st.one_of(
            st.text(alphabet="0123456789abcx-", min_size=1, max_size=4),
            st.integers(-5, 400).map(str),
        ),
    ),
)


def _encode(doc) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()  # NaN/Infinity tokens too: invalid JSON for strict parsers


PAYLOADS = st.one_of(
    st.binary(max_size=64),
    ANY_JSON.map(_encode),
    V1.map(_encode),
    V2.map(_encode),
)

FUZZ_SETTINGS = hsettings(
    max_examples=1100,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


def test_1100_fuzzed_payloads_never_get_a_5xx_and_most_are_refused(predictor):
    client, _ = predictor
    codes: list[int] = []

    @FUZZ_SETTINGS
    @given(path=PATHS, body=PAYLOADS, headers=HEADERS)
    def send(path, body, headers):
        r = client.post(path, content=body, headers=headers)
        codes.append(r.status_code)
        assert r.status_code < 500, f"{r.status_code} for {body[:300]!r} on {path} with {headers}: {r.text[:500]}"
        if r.status_code >= 400 and r.status_code != 422:
            assert isinstance(r.json().get("error"), str) and r.json()["error"]
        if r.status_code == 422:  # FastAPI's own validation answer: JSON with a detail
            assert r.json().get("detail")

    send()
    assert len(codes) >= 1000
    assert sum(400 <= c < 500 for c in codes) >= 900


def test_cli_refuses_a_missing_model_dir_in_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kfrelease.serving.predictor",
            "--model-dir",
            str(tmp_path / "nope"),
            "--name",
            MODEL,
            "--http-port",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: model directory") and proc.stderr.strip().count("\n") == 0
