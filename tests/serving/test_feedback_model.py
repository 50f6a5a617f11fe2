"""Ground truth names its model: with several models on one stack, a label without one is refused (400),
never filed under a guessed model."""

from __future__ import annotations

import pytest

from kfrelease.collectors.feedback import InvalidFeedback, feedback_record


def test_a_label_without_a_model_is_refused_when_the_service_serves_several_models():
    with pytest.raises(InvalidFeedback, match='names no model; add "model".*request r-1.*nothing was stored'):
        feedback_record({"request_id": "r-1", "truth": 3.0}, None)


def test_a_label_names_its_model_or_takes_the_services_explicit_one():
    assert feedback_record({"request_id": "r-1", "truth": 3.0, "model": "beta"}, None)["model"] == "beta"
    assert feedback_record({"request_id": "r-1", "truth": 3.0}, "alpha")["model"] == "alpha"
