"""What the trusted training steps decide on comes from where no judged code writes (issue 24, review eks5 S1).

534b308 made validate and register decide on the evidence evaluate *kept*; evaluate still computed it from inputs
that on a cluster travel through stores the judged code (the untrusted ``train``, or any pod reaching MLMD) can
rewrite: split's output parameters and the ``spec`` pipeline parameter (Kubeflow Pipelines' metadata store:
kubeflow/pipelines 2.16.0 ``backend/src/v2/driver/resolve.go`` ``resolveUpstreamParameters`` reads a task's input
from the producer's MLMD execution, ``resolveInputs`` a pipeline parameter from the root DAG execution's
``inputs``; kubeflow/manifests v1.11.0 and 26.03 ``applications/pipeline/upstream/base/metadata/options/istio/
istio-authorization-policy.yaml``: ALLOW ``rules: [{}]``), and score-champion's files and answers (the pipeline
root, which the untrusted role writes, ``kfrelease.k8s.render.eks.untrusted_step_policy``). Each test here runs
the training DAG inline with one step handed a rewritten input, as the KFP driver would hand it over, and shows
that the forged input made a version ``passed`` before (run on 6d8a83f: each assertion on ``EvidenceError`` fails
with the passed run) and is refused now with one line naming what differs, registering nothing."""

import dataclasses
import json
import uuid

import pandas as pd
import pytest

from kfrelease.registry import ModelRegistry
from kfrelease.storage import store_for
from kfrelease.training import run_records, steps
from kfrelease.training.evidence import EvidenceError, evidence_key, write_predictions
from kfrelease.training.spec import parse_spec

pytestmark = pytest.mark.integration

COMMIT = "f" * 40
#: a constant model: RMSE ~160 on the diabetes data; the ridge below ~55
CONSTANT = "{class: sklearn.dummy.DummyRegressor, params: {strategy: constant, constant: 0.0}}"
RIDGE = "{class: sklearn.linear_model.Ridge, params: {alpha: 1.0}}"


def spec_text(name: str, dataset: str, estimator: str, validation: str, flavour: str = "auto") -> str:
    return f"""name: {name}
tag: 1
dataset: {dataset}
features: [age, sex, bmi, bp, s1, s2, s3, s4, s5, s6, bmi_bp]
target: progression
estimator: {estimator}
split: {{test_size: 0.2, seed: 42}}
validation: {validation}
flavour: {flavour}
"""


def release_run(stack, monkeypatch, spec, commit: str = COMMIT, **forged: dict):
    """A run the trigger started (its run record as ``trigger.trigger`` writes it: commit, fingerprint, spec) whose
    steps named in ``forged`` get those inputs instead of their own (a value, or a function of the step's real
    inputs). Returns the ``InlineRun``, or the ``EvidenceError`` that refused it (then nothing was registered)."""
    store = store_for("pipeline", stack)
    run_id = f"train-{uuid.uuid4().hex[:12]}"
    record = {"model": spec.name, "spec_fingerprint": spec.fingerprint, "spec_json": spec.to_json(), "commit": COMMIT}
    run_records.create_run(store, run_id, record)
    dag = steps.TRAINING_STEPS

    def rewritten(step: steps.Step) -> steps.Step:
        if step.name not in forged:
            return step

        def inline(a: steps.StepIO) -> dict:
            given = {k: v(a) if callable(v) else v for k, v in forged[step.name].items()}
            return step.inline(dataclasses.replace(a, inputs={**a.inputs, **given}))

        return dataclasses.replace(step, inline=inline)

    before = ModelRegistry(store).list(spec.name)
    monkeypatch.setattr(steps, "TRAINING_STEPS", tuple(rewritten(s) for s in dag))
    try:
        return steps.run_inline(spec, commit, run_id=run_id, settings=stack, containerize=False)
    except EvidenceError as exc:
        assert ModelRegistry(store).list(spec.name) == before, "registered from a forged input"
        return exc
    finally:
        monkeypatch.setattr(steps, "TRAINING_STEPS", dag)


def refused(result, *says: str) -> str:
    """The one-line refusal of a forged run (``result`` a passed run on a main without the check)."""
    assert isinstance(result, EvidenceError), f"the forged input was taken: {getattr(result, 'verdict', result)}"
    text = str(result)
    assert "\n" not in text and all(s in text for s in says), text
    return text


@pytest.fixture
def production(dataset, stack, request):
    """(model name, production's version, its served flavour) of a ridge in production, served as ``request.param``'s flavour:
    ``onnx`` (code-free, what a cluster serves) or ``sklearn`` (a pickle: the embedded stack only)."""
    name = f"forged-champion-{uuid.uuid4().hex[:6]}"
    flavour = getattr(request, "param", "onnx")
    spec = parse_spec(spec_text(name, dataset.name, RIDGE, "{max_rmse: 200.0}", flavour))
    run = steps.run_inline(spec, COMMIT, settings=stack, containerize=False)
    registry = ModelRegistry(store_for("pipeline", stack))
    assert run.verdict["passed"] and registry.get(name, run.version).entry["artifact"]["flavour"] == flavour
    registry.set_stage(name, run.version, "production", "release-pipeline", "promoted for this test")
    return name, run.version, flavour


def test_evaluate_compares_with_the_production_version_split_kept_not_its_champion_parameter(
    production, dataset, stack, monkeypatch
):
    """(a) A ``train`` that rewrites split's MLMD execution with ``champion: ""`` (and a note) had the candidate
    judged without production: ``champion_check`` passes a candidate that is not comparable, and a spec with an
    absolute threshold is blessed (kfrelease.training.validate). Evaluate now takes split's decision from
    ``runs/<run>/evidence/split.json`` (written by split, outside ``runs/*/steps/*``) and refuses parameters that
    differ; a champion named where split found none is refused the same way."""
    name, version, _ = production
    spec = parse_spec(spec_text(name, dataset.name, CONSTANT, "{max_rmse: 200.0, tolerance: 0.02}"))
    forged = release_run(stack, monkeypatch, spec, evaluate={"champion": "", "champion_note": "no production yet"})
    refused(forged, "differs from what split kept", "/evidence/split.json", "champion, champion_note")

    honest = release_run(stack, monkeypatch, spec)
    assert honest.evidence["champion"]["version"] == version and not honest.verdict["passed"], honest.verdict
    kept = json.loads(store_for("pipeline", stack).get_bytes("models", evidence_key(honest.run_id, "split")))
    assert (kept["champion"], kept["champion_note"], kept["dataset_version"]) == (version, "", honest.dataset_version)


def test_register_records_the_runs_commit_and_data_and_evaluate_judges_against_splits_champion(
    dataset, stack, monkeypatch
):
    """Issue 24 (after review 4 R3): register recorded ``commit`` and ``dataset_version`` as it was given them, and
    evaluate compared with the production version ``champion`` named: all step parameters that travel through
    KFP's metadata store. They are now refused against what no step of the run writes: the commit of the run
    record (the trigger's), and split's decision as split kept it, which the kept evidence carries on. The honest
    run records the run's own."""
    first, latest = dataset.first_version, dataset.add_batch(2)

    def spec():
        return parse_spec(spec_text(f"forged-lineage-{uuid.uuid4().hex[:6]}", dataset.name, CONSTANT, "{}"))

    text = refused(release_run(stack, monkeypatch, spec(), "e" * 40), "the commit run", "register step was given")
    assert f"({'e' * 40}) is not the run's ({COMMIT}" in text
    text = refused(release_run(stack, monkeypatch, spec(), register={"dataset_version": first}), "dataset version")
    assert f"({first}) is not the run's ({latest}, the evidence evaluate kept)" in text
    # a champion where split found none: the candidate would be judged against another version
    text = refused(release_run(stack, monkeypatch, spec(), evaluate={"champion": "V1.1.0", "champion_note": ""}))
    assert "differs from what split kept" in text and "champion, champion_note" in text

    honest_spec = spec()
    run = release_run(stack, monkeypatch, honest_spec)
    mv = ModelRegistry(store_for("pipeline", stack)).get(honest_spec.name, run.version)
    assert (mv.commit, mv.dataset_version, mv.entry["run_id"]) == (COMMIT, latest, run.run_id)
    kept = json.loads(store_for("pipeline", stack).get_bytes("models", evidence_key(run.run_id, "split")))
    assert kept == {
        "dataset_version": latest,
        "champion": "",
        "champion_note": kept["champion_note"],
        "champion_files": {},
    }


@pytest.mark.parametrize("production", ["onnx", "sklearn"], indirect=True)
def test_production_s_answers_are_checked_to_be_production_s_before_they_count(
    production, dataset, stack, monkeypatch, tmp_path
):
    """(b) score-champion runs after ``train`` so that train cannot touch its outputs, but both are untrusted and
    one run: train (whose role writes ``<pipeline-root>/*``) can rewrite split's ``champion_model`` files, or the
    answers, and a bad "production" lost the paired test to the candidate. Evaluate now checks score-champion's
    answers: against production's served file when it loads without code (ONNX here: read from the registry, of
    the bytes split handed on, by digest), else against the held-out predictions production was registered with,
    on the rows both held out."""
    name, version, flavour = production
    spec = parse_spec(spec_text(name, dataset.name, CONSTANT, "{max_rmse: 200.0, tolerance: 0.02}"))

    def bad_production(a: steps.StepIO) -> str:  # what a train that rewrote production's files makes it answer
        path = tmp_path / f"forged-{uuid.uuid4().hex[:6]}.parquet"
        rows = len(pd.read_parquet(a.predictions))
        write_predictions(path, [1000.0] * rows)
        return str(path)

    forged = release_run(stack, monkeypatch, spec, evaluate={"champion_predictions": bad_production})
    refused(forged, f"production {version}'s held-out predictions from score-champion")

    honest = release_run(stack, monkeypatch, spec)
    champion = honest.evidence["champion"]
    assert champion["comparable"] and not honest.verdict["passed"], honest.verdict
    how = "against its model.onnx" if flavour == "onnx" else "against its kept held-out predictions"
    assert champion["unchecked"] == 0 and how in champion["checked"], champion


@pytest.mark.parametrize("malformed", ["a row missing", "one NaN", "not Parquet"])
def test_production_s_answers_that_cannot_be_read_are_refused_not_taken_for_no_comparison(
    malformed, production, dataset, stack, monkeypatch, tmp_path
):
    """Review eks6 N1: a score-champion answers file that evaluate cannot read (one row short, a NaN, another
    file the metadata store was repointed at) made production "not comparable", and ``champion_check`` passes a
    candidate that is not comparable: the comparison with production was off, for a file any concurrent run's
    merged code can overwrite. When split kept a production, such a file now stops the run, nothing registered."""
    name, version, _ = production
    spec = parse_spec(spec_text(name, dataset.name, CONSTANT, "{max_rmse: 200.0, tolerance: 0.02}"))

    def unreadable(a: steps.StepIO) -> str:
        path = tmp_path / f"forged-{uuid.uuid4().hex[:6]}.parquet"
        rows = len(pd.read_parquet(a.predictions))
        if malformed == "not Parquet":
            path.write_bytes(b"PAR1 this is a pickle, not predictions")
        else:
            values = [100.0] * rows
            if malformed == "one NaN":
                values[3] = float("nan")
            write_predictions(path, values[:-1] if malformed == "a row missing" else values)
        return str(path)

    forged = release_run(stack, monkeypatch, spec, evaluate={"champion_predictions": unreadable})
    refused(forged, f"production {version}", f"split kept production {version} to compare with", "nothing was judged")


def test_a_champion_file_split_did_not_hand_over_is_refused(production, dataset, stack):
    """The ONNX file evaluate checks production's answers with must be the bytes split copied for score-champion
    (split kept their digests beside its decision), else nothing is judged."""
    from kfrelease.training.evidence import checked_champion, read_split

    name, version, _ = production
    registry = ModelRegistry(store_for("pipeline", stack))
    entry = registry.get(name, version).entry
    spec = parse_spec(spec_text(name, dataset.name, RIDGE, "{}"))
    split = read_split(store_for("pipeline", stack), spec)
    with pytest.raises(
        EvidenceError, match=f"model.onnx split handed score-champion \\(sha256:0\\) is not production {version}"
    ):
        checked_champion(registry, split, entry, [0.0] * len(split.held_out), {"model.onnx": "sha256:0"})


def test_validate_and_register_judge_with_the_spec_the_run_record_holds(dataset, stack, monkeypatch):
    """(c) The ``spec`` pipeline parameter lives in the root DAG's MLMD ``inputs``; a rewrite with the same
    definition and ``validation: {max_rmse: 1e9}`` keeps the fingerprint (it leaves thresholds, dataset and tag
    out), so the run stayed a release run and validate and register judged with the forged thresholds. Every
    trusted step of a release run now refuses a spec other than the one the trigger wrote in its run record."""
    name = f"forged-spec-{uuid.uuid4().hex[:6]}"
    spec = parse_spec(spec_text(name, dataset.name, CONSTANT, "{max_rmse: 100.0}"))
    lenient = parse_spec(spec_text(name, dataset.name, CONSTANT, "{max_rmse: 1.0e+9, tolerance: 1.0e+9}"))
    assert lenient.fingerprint == spec.fingerprint
    honest = release_run(stack, monkeypatch, spec)
    assert not honest.verdict["passed"], honest.verdict

    forged = release_run(stack, monkeypatch, spec, validate={"spec": lenient}, register={"spec": lenient})
    refused(
        forged,
        "the spec a step of run train-",
        "differs from its run record's",
        "validation.max_rmse, validation.tolerance",
    )
    other_tag = parse_spec(spec_text(name, dataset.name, CONSTANT, "{max_rmse: 100.0}").replace("tag: 1", "tag: 7"))
    refused(
        release_run(stack, monkeypatch, spec, register={"spec": other_tag}), "differs from its run record's", "in tag"
    )


def test_deploy_staging_stages_only_the_version_its_own_run_registered(dataset, stack, monkeypatch):
    """Review eks6 L1: deploy-staging takes the version as register's output, a parameter that travels through
    KFP's metadata store, and staged any passed, never-staged version of the model it was named. A release run's
    register now keeps the version it registered (``runs/<run>/evidence/register.json``, outside what the untrusted
    steps write), and deploy-staging stages only that one. The passed version here was left unstaged by a run
    whose deploy-staging was handed a version that does not exist."""
    from kfrelease.errors import ConfigError

    name = f"forged-stage-{uuid.uuid4().hex[:6]}"
    registry = ModelRegistry(store_for("pipeline", stack))
    first = parse_spec(spec_text(name, dataset.name, RIDGE, "{max_rmse: 200.0}"))
    with pytest.raises(Exception):  # noqa: B017 - on main NotFound, now the refusal below: either way nothing staged
        release_run(stack, monkeypatch, first, **{"deploy-staging": {"version": "V9.9.9"}})
    (left,) = registry.list(name)
    assert left.passed and left.stage is None
    second = parse_spec(spec_text(name, dataset.name, RIDGE, "{max_rmse: 200.0}").replace("tag: 1", "tag: 2"))
    with pytest.raises(
        ConfigError, match=f"{name} {left.version} is not the version run .* registered.*nothing was staged"
    ):
        release_run(stack, monkeypatch, second, **{"deploy-staging": {"version": left.version}})
    assert registry.get(name, left.version).stage is None
    staged = release_run(stack, monkeypatch, second)  # the honest run stages its own version
    assert staged.stage == "staging" and staged.version != left.version
