"""The window a monitoring SparkApplication computes reaches Prometheus like the embedded engine's (review
eks6 M1): its result JSON, as ``kfrelease.lake.spark.main`` writes it, is recorded and pushed by
``kfrelease.monitoring.spark_result`` (the monitoring pipeline's ``push Spark window`` step)."""

import functools
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kfrelease import httpcalls
from kfrelease.config import Settings
from kfrelease.errors import ConfigError, KfreleaseError
from kfrelease.monitoring.passes import load_history
from kfrelease.monitoring.pushauth import PUSH_USER, SCRAPE_USER, embedded_credentials, embedded_dir
from kfrelease.monitoring.spark_result import push_spark_result
from kfrelease.monitoring.window import WindowSpec
from kfrelease.storage import store_for
from tests.lake.test_spark_equals_engine import FEATURES, _write


def _gauges(stack, model: str) -> dict[tuple, float]:
    text = httpcalls.get(stack.url("pushgateway", "/metrics"), auth=embedded_credentials(stack, SCRAPE_USER)).text
    return {
        (s.name, s.labels["version"], s.labels["stage"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("model") == model and "feature" not in s.labels
    }


def test_the_spark_applications_window_is_recorded_and_pushed(stack, tmp_path, monkeypatch):
    from kfrelease.lake.spark import local_session, main

    paths, _reference = _write(tmp_path)
    out_dir = tmp_path / "spark-out"
    local_session(threads=1)  # the application's getOrCreate() takes this local session; main stops it
    args = ["--events", *paths["events"], "--labels", *paths["labels"], "--features", ",".join(FEATURES)]
    assert main([*args, "--window", "time:86400", "--out", str(out_dir)]) == 0
    parts = sorted(out_dir.glob("part-*"))
    assert parts, sorted(out_dir.iterdir())

    model = f"spark-{uuid.uuid4().hex[:8]}"
    pipeline = store_for("pipeline", stack)
    out = f"s3a://{pipeline.bucket('pipeline-root')}/monitoring/{model}/spark/run-1"
    for p in parts:  # where the SparkApplication's saveAsTextFile puts them on S3
        pipeline.put_bytes("pipeline-root", f"monitoring/{model}/spark/run-1/{p.name}", p.read_bytes())
    monkeypatch.setenv("KFRELEASE_PUSHGATEWAY_CREDENTIALS", str(embedded_dir(stack) / PUSH_USER))
    settings = Settings(home=tmp_path / "home", port_offset=stack.port_offset)
    push_window = functools.partial(
        push_spark_result,
        settings,
        model,
        out,
        window=WindowSpec("time", 86400),
        read_store=store_for("monitoring", stack),
        write_store=pipeline,
    )
    run = push_window(min_labels=30)
    assert run.push.ok and run.push.pushed == 2, run.push.message  # one (version, stage) each

    gauges = _gauges(stack, model)
    for version, stage in (("V1.1.0", "production"), ("V1.2.0", "staging")):
        w = next(w for w in run.windows if (w.version, w.stage) == (version, stage))
        assert (w.status, w.predictions, w.labelled) == ("ok", 2000, 1143)  # every second request and every 7th
        g = {name: v for (name, ver, st), v in gauges.items() if (ver, st) == (version, stage)}
        assert g["kfrelease_model_window_insufficient"] == 0.0
        assert g["kfrelease_model_rmse"] == pytest.approx(w.rmse) and g["kfrelease_model_r2"] == pytest.approx(w.r2)
        # what the quality alerts fire on, and the freshness alerts' times
        assert g["kfrelease_model_r2_lower"] <= w.r2 <= g["kfrelease_model_r2_upper"]
        assert g["kfrelease_model_rmse_lower"] <= w.rmse <= g["kfrelease_model_rmse_upper"]
        assert g["kfrelease_model_r2_floor"] == 0.2 and g["kfrelease_model_window_labelled"] == 1143
        assert g["kfrelease_model_last_prediction_timestamp_seconds"] > 0
        assert g["kfrelease_model_last_truth_timestamp_seconds"] > 0
        assert g["kfrelease_model_window_pushed_timestamp_seconds"] > 0
    history = load_history(pipeline, model)  # the page, the CLI table and the notebook show it too
    assert sorted(zip(history["version"], history["stage"])) == [("V1.1.0", "production"), ("V1.2.0", "staging")]

    # too few labels for the verdict: insufficient, no quality gauges (as on the embedded engine)
    strict = push_window(min_labels=5000, push=False)
    assert {w.status for w in strict.windows} == {"insufficient"} and all(w.rmse is None for w in strict.windows)


def test_a_spark_result_elsewhere_or_missing_is_refused_in_one_line(stack):
    pipeline = store_for("pipeline", stack)
    settings = Settings(port_offset=stack.port_offset, home=stack.home)
    with pytest.raises(ConfigError, match="is not s3a://.*pipeline-root/monitoring/m/spark/<run>"):
        push_spark_result(settings, "m", "s3a://elsewhere/x", window=WindowSpec(), min_labels=1, push=False)
    # review eks7 P3: any other key of pipeline-root (a training task's output the untrusted steps write, another
    # model's window) is not pushed as this model's window
    root = pipeline.bucket("pipeline-root")
    for other in (
        f"s3a://{root}/v2/kfrelease-training/run-1/train/abc/predictions",
        f"s3a://{root}/monitoring/other/spark/run-1",
        f"s3a://{root}/monitoring/m/spark/run-1/../../other/spark/run-1",
    ):
        with pytest.raises(ConfigError, match="is not s3a://"):
            push_spark_result(settings, "m", other, window=WindowSpec(), min_labels=1, push=False, write_store=pipeline)
    missing = f"s3a://{pipeline.bucket('pipeline-root')}/monitoring/m/spark/no-such-run"
    with pytest.raises(KfreleaseError, match="no result at .*no-such-run/part-"):
        push_spark_result(settings, "m", missing, window=WindowSpec(), min_labels=1, push=False, write_store=pipeline)
