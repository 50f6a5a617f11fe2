"""A command about one model never guesses which: --model, or the only model there is."""

import pytest

from kfrelease.cli.choose import pick_model
from kfrelease.errors import ConfigError


def test_the_given_model_or_the_only_one_is_used():
    assert pick_model("beta", ["alpha", "beta"], "monitor") == "beta"
    assert pick_model(None, ["alpha"], "monitor") == "alpha"


def test_with_several_models_or_none_it_refuses_in_one_line_naming_them():
    with pytest.raises(ConfigError, match=r"^kfrelease monitor: 2 models exist \(alpha, beta\); give --model NAME$"):
        pick_model(None, ["beta", "alpha"], "monitor")
    with pytest.raises(ConfigError, match="no model is registered yet; give --model NAME"):
        pick_model(None, [], "monitor")
