"""Model version numbers ``V<Model_Tag>.<Manual>.<Auto>`` and the rules that pick the next one.

Experiments (the registry's ``experiments`` space: notebook and other runs the merge trigger did not start) are
numbered by the same rules with their own letter, ``E<Model_Tag>.<Manual>.<Auto>`` (``E1.2.0``), so an
experiment is never mistaken for a release; entries written before kept ``V`` numbers in that space.

- a tag seen for the first time starts at ``V<tag>.1.0``;
- a model definition (spec fingerprint) new within its tag gets the next manual revision, auto 0;
- a definition already known within its tag, retrained on other data, keeps its manual revision and gets
  the next auto revision of that manual revision;
- the same tag, definition and dataset version is the same version (idempotent; see ``find_same``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kfrelease.errors import ConfigError

_VERSION = re.compile(r"^([VE])(\d+)\.(\d+)\.(\d+)$")
RELEASE = "V"
EXPERIMENT = "E"


@dataclass(frozen=True, order=True)
class VersionNumber:
    tag: int
    manual: int
    auto: int
    letter: str = field(default=RELEASE, compare=False)  # V: a release, E: an experiment

    def __str__(self) -> str:
        return f"{self.letter}{self.tag}.{self.manual}.{self.auto}"

    @classmethod
    def parse(cls, text: str) -> VersionNumber:
        m = _VERSION.match(text.strip())
        if not m:
            raise ConfigError(
                f"{text!r} is not a model version; versions look like V2.3.1 (tag.manual.auto), experiments like E2.3.1"
            )
        return cls(int(m[2]), int(m[3]), int(m[4]), m[1])


@dataclass(frozen=True)
class Claim:
    """One taken version number and what it was taken for."""

    version: VersionNumber
    fingerprint: str
    dataset_version: str


def find_same(claims: list[Claim], tag: int, fingerprint: str, dataset_version: str) -> Claim | None:
    for c in sorted(claims, key=lambda c: c.version):
        if c.version.tag == tag and c.fingerprint == fingerprint and c.dataset_version == dataset_version:
            return c
    return None


def next_version(claims: list[Claim], tag: int, fingerprint: str, letter: str = RELEASE) -> VersionNumber:
    """The version a new (tag, definition, data) gets, given every number already taken (``letter``: ``V``
    in the released registry, ``E`` among experiments)."""
    in_tag = [c for c in claims if c.version.tag == tag]
    if not in_tag:
        return VersionNumber(tag, 1, 0, letter)
    known = [c.version.manual for c in in_tag if c.fingerprint == fingerprint]
    if known:
        manual = min(known)  # a definition keeps the manual revision it was first given
        auto = max(c.version.auto for c in in_tag if c.version.manual == manual) + 1
        return VersionNumber(tag, manual, auto, letter)
    return VersionNumber(tag, max(c.version.manual for c in in_tag) + 1, 0, letter)
