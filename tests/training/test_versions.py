"""The version rules of ``kfrelease.registry.versions`` as a pure function of the numbers already taken."""

import pytest

from kfrelease.errors import ConfigError
from kfrelease.registry.versions import Claim, VersionNumber, find_same, next_version


def claim(v: str, fp: str, data: str) -> Claim:
    return Claim(VersionNumber.parse(v), fp, data)


def test_first_model_of_a_tag_is_dot_1_0():
    assert str(next_version([], 1, "a")) == "V1.1.0"
    assert str(next_version([claim("V1.3.2", "a", "d1")], 2, "a")) == "V2.1.0"


def test_new_definition_is_next_manual_and_same_definition_on_new_data_is_next_auto():
    taken = [claim("V1.1.0", "a", "d1"), claim("V1.2.0", "b", "d1"), claim("V1.2.1", "b", "d2")]
    assert str(next_version(taken, 1, "c")) == "V1.3.0"
    assert str(next_version(taken, 1, "b")) == "V1.2.2"
    assert str(next_version(taken, 1, "a")) == "V1.1.1"  # a reverted definition keeps its manual revision


def test_same_tag_definition_and_data_is_found_not_renumbered():
    taken = [claim("V1.1.0", "a", "d1"), claim("V2.1.0", "a", "d1")]
    assert str(find_same(taken, 1, "a", "d1").version) == "V1.1.0"
    assert find_same(taken, 1, "a", "d2") is None and find_same(taken, 3, "a", "d1") is None


def test_versions_order_numerically_and_bad_text_is_refused():
    assert VersionNumber.parse("V1.10.0") > VersionNumber.parse("V1.9.3")
    with pytest.raises(ConfigError, match="V2.3.1"):
        VersionNumber.parse("1.2")


def test_experiments_have_numbers_of_their_own():
    assert str(next_version([], 1, "a", "E")) == "E1.1.0"
    e = VersionNumber.parse("E1.2.0")
    assert e.letter == "E" and str(e) == "E1.2.0" and e < VersionNumber.parse("E1.10.0")
    with pytest.raises(ConfigError, match="experiments like E2.3.1"):
        VersionNumber.parse("X1.2.0")
