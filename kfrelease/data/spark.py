"""The data pipeline on Apache Spark (a dataset spec's ``engine: spark``): the same rules, errors and version ids as
the embedded engine, with the sources read and checked in parallel, one Spark task per source object.

1. The driver lists the sources (keys and ETags, fixed for the run) and reads their headers (the union of
   their columns, as the embedded engine does).
2. Each task reads its object with the embedded engine's reader (``kfrelease.data.ingest``) and checks it a
   batch at a time with its ``Validator``; it leaves the valid and the quarantined rows in staging and returns
   its problems (counts and first rows, ``Validator.state``) and the values of the unique columns.
3. Spark groups those values: one that occurs more than once, in one object or across several, fails its
   rows; when there is one, the tasks run again knowing them (``Duplicates.known``), as the embedded engine
   reads its sources a second time.
4. The driver merges the tasks' problems into the one report (``Validator.merged``: first rows in file order)
   and, when the data passes, reads the staged parts in source order through the feature step into one
   Parquet file, hashed on the way: the version id is the embedded engine's; ``publish_files`` publishes it.

Locally (``kfrelease data publish``, the tests) Spark runs in local mode and staging is a local folder; on EKS
the Kubeflow Spark Operator runs ``python -m kfrelease.data.spark`` as a ``SparkApplication``
(``render_data_application``; CRD ``sparkoperator.k8s.io/v1beta2`` vendored from kubeflow/spark-operator v2.5.2,
``schemas/crds/spark-operator/``), staging is ``curated/<dataset>/staging/<run>/`` and the outcome (the version,
or the validation error) is written there as ``result.json`` for the pipeline step that waits on it.
A task's object is read as one stream: a large extract is best delivered as several objects (e.g. daily files).
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import pandas as pd
import pyarrow as pa

from kfrelease.data.dtypes import convert
from kfrelease.data.features import features_to_file
from kfrelease.data.frames import FrameWriter, read_frames
from kfrelease.data.ingest import SourceObject, SourceSet, conform
from kfrelease.data.publish import BUCKET, DatasetVersion, publish_files
from kfrelease.data.spec import DatasetSpec, parse_spec
from kfrelease.data.validate import Duplicates, Validator, raise_for
from kfrelease.errors import ConfigError, DataValidationError
from kfrelease.k8s.render.spark import application_name, spark_application
from kfrelease.lake.spark import local_session as spark_local_session
from kfrelease.storage import ObjectStore, store_for

log = logging.getLogger(__name__)

ENTRYPOINT = "local:///opt/kfrelease/kfrelease/data/spark.py"
SESSION_CONF = {"spark.sql.session.timeZone": "UTC", "spark.sql.execution.arrow.pyspark.enabled": "true"}
ROLE = "data-engineer"
_OUT = "kind string, item string, value string"


@dataclass(frozen=True)
class Staging:
    """Where the tasks leave their parts: a local folder (local mode: the driver and its executors share the
    machine) or, on a cluster, a key prefix of the curated bucket."""

    folder: str = ""
    prefix: str = ""

    def _store(self) -> ObjectStore:
        return store_for(ROLE)

    def put(self, local: str, name: str) -> None:
        if self.folder:
            shutil.move(local, os.path.join(self.folder, name))
        else:
            self._store().put_file(BUCKET, self.prefix + name, local)

    def get(self, name: str, local: str) -> str:
        if self.folder:
            return os.path.join(self.folder, name)
        self._store().get_file(BUCKET, self.prefix + name, local)
        return local

    def put_json(self, name: str, doc: dict) -> None:
        if self.folder:
            with open(os.path.join(self.folder, name), "w") as f:
                json.dump(doc, f)
        else:
            self._store().put_json(BUCKET, self.prefix + name, doc)

    def clear(self, keep: tuple[str, ...] = ()) -> None:
        if self.folder:
            for name in os.listdir(self.folder):
                if name not in keep:
                    os.remove(os.path.join(self.folder, name))
            return
        store = self._store()
        for obj in store.list(BUCKET, self.prefix):
            if obj.key[len(self.prefix) :] not in keep:
                store.delete(BUCKET, obj.key)


class _Emit(Duplicates):
    """Collects a batch's unique-column values for the task to hand to Spark (never finished in a task)."""

    def __init__(self, spec: DatasetSpec):
        super().__init__(spec)
        self.batch: list[tuple[str, pd.Series]] = []

    def add(self, column: str, values: pd.Series) -> None:
        self.batch.append((column, values))

    def drain(self) -> Iterator[pd.DataFrame]:
        for column, values in self.batch:
            text = pa.array(values).cast(pa.string()).to_numpy(zero_copy_only=False)  # exact: floats round trip
            yield pd.DataFrame({"kind": "unique", "item": column, "value": text})
        self.batch = []


def _check_task(
    spec_text: str, objects: list[dict], columns: list[str], staging: Staging, run: str, repeated: dict | None
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The function each Spark task runs (``mapInPandas``) on the indexes of its source objects."""

    def check(indexes: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        spec = parse_spec(spec_text)
        store = store_for(ROLE)
        for frame in indexes:
            for i in frame["id"].tolist():
                obj = SourceObject(**objects[i])
                found = _Emit(spec) if repeated is None else Duplicates.known(spec, _typed(spec, repeated))
                validator = Validator(spec, columns, found)
                with tempfile.TemporaryDirectory(prefix="kfrelease-spark-task-") as tmp:
                    valid = FrameWriter(os.path.join(tmp, "v"), validator.template(), what="the valid rows")
                    invalid = FrameWriter(os.path.join(tmp, "q"), validator.quarantine_template(), what="quarantine")
                    rows = 0
                    with SourceSet(spec, store, objects=[obj]) as sources:
                        for batch in sources.object_batches(obj):
                            rows += len(batch)
                            v, q = validator.check(conform(batch, columns))
                            valid.write(v)
                            invalid.write(q)
                            if isinstance(found, _Emit):
                                yield from found.drain()
                    valid.close()
                    invalid.close()
                    staging.put(valid.path, f"{run}-{i}-valid.parquet")
                    staging.put(invalid.path, f"{run}-{i}-quarantine.parquet")
                state = {"index": i, "rows": rows, "validator": validator.state()}
                packed = base64.b64encode(pickle.dumps(state)).decode()  # exact values (a problem's row values)
                yield pd.DataFrame({"kind": ["state"], "item": [str(i)], "value": [packed]})

    return check


def _typed(spec: DatasetSpec, repeated: dict[str, list[str]]) -> dict[str, pd.Series]:
    """The repeated values Spark found (as text) in their columns' dtypes."""
    out = {}
    for name, values in repeated.items():
        text = pd.Series(values, dtype=pd.StringDtype("pyarrow"))
        out[name] = convert(text, spec.column(name).dtype).values
    return out


def local_session(threads: int = 2, memory: str = "1g"):
    """A small local-mode session with the data job's settings (those of ``render_data_application``)."""
    return spark_local_session(threads, memory, app="kfrelease-data", conf=SESSION_CONF)


def _run_tasks(spark, spec: DatasetSpec, objects: list[SourceObject], columns, staging, run, repeated):
    doc = [asdict(o) for o in objects]
    check = _check_task(spec.text, doc, columns, staging, run, repeated)
    out = spark.range(0, len(objects), 1, len(objects)).mapInPandas(check, _OUT).persist()
    try:
        rows = out.filter("kind = 'state'").select("value").collect()
        states = [pickle.loads(base64.b64decode(r.value)) for r in rows]  # our own tasks' results
        found: dict[str, list[str]] = {}
        if repeated is None:
            dup = out.filter("kind = 'unique'").groupBy("item", "value").count().filter("count > 1")
            for r in dup.select("item", "value").collect():
                found.setdefault(r.item, []).append(r.value)
    finally:
        out.unpersist()
    return sorted(states, key=lambda s: s["index"]), found


def run_on_spark(
    spec: DatasetSpec,
    store: ObjectStore,
    spark,
    *,
    keys: list[str] | None = None,
    run_id: str = "",
    staging: Staging | None = None,
    search: tuple[str, ...] = (),
    on_step: Callable[[str], None] = lambda step: None,
) -> DatasetVersion:
    """ingest -> validate -> features -> publish with ``spark`` (see the module docstring); raises the embedded
    engine's ``DataValidationError`` for the same data, and publishes the same version."""
    run_id = run_id or "spark"
    with tempfile.TemporaryDirectory(prefix="kfrelease-spark-") as tmp, SourceSet(spec, store, keys) as sources:
        staging = staging or Staging(folder=os.path.join(tmp, "staging"))
        if staging.folder:
            os.makedirs(staging.folder, exist_ok=True)
        columns = sources.columns
        on_step(f"ingest and validate on Spark ({len(sources.objects)} source object(s))")
        states, repeated = _run_tasks(spark, spec, sources.objects, columns, staging, "first", None)
        run = "first"
        if repeated:
            on_step("duplicate values found: the tasks run again to refuse their rows")
            states, _ = _run_tasks(spark, spec, sources.objects, columns, staging, "again", repeated)
            run = "again"
        merged = Validator.merged(spec, columns, [s["validator"] for s in states])
        outcome = merged.finish()
        for obj, state in zip(sources.objects, states, strict=True):
            obj.rows = state["rows"]
        try:
            raise_for(spec, outcome, merged.quarantine)
        except DataValidationError:
            staging.clear(keep=("result.json",))
            raise
        on_step(f"features ({outcome.valid_rows} valid rows of {outcome.total_rows})")
        parts = range(len(sources.objects))

        def staged(kind: str) -> Iterator[pd.DataFrame]:
            for i in parts:
                path = staging.get(f"{run}-{i}-{kind}.parquet", os.path.join(tmp, f"part-{kind}"))
                yield from read_frames(path, dtypes=outcome.dtypes if kind == "valid" else None)

        data = features_to_file(spec, staged("valid"), os.path.join(tmp, "data.parquet"), search)
        quarantine = FrameWriter(os.path.join(tmp, "quarantine.parquet"), merged.quarantine_template())
        for frame in staged("quarantine"):
            quarantine.write(frame)
        on_step("publish")
        published = publish_files(spec, store, data, sources.sources, run_id, quarantine.close())
        staging.clear(keep=("result.json",))
        return published


def render_data_application(
    spec: DatasetSpec,
    *,
    run_id: str,
    namespace: str,
    image: str,
    service_account: str = "default-editor",
    executors: int = 4,
    executor_memory: str = "4g",
) -> dict:
    """The ``SparkApplication`` that publishes ``spec``'s dataset on the cluster (validated by the tests against
    the vendored CRD). Its driver runs as the data engineers' service account (their IRSA role reads ``raw``
    and writes ``curated``); the spec travels in the arguments, base64 encoded."""
    return spark_application(
        name=application_name("data", spec.name, run_id),
        namespace=namespace,
        labels={"kfrelease.io/dataset": spec.name},
        image=image,
        entrypoint=ENTRYPOINT,
        arguments=["--spec-b64", base64.b64encode(spec.text.encode()).decode(), "--run-id", run_id],
        spark_conf=SESSION_CONF,
        service_account=service_account,
        executors=executors,
        executor_memory=executor_memory,
    )


def staging_for(spec: DatasetSpec, run_id: str) -> Staging:
    """A cluster run's staging prefix in the curated bucket (its ``result.json`` says how the run ended)."""
    return Staging(prefix=f"{spec.name}/staging/{run_id}/")


def result_of(store: ObjectStore, spec: DatasetSpec, run_id: str) -> str:
    """The version a cluster run published, or its validation error raised again (``DataValidationError``)."""
    doc = store.get_json(BUCKET, staging_for(spec, run_id).prefix + "result.json")
    if doc.get("error"):
        raise DataValidationError(doc["error"], doc.get("violations"))
    return doc["version"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the SparkApplication: publish the dataset of ``--spec-b64``; the outcome goes to
    ``result.json`` in the run's staging prefix (a validation error too: it is the data's, not the run's)."""
    p = argparse.ArgumentParser(prog="python -m kfrelease.data.spark", description=main.__doc__)
    p.add_argument("--spec-b64", required=True, help="the dataset spec's YAML, base64 encoded")
    p.add_argument("--run-id", required=True, help="the pipeline run (names the staging prefix)")
    args = p.parse_args(argv)
    from pyspark.sql import SparkSession  # optional: pyspark (the spark extra)

    logging.basicConfig(level=logging.INFO)
    spec = parse_spec(base64.b64decode(args.spec_b64).decode(), "the dataset spec of the SparkApplication")
    staging = staging_for(spec, args.run_id)
    spark = SparkSession.builder.appName(f"kfrelease-data-{spec.name}").getOrCreate()
    try:
        dv = run_on_spark(spec, store_for(ROLE), spark, run_id=args.run_id, staging=staging, on_step=log.info)
        staging.put_json("result.json", {"version": dv.version})
    except (DataValidationError, ConfigError) as exc:  # the data's or the spec's: a result, not retried
        doc = {"error": str(exc), "violations": getattr(exc, "violations", None)}
        staging.put_json("result.json", doc)
        log.error("%s", exc)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
