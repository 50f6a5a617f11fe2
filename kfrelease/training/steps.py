"""The training pipeline's steps as plain functions over files and values, and the training DAG, declared once.

The KFP components (``kfrelease.components.train`` ...) call exactly these functions, with their artifact paths.
``TRAINING_STEPS`` declares the DAG: each step's component, where each of its inputs comes from, its identity
and its condition. ``kfrelease.pipelines.training_pipeline`` builds the KFP pipeline from it, and ``run_inline``
runs the same list in one process (tests, benchmark, quick local runs), so adding a step is one entry here.
"""

from __future__ import annotations

import functools
import logging
import math
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kfrelease.config import Settings, setting
from kfrelease.data.catalog import version_spec
from kfrelease.errors import ConfigError, KfreleaseError
from kfrelease.faults import crash_point
from kfrelease.images.oci import ImageRef, containerize, image_registry
from kfrelease.registry import EXPERIMENTS, ModelRegistry, TrainedModel
from kfrelease.registry.artifact import (
    AUTO,
    BOOSTERS,
    CATEGORY_DTYPES,
    CONVERTED,
    DEFAULT_FLAVOUR,
    ENTRY_FILE,
    FLAVOURS,
    Verification,
    artifact_record,
    choose_flavour,
    convert_flavours,
    flavour_named,
    input_columns,
    load_model_dir,
    refuse_pickle_serving,
    row_matrix,
    verify_flavour,
)
from kfrelease.storage import store_for
from kfrelease.training import run_records
from kfrelease.training.results import evaluation_report_key
from kfrelease.training.rollout_file import rollout_of_run, rollout_spec_of_run
from kfrelease.training.spec import ModelSpec

log = logging.getLogger(__name__)

ROLE = "pipeline"
PREDICTION = "prediction"
#: a version's held-out predictions beside its model file (``kfrelease.training.evidence.keyed_predictions``)
HOLDOUT_FILE = "holdout.parquet"


def step_role() -> str:
    """The access-policy role the training steps run as: ``pipeline``, unless ``KFRELEASE_ROLE`` says
    otherwise. An experiment submitted from a notebook runs as ``data-scientist``
    (``kfrelease.training.experiments.submit_experiment``; on the cluster the notebook's own IRSA role), which may
    register experiments and write nothing of the released registry: it can stage nothing, by identity."""
    return setting("KFRELEASE_ROLE") or ROLE


def step_store(settings: Settings | None = None):
    return store_for(step_role(), settings)


def _champion_entry(store, spec: ModelSpec, manifest: dict) -> tuple[dict | None, str]:
    """Production's registry entry when it can be compared on this data (its inputs are numeric columns of it
    and it predicts the same target), else None; and why not."""
    from kfrelease.training.core import _numeric  # heavy: pandas

    mv = ModelRegistry(store).current(spec.name, "production")
    if mv is None:
        return None, "no production model yet: nothing to compare"
    dtypes = {c["name"]: str(c.get("dtype", "")) for c in manifest["columns"]}
    numbers = {c["name"] for c in mv.entry["input_schema"] if c.get("dtype") not in CATEGORY_DTYPES}
    missing = [f for f in mv.features if f not in dtypes or (f in numbers and not _numeric(dtypes[f]))]
    if missing:
        return None, f"production {mv.version} needs inputs {missing} this data lacks: not comparable"
    if mv.target != spec.target:
        return None, f"production {mv.version} predicts {mv.target!r}, not {spec.target!r}: not comparable"
    return mv.entry, ""


def split_step(
    spec: ModelSpec,
    dataset_version: str,
    train_path: str,
    holdout_path: str,
    champion_dir: str,
    settings: Settings | None = None,
    run_id: str = "",
) -> dict:
    """Trusted: resolve the curated version (``latest`` resolves now), check the spec against it, split it by the
    stable hash and hand the untrusted steps what they may see: the training rows (``train_path``), the held-out
    rows' features without the target (``holdout_path``), and production's model file, copied unread
    (``champion_dir``, empty when there is no comparable production model). Runs no model code. For a release run
    what it decided (``SPLIT_DECISION``: the dataset version, the production version compared with and why none) is
    kept where ``evaluate`` and ``register`` read it (``split_decision``), since its output parameters travel
    through KFP's metadata store."""
    from kfrelease.data.publish import get_version  # heavy: pandas
    from kfrelease.training.evidence import folder_digests, read_split  # heavy: pandas

    store = step_store(settings)
    dv = get_version(store, spec.dataset, dataset_version or "latest")
    champion, why = _champion_entry(store, spec, dv.manifest)
    champion_features = [c["name"] for c in champion["input_schema"]] if champion else []
    split = read_split(store, spec, dv.version, champion_features)
    crash_point("split.loaded")
    split.train[[*spec.features, spec.target]].to_parquet(train_path, index=False)
    split.features_of_held_out(dict.fromkeys([*spec.features, *champion_features])).to_parquet(
        holdout_path, index=False
    )
    Path(champion_dir).mkdir(parents=True, exist_ok=True)
    if champion:
        ModelRegistry(store).download(spec.name, champion["version"], champion_dir)  # bytes only: never loaded here
    log.info(
        "split %s: %s; champion: %s", split.dataset_version, split.rule.describe(), champion and champion["version"]
    )
    out = {
        "dataset_version": split.dataset_version,
        "champion": champion["version"] if champion else "",
        "champion_note": "" if champion else why,
        "split": split.rule.as_dict(),
        "train_rows": len(split.train),
        "holdout_rows": len(split.held_out),
    }
    # what score-champion was handed, by digest: evaluate checks its answers with production's file of these bytes
    files = folder_digests(champion_dir) if champion else {}
    _keep(store, spec, run_id, {**{k: out[k] for k in SPLIT_DECISION}, CHAMPION_FILES: files}, "split")
    return out


#: What ``split`` decides that the trusted steps after it act on (its output parameters).
SPLIT_DECISION = ("dataset_version", "champion", "champion_note")
#: ... and what it keeps beside them: ``{file: sha256}`` of production's files it copied for ``score-champion``
CHAMPION_FILES = "champion_files"


def split_decision(store, spec: ModelSpec, run_id: str, given: dict) -> dict:
    """Split's decision as the trusted steps after it may use it: for a release run what ``split`` kept
    (``runs/<run>/evidence/split.json``, with ``CHAMPION_FILES``), whose ``SPLIT_DECISION`` ``given`` (the
    parameters the asking step received) must equal (``EvidenceError`` naming the keys otherwise); for an experiment
    (never staged), ``given``."""
    from kfrelease.training.evidence import kept_evidence  # heavy: pandas

    if not is_release_run(store, run_id, spec):
        return given
    return kept_evidence(store, run_id, given, "split", SPLIT_DECISION)


def trusted_lineage(store, spec: ModelSpec, run_id: str, commit: str, dataset_version: str, evidence: dict) -> None:
    """Refuse (``EvidenceError``) a release run's ``commit`` or ``dataset_version`` parameter that is not the run's:
    the commit of its run record (written by the trigger before the pipeline started, where no step of it writes)
    and the dataset version of the evidence ``evaluate`` kept (split's, as split kept it). Both arrive at register
    through KFP's metadata store (``keep_evidence``), and register records them as the version's lineage. A run
    without a run record (an experiment, never staged) records what it was given."""
    from kfrelease.training.evidence import EvidenceError  # heavy: pandas

    if not is_release_run(store, run_id, spec):
        return
    record = run_records.get_run(store, run_id).record
    uri = store.uri(run_records.BUCKET, run_records.run_key(run_id, "run.json"))
    for name, given, kept, where in (
        ("commit", commit, record.get("commit"), f"its run record {uri}"),
        ("dataset version", dataset_version, evidence.get("dataset_version"), "the evidence evaluate kept"),
    ):
        if (given or "") != (kept or ""):  # an automatic retrain of a version with no commit has none
            raise EvidenceError(
                f"the {name} run {run_id}'s register step was given ({given or 'none'}) is not the run's "
                f"({kept or 'none recorded'}, {where}): a step's parameters can be rewritten in transit; nothing "
                "was registered"
            )


def train_step(
    spec: ModelSpec,
    train_path: str,
    holdout_path: str,
    model_path: str,
    predictions_path: str,
    onnx_path: str | None = None,
    booster_path: str | None = None,
) -> dict:
    """Untrusted (runs the merged model code): fit on the training rows, write the model (``sklearn``, and each
    other flavour the spec's ``flavour`` asks for that converts: ``onnx_path``, and ``booster_path`` for an
    XGBoost or LightGBM regressor's own model file; each empty when none), then predict
    the held-out rows' features with the model *as written* (read back the way serving reads it), label-blind.
    The result carries the flavours' checks as this step measured them (its claims; ``evaluate`` verifies the
    converted files again on the real held-out rows)."""
    import pandas as pd  # heavy: pandas

    from kfrelease.training.core import fit, predict, text_features  # heavy: pandas
    from kfrelease.training.evidence import write_predictions  # heavy: pandas

    spec.build_estimator()  # unknown estimator / bad hyper-parameter: fail before reading any data
    train = pd.read_parquet(train_path)
    crash_point("train.loaded")
    model, seconds = fit(spec, train)
    holdout = pd.read_parquet(holdout_path)
    # the untrusted step reads no dataset spec: the training rows' own types (text features as strings)
    text = set(text_features(spec, train))
    columns = input_columns([{"name": f, "dtype": "string" if f in text else "float64"} for f in spec.features])
    converted = convert_flavours(model, columns, holdout[list(spec.features)], spec.flavour, spec.flavour_tolerance)
    Path(model_path).write_bytes(converted.files["sklearn"])
    if onnx_path is not None:
        Path(onnx_path).write_bytes(converted.files.get("onnx", b""))
    if booster_path is not None:
        Path(booster_path).write_bytes(next((converted.files[n] for n in BOOSTERS if n in converted.files), b""))
    flavour = flavour_named(DEFAULT_FLAVOUR)
    write_predictions(predictions_path, predict(flavour.load(model_path), holdout, spec.features))
    return {
        "train_rows": len(train),
        "holdout_rows": len(holdout),
        "fit_seconds": seconds,
        "flavours": {name: check.as_dict() for name, check in converted.checks.items()},
    }


def score_step(champion_dir: str, holdout_path: str, predictions_path: str) -> dict:
    """Untrusted (runs production's model code, in a step of its own): production's predictions on the held-out
    rows' features; nothing when there is no comparable production model."""
    import pandas as pd  # heavy: pandas

    from kfrelease.training.evidence import write_predictions  # heavy: pandas

    if not (Path(champion_dir) / ENTRY_FILE).is_file():
        write_predictions(predictions_path, [])
        return {"version": "", "rows": 0}
    loaded = load_model_dir(champion_dir)
    holdout = pd.read_parquet(holdout_path)
    write_predictions(predictions_path, loaded.predict(holdout[list(loaded.features)]))  # typed by its schema
    return {"version": loaded.version, "rows": len(holdout)}


def evaluate_step(
    spec: ModelSpec,
    dataset_version: str,
    champion: str,
    predictions_path: str,
    champion_predictions_path: str,
    run_id: str = "",
    html_path: str | None = None,
    keyed_path: str | None = None,
    settings: Settings | None = None,
    champion_note: str = "",
    onnx_path: str | None = None,
    flavour_claims: dict | None = None,
    booster_path: str | None = None,
) -> dict:
    """Trusted: the evidence. Re-read the curated version and its split (the held-out labels are read here and
    nowhere else), join the untrusted steps' predictions by row, compute the candidate's metrics and
    Evidently's report on every held-out row, and compare production with the candidate on the rows neither
    trained on with the release gates' paired test. Loads no model."""
    from kfrelease.data.publish import get_version  # heavy: pandas
    from kfrelease.quality.evaluation import regression_report  # heavy: pandas

    # heavy: pandas
    from kfrelease.training.evidence import (
        EvidenceError,
        candidate_evidence,
        champion_evidence,
        checked_champion,
        file_digest,
        keyed_predictions,
        read_predictions,
        read_split,
    )
    from kfrelease.training.validate import champion_training_rows, drift_evidence  # heavy: pandas

    store = step_store(settings)
    # the dataset version and the production version to compare with are split's, as split kept them for a release
    # run: given a forged champion ("" and a note) the candidate would be judged without production
    decided = split_decision(
        store, spec, run_id, {"dataset_version": dataset_version, "champion": champion, "champion_note": champion_note}
    )
    registry = ModelRegistry(store)
    entry = registry.get(spec.name, champion).entry if champion else None
    extra = [c["name"] for c in entry["input_schema"]] if entry else []
    split = read_split(store, spec, dataset_version, extra)
    evidence: dict = {
        "dataset_version": split.dataset_version,
        "split": split.rule.as_dict(),
        "held_out_rows": len(split.held_out),
        "train_rows": len(split.train),
        "predictions_digest": file_digest(predictions_path),
        "champion": {"version": None, "comparable": False, "detail": champion_note} if champion_note else None,
    }
    try:
        cand = read_predictions(predictions_path, len(split.held_out))
    except EvidenceError as exc:
        return _keep(store, spec, run_id, {**evidence, "metrics": {}, "invalid": str(exc)})
    frame = split.held_out[[*spec.features, spec.target]].assign(**{PREDICTION: cand})
    metrics, html = regression_report(frame, spec.target, PREDICTION, list(spec.features))
    metrics.update(candidate_evidence(split, spec.target, cand))
    evidence["metrics"] = metrics
    if html_path:
        Path(html_path).write_text(html, encoding="utf-8")
    schema = spec.input_schema(version_spec(get_version(store, spec.dataset, split.dataset_version).manifest))
    evidence["flavours"], evidence["onnx_digest"] = verified_flavours(
        spec, split, cand, onnx_path, flavour_claims, schema, booster_path
    )
    if booster_path and any((evidence["flavours"].get(n) or {}).get("verified") for n in BOOSTERS):
        evidence["booster_digest"] = file_digest(booster_path)
    if keyed_path:  # kept with the version: ``models diff`` compares two versions on the rows both held out
        keyed_predictions(split, cand).to_parquet(keyed_path, index=False)
        evidence["keyed_digest"] = file_digest(keyed_path)
    if entry is not None:
        # split kept a production to compare with: its answers are obtained and checked, or nothing is judged. An
        # unreadable, short, NaN or repointed answers file is refused like a wrong one, never taken for "not
        # comparable", which would turn the comparison off (review eks6 N1: score-champion's output is an untrusted
        # step's, under the pipeline root, its URI from KFP's metadata store)
        try:
            champ = read_predictions(champion_predictions_path, len(split.held_out), f"production {champion}")
        except EvidenceError as exc:
            raise EvidenceError(
                f"{exc}; split kept production {champion} to compare with, so nothing was judged (if production "
                "itself answers so, replace it before judging candidates against it)"
            ) from None
        # production's answers as score-champion gave them, checked to be production's (review eks5 S1 (b))
        checked = checked_champion(registry, split, entry, champ, decided.get(CHAMPION_FILES))
        rollout = rollout_spec_of_run(store, run_id, spec.name)
        evidence["champion"] = champion_evidence(store, spec, split, entry, cand, champ, rollout, schema, checked)
        evidence["drift"] = drift_evidence(spec, split.train, champion_training_rows(store, entry), champion)
    return _keep(store, spec, run_id, evidence)


def _keep(store, spec: ModelSpec, run_id: str, evidence: dict, step: str = "evaluate") -> dict:
    """What ``step`` decided for a release run, kept where the steps after it read it (``evidence.keep_evidence``)."""
    from kfrelease.training.evidence import keep_evidence  # heavy: pandas

    return keep_evidence(store, run_id, evidence, step) if is_release_run(store, run_id, spec) else evidence


def trusted_evidence(spec: ModelSpec, run_id: str, given: dict, settings: Settings | None = None) -> dict:
    """The evidence ``validate`` and ``register`` decide on: for a release run, what ``evaluate`` kept
    (``evidence.kept_evidence``; ``given``, the step's parameter, must equal it); for an experiment (never
    staged), ``given``."""
    from kfrelease.training.evidence import kept_evidence  # heavy: pandas

    store = step_store(settings)
    return kept_evidence(store, run_id, given) if is_release_run(store, run_id, spec) else given


def _claimed(claim) -> dict:
    """What the train step claimed about a flavour, kept only as plain numbers and a short reason (it is
    untrusted: nothing it says marks a file verified)."""
    claim = claim if isinstance(claim, dict) else {}
    out: dict = {}
    for key in ("convert_seconds", "predict_us"):
        value = claim.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
            out[key] = float(value)
    if isinstance(claim.get("reason"), str):
        out["reason"] = claim["reason"][:500]
    return out


def verified_flavours(
    spec: ModelSpec,
    split,
    cand,
    onnx_path: str | None,
    claims: dict | None,
    schema: list[dict] | None = None,
    booster_path: str | None = None,
) -> tuple[dict, str]:
    """Each flavour's check as the registry records it (``Verification.as_dict``), and the digest of the verified
    ONNX file ("" when none). ``sklearn`` is the reference: the predictions judged here are its own, and its
    single-row cost is the train step's claim (a step that loads no pickle cannot measure it). A converted file
    is verified here, where no model code runs: loaded as ONNX (a protobuf graph, no pickle) or as the booster's
    own model file (``booster_path``: XGBoost's UBJSON or LightGBM's text, read as the flavour the train step
    claims it is) and asked for the real held-out rows, its answers must agree with the judged predictions within
    ``flavour_tolerance``. A flavour the train step tried but did not make (conversion failed, not installed) is
    recorded with its reason, never verified: nothing the untrusted step says marks a file verified. ``schema``:
    the input schema the version is registered with (``ModelSpec.input_schema``; None: every feature a number)."""
    from kfrelease.training.evidence import file_digest  # heavy: pandas

    claims = claims if isinstance(claims, dict) else {}
    reference = _claimed(claims.get("sklearn"))
    checks = {
        "sklearn": Verification("sklearn", True, 0.0, 0.0, len(cand), predict_us=reference.get("predict_us")).as_dict()
    }
    # the booster file is read as the native flavour the train step names (a wrong name only fails to load)
    booster = next((n for n in BOOSTERS if spec.flavour == n or (spec.flavour == AUTO and n in claims)), None)
    files = {"onnx": onnx_path, **({booster: booster_path} if booster else {})}
    digest = ""
    columns = rows = None
    for name, path in files.items():
        if not (path and Path(path).is_file() and Path(path).stat().st_size):
            continue
        if columns is None:
            columns = input_columns(schema or spec.input_schema(None))
            rows = row_matrix(split.held_out, columns)  # the checked-rows form a model server predicts on
        check = verify_flavour(name, Path(path).read_bytes(), columns, rows, cand, spec.flavour_tolerance)
        check.convert_seconds = _claimed(claims.get(name)).get("convert_seconds")
        checks[name] = check.as_dict()
        if name == "onnx" and check.verified:
            digest = file_digest(path)
    for name in CONVERTED:  # asked for but not made: the train step's reason, never verified
        asked = spec.flavour == name or (spec.flavour == AUTO and (name not in BOOSTERS or name == booster))
        if name not in checks and asked:
            reason = _claimed(claims.get(name)).get("reason") or "the train step wrote no file"
            checks[name] = Verification(name, False, spec.flavour_tolerance, reason=reason).as_dict()
    return checks, digest


def served_flavour(spec: ModelSpec, evidence: dict) -> tuple[str, dict]:
    """(the flavour to serve, the entry's ``artifact`` fields: ``artifact.artifact_record``) from the checks
    ``evaluate`` recorded: the fastest verified flavour (or the one ``model.yaml``'s ``flavour`` names, when
    verified), else ``sklearn`` with the reason in ``fallback``."""
    checks = {
        name: Verification(
            name,
            bool(c.get("verified")),
            float(c.get("tolerance") or 0.0),
            c.get("agreement"),
            int(c.get("rows") or 0),
            c.get("convert_seconds"),
            c.get("predict_us"),
            c.get("reason") or "",
        )
        for name, c in (evidence.get("flavours") or {}).items()
        if name in FLAVOURS
    }
    checks.setdefault("sklearn", Verification("sklearn", True, 0.0, 0.0))
    served, fallback = choose_flavour(checks, spec.flavour)
    return served, artifact_record(checks, served, fallback, spec.flavour)


def validate_step(spec: ModelSpec, evidence: dict) -> dict:
    """Trusted: the verdict on the evidence ``evaluate`` computed (thresholds, production on the same rows, the
    TFX rule, drift). Reads nothing else and loads no model."""
    from kfrelease.training.validate import verdict  # heavy: pandas

    return verdict(spec, evidence).as_dict()


def is_release_run(store, run_id: str, spec: ModelSpec) -> bool:
    """Whether a pipeline run may release: only a run the merge trigger (or the automatic retrain) started,
    i.e. one with a run record (``kfrelease.training.run_records``, written by the trigger as the ``pipeline``
    identity) for this model and definition. A notebook or any other direct run is an experiment. A release
    run's step must have been given the spec the run record holds (``check_run_spec``)."""
    if not run_id or store.stat(run_records.BUCKET, run_records.run_key(run_id, "run.json")) is None:
        return False
    record = store.get_json(run_records.BUCKET, run_records.run_key(run_id, "run.json"))
    if record.get("model") != spec.name or record.get("spec_fingerprint") != spec.fingerprint:
        return False
    check_run_spec(store, run_id, record, spec)
    return True


def check_run_spec(store, run_id: str, record: dict, spec: ModelSpec) -> None:
    """Refuse (``EvidenceError``, naming the keys that differ) a release run's step given a spec other than the one
    its run record holds (``spec_json``: written by the trigger before the run started, where no step of it
    writes). On a cluster the ``spec`` parameter is the root DAG's input in KFP's metadata store, which every pod
    may rewrite (kubeflow/pipelines 2.16.0 ``backend/src/v2/driver/resolve.go`` ``resolveInputs``: a task's
    parameter from its parent DAG execution's MLMD ``inputs``; kubeflow/manifests v1.11.0 and 26.03
    ``applications/pipeline/upstream/base/metadata/options/istio/istio-authorization-policy.yaml``: ``rules:
    [{}]``), and the fingerprint that makes a run a release run leaves out what decides the verdict and the
    lineage (thresholds, tolerance, dataset, tag: ``kfrelease.training.spec``): validate and register would judge
    with forged thresholds (review eks5 S1 (c))."""
    from kfrelease.training.evidence import EvidenceError  # heavy: pandas

    uri = store.uri(run_records.BUCKET, run_records.run_key(run_id, "run.json"))
    if not record.get("spec_json"):
        raise EvidenceError(
            f"run {run_id}'s record ({uri}) holds no spec (spec_json) to check its steps' spec against; trigger "
            "the run again: nothing was judged, registered or staged"
        )
    differ = ModelSpec.from_json(record["spec_json"]).differences(spec)
    if differ:
        raise EvidenceError(
            f"the spec a step of run {run_id} was given differs from its run record's ({uri}) in "
            f"{', '.join(differ[:5])}: a pipeline parameter can be rewritten in transit; nothing was judged, "
            "registered or staged"
        )


def register_step(
    spec: ModelSpec,
    commit: str,
    dataset_version: str,
    run_id: str,
    model_path: str,
    evidence: dict,
    verdict: dict,
    settings: Settings | None = None,
    release: bool = True,
    report_path: str | None = None,
    keyed_path: str | None = None,
    onnx_path: str | None = None,
    booster_path: str | None = None,
) -> dict:
    """Register under the next version (or return the existing one); rejected models are recorded as such.

    The metrics and the verdict are the trusted steps' (``evidence``, ``verdict``). ``keyed_path``: the held-out
    predictions ``evaluate`` joined (``_key``, ``prediction``), kept beside the model when their digest is the
    one ``evaluate`` recorded. ``release=False`` (an experiment) registers in the ``experiments`` space of the
    registry: the same entry, compared with production the same way, but with numbers of its own (``E1.1.0``)
    and never staged. The evaluation report (``report_path``) is stored beside the version's artifacts
    (``kfrelease.training.results``). The served flavour is the fastest one ``evaluate`` verified (``onnx_path``,
    ``booster_path``: each only when its digest is the verified one), else ``sklearn``; the entry's ``artifact``
    says which and why. Every verified file is kept beside the sklearn file, served or not."""
    from kfrelease.data.publish import get_version  # heavy: pandas
    from kfrelease.training.evidence import file_digest  # heavy: pandas

    store = step_store(settings)
    if release:  # the evidence evaluate kept, not only the parameter this step was given (review 4 R3)
        evidence = trusted_evidence(spec, run_id, evidence, settings)
        trusted_lineage(store, spec, run_id, commit, dataset_version, evidence)  # and the run's commit and data
    rollout = rollout_of_run(store, run_id) if release else None  # the merge's rollout.yaml, for its release
    registry = ModelRegistry(store, "registry" if release else EXPERIMENTS)
    files = {}
    if keyed_path and Path(keyed_path).is_file() and evidence.get("keyed_digest"):
        if file_digest(keyed_path) != evidence["keyed_digest"]:
            raise KfreleaseError(
                f"the held-out predictions of run {run_id or '(experiment)'} changed after evaluate read them "
                "(their digest differs); nothing was registered"
            )
        files[HOLDOUT_FILE] = Path(keyed_path).read_bytes()
    served, artifact = served_flavour(spec, evidence)
    for name, check in artifact["flavours"].items():  # every verified file is kept beside the sklearn file
        if name == DEFAULT_FLAVOUR or not check.get("verified"):
            continue
        path, digest = (onnx_path, "onnx_digest") if name == "onnx" else (booster_path, "booster_digest")
        if not (path and Path(path).is_file() and file_digest(path) == evidence.get(digest)):
            raise KfreleaseError(
                f"the {name} model of run {run_id or '(experiment)'} is not the file evaluate verified (its digest "
                "differs); nothing was registered"
            )
        files[flavour_named(name).file] = Path(path).read_bytes()
    model_bytes = files.pop(flavour_named(served).file, None)
    if model_bytes is None:  # sklearn served: the pickle is the model file
        model_bytes = Path(model_path).read_bytes()
    else:
        files[flavour_named(DEFAULT_FLAVOUR).file] = Path(model_path).read_bytes()  # the estimator, beside it
    metrics = evidence.get("metrics") or {}
    reg = registry.register(
        TrainedModel(
            name=spec.name,
            tag=spec.tag,
            spec_fingerprint=spec.fingerprint,
            dataset=spec.dataset,
            dataset_version=dataset_version,
            commit=commit,
            run_id=run_id,
            metrics=metrics,
            verdict=verdict,
            input_schema=spec.input_schema(version_spec(get_version(store, spec.dataset, dataset_version).manifest)),
            target=spec.target,
            model_bytes=model_bytes,
            files=files,
            flavour=served,
            artifact=artifact,
            extra={
                "spec": {"text": spec.text, "code": spec.code},
                "split": evidence.get("split") or {"test_size": spec.split.test_size, "seed": spec.split.seed},
                "held_out": {
                    "rows": evidence.get("held_out_rows"),
                    "train_rows": evidence.get("train_rows"),
                    "predictions": HOLDOUT_FILE if files else None,
                    "intervals": metrics.get("intervals"),
                },
                "experiment": not release,
                **({"rollout": rollout} if rollout else {}),
            },
        )
    )
    mv = reg.version
    if release:  # deploy-staging stages this version only (its parameter travels through KFP's metadata store)
        _keep(store, spec, run_id, {"version": mv.version}, "register")
    key = evaluation_report_key(registry.artifact_prefix(spec.name, mv.version))
    if report_path and Path(report_path).is_file() and store.stat(registry.bucket, key) is None:
        store.put_bytes(registry.bucket, key, Path(report_path).read_bytes(), content_type="text/html")
    return {
        "version": mv.version,
        "created": reg.created,
        "passed": mv.passed,
        "stage": mv.stage,
        "experiment": not release,
    }


def not_staged_reason(mv) -> str | None:
    """Why the version ``mv`` a run ended with gets no image and no staging, or None when it does."""
    if mv.passed:
        return None
    by = mv.entry.get("run_id")
    return (
        f"{mv.name} {mv.version} is rejected by validation (its recorded verdict{f', run {by}' if by else ''}); "
        "nothing to build or stage"
    )


def containerize_step(model: str, version: str, settings: Settings | None = None, registry: str = "") -> dict:
    """Build and push the version's ModelCar image; record ref and digest in its entry (once)."""
    settings = settings or Settings.from_env()
    crash_point("containerize.start")
    reg = ModelRegistry(step_store(settings))
    mv = reg.get(model, version)
    if not mv.passed:  # an existing version returned by an idempotent re-run may be a rejected one
        log.info("%s; no image is built", not_staged_reason(mv))
        return {}
    if mv.entry.get("image"):
        return mv.entry["image"]
    with tempfile.TemporaryDirectory(prefix="kfrelease-modelcar-") as tmp:
        model_dir = reg.download(model, version, tmp)
        image = containerize(
            model_dir,
            registry or image_registry(settings),
            f"kfrelease/{model}",
            version,
            {
                "org.opencontainers.image.title": model,
                "org.opencontainers.image.version": version,
                "kfrelease.commit": mv.commit or "",
                "kfrelease.dataset_version": mv.dataset_version,
            },
        )
    reg.set_image(model, version, image.ref, image.digest)
    return image.as_dict()


def deploy_staging_step(
    model: str, version: str, run_id: str, settings: Settings | None = None, *, release: bool = False
) -> str:
    """Mark the version as the staging candidate (idempotent: no second event if it already is). On a target whose
    model servers refuse pickles (a cluster: ``artifact.refuse_pickle_serving``) a version served from one is not
    staged: ConfigError (not retried) saying how to make it servable. ``release``: a release run, which stages only
    the version its own register step kept (``version`` comes as register's output through KFP's metadata store,
    which any pod may rewrite: review eks6 L1)."""
    from kfrelease.training.evidence import EvidenceError, kept_evidence  # heavy: pandas

    store = step_store(settings)
    if release:
        try:
            kept_evidence(store, run_id, {"version": version}, "register", fields=("version",))
        except EvidenceError as exc:
            raise ConfigError(
                f"{model} {version} is not the version run {run_id} registered ({exc}); nothing was staged"
            ) from None
    reg = ModelRegistry(store)
    mv = reg.get(model, version)
    if not mv.passed:
        return mv.stage or "rejected"
    if mv.stage is not None:  # already staged (or promoted/archived since): a re-run changes nothing
        return mv.stage
    refuse_pickle_serving(mv.entry, f"{model} {version}")
    reg.set_stage(
        model,
        version,
        "staging",
        "training-pipeline",
        f"passed validation in run {run_id}",
        {"run_id": run_id, "metrics": mv.metrics, "image": mv.entry.get("image")},
    )
    return "staging"


def train_claims(flavours: dict) -> dict:
    """The train step's flavour checks as it hands them on (a typed ``dict`` parameter, KFP's STRUCT): each
    check without its unset fields: kfp.local cannot hand a JSON null to the next task (kfp 2.17
    ``local/executor_input_utils.py`` builds its inputs with ``compiler/pipeline_spec_builder.to_protobuf_value``,
    which refuses None), and ``evaluate`` reads only the numbers and the reason (``_claimed``)."""
    return {name: {k: v for k, v in check.items() if v is not None} for name, check in flavours.items()}


# The training DAG ------------------------------------------------------------------------------------------------
#: an input's source: a pipeline parameter (``PARAMETERS``) or ``"<step>.<output>"`` (``Output``: its return value)
PARAMETERS = ("spec", "commit", "dataset_version", "run_id", "image_registry", "job_name")


@dataclass(frozen=True)
class StepIO:
    """What ``run_inline`` hands a step: its inputs by the component's names (a parameter's value, an artifact's
    path) and ``out(name)``, the path of its output artifact ``name``."""

    inputs: dict
    out: Callable[[str], str]
    settings: Settings
    release: bool

    def __getattr__(self, name: str):
        try:
            return self.__dict__["inputs"][name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass(frozen=True)
class Step:
    """One step of the training DAG.

    ``component``: its KFP component (``kfrelease.components.<module>:<function>``, imported by the pipeline
    only); ``inputs``: each component input's source; ``inline``: the same step in this process, on a
    ``StepIO``, returning the component's parameter outputs (``Output``: its return value) and, for
    ``InlineRun``, what the step function returned (``result``); ``untrusted``: it runs model code a merge
    produced (the untrusted identity); ``after``: steps it must follow without taking their outputs;
    ``if_passed``: only when validate passed (``dsl.If``; inline also only for a release); ``submits_runs``: it
    runs as the identity that may create KFP runs (``kfrelease.k8s.render.platform.KFP_SUBMITTER_STEP``)."""

    name: str
    component: str
    inputs: dict[str, str]
    inline: Callable[[StepIO], dict]
    untrusted: bool = False
    after: tuple[str, ...] = ()
    if_passed: bool = False
    submits_runs: bool = False

    def sources(self):
        """(input, step, output) of each input that another step produces."""
        for name, source in self.inputs.items():
            if source not in PARAMETERS:
                step, _, output = source.partition(".")
                yield name, step, output


def _split(a: StepIO) -> dict:
    out = split_step(
        a.spec,
        a.dataset_version,
        a.out("train_data"),
        a.out("holdout_features"),
        a.out("champion_model"),
        a.settings,
        a.run_id,
    )
    return {k: out[k] for k in ("dataset_version", "champion", "champion_note")} | {"result": out}


def _train(a: StepIO) -> dict:
    out = train_step(
        a.spec,
        a.train_data,
        a.holdout_features,
        a.out("model"),
        a.out("predictions"),
        a.out("onnx_model"),
        a.out("booster_model"),
    )
    return {"Output": train_claims(out["flavours"]), "result": out}


def _score_champion(a: StepIO) -> dict:
    out = score_step(a.champion_model, a.holdout_features, a.out("predictions"))
    return {"Output": out["version"], "result": out}


def _evaluate(a: StepIO) -> dict:
    from kfrelease.training.evidence import write_evidence  # heavy: pandas

    evidence = evaluate_step(
        a.spec,
        a.dataset_version,
        a.champion,
        a.predictions,
        a.champion_predictions,
        a.run_id,
        a.out("report"),
        a.out("holdout_predictions"),
        a.settings,
        a.champion_note,
        a.onnx_model,
        a.train_claims,
        a.booster_model,
    )
    return {"Output": write_evidence(a.out("metrics"), evidence), "result": evidence}


def _validate(a: StepIO) -> dict:
    from kfrelease.training.evidence import read_evidence  # heavy: pandas

    given = read_evidence(a.metrics, a.evidence_digest, a.run_id)
    verdict = validate_step(a.spec, trusted_evidence(a.spec, a.run_id, given, a.settings))
    return {"Output": bool(verdict["passed"]), "result": verdict}


def _register(a: StepIO) -> dict:
    from kfrelease.training.evidence import read_evidence  # heavy: pandas

    evidence = read_evidence(a.metrics, a.evidence_digest, a.run_id)
    out = register_step(
        a.spec,
        a.commit,
        a.dataset_version,
        a.run_id or a.job_name,
        a.model,
        evidence,
        validate_step(a.spec, evidence),
        a.settings,
        a.release,
        a.report,
        a.holdout_predictions,
        a.onnx_model,
        a.booster_model,
    )
    return {"Output": out["version"], "result": out}


def _containerize(a: StepIO) -> dict:
    image = containerize_step(a.spec.name, a.version, a.settings, a.image_registry)
    return {"Output": ImageRef(image["ref"], image["digest"]).pinned if image else "", "result": image}


def _deploy_staging(a: StepIO) -> dict:
    release = is_release_run(step_store(a.settings), a.run_id, a.spec)  # what register kept its version for
    stage = deploy_staging_step(a.spec.name, a.version, a.run_id, a.settings, release=release)
    return {"Output": stage, "result": stage}


#: The training DAG, in the order its steps run. The pipeline (``kfrelease.pipelines.training_pipeline``) and
#: ``run_inline`` are both built from it; ``STEP_NAMES`` and ``UNTRUSTED_STEPS`` are read off it.
TRAINING_STEPS: tuple[Step, ...] = (
    Step(
        "split",
        "split:split",
        {"spec": "spec", "dataset_version": "dataset_version", "run_id": "run_id"},
        _split,
    ),
    Step(
        "train",
        "train:train",
        {
            "spec": "spec",
            "run_id": "run_id",
            "train_data": "split.train_data",
            "holdout_features": "split.holdout_features",
        },
        _train,
        untrusted=True,
    ),
    # production's model runs in a pod of its own, after the candidate's has ended (it cannot touch its outputs)
    Step(
        "score-champion",
        "score_champion:score_champion",
        {
            "run_id": "run_id",
            "champion_model": "split.champion_model",
            "holdout_features": "split.holdout_features",
        },
        _score_champion,
        untrusted=True,
        after=("train",),
    ),
    Step(
        "evaluate",
        "evaluate:evaluate",
        {
            "spec": "spec",
            "run_id": "run_id",
            "dataset_version": "split.dataset_version",
            "champion": "split.champion",
            "champion_note": "split.champion_note",
            "train_claims": "train.Output",
            "predictions": "train.predictions",
            "champion_predictions": "score-champion.predictions",
            "onnx_model": "train.onnx_model",
            "booster_model": "train.booster_model",
        },
        _evaluate,
    ),
    Step(
        "validate",
        "validate_model:validate_model",
        {"spec": "spec", "metrics": "evaluate.metrics", "evidence_digest": "evaluate.Output", "run_id": "run_id"},
        _validate,
    ),
    Step(
        "register",
        "register:register",
        {
            "spec": "spec",
            "commit": "commit",
            "dataset_version": "split.dataset_version",
            "run_id": "run_id",
            "job_name": "job_name",
            "metrics": "evaluate.metrics",
            "evidence_digest": "evaluate.Output",
            "model": "train.model",
            "report": "evaluate.report",
            "holdout_predictions": "evaluate.holdout_predictions",
            "onnx_model": "train.onnx_model",
            "booster_model": "train.booster_model",
        },
        _register,
    ),
    Step(
        "containerize",
        "containerize:containerize",
        {"spec": "spec", "version": "register.Output", "image_registry": "image_registry", "run_id": "run_id"},
        _containerize,
        if_passed=True,
    ),
    Step(
        "deploy-staging",
        "deploy_staging:deploy_staging",
        {
            "spec": "spec",
            "version": "register.Output",
            "image": "containerize.Output",
            "run_id": "run_id",
            "job_name": "job_name",
        },
        _deploy_staging,
        if_passed=True,
        submits_runs=True,  # the only step with a KFP API token: it hands over to the release pipeline
    ),
)
#: the step whose single output (passed) decides the ``if_passed`` steps
GATE = "validate"
STEP_NAMES = tuple(step.name for step in TRAINING_STEPS)
#: the steps that run model code produced by a merge (the candidate's, or production's): the untrusted identity
UNTRUSTED_STEPS = tuple(step.name for step in TRAINING_STEPS if step.untrusted)
#: The training pipeline's name (``pipelineInfo.name``). On a cluster KFP writes a run's artifacts under
#: ``<pipeline root>/<pipeline name>/<run id>/<task>/<uuid>/<output>`` (kubeflow/pipelines 2.16.0
#: ``backend/src/v2/metadata/client.go`` ``GetPipeline``: the run's root; ``backend/src/v2/driver/driver.go``
#: ``provisionOutputs``: ``<task>/<uuid>/<output>`` under it), which the untrusted steps' IAM role is scoped by.
TRAINING_PIPELINE = "kfrelease-training"


def task_name(step: Step) -> str:
    """A step's KFP task name: its component function's name, ``_`` as ``-`` (the compiler's: ``validate-model``)."""
    return step.component.partition(":")[2].replace("_", "-")


#: The KFP tasks of the untrusted steps, and the tasks whose outputs they read (split's).
UNTRUSTED_TASKS = tuple(task_name(step) for step in TRAINING_STEPS if step.untrusted)
UNTRUSTED_INPUT_TASKS = tuple(
    sorted(
        {
            task_name(producer)
            for step in TRAINING_STEPS
            if step.untrusted
            for _, name, _ in step.sources()
            for producer in TRAINING_STEPS
            if producer.name == name
        }
    )
)


@dataclass
class InlineRun:
    run_id: str
    dataset_version: str = ""
    metrics: dict = field(default_factory=dict)
    evidence: dict = field(default_factory=dict)
    verdict: dict = field(default_factory=dict)
    registration: dict = field(default_factory=dict)
    image: dict | None = None
    stage: str | None = None
    seconds: dict = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.registration.get("version", "")


def run_inline(
    spec: ModelSpec,
    commit: str,
    dataset_version: str = "latest",
    run_id: str | None = None,
    settings: Settings | None = None,
    containerize: bool = True,
    release: bool = True,
) -> InlineRun:
    """The training DAG (``TRAINING_STEPS``) in this process: the same step functions, inputs, order and
    conditions as the pipeline, as the trigger's run does them (``release=True``: staged when it passed) or as an
    experiment (never staged); ``containerize=False`` leaves the image out (deploy-staging gets none)."""
    settings = settings or Settings.from_env()
    run = InlineRun(run_id or f"inline-{uuid.uuid4().hex[:12]}")
    values = {
        "spec": spec,
        "commit": commit,
        "dataset_version": dataset_version,
        "run_id": run.run_id,
        "image_registry": "",
        "job_name": run.run_id,
    }
    outputs: dict[str, dict] = {}
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="kfrelease-train-") as tmp:

        def artifact(step: str, name: str) -> str:  # an artifact's file: <tmp>/<step>/<name>
            (Path(tmp) / step).mkdir(exist_ok=True)
            return str(Path(tmp) / step / name)

        for step in TRAINING_STEPS:
            passed = outputs.get(GATE, {}).get("Output")
            if step.if_passed and not (passed and release):
                continue
            if step.name == "containerize" and not containerize:
                continue
            inputs = {name: values[source] for name, source in step.inputs.items() if source in PARAMETERS}
            for name, producer, output in step.sources():
                if producer in outputs:
                    made = outputs[producer]
                    inputs[name] = made[output] if output in made else artifact(producer, output)
                else:  # a step left out (containerize=False): its outputs are empty
                    inputs[name] = ""
            start = time.perf_counter()
            made = step.inline(StepIO(inputs, functools.partial(artifact, step.name), settings, release))
            run.seconds[step.name] = time.perf_counter() - start
            results[step.name] = made.pop("result")
            outputs[step.name] = made
    run.dataset_version = outputs["split"]["dataset_version"]
    run.evidence = results["evaluate"]
    run.metrics = run.evidence.get("metrics") or {}
    run.verdict = results["validate"]
    run.registration = results["register"]
    run.image = results.get("containerize")
    run.stage = results.get("deploy-staging")
    return run
