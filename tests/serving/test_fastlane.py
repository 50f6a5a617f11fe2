"""The fast lane (``kfrelease.serving.fastlane``) answers exactly as KServe's own routes do, over HTTP, and
refuses to run on a KServe release it was not written against.

Two real predictors serve the same model folder, one with the fast lane and one with ``--no-fast-lane``;
the same 1,000 seeded, fuzzed requests (v1 and v2; valid, wrong shapes and types, missing fields, NaN,
huge, non-JSON) go to both, and every answer must have the same status and the same body, byte for byte,
and the same content type, version and request id headers. The requests go ``CONCURRENCY`` at a time, each to
both servers at once (a request's id is its own, so the pairing does not depend on the order of answers).
"""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata

import httpx
import pytest

from kfrelease import httpcalls
from kfrelease.config import Settings
from kfrelease.serving.fastlane import (
    KSERVE_VERSION,
    KserveVersionError,
    check_kserve_version,
)
from kfrelease.stack import supervisor
from tests.serving.serving_helpers import (
    DIAMONDS_CATEGORIES,
    DIAMONDS_FEATURES,
    FEATURES,
    curated_frame,
    diamonds_frame,
    make_diamonds_model_dir,
    make_model_dir,
    start_predictor,
)

MODEL = "diabetes-progression"
V1 = f"/v1/models/{MODEL}:predict"
V2 = f"/v2/models/{MODEL}/infer"
REQUESTS = 1000
CONCURRENCY = 8
MAX_BODY = 100_000
COMPARED_HEADERS = ("content-type", "x-model-version", "x-request-id")


def test_the_installed_kserve_is_the_release_the_fast_lane_was_written_against():
    assert metadata.version("kserve") == KSERVE_VERSION, (
        f"kserve {metadata.version('kserve')} is installed; kfrelease.serving.fastlane was written against "
        f"{KSERVE_VERSION}: re-read KServe's request handling, update the module and this test"
    )
    check_kserve_version()
    with pytest.raises(KserveVersionError, match="written against kserve 0.21.0"):
        check_kserve_version("0.22.0")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("fastlane")
    settings = Settings(home=root / "home")
    model_dir = make_model_dir(root / "models")
    limit = ("--max-body-bytes", str(MAX_BODY), "--max-instances", "50")
    with ThreadPoolExecutor(2) as pool:  # both start at once: a KServe process takes seconds to import
        fast, plain = pool.map(
            lambda stage, extra: start_predictor(settings, model_dir, stage=stage, extra_args=extra),
            ("production", "canary"),
            (limit, (*limit, "--no-fast-lane")),
        )
    with httpcalls.client(base_url=fast, timeout=30) as a, httpcalls.client(base_url=plain, timeout=30) as b:
        yield a, b
    supervisor.down(settings)


# --- the fuzzed requests --------------------------------------------------------------------------

ODD_VALUES = [None, True, False, "7", "", [], {}, [1.0], {"a": 1}, 2**70, -(2**64), 1e308, -0.0, 3, "NaN"]


def _value(rng: random.Random, bad: float):
    if rng.random() < bad:
        return rng.choice(ODD_VALUES + [float("nan"), float("inf"), float("-inf")])
    return round(rng.uniform(-3, 3), rng.choice([0, 3, 17])) if rng.random() < 0.9 else rng.randint(-5, 5)


def _row(rng: random.Random, bad: float) -> list:
    n = len(FEATURES) if rng.random() > bad else rng.choice([0, 1, 10, 12, 40])
    return [_value(rng, bad / 4) for _ in range(n)]


def _v1(rng: random.Random, rows: list[list[float]], bad: float):
    n = rng.choice([1, 1, 2, 5, 51]) if rng.random() < 0.97 else 0
    if rng.random() < 0.3:  # named instances
        instances = [dict(zip(FEATURES, r)) for r in rows[:n]]
        for inst in instances:
            if rng.random() < bad:
                inst.pop(rng.choice(FEATURES), None)
            if rng.random() < bad / 2:
                inst[rng.choice(["bmi_xx", "AGE", ""])] = 1.0
    else:
        instances = [list(r) for r in rows[:n]] if rng.random() > bad else [_row(rng, bad) for _ in range(n)]
    doc: dict = {"instances": instances}
    if rng.random() < bad / 3:
        doc["instances"] = rng.choice(ODD_VALUES)
    if rng.random() < bad / 3:
        doc[rng.choice(["parameters", "extra", "inputs", "id"])] = rng.choice(ODD_VALUES)
    if rng.random() < bad / 4:
        doc.pop("instances")
    return doc


def _v2(rng: random.Random, rows: list[list[float]], bad: float):
    n = rng.choice([1, 1, 2, 5, 51])
    flat = [v for r in rows[:n] for v in r]
    datatype = "FP64" if rng.random() > bad else rng.choice(["FP32", "INT64", "BYTES", "BOOL", "fp64", "FP16"])
    if rng.random() < 0.3:  # one tensor per feature
        inputs = [
            {"name": f, "shape": [n], "datatype": datatype, "data": [r[j] for r in rows[:n]]}
            for j, f in enumerate(FEATURES)
        ]
        rng.shuffle(inputs)
        if rng.random() < bad:
            inputs.pop()
    else:
        shape = (
            [n, len(FEATURES)]
            if rng.random() > bad
            else rng.choice([[n], [len(FEATURES)], [n, 3], [-1, 11], [n, 11, 1], [], "x", [1.5, 11]])
        )
        if rng.random() < 0.2 and n == 1:
            shape = [len(FEATURES)]
        data = flat if rng.random() > bad else [_value(rng, 0.5) for _ in range(rng.choice([0, 11, 22, 30]))]
        if rng.random() < bad / 3:
            data = [flat[:11], flat[11:]] if n > 1 else rng.choice(ODD_VALUES)
        inputs = [{"name": rng.choice(["input-0", "x", "age"]), "shape": shape, "datatype": datatype, "data": data}]
    for t in inputs:
        if rng.random() < bad / 4:
            t.pop(rng.choice(["name", "shape", "datatype", "data"]))
        if rng.random() < bad / 6:
            t["parameters"] = rng.choice([{"content_type": "np"}, None, {}])
    doc: dict = {"inputs": inputs}
    if rng.random() < 0.3:
        doc["id"] = rng.choice(["req-a", "", 7, None]) if rng.random() < bad else f"id-{rng.randint(0, 999)}"
    if rng.random() < bad / 3:
        doc[rng.choice(["parameters", "outputs", "instances"])] = rng.choice(ODD_VALUES)
    if rng.random() < bad / 4:
        doc["inputs"] = rng.choice(ODD_VALUES)
    return doc


def _encode(rng: random.Random, doc) -> bytes:
    raw = json.dumps(doc, allow_nan=True).encode()  # NaN / Infinity tokens: not JSON for a strict parser
    r = rng.random()
    if r < 0.03:
        return raw[: rng.randint(0, len(raw))]  # cut short
    if r < 0.05:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40)))  # not JSON at all
    if r < 0.06:
        return raw + b" " * MAX_BODY  # over the body limit
    if r < 0.07:
        return b"[" * 5000 + b"]" * 5000  # deeply nested
    return raw


def fuzzed_requests(count: int = REQUESTS, seed: int = 17) -> list[tuple[str, dict, bytes]]:
    """``count`` (path, headers, body): about 40 % valid, the rest malformed in one or more ways."""
    rng = random.Random(seed)
    frame = curated_frame()[FEATURES].values.tolist()
    out = []
    for i in range(count):
        bad = 0.0 if rng.random() < 0.4 else rng.choice([0.2, 0.5, 1.0])
        rows = rng.sample(frame, 51)
        v1 = rng.random() < 0.5
        doc = _v1(rng, rows, bad) if v1 else _v2(rng, rows, bad)
        path = V1 if v1 else V2
        if rng.random() < 0.03:
            path = rng.choice(["/v1/models/nope:predict", "/v2/models/nope/infer", V2 if v1 else V1])
        headers = {
            "content-type": rng.choice(["application/json"] * 8 + ["text/plain", "application/cloudevents+json"])
        }
        headers["ce-id" if rng.random() < 0.2 else "x-request-id"] = f"fuzz-{i}"  # the same id to both servers
        if rng.random() < 0.03:
            headers["inference-header-content-length"] = rng.choice(["0", "12", "x", "-1"])
        out.append((path, headers, _encode(rng, doc)))
    return out


def _compare(fast: httpx.Client, plain: httpx.Client, requests) -> dict[int, int]:
    """Send each request to both servers at once; every answer must match. Returns the count per status."""
    statuses: dict[int, int] = {}
    differences = []
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        pairs = [
            tuple(pool.submit(client.post, path, content=body, headers=headers) for client in (fast, plain))
            for path, headers, body in requests
        ]
    for (path, headers, body), (fa, fb) in zip(requests, pairs, strict=True):
        a, b = fa.result(), fb.result()
        statuses[a.status_code] = statuses.get(a.status_code, 0) + 1
        same_headers = all(a.headers.get(h) == b.headers.get(h) for h in COMPARED_HEADERS)
        if a.status_code != b.status_code or _body(a) != _body(b) or not same_headers:
            differences.append(
                f"{path} {headers} {body[:200]!r}: fast {a.status_code} {a.content[:200]!r} "
                f"{dict(a.headers)} / kserve {b.status_code} {b.content[:200]!r} {dict(b.headers)}"
            )
    assert not differences, f"{len(differences)} of {len(requests)} answers differ; first: {differences[:3]}"
    assert not [s for s in statuses if s >= 500], statuses
    return statuses


def test_the_same_1000_fuzzed_requests_get_the_same_answers_with_and_without_the_fast_lane(servers):
    fast, plain = servers
    requests = fuzzed_requests()
    statuses = _compare(fast, plain, requests)
    assert len(requests) == REQUESTS
    # both kinds are well represented, and nothing is a server error
    assert statuses.get(200, 0) >= 300 and sum(n for s, n in statuses.items() if 400 <= s < 500) >= 300, statuses
    # the lane was really taken on one server (and never on the other)
    answered = [_fast_lane_answers(c) for c in (fast, plain)]
    assert answered[0] >= 0.5 * statuses[200] and answered[1] == 0, answered


# --- a model with category features -------------------------------------------------------------------

DIAMONDS = "diamond-price"
CATEGORY_REQUESTS = 400


@pytest.fixture(scope="module")
def category_servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("fastlane-categories")
    settings = Settings(home=root / "home")
    model_dir = make_diamonds_model_dir(root / "models", DIAMONDS)
    limit = ("--max-body-bytes", str(MAX_BODY), "--max-instances", "50")
    with ThreadPoolExecutor(2) as pool:
        fast, plain = pool.map(
            lambda stage, extra: start_predictor(settings, model_dir, name=DIAMONDS, stage=stage, extra_args=extra),
            ("production", "canary"),
            (limit, (*limit, "--no-fast-lane")),
        )
    with httpcalls.client(base_url=fast, timeout=30) as a, httpcalls.client(base_url=plain, timeout=30) as b:
        yield a, b
    supervisor.down(settings)


def fuzzed_category_requests(count: int = CATEGORY_REQUESTS, seed: int = 23) -> list[tuple[str, dict, bytes]]:
    """Mixed number / category requests: v1 lists and objects, v2 one tensor per column (BYTES for categories),
    with unknown categories, numbers for categories, categories for numbers, wrong datatypes and shapes."""
    rng = random.Random(seed)
    frame = diamonds_frame(3000)[DIAMONDS_FEATURES]
    odd = [*ODD_VALUES, "Perfect", "ideal", "", "Ideal ", 1.5]
    out = []
    for i in range(count):
        bad = 0.0 if rng.random() < 0.4 else rng.choice([0.1, 0.3])
        rows = frame.sample(rng.choice([1, 1, 2, 5, 51]), random_state=rng.randint(0, 10**6)).to_dict(orient="records")
        for r in rows:
            for f in DIAMONDS_FEATURES:
                if rng.random() < bad / 3:
                    r[f] = rng.choice(odd)
        if rng.random() < 0.5:
            path = f"/v1/models/{DIAMONDS}:predict"
            instances = rows if rng.random() < 0.5 else [[r[f] for f in DIAMONDS_FEATURES] for r in rows]
            doc: dict = {"instances": instances}
        else:
            path = f"/v2/models/{DIAMONDS}/infer"
            inputs = []
            for f in DIAMONDS_FEATURES:
                text = f in DIAMONDS_CATEGORIES
                datatype = "BYTES" if text else "FP64"
                if rng.random() < bad / 2:
                    datatype = rng.choice(["BYTES", "FP64", "INT64", "FP32"])
                tensor = {"name": f, "shape": [len(rows), 1], "datatype": datatype, "data": [r[f] for r in rows]}
                if text and rng.random() < 0.5:
                    tensor["parameters"] = {"content_type": "str"}
                inputs.append(tensor)
            rng.shuffle(inputs)
            if rng.random() < bad:
                inputs.pop()
            doc = {"inputs": inputs, **({"parameters": {"content_type": "pd"}} if rng.random() < 0.5 else {})}
        headers = {"content-type": "application/json", "x-request-id": f"cat-{i}"}
        out.append((path, headers, json.dumps(doc, allow_nan=True).encode()))
    return out


def test_category_requests_get_the_same_answers_with_and_without_the_fast_lane(category_servers):
    fast, plain = category_servers
    statuses = _compare(fast, plain, fuzzed_category_requests())
    assert statuses.get(200, 0) >= 120 and statuses.get(400, 0) >= 80, statuses
    answered = [_fast_lane_answers(c) for c in (fast, plain)]
    assert answered[0] >= 0.9 * statuses[200] and answered[1] == 0, answered


def _body(r: httpx.Response) -> bytes:
    """The body compared: as sent, except a response CloudEvent's own ``id`` and ``time`` (KServe makes
    them per answer)."""
    if not r.content.startswith(b'{"specversion"'):
        return r.content
    doc = r.json()
    return json.dumps({k: v for k, v in doc.items() if k not in ("id", "time")}, sort_keys=True).encode()


def _fast_lane_answers(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("kfrelease_predictor_fast_lane_answers_total{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
