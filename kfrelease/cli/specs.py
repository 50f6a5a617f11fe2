"""``kfrelease spec``: the specs' JSON Schemas and reference; ``kfrelease data init``: a first dataset spec."""

from __future__ import annotations

from pathlib import Path

import click

from kfrelease.cli.output import console
from kfrelease.errors import ConfigError
from kfrelease.specs import SCHEMAS, reference_markdown, schema_text


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
    def check(file: str, kind: str | None) -> None:
        """Check a spec file as the pipelines will (a model.yaml also builds its estimator); one line either way."""
        kind = kind or {"model.yaml": "model", "rollout.yaml": "rollout"}.get(Path(file).name, "dataset")
        if kind == "model":
            from kfrelease.training.spec import load_project

            model = load_project(file)
            estimator = model.build_estimator()
            what = f"model {model.name!r} V{model.tag}, {type(estimator).__name__} on {len(model.features)} features"
        elif kind == "rollout":
            from kfrelease.rollout.spec import load_rollout_spec

            rollout = load_rollout_spec(file)
            what = f"rollout spec, canary steps {list(rollout.canary.steps)}"
        else:
            from kfrelease.data.spec import load_spec

            if not Path(file).is_file():
                raise ConfigError(f"dataset spec {file} does not exist")
            dataset = load_spec(file)
            what = f"dataset {dataset.name!r}, {len(dataset.columns)} columns"
        click.echo(f"{file}: valid {what}")

    data = cli.commands.get("data")
    if isinstance(data, click.Group):
        data.add_command(init)


@click.command()
@click.option(
    "--from", "source", required=True, type=click.Path(dir_okay=False), help="A CSV or Parquet file of the data."
)
@click.option("--name", help="The dataset's name (default: from the file name).")
@click.option(
    "--out", type=click.Path(dir_okay=False), help="Where to write the spec (default: NAME.yaml); never overwritten."
)
def init(source: str, name: str | None, out: str | None) -> None:
    """Write a dataset spec inferred from a data file (dtypes, ranges, nullability, an id column) to review."""
    from kfrelease.data.infer import infer_spec, write_new

    text, spec = infer_spec(source, name)
    path = write_new(out or f"{spec.name}.yaml", text)
    console.print(
        f"wrote {path}: dataset {spec.name!r}, {len(spec.columns)} columns, id_column "
        f"{spec.id_column or '(none found)'}; review it, confirm the target, then publish with "
        f"--dataset {path}"
    )
