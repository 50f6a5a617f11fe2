"""``kfrelease workspace``: add (or remove) a data scientist's Jupyter workspace with one command."""

from __future__ import annotations

import click
import yaml

from kfrelease.cli.manifests import manifests_dir
from kfrelease.cli.output import console, json_option, print_json, rows_as_records, table
from kfrelease.errors import Conflict, NotFound
from kfrelease.k8s.environments import workspaces_dir
from kfrelease.k8s.render.tree import write_tree
from kfrelease.k8s.render.workspace import Workspace, load_workspaces


def register(cli: click.Group) -> None:
    @cli.group()
    def workspace() -> None:
        """Data scientists' workspaces on EKS: Profile, Notebook (jupyterlab-git), RBAC, IRSA role."""

    @workspace.command("add")
    @click.argument("name")
    @click.option("--email", required=True, help="The data scientist's Kubeflow user id (e-mail).")
    @click.option("--cpu", default="1", show_default=True)
    @click.option("--memory", default="4Gi", show_default=True)
    @click.option("--storage", default="20Gi", show_default=True, help="Size of the home volume.")
    @click.option(
        "--out",
        "out",
        type=click.Path(file_okay=False),
        help="Manifests directory to add it to (default: the checkout's manifests/).",
    )
    def add(name: str, email: str, cpu: str, memory: str, storage: str, out: str | None) -> None:
        """Add workspace NAME: writes sources/workspaces/NAME.yaml and re-renders the manifests (its Profile ds-NAME,
        Notebook, home volume, PodDefault, view-only access to the release namespace, and its IAM role in
        every environment's eksctl ClusterConfig)."""
        root = manifests_dir(out)
        ws = Workspace(name=name, email=email, cpu=cpu, memory=memory, storage=storage).check("workspace add")
        path = workspaces_dir(root) / f"{name}.yaml"
        if path.exists():
            raise Conflict(f"workspace {name!r} already exists ({path}); remove it first or pick another name")
        others = [w for w in load_workspaces(workspaces_dir(root)) if w.email == email]
        if others:
            raise Conflict(f"{email} already has workspace {others[0].name!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            yaml.safe_dump(
                {
                    "name": ws.name,
                    "email": ws.email,
                    "cpu": ws.cpu,
                    "memory": ws.memory,
                    "storage": ws.storage,
                },
                sort_keys=False,
            )
        )
        try:
            changed, _ = write_tree(root)
        except BaseException:
            path.unlink()  # nothing half written: the source goes away with the failed render
            raise
        console.print(
            f"added workspace {name!r} ({email}) in namespace {ws.namespace}: {path}",
            soft_wrap=True,
        )
        console.print(f"re-rendered {len(changed)} file(s) under {root}", soft_wrap=True)
        console.print(
            "next, per environment: eksctl create iamserviceaccount --config-file "
            f"{root}/eks/<env>/cluster.yaml --include '{ws.namespace}/default-editor' --approve; "
            f"kubectl apply -k {root}/overlays/<env>",
            soft_wrap=True,
        )

    @workspace.command("remove")
    @click.argument("name")
    @click.option("--out", "out", type=click.Path(file_okay=False), help="Manifests directory.")
    def remove(name: str, out: str | None) -> None:
        """Remove workspace NAME from the manifests (delete its Profile on the cluster yourself)."""
        root = manifests_dir(out)
        path = workspaces_dir(root) / f"{name}.yaml"
        if not path.exists():
            raise NotFound(f"no workspace {name!r} under {root / 'workspaces'}")
        text = path.read_text()
        path.unlink()
        try:
            write_tree(root)
        except BaseException:
            path.write_text(text)
            raise
        console.print(
            f"removed workspace {name!r}; `kubectl delete profile ds-{name}` removes it from a cluster",
            soft_wrap=True,
        )

    @workspace.command("list")
    @click.option("--out", "out", type=click.Path(file_okay=False), help="Manifests directory.")
    @json_option
    def list_cmd(out: str | None, as_json: bool) -> None:
        """List the workspaces."""
        root = manifests_dir(out)
        columns = ["name", "email", "namespace", "cpu", "memory", "storage"]
        rows = [
            (w.name, w.email, w.namespace, w.cpu, w.memory, w.storage) for w in load_workspaces(workspaces_dir(root))
        ]
        if as_json:
            print_json(rows_as_records(columns, rows))
            return
        table("workspaces", columns, rows)
