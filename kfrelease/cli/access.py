"""``kfrelease access``: render the access policy for a target."""

from __future__ import annotations

import json
from pathlib import Path

import click

from kfrelease.access.credentials import ensure_label_source
from kfrelease.access.policy import load_policy
from kfrelease.access.render import iam_policies, seaweed_identities
from kfrelease.cli.output import console, json_option, print_json, rows_as_records, table
from kfrelease.config import Settings


def register(cli: click.Group) -> None:
    @cli.group()
    def access() -> None:
        """The access policy (roles x buckets x actions) and what is rendered from it."""

    @access.command("show")
    @click.option("--policy", type=click.Path(dir_okay=False), help="Policy file (default: the packaged one).")
    @json_option
    def show(policy: str | None, as_json: bool) -> None:
        """Print the access matrix."""
        p = load_policy(policy)
        rows = [
            (role, b, ",".join(a for a in ("read", "write", "list") if a in acts))
            for role, g in p.roles.items()
            for b, acts in g.items()
        ]
        if as_json:
            print_json(rows_as_records(["role", "bucket", "actions"], rows))
            return
        table("access policy", ["role", "bucket", "actions"], rows)

    @access.command("render")
    @click.option("--target", type=click.Choice(["aws", "seaweedfs"]), default="aws", show_default=True)
    @click.option("--bucket-prefix", default="", help="Prefix of the S3 bucket names on AWS (names are global).")
    @click.option("--policy", type=click.Path(dir_okay=False), help="Policy file (default: the packaged one).")
    @click.option("--out", type=click.Path(file_okay=False), help="Write one JSON file per role here.")
    def render(target: str, bucket_prefix: str, policy: str | None, out: str | None) -> None:
        """Render IAM policy documents (aws) or the SeaweedFS identities file (seaweedfs)."""
        p = load_policy(policy)
        if target == "aws":
            docs = iam_policies(p, bucket_prefix)
        else:
            docs = {"s3": seaweed_identities(Settings.from_env(), p)}
            if not out:
                raise click.UsageError("--target seaweedfs contains secrets; write it to a file with --out DIR")
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            for name, doc in docs.items():
                path = Path(out) / f"{name}.json"
                path.write_text(json.dumps(doc, indent=2) + "\n")
                if target == "seaweedfs":
                    path.chmod(0o600)
                console.print(f"wrote {path}")
        else:
            click.echo(json.dumps(docs, indent=2))

    @access.command("label-source")
    @click.argument("name", default="clients")
    def label_source(name: str) -> None:
        """Declare label source NAME on the embedded stack (once) and print its bearer token.

        The feedback service stores ground truth only from declared label sources (both release gates decide
        on it): send `Authorization: Bearer <token>` with every POST /v1/feedback. The tokens are kept under
        the data dir (credentials/label-sources.json, mode 0600). On a cluster the sources are mesh identities
        (manifests/sources/environments.yaml: mesh_clients, and the ingress gateway)."""
        click.echo(ensure_label_source(Settings.from_env(), name))
