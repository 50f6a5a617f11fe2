"""One declaration of every ``KFRELEASE_*`` setting (``kfrelease.config.VARIABLES``): each name the code uses
is declared, only ``kfrelease.config`` reads them from the environment, docs/settings.md is their table,
and a malformed value is refused with the variable's name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kfrelease.config import VARIABLES, Settings, markdown_table, setting
from kfrelease.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("kfrelease", "serving", "components", "pipelines") for p in (REPO / d).rglob("*.py")]
NAME = re.compile(r"\bKFRELEASE_[A-Z][A-Z0-9_]*[A-Z0-9]\b")
DIRECT_READ = re.compile(r"(environ\.get|getenv)\(\s*[\"']KFRELEASE_|environ\[[\"']KFRELEASE_\w+[\"']\](?!\s*=)")


def test_every_kfrelease_variable_the_code_names_is_declared_once():
    names = [v.name for v in VARIABLES]
    assert len(names) == len(set(names))
    used = {(m, p.relative_to(REPO)) for p in SOURCES for m in NAME.findall(p.read_text())}
    undeclared = sorted((name, str(path)) for name, path in used if name not in names)
    assert not undeclared, f"declare these in kfrelease.config.VARIABLES: {undeclared}"


def test_only_kfrelease_config_reads_them_from_the_environment():
    readers = [
        f"{p.relative_to(REPO)}:{n}"
        for p in SOURCES
        if p != REPO / "kfrelease" / "config.py"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if DIRECT_READ.search(line)
    ]
    assert not readers, f"read these with kfrelease.config.setting(NAME): {readers}"


def test_docs_settings_md_is_the_generated_table():
    assert (REPO / "docs" / "settings.md").read_text() == markdown_table(), (
        "docs/settings.md is out of date: .venv/bin/python -m kfrelease.config --markdown > docs/settings.md"
    )


def test_values_are_typed_defaulted_and_a_malformed_one_names_the_variable(monkeypatch):
    monkeypatch.setenv("KFRELEASE_MAX_RUNS", "")
    assert setting("KFRELEASE_MAX_RUNS") is None  # empty is unset
    monkeypatch.setenv("KFRELEASE_MAX_RUNS", "3")
    assert setting("KFRELEASE_MAX_RUNS") == 3
    monkeypatch.setenv("KFRELEASE_AUTO_RELEASE", "off")
    assert setting("KFRELEASE_AUTO_RELEASE") is False
    monkeypatch.setenv("KFRELEASE_RETRAIN_CURATE", "")
    assert setting("KFRELEASE_RETRAIN_CURATE") == ""  # here empty means "skip curation"
    for name, raw in (
        ("KFRELEASE_PORT_OFFSET", "ten"),
        ("KFRELEASE_S3_SECURE", "maybe"),
        ("KFRELEASE_RETRAIN_MIN_INTERVAL", "1h"),
    ):
        monkeypatch.setenv(name, raw)
        with pytest.raises(ConfigError, match=name):
            setting(name)
        monkeypatch.delenv(name)
    monkeypatch.delenv("KFRELEASE_S3_PORT", raising=False)
    monkeypatch.setenv("KFRELEASE_PORT_OFFSET", "100")
    monkeypatch.setenv("KFRELEASE_GATEWAY_PORT", "7000")
    settings = Settings.from_env()
    assert settings.port("gateway") == 7000 and settings.port("s3") == 8433
    with pytest.raises(ConfigError, match="not a kfrelease setting"):
        setting("KFRELEASE_NO_SUCH_THING")
