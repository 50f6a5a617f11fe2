"""The end-to-end demo that `make demo` runs, as a list of named steps with a summary at the end."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from kfrelease.config import Settings


@dataclass
class DemoContext:
    settings: Settings
    summary: list[tuple[str, str]] = field(default_factory=list)  # (what, result) rows of the final table
    state: dict = field(default_factory=dict)

    def note(self, what: str, result: str) -> None:
        self.summary.append((what, result))


DemoStep = tuple[str, Callable[[DemoContext], None]]


def step_stack(ctx: DemoContext) -> None:
    from kfrelease.cli.stack import start_stack

    statuses = start_stack(ctx.settings)
    ctx.note("embedded stack", f"{sum(s.healthy for s in statuses)}/{len(statuses)} services ready")


def step_publish_data(ctx: DemoContext) -> None:
    from kfrelease.data.publish import get_version
    from kfrelease.data.spec import load_spec
    from kfrelease.demo.data import upload_batch
    from kfrelease.kfp_runner import run_local
    from kfrelease.pipelines.data_pipeline import data_pipeline
    from kfrelease.storage import store_for

    store = store_for("data-engineer", ctx.settings)
    key = upload_batch(store, 1)
    spec = load_spec("diabetes")
    version = run_local(ctx.settings, data_pipeline, spec_yaml=spec.text).output
    dv = get_version(store, spec.name, version)
    ctx.state["dataset_version"] = dv.version
    ctx.note("curated data (kfp.local data pipeline)", f"diabetes {dv.version}, {dv.row_count} rows from {key}")


#: The demo's steps, in order; later parts append theirs (training, release, monitoring).
STEPS: list[DemoStep] = [
    ("start the embedded stack", step_stack),
    ("load raw batch 1 and run the data pipeline", step_publish_data),
]
