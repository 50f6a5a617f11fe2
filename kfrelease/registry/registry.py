"""The model registry in the ``models`` bucket (layout in docs/CONTRACTS.md).

Registration is atomic without any lock server: a version number is *claimed* by creating
``registry/<model>/claims/<V>.json`` with ``If-None-Match: *`` (S3 conditional write, enforced by SeaweedFS
and by Amazon S3), so two runs can never take the same number: the loser gets ``Conflict``, re-reads the
claims and takes the next number. Only the claim's winner writes the artifacts and then the immutable
``entry.json`` (also ``If-None-Match``); a version exists once its entry exists. A run killed between claim
and entry leaves a burnt number (a gap) and no half-written version.

Entries are immutable except the write-once ``image`` field, filled by ``containerize`` with ``If-Match``
on the entry's ETag. Stages are an append-only history of event objects; a version's current stage is its
latest event.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random_exponential,
)

from kfrelease.errors import Conflict, KfreleaseError, NotFound
from kfrelease.faults import crash_point
from kfrelease.registry.artifact import (
    DEFAULT_FLAVOUR,
    ENTRY_FILE,
    artifact_files,
    flavour_named,
    flavour_of,
)
from kfrelease.registry.lineage import now_iso
from kfrelease.registry.versions import EXPERIMENT, RELEASE, Claim, VersionNumber, find_same, next_version
from kfrelease.storage import ObjectStore

log = logging.getLogger(__name__)

BUCKET = "models"
#: a version's entry, under ``<space>/<model>/versions/<V>/``
ENTRY = "entry.json"
STAGES = ("staging", "production", "archived", "rejected")
REGISTRY = "registry"
#: the registry space of experiments (notebook and other non-merge runs): compared, never staged
EXPERIMENTS = "experiments"
#: where the experiments' model files live (the released versions': ``artifacts/``); with ``EXPERIMENTS/``
#: the only keys of ``models`` the data-scientist identity may write (kfrelease/access/policy.yaml)
EXPERIMENT_ARTIFACTS = "experiment-artifacts"
#: How long a registration waits for a concurrent run that claimed the same (tag, definition, data).
SAME_CLAIM_WAIT_SECONDS = 60.0
MAX_ATTEMPTS = 64


class _ClaimLost(Exception):
    """A conditional write of the registry lost to a concurrent writer: read again and retry."""


@dataclass(frozen=True)
class TrainedModel:
    """What a training run registers: the fitted model (its bytes, in ``flavour``'s format), what it was
    trained from and how it scored. ``extra`` joins the entry as it is (e.g. the spec, the split)."""

    name: str
    tag: int
    spec_fingerprint: str
    dataset: str
    dataset_version: str
    commit: str
    run_id: str
    metrics: dict
    verdict: dict  # {"passed": bool, "reasons": [...], ...}
    input_schema: list[dict]
    target: str
    model_bytes: bytes = field(repr=False)
    extra: dict = field(default_factory=dict)
    flavour: str = DEFAULT_FLAVOUR
    files: dict[str, bytes] = field(default_factory=dict, repr=False)  # more files beside the model
    artifact: dict = field(default_factory=dict)  # more ``artifact`` fields (flavours, fallback, model_format)


@dataclass(frozen=True)
class ModelVersion:
    """One registry entry (fields of docs/CONTRACTS.md) and, when known, its current stage."""

    entry: dict
    stage: str | None = None
    etag: str | None = field(default=None, compare=False)

    def __getattr__(self, name: str):
        entry = self.__dict__.get("entry") or {}
        if name in entry:
            return entry[name]
        raise AttributeError(name)

    @property
    def number(self) -> VersionNumber:
        return VersionNumber.parse(self.entry["version"])

    @property
    def features(self) -> list[str]:
        return [c["name"] for c in self.entry["input_schema"]]

    @property
    def passed(self) -> bool:
        return bool((self.entry.get("verdict") or {}).get("passed"))


@dataclass(frozen=True)
class Registration:
    version: ModelVersion
    created: bool  # False: the same tag, definition and data were registered before (idempotent)


def _compact_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")


class ModelRegistry:
    def __init__(self, store: ObjectStore, space: str = "registry"):
        """``space``: ``registry`` (released models) or ``experiments`` (runs not started by the merge
        trigger: the same entries and version rules, a number space of their own, never staged)."""
        if space not in (REGISTRY, EXPERIMENTS):
            raise KfreleaseError(f"unknown registry space {space!r}; spaces are {REGISTRY}, {EXPERIMENTS}")
        self.store = store
        self.space = space
        self.letter = EXPERIMENT if space == EXPERIMENTS else RELEASE  # E1.2.0 experiments, V1.2.0 releases
        self.bucket = BUCKET
        self._claims_cache: dict[str, Claim] = {}

    # keys: built here only (docs/CONTRACTS.md, "Model registry") ---------------------------------------
    def _vkey(self, model: str, version: str, *parts: str) -> str:
        return "/".join((self.space, model, "versions", version, *parts))

    def _versions_prefix(self, model: str) -> str:
        return f"{self.space}/{model}/versions/"

    def artifact_prefix(self, model: str, version: str) -> str:
        return f"{'artifacts' if self.space == REGISTRY else EXPERIMENT_ARTIFACTS}/{model}/{version}/"

    # reading ---------------------------------------------------------------------------------------------
    def models(self) -> list[str]:
        top = self.store.iter(BUCKET, f"{self.space}/", recursive=False)
        return sorted(o.key.rstrip("/").split("/")[-1] for o in top)

    def get(self, model: str, version: str) -> ModelVersion:
        if VersionNumber.parse(version).letter == EXPERIMENT and self.space == REGISTRY:
            raise NotFound(
                f"{model} {version} is an experiment (E numbers), not a release; look it up as experiment:{version}; "
                "experiments are never staged or released"
            )
        key = self._vkey(model, version, ENTRY)
        info = self.store.stat(BUCKET, key)
        if info is None:
            known = ", ".join(v.version for v in self.list(model)[-5:]) or "none"
            raise NotFound(f"model {model!r} has no version {version} (latest known: {known})")
        return ModelVersion(self.store.get_json(BUCKET, key), self._latest_event(model, version), info.etag)

    def entry(self, model: str, version: str) -> dict:
        """A version's entry alone (one read; ``get`` adds its current stage); ``NotFound`` when absent."""
        return self.store.get_json(BUCKET, self._vkey(model, version, ENTRY))

    def entries(self, model: str) -> dict[str, dict]:
        """Every version's entry (no stages: one listing and a read each), by version; empty when none."""
        out = {}
        for obj in self.store.iter(BUCKET, self._versions_prefix(model)):
            parts = obj.key.split("/")
            if len(parts) == 5 and parts[4] == ENTRY:
                out[parts[3]] = self.store.get_json(BUCKET, obj.key)
        return out

    def put_entry(self, entry: dict) -> None:
        """Write the entry of a version registered outside training (synthetic monitoring data), as it is."""
        self.store.put_json(BUCKET, self._vkey(entry["name"], entry["version"], ENTRY), entry)

    def _events(self, model: str, version: str | None = None) -> dict[str, list[str]]:
        """Event keys per version, oldest first (keys start with a sortable UTC time)."""
        prefix = self._versions_prefix(model) + (f"{version}/" if version else "")
        out: dict[str, list[str]] = {}
        for obj in self.store.iter(BUCKET, prefix):
            parts = obj.key.split("/")
            if len(parts) == 6 and parts[4] == "events":
                out.setdefault(parts[3], []).append(obj.key)
        return {v: sorted(keys) for v, keys in out.items()}

    def _latest_event(self, model: str, version: str) -> str | None:
        keys = self._events(model, version).get(version)
        return self.store.get_json(BUCKET, keys[-1])["stage"] if keys else None

    def list(self, model: str) -> list[ModelVersion]:
        """Every version of a model, oldest number first, with its current stage."""
        entries, events = [], {}
        for obj in self.store.iter(BUCKET, self._versions_prefix(model)):
            parts = obj.key.split("/")
            if len(parts) == 5 and parts[4] == ENTRY:
                entries.append((parts[3], obj.key))
            elif len(parts) == 6 and parts[4] == "events":
                events.setdefault(parts[3], []).append(obj.key)
        out = []
        for version, key in entries:
            stage = self.store.get_json(BUCKET, max(events[version]))["stage"] if version in events else None
            out.append(ModelVersion(self.store.get_json(BUCKET, key), stage))
        return sorted(out, key=lambda v: v.number)

    def history(self, model: str, version: str) -> list[dict]:
        """The stage events of a version, oldest first: ``{stage, who, why, when, evidence}``."""
        self.get(model, version)
        return [self.store.get_json(BUCKET, k) for k in self._events(model, version).get(version, [])]

    def current(self, model: str, stage: str) -> ModelVersion | None:
        """The version most recently moved to ``stage`` that is still in it (None if there is none)."""
        self._check_stage(stage)
        best: tuple[str, str] | None = None
        for version, keys in self._events(model).items():
            last = self.store.get_json(BUCKET, keys[-1])
            if last["stage"] == stage and (best is None or keys[-1].split("/")[-1] > best[1]):
                best = (version, keys[-1].split("/")[-1])
        return self.get(model, best[0]) if best else None

    def download(self, model: str, version: str, dest_dir: str | Path) -> Path:
        """Write the artifact folder (the model file of its flavour and ``model.json``, the entry) into
        ``dest_dir`` (``kfrelease.registry.artifact``)."""
        mv = self.get(model, version)
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        prefix = self.artifact_prefix(model, version)
        model_file = flavour_of(mv.entry).file
        self.store.get_file(BUCKET, prefix + model_file, str(dest / model_file))

        (dest / ENTRY_FILE).write_text(json.dumps(mv.entry, indent=2, sort_keys=True, default=str))
        return dest

    def read_file(self, model: str, version: str, file: str) -> bytes:
        """A file kept beside a version's model (e.g. its held-out predictions); ``NotFound`` when it has none."""
        key = self.artifact_prefix(model, version) + file
        if self.store.stat(BUCKET, key) is None:
            raise NotFound(f"{model} {version} has no {file} (registered before it was kept)")
        return self.store.get_bytes(BUCKET, key)

    def load_model(self, model: str, version: str):
        """The fitted estimator of a version (its ``sklearn`` file, whichever flavour serves it; a pickle: for a
        data scientist's notebook, never in a pipeline step that runs no model code)."""
        flavour = flavour_named("sklearn")
        data = self.store.get_bytes(BUCKET, self.artifact_prefix(model, version) + flavour.file)
        return flavour.load(io.BytesIO(data))

    def existing(self, model: str, tag: int, fingerprint: str, dataset_version: str) -> ModelVersion | None:
        """The version registered for this tag, definition and dataset version (what ``register`` would return
        without registering anything), or None; a number claimed by a run still writing it is not one yet."""
        same = find_same(self._claims(model), tag, fingerprint, dataset_version)
        if same is None or self.store.stat(BUCKET, self._vkey(model, str(same.version), "entry.json")) is None:
            return None
        return self.get(model, str(same.version))

    # registering -----------------------------------------------------------------------------------------
    def _claims(self, model: str) -> list[Claim]:
        for obj in self.store.iter(BUCKET, f"{self.space}/{model}/claims/"):
            if obj.key not in self._claims_cache:  # claims are immutable: read each once
                doc = self.store.get_json(BUCKET, obj.key)
                self._claims_cache[obj.key] = Claim(
                    VersionNumber.parse(doc["version"]), doc["spec_fingerprint"], doc["dataset_version"]
                )
        prefix = f"{self.space}/{model}/claims/"
        return [c for k, c in self._claims_cache.items() if k.startswith(prefix)]

    def _wait_entry(self, model: str, version: str, timeout: float) -> ModelVersion | None:
        """The entry of a claimed version once it is written (polled with back-off), None after ``timeout``."""
        poll = Retrying(
            stop=stop_after_delay(timeout),
            wait=wait_exponential(multiplier=0.1, max=2.0),
            retry=retry_if_result(lambda written: not written),
            retry_error_callback=lambda _: False,
        )
        if poll(lambda: self.store.stat(BUCKET, self._vkey(model, version, ENTRY)) is not None):
            return self.get(model, version)
        return None

    def register(
        self,
        model: TrainedModel,
        *,
        who: str = "training-pipeline",
        same_claim_wait: float = SAME_CLAIM_WAIT_SECONDS,
    ) -> Registration:
        """Register ``model`` under the next version (``kfrelease.registry.versions``).

        The same (tag, fingerprint, dataset version) returns the existing version (``created=False``). A
        model whose verdict did not pass is registered with a ``rejected`` stage event and its reasons."""
        name = model.name
        dead: set[VersionNumber] = set()
        # Each attempt reads the claims and claims the next free version; losing it to a concurrent run (or
        # finding the same definition's claim dead) is a _ClaimLost, retried after a short random pause.
        attempts = Retrying(
            stop=stop_after_attempt(MAX_ATTEMPTS),
            wait=wait_random_exponential(multiplier=0.02, max=1.0),
            retry=retry_if_exception_type(_ClaimLost),
            before_sleep=lambda state: log.info("%s (attempt %d)", state.outcome.exception(), state.attempt_number),
        )
        try:
            for attempt in attempts:
                with attempt:
                    claims = self._claims(name)
                    same = find_same(
                        [c for c in claims if c.version not in dead],
                        model.tag,
                        model.spec_fingerprint,
                        model.dataset_version,
                    )
                    if same is not None:
                        existing = self._wait_entry(name, str(same.version), same_claim_wait)
                        if existing is not None:
                            log.info("%s %s already registered for this definition and data", name, same.version)
                            return Registration(existing, False)
                        dead.add(same.version)
                        raise _ClaimLost(
                            f"claim {same.version} of {name} has no entry after "
                            f"{same_claim_wait:.0f} s; treating it as dead"
                        )
                    number = next_version(claims, model.tag, model.spec_fingerprint, self.letter)
                    claim = {
                        "version": str(number),
                        "spec_fingerprint": model.spec_fingerprint,
                        "dataset_version": model.dataset_version,
                        "run_id": model.run_id,
                        "claimed_at": now_iso(),
                    }
                    try:
                        self.store.put_json(
                            BUCKET, f"{self.space}/{name}/claims/{number}.json", claim, if_none_match=True
                        )
                    except Conflict:
                        raise _ClaimLost(f"version {number} of {name} was claimed concurrently; retrying") from None
                    return Registration(self._write_version(model, number, who), True)
        except RetryError:
            raise KfreleaseError(
                f"could not claim a version of {name} after {MAX_ATTEMPTS} attempts; retry the run"
            ) from None

    def _write_version(self, model: TrainedModel, number: VersionNumber, who: str) -> ModelVersion:
        name, version, flavour = model.name, str(number), flavour_named(model.flavour).name
        prefix = self.artifact_prefix(name, version)
        metrics, verdict = model.metrics, model.verdict
        entry = {
            **model.extra,
            "name": name,
            "version": version,
            "tag": model.tag,
            "manual": number.manual,
            "auto": number.auto,
            "commit": model.commit,
            "spec_fingerprint": model.spec_fingerprint,
            "dataset": model.dataset,
            "dataset_version": model.dataset_version,
            "run_id": model.run_id,
            "metrics": {k: metrics.get(k) for k in ("mse", "rmse", "mae", "r2", "n") if k in metrics},
            "verdict": {
                "passed": bool(verdict.get("passed")),
                "reasons": list(verdict.get("reasons", [])),
                **{k: v for k, v in verdict.items() if k not in ("passed", "reasons")},
            },
            "artifact": {
                "files": artifact_files(flavour),
                **model.artifact,
                "uri": self.store.uri(BUCKET, prefix),
                "flavour": flavour,
            },
            "input_schema": model.input_schema,
            "target": model.target,
            "image": None,
            "created_at": now_iso(),
        }
        crash_point("register.after_claim")
        self.store.put_bytes(BUCKET, prefix + flavour_named(flavour).file, model.model_bytes)
        for file, data in model.files.items():
            self.store.put_bytes(BUCKET, prefix + file, data)
        self.store.put_json(BUCKET, prefix + ENTRY_FILE, entry)
        crash_point("register.after_artifact")
        self.store.put_json(BUCKET, self._vkey(name, version, ENTRY), entry, if_none_match=True)
        mv = ModelVersion(entry)
        if not entry["verdict"]["passed"]:
            self._event(
                name,
                version,
                "rejected",
                who,
                "; ".join(entry["verdict"]["reasons"]) or "validation failed",
                {"verdict": entry["verdict"]},
            )
            mv = ModelVersion(entry, "rejected")
        log.info("registered %s %s (%s)", name, version, "passed" if mv.passed else "rejected")
        return mv

    # stages ----------------------------------------------------------------------------------------------
    @staticmethod
    def _check_stage(stage: str) -> None:
        if stage not in STAGES:
            raise KfreleaseError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")

    def _event(self, model: str, version: str, stage: str, who: str, why: str, evidence: dict | None) -> dict:
        event = {
            "stage": stage,
            "who": who,
            "why": why,
            "when": now_iso(),
            "evidence": evidence or {},
            "version": version,
        }
        key = self._vkey(model, version, "events", f"{_compact_now()}-{uuid.uuid4().hex}.json")
        self.store.put_json(BUCKET, key, event, if_none_match=True)
        return event

    def set_stage(self, model: str, version: str, stage: str, who: str, why: str, evidence: dict | None = None) -> dict:
        """Append a stage event. Moving a version to production archives the previous production version.
        A rejected version can never be staged or promoted."""
        self._check_stage(stage)
        if self.space == EXPERIMENTS and stage in ("staging", "production"):
            raise KfreleaseError(
                f"{model} {version} is an experiment (a run the merge trigger did not start); experiments are "
                f"never staged: merge its model.yaml to main and the pipeline of that commit releases it"
            )
        mv = self.get(model, version)
        if stage in ("staging", "production") and not mv.passed:
            raise KfreleaseError(
                f"{model} {version} was rejected by validation ({'; '.join(mv.verdict.get('reasons', []))}); "
                f"it cannot be moved to {stage}"
            )
        previous = self.current(model, "production") if stage == "production" else None
        event = self._event(model, version, stage, who, why, evidence)
        if previous is not None and previous.version != version:
            self._event(
                model,
                previous.version,
                "archived",
                who,
                f"replaced in production by {version}",
                {"replaced_by": version},
            )
        return event

    def set_image(self, model: str, version: str, ref: str, digest: str) -> ModelVersion:
        """Fill the write-once ``image`` field of an entry (``If-Match`` on its ETag)."""
        try:
            for attempt in Retrying(stop=stop_after_attempt(5), retry=retry_if_exception_type(_ClaimLost)):
                with attempt:
                    mv = self.get(model, version)
                    image = mv.entry.get("image")
                    if image:
                        if image.get("digest") == digest:
                            return mv
                        raise Conflict(f"{model} {version} already has image {image.get('ref')}@{image.get('digest')}")
                    entry = {**mv.entry, "image": {"ref": ref, "digest": digest}}
                    try:
                        self.store.put_json(BUCKET, self._vkey(model, version, ENTRY), entry, if_match=mv.etag)
                    except Conflict:
                        raise _ClaimLost(f"the entry of {model} {version} changed meanwhile") from None
                    self.store.put_json(BUCKET, self.artifact_prefix(model, version) + ENTRY_FILE, entry)
                    return ModelVersion(entry, mv.stage)
        except RetryError:
            raise Conflict(
                f"the entry of {model} {version} kept changing while its image was recorded; retry"
            ) from None
