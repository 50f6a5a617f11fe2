"""``kfrelease spec``: the specs' JSON Schemas and reference; ``kfrelease data init``: a first dataset spec."""

from __future__ import annotations

from pathlib import Path

import click

from kfrelease.cli.output import console
from kfrelease.data.infer import infer_spec, write_new
from kfrelease.data.publish import get_version
from kfrelease.data.spec import load_spec
from kfrelease.errors import ConfigError, KfreleaseError, StoreUnavailable
from kfrelease.rollout.spec import load_rollout_spec
from kfrelease.specs import SCHEMAS, reference_markdown, schema_text
from kfrelease.storage import store_for
from kfrelease.training.core import check_schema
from kfrelease.training.spec import load_project


def register(cli: click.Group) -> None:
    @cli.group()
    def spec() -> None:
        """The YAML specs (dataset, model.yaml, rollout.yaml): JSON Schemas for editors, the key reference."""

    @spec.command()
    @click.argument("kind", type=click.Choice(list(SCHEMAS)))
    def schema(kind: str) -> None:
        """Print the JSON Schema of one spec kind (committed under schemas/specs/)."""
        click.echo(schema_text(kind), nl=False)

    @spec.command()
    def reference() -> None:
        """Print the reference of every key of every spec (docs/spec-reference.md)."""
        click.echo(reference_markdown(), nl=False)

    @spec.command()
    @click.argument("file", type=click.Path(dir_okay=False))
    @click.option(
        "--kind",
        type=click.Choice(list(SCHEMAS)),
        help="The spec's kind (default: model for model.yaml, rollout for rollout.yaml, else dataset).",
    )
    @click.option(
        "--offline",
        is_flag=True,
        help="model.yaml: check the spec and build its estimator only, not against its dataset's latest schema.",
    )
    def check(file: str, kind: str | None, offline: bool) -> None:
        """Check a spec file as the pipelines will, in one line either way. A model.yaml also builds its
        estimator and is checked against the latest curated version of its dataset (features, dtypes, target)."""
        kind = kind or {"model.yaml": "model", "rollout.yaml": "rollout"}.get(Path(file).name, "dataset")
        if kind == "model":
            what = _check_model(file, offline)
        elif kind == "rollout":
            rollout = load_rollout_spec(file)
            what = f"rollout spec, canary steps {list(rollout.canary.steps)}"
        else:
            if not Path(file).is_file():
                raise ConfigError(f"dataset spec {file} does not exist")
            dataset = load_spec(file)
            what = f"dataset {dataset.name!r}, {len(dataset.columns)} columns"
        click.echo(f"{file}: valid {what}")

    data = cli.commands.get("data")
    if isinstance(data, click.Group):
        data.add_command(init)


def _check_model(file: str, offline: bool) -> str:
    """What ``spec check`` says of a valid model.yaml; a ``KfreleaseError`` (one line) when it is not."""
    model = load_project(file)
    estimator = model.build_estimator()
    what = f"model {model.name!r} V{model.tag}, {type(estimator).__name__} on {len(model.features)} features"
    if offline:
        return f"{what} (dataset not checked: --offline)"

    try:
        dv = get_version(store_for("data-scientist"), model.dataset)
    except (StoreUnavailable, ConfigError) as exc:
        raise KfreleaseError(
            f"{file}: the spec is valid, but dataset {model.dataset!r} could not be read to check it against: {exc}; "
            "or check the spec alone with --offline"
        ) from None
    check_schema(model, dv.manifest, dv.version)
    return f"{what}, against dataset {model.dataset!r} version {dv.version} (features, dtypes, target)"


@click.command()
@click.option(
    "--from", "source", required=True, type=click.Path(dir_okay=False), help="A CSV or Parquet file of the data."
)
@click.option("--name", help="The dataset's name (default: from the file name).")
@click.option(
    "--out", type=click.Path(dir_okay=False), help="Where to write the spec (default: NAME.yaml); never overwritten."
)
def init(source: str, name: str | None, out: str | None) -> None:
    """Write a dataset spec inferred from a data file (dtypes, categories, ranges, nullability, an id column) to review."""
    text, spec = infer_spec(source, name)
    path = write_new(out or f"{spec.name}.yaml", text)
    console.print(
        f"wrote {path}: dataset {spec.name!r}, {len(spec.columns)} columns, id_column "
        f"{spec.id_column or '(none found)'}; review it, confirm the target, then publish with "
        f"--dataset {path}"
    )
