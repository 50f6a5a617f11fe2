"""Pushing gauges: a down Pushgateway loses nothing (spooled, pushed later with a clear message)."""

import socket

import pytest

from kfrelease import httpcalls
from kfrelease.config import Settings
from kfrelease.lake.spool import Spool
from kfrelease.monitoring.push import payload, push_windows, spool_dir
from kfrelease.monitoring.pushauth import PUSH_USER, SCRAPE_USER, embedded_credentials, embedded_dir
from kfrelease.monitoring.window import WindowResult


def window(status="ok", r2=0.5, version="V1.1.0"):
    return WindowResult(
        model="m",
        version=version,
        stage="production",
        window="3600s",
        start="2026-11-25T00:00:00Z",
        end="2026-11-25T01:00:00Z",
        predictions=100,
        labelled=80 if status == "ok" else 3,
        status=status,
        mse=4.0 if status == "ok" else None,
        rmse=2.0 if status == "ok" else None,
        r2=r2 if status == "ok" else None,
        baseline_rmse=1.8,
        r2_floor=0.2,
        last_prediction_time="2026-11-25T00:59:00Z",
    )


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_insufficient_windows_push_no_quality_gauges():
    p = payload(window(status="insufficient"))
    assert p["labels"] == {"model": "m", "version": "V1.1.0", "stage": "production"}
    assert p["values"]["kfrelease_model_window_insufficient"] == 1.0
    assert "kfrelease_model_r2" not in p["values"] and "kfrelease_model_rmse" not in p["values"]
    assert payload(window())["values"]["kfrelease_model_r2"] == 0.5


def credentials(directory, user="monitoring", password="not-the-one"):
    """A credentials directory as the mounted Secret has it (username, password files)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "username").write_text(user)
    (directory / "password").write_text(password)
    return directory


def test_down_pushgateway_keeps_results_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("KFRELEASE_PUSHGATEWAY_CREDENTIALS", str(credentials(tmp_path / "push")))
    settings = Settings(home=tmp_path)
    url = f"http://127.0.0.1:{free_port()}"
    out = push_windows(settings, [window(), window(version="V1.2.0")], url=url, timeout=1)
    assert out.pushed == 0 and out.pending == 2 and not out.ok
    assert "not reachable" in out.message and "kept in" in out.message
    assert len(Spool(spool_dir(settings)).lines()) == 2  # kept, one line each


def test_results_without_push_credentials_are_kept_and_the_message_says_which(tmp_path, monkeypatch):
    monkeypatch.delenv("KFRELEASE_PUSHGATEWAY_CREDENTIALS", raising=False)
    settings = Settings(home=tmp_path)
    out = push_windows(settings, [window()], url=f"http://127.0.0.1:{free_port()}", timeout=1)
    assert out.pending == 1 and out.pushed == 0
    assert "Pushgateway credentials in" in out.message and "kept in" in out.message, out.message


@pytest.mark.integration
def test_spooled_results_are_pushed_when_the_pushgateway_is_back(stack, tmp_path, monkeypatch):
    monkeypatch.setenv("KFRELEASE_PUSHGATEWAY_CREDENTIALS", str(embedded_dir(stack) / PUSH_USER))
    settings = Settings(home=tmp_path, port_offset=stack.port_offset)
    down = push_windows(
        settings,
        [window(version="V9.9.1")],
        url=f"http://127.0.0.1:{free_port()}",
        timeout=1,
    )
    assert down.pending == 1
    up = push_windows(settings, [window(version="V9.9.2")], url=stack.url("pushgateway"))
    assert up.ok and up.pushed == 2
    text = httpcalls.get(stack.url("pushgateway", "/metrics"), auth=embedded_credentials(stack, SCRAPE_USER)).text
    for v in ("V9.9.1", "V9.9.2"):
        assert (
            f'kfrelease_model_r2{{instance="",job="kfrelease-monitor",model="m",stage="production",version="{v}"}} 0.5'
            in text
        )
    assert Spool(spool_dir(settings)).lines() == []


def test_a_window_pushes_its_confidence_bounds_for_the_alerts():
    w = window()
    w.intervals = {"level": 0.95, "mse": [3.0, 5.0], "rmse": [1.7, 2.2], "mae": [1.4, 1.8], "r2": [0.4, 0.6]}
    values = payload(w)["values"]
    assert values["kfrelease_model_rmse_lower"] == 1.7 and values["kfrelease_model_r2_upper"] == 0.6
    insufficient = window(status="insufficient")
    insufficient.intervals = w.intervals
    assert "kfrelease_model_rmse_lower" not in payload(insufficient)["values"]
