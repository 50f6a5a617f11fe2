"""``kfrelease data``: the data engineers' commands."""

from __future__ import annotations

import json
from pathlib import Path

import click

from kfrelease.cli.output import console, err_console, table
from kfrelease.config import Settings
from kfrelease.data.catalog import dataset_name, is_spec_path, resolve_spec
from kfrelease.data.ingest import SourceSet, local_batches, source_format
from kfrelease.data.pipeline import run_data_pipeline
from kfrelease.data.publish import get_version, latest_version_id, list_versions
from kfrelease.data.spec import load_spec
from kfrelease.data.validate import validate_batches
from kfrelease.errors import ConfigError, DataValidationError, StorageError
from kfrelease.kfp.runner import run_local
from kfrelease.storage import store_for

dataset_option = click.option(
    "--dataset",
    "dataset",
    default=None,
    help="Dataset name (its spec is the one stored with its latest version) or path to its spec YAML; "
    "may be left out only when a single dataset is published.",
)
source_option = click.option(
    "--source", "sources", multiple=True, help="Key(s) in the raw bucket (default: every object under the prefix)."
)


def _spec_for_local_file(dataset: str | None):
    """The spec a local file is validated against: a spec file as it is (no object store); a dataset name's
    stored spec when the object store answers, else its packaged spec (said on stderr)."""
    if dataset and is_spec_path(dataset):
        return load_spec(dataset)
    try:
        return resolve_spec(store_for("data-engineer"), dataset)
    except (StorageError, ConfigError) as exc:
        if not dataset:
            raise ConfigError(f"say which dataset the file is: --dataset NAME or --dataset PATH.yaml ({exc})") from None
        try:
            spec = load_spec(dataset)
        except ConfigError as missing:
            raise ConfigError(f"{missing}; the object store could not be asked for its stored spec: {exc}") from None
        why = str(exc).split(";")[0]
        err_console.print(f"note: validating against the packaged spec {dataset!r} (object store unavailable: {why})")
        return spec


def register(cli: click.Group) -> None:
    @cli.group()
    def data() -> None:
        """Data engineers: upload sources, validate, publish curated versions, inspect them."""

    @data.command()
    @click.argument("file", type=click.Path(dir_okay=False))
    @dataset_option
    @click.option("--key", help="Key in raw (default: <dataset prefix>/<file name>).")
    def upload(file: str, dataset: str, key: str | None) -> None:
        """Put a local CSV or Parquet file into the raw bucket (data-engineer identity)."""
        spec = resolve_spec(store_for("data-engineer"), dataset)
        path = Path(file)
        if not path.is_file():
            raise click.BadParameter(f"{file} does not exist", param_hint="FILE")
        key = key or spec.source_prefix + path.name
        if source_format(key) is None:
            raise click.BadParameter(f"{key}: sources must end in .csv or .parquet", param_hint="FILE")
        store = store_for("data-engineer")
        etag = store.put_bytes("raw", key, path.read_bytes())
        console.print(f"uploaded {store.uri('raw', key)} (etag {etag.strip(chr(34))})")

    @data.command()
    @dataset_option
    def sources(dataset: str) -> None:
        """List the source objects of a dataset in raw."""
        spec = resolve_spec(store_for("data-engineer"), dataset)
        objs = store_for("data-engineer").list("raw", spec.source_prefix)
        table(f"raw/{spec.source_prefix}", ["key", "bytes", "etag"], [(o.key, o.size, o.etag) for o in objs])

    @data.command()
    @dataset_option
    @source_option
    @click.option("--out", type=click.Path(dir_okay=False), help="Also write the rows to this Parquet file.")
    def ingest(dataset: str, sources: tuple[str, ...], out: str | None) -> None:
        """Read the sources of a dataset from raw and report what was read."""
        store = store_for("data-engineer")
        spec = resolve_spec(store, dataset)
        with SourceSet(spec, store, list(sources) or None) as read:
            if out:
                read.write_rows(out)
            else:
                for _ in read.batches():
                    pass
            rows = sum(s.rows for s in read.sources)
            table(f"ingested {rows} rows", ["source", "rows", "etag"], [(s.key, s.rows, s.etag) for s in read.sources])
        if out:
            console.print(f"wrote {out}")

    @data.command()
    @dataset_option
    @source_option
    @click.option("--file", "local_file", type=click.Path(dir_okay=False), help="Validate a local file instead.")
    def validate(dataset: str, sources: tuple[str, ...], local_file: str | None) -> None:
        """Check sources against the dataset spec; every violation is listed, nothing is published. With
        --file it works offline: no stack, no credentials (a spec file, or a dataset's packaged spec when the
        object store cannot be asked for its stored one)."""
        if local_file:
            if not Path(local_file).is_file():
                raise DataValidationError(f"{local_file} does not exist")
            spec = _spec_for_local_file(dataset)
            columns, batches = local_batches(local_file)
            outcome, _ = validate_batches(spec, batches, columns)
        else:
            store = store_for("data-engineer")
            spec = resolve_spec(store, dataset)
            with SourceSet(spec, store, list(sources) or None) as read:
                outcome, _ = validate_batches(spec, read.batches, read.columns)
        if outcome.invalid_rows:
            console.print(
                f"[yellow]{outcome.invalid_rows} of {outcome.total_rows} rows would be quarantined[/]: "
                + " | ".join(f"{p.label()}: {p.count} row(s)" for p in outcome.problems)
            )
        console.print(f"[green]valid[/]: {outcome.valid_rows} rows match dataset spec {spec.name!r}")

    @data.command()
    @dataset_option
    @source_option
    @click.option("--pipeline", "via_pipeline", is_flag=True, help="Run the KFP data pipeline with kfp.local.")
    def publish(dataset: str, sources: tuple[str, ...], via_pipeline: bool) -> None:
        """Ingest, validate, engineer features and publish an immutable curated version; move latest.

        On any error nothing is published and latest stays where it was.
        """
        store = store_for("data-engineer")
        spec = resolve_spec(store, dataset)
        search = (str(Path(dataset).resolve().parent),) if dataset and is_spec_path(dataset) else ()
        if via_pipeline:
            # heavy: the pipeline definition imports kfp's DSL (seconds); only --via-pipeline needs it
            from kfrelease.pipelines.data_pipeline import data_pipeline

            console.print(f"running the data pipeline for {spec.name!r} with kfp.local ...")
            version = run_local(
                Settings.from_env(),
                data_pipeline,
                spec_yaml=spec.text,
                features_dir=search[0] if search else "",
                on_step=lambda task, status: console.print(f"  step {task}: {status}"),
            ).output
            dv = get_version(store, spec.name, version)
        else:
            with console.status("data pipeline") as status:
                dv = run_data_pipeline(
                    spec, store, list(sources) or None, on_step=lambda s: status.update(s), search=search
                )
        quarantined = dv.manifest.get("quarantined_count") or 0
        console.print(
            f"published [bold]{dv.dataset}[/] version [bold]{dv.version}[/] ({dv.row_count} rows"
            + (f", {quarantined} quarantined in curated/{dv.manifest['quarantine']['key']}" if quarantined else "")
            + f"); latest -> {dv.version}"
        )

    @data.command()
    @dataset_option
    def versions(dataset: str) -> None:
        """List the published versions of a dataset (oldest first)."""
        store = store_for("data-scientist")
        name = dataset_name(store, dataset)
        latest = latest_version_id(store, name)
        rows = [
            (
                v.version + (" (latest)" if v.version == latest else ""),
                v.row_count,
                v.manifest["published_at"],
                ", ".join(s["key"].rsplit("/", 1)[-1] for s in v.manifest["sources"]),
                v.manifest["run_id"],
            )
            for v in list_versions(store, name)
        ]
        if not rows:
            get_version(store, name)  # nothing published under this name: NotFound saying how to publish
        table(f"curated/{name}", ["version", "rows", "published", "sources", "run"], rows)

    @data.command()
    @dataset_option
    @click.option("--version", default="latest", show_default=True)
    def show(dataset: str, version: str) -> None:
        """Print a version's manifest (schema, row count, sources, code, run, time)."""
        store = store_for("data-scientist")
        dv = get_version(store, dataset_name(store, dataset), version)
        click.echo(json.dumps({k: v for k, v in dv.manifest.items() if k != "schema"}, indent=2))
