"""What a finished training run did, in one line: the run's ``outcome`` (recorded in its state).

A run that succeeded may still have registered nothing new or staged nothing; its steps and its state
say so (a step that did nothing is ``skipped`` with the reason, never green):

- ``staged``: this run registered a new version that passed validation; it is the staging candidate
  (its release was handed over);
- ``rejected``: this run registered a new version that failed validation; nothing was staged;
- ``thresholds-only``: the same model definition was already registered on the same data and rejected,
  and this merge changed only its ``validation`` thresholds. A version's verdict is part of its immutable
  record, and thresholds are not part of the definition (the fingerprint): the run returns that version,
  registers nothing and stages nothing (``docs/training.md``, "Thresholds-only merges");
- ``unchanged``: the same definition on the same data is an existing version (with its verdict and
  stage); nothing new was registered. It is a staging candidate only if that version is in staging.

``kfrelease trigger --wait`` prints the line and exits non-zero unless the run left a staging candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml


@dataclass(frozen=True)
class RunOutcome:
    kind: str  # staged | rejected | thresholds-only | unchanged
    line: str  # one line for people: what happened and, when nothing was staged, what to change
    staging_candidate: bool

    def as_state(self) -> dict:
        return {"outcome": self.kind, "summary": self.line, "staging_candidate": self.staging_candidate}


def _validation_of(spec_text: str) -> dict:
    try:
        doc = yaml.safe_load(spec_text or "") or {}
    except yaml.YAMLError:
        return {}
    validation = doc.get("validation") if isinstance(doc, dict) else None
    return {k: v for k, v in validation.items() if v is not None} if isinstance(validation, dict) else {}


def _reasons(mv) -> str:
    reasons = (mv.verdict or {}).get("reasons") or []
    return "; ".join(reasons) if reasons else "see `kfrelease models show`"


def run_outcome(run_id: str, spec_text: str, mv) -> RunOutcome:
    """The outcome of run ``run_id`` (of the model spec ``spec_text``) that ended with version ``mv``."""
    name = f"{mv.name} {mv.version}"
    if mv.entry.get("run_id") == run_id:  # registered by this run
        if mv.passed:
            return RunOutcome("staged", f"{name} registered and staged ({mv.stage}); its release was handed over", True)
        return RunOutcome(
            "rejected",
            f"{name} registered as rejected by validation ({_reasons(mv)}); nothing staged; change the model "
            "definition (a new manual revision) and merge again",
            False,
        )
    origin = f"registered by run {mv.entry['run_id']}" if mv.entry.get("run_id") else "registered earlier"
    same = f"the same definition on the same data ({mv.entry.get('dataset_version')}) is {name} ({origin})"
    if not mv.passed:
        recorded = _validation_of(((mv.entry.get("spec") or {}).get("text")) or "")
        if recorded and recorded != _validation_of(spec_text):
            return RunOutcome(
                "thresholds-only",
                f"thresholds-only merge: {same}, rejected ({_reasons(mv)}); validation thresholds do not re-judge "
                "a registered version, so nothing was registered or staged; to get a new candidate change the "
                "model definition (features, estimator, build code or split: a new manual revision) or merge "
                "again once a newer curated dataset is published (a new auto revision)",
                False,
            )
        return RunOutcome(
            "unchanged",
            f"no new version: {same}, rejected ({_reasons(mv)}); nothing staged; change the model definition "
            "or wait for newer curated data",
            False,
        )
    if mv.stage == "staging":
        return RunOutcome("unchanged", f"no new version: {same}, already the staging candidate", True)
    return RunOutcome(
        "unchanged",
        f"no new version: {same}, stage {mv.stage or 'none'}; nothing staged; change the model definition "
        "(a new manual revision) or wait for newer curated data (a new auto revision)",
        False,
    )
