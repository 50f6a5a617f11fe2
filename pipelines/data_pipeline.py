"""The data engineers' pipeline: ingest -> validate -> features -> publish, or, for a dataset spec that names
``engine: spark``, the same on Apache Spark (one SparkApplication)."""

from kfp import dsl

from kfrelease.components.data_engine import data_engine
from kfrelease.components.engineer_features import engineer_features
from kfrelease.components.ingest import ingest
from kfrelease.components.publish_dataset import publish_dataset
from kfrelease.components.spark_data import publish_on_spark
from kfrelease.components.validate_data import validate_data
from kfrelease.training.resources import apply_step_policy


@dsl.pipeline(
    name="kfrelease-data",
    description="Ingest raw sources, validate them against the dataset spec, engineer features and publish an "
    "immutable curated version; on Spark when the spec says engine: spark.",
)
def data_pipeline(
    spec_yaml: str, features_dir: str = "", spark_namespace: str = "kfrelease-data", spark_image: str = ""
) -> str:
    engine = data_engine(spec_yaml=spec_yaml).set_display_name("engine")
    with dsl.If(engine.output == "embedded", name="embedded"):
        raw = ingest(spec_yaml=spec_yaml).set_display_name("ingest")
        valid = validate_data(spec_yaml=spec_yaml, rows=raw.outputs["rows"]).set_display_name("validate")
        feats = engineer_features(
            spec_yaml=spec_yaml, valid_rows=valid.outputs["valid_rows"], features_dir=features_dir
        ).set_display_name("features")
        published = publish_dataset(
            spec_yaml=spec_yaml,
            features=feats.outputs["features"],
            quarantined=valid.outputs["quarantined"],
            sources_json=raw.outputs["Output"],
            run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        ).set_display_name("publish")
    with dsl.Else(name="spark"):
        on_spark = publish_on_spark(
            spec_yaml=spec_yaml,
            run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            namespace=spark_namespace,
            image=spark_image,
            features_dir=features_dir,
        ).set_display_name("publish on Spark")
    # Ingest reads the raw bucket and publish moves `latest`: never cached; validate and features are pure
    # functions of their inputs and may be.
    for task, caching in (
        (engine, True),
        (raw, False),
        (valid, True),
        (feats, True),
        (published, False),
        (on_spark, False),
    ):
        apply_step_policy(task, caching=caching)
    return dsl.OneOf(published.output, on_spark.output)
