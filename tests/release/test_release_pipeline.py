"""The release pipeline (KFP) on kfp.local with the real stack: both branches of its conditions. The first
model skips the shadow (outer condition false) and takes the first-model branch (provisional until its
thresholds pass live); a clearly worse candidate is stopped by the shadow gate (outer true, inner false: the
canary never starts)."""

from __future__ import annotations

import pytest

from kfrelease.registry import ModelRegistry
from kfrelease.release.embedded import run_release_pipeline
from kfrelease.storage import store_for
from kfrelease.training.spec import load_project_at_commit, parse_spec
from kfrelease.training.steps import run_inline
from tests.release.conftest import bad_spec_text, small_spec, traffic

pytestmark = pytest.mark.integration


@pytest.mark.slow(seconds=42)
def test_release_pipeline_promotes_a_first_model_and_its_shadow_gate_rejects_a_worse_one(release_env, monkeypatch):
    from kfrelease.demo.flow import create_release_demo_project

    settings, ds, name, tmp = release_env
    shas = create_release_demo_project(tmp / "project", name=name, dataset=ds.name)
    spec = small_spec(name, shadow={"min_labelled_samples": 20})
    spec_file = tmp / "rollout.yaml"
    spec_file.write_text(spec.to_yaml())
    registry = ModelRegistry(store_for("pipeline", settings))

    model_spec, commit = load_project_at_commit(tmp / "project", shas[0])
    v1 = run_inline(model_spec, commit, settings=settings, containerize=False)
    with traffic(settings, name, wait_served=300, rate=60.0) as first:  # provisional until its thresholds pass
        assert run_release_pipeline(settings, name, v1.version, str(spec_file)) == "production"
        assert first.stop().failed == 0
    phases = [e["evidence"].get("phase") for e in registry.history(name, v1.version)]
    assert "provisional" in phases and phases[-1] == "promote" and "shadow" not in phases

    # its offline validation has no tail or slice check (a training rollout spec without them): the constant
    # model passes offline on its tolerance, and the shadow gate (tail check on) rejects it
    offline = tmp / "offline-rollout.yaml"
    offline.write_text(spec.with_changes(shadow={"min_exposure": 0, "worst_slice": False}).to_yaml())
    monkeypatch.setenv("KFRELEASE_ROLLOUT_SPEC", str(offline))
    bad = run_inline(
        parse_spec(bad_spec_text(name, ds.name)),
        "c" * 40,
        settings=settings,
        containerize=False,
    )
    with traffic(settings, name) as gen:
        assert run_release_pipeline(settings, name, bad.version, str(spec_file)) == "rejected"
        stats = gen.stop()
    assert stats.failed == 0 and bad.version not in stats.versions  # it only ever saw mirrored copies
    last = registry.history(name, bad.version)[-1]
    assert last["evidence"]["phase"] == "shadow" and last["evidence"]["decision"] == "fail"
    assert not any(e["evidence"].get("phase") == "canary" for e in registry.history(name, bad.version))
    assert registry.current(name, "production").version == v1.version
