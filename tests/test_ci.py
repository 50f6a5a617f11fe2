"""`.ci/run` and `make test` on a small tree: a failing test fails both; a tree where pytest collects no test
(pytest's exit 5) fails `make test` and passes `.ci/run`, which says why.

The tree is a copy of the repository's Makefile and .ci/run with a stand-in `.venv`: `ruff` passes, and `pytest`
is this venv's real pytest without its plugins (xdist's two workers would only slow the test down)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "setup.py").write_text("")
    (tmp_path / "constraints.txt").write_text("")
    (tmp_path / "scripts").mkdir()
    _executable(tmp_path / "scripts" / "system-deps.sh", "#!/bin/sh\nexit 0\n")
    bin_ = tmp_path / ".venv" / "bin"
    bin_.mkdir(parents=True)
    _executable(bin_ / "python", f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    _executable(bin_ / "ruff", "#!/bin/sh\nexit 0\n")
    # the Makefile's `-n 2 --dist loadfile --no-loadscope-reorder --max-worker-restart=0` need xdist; the stand-in
    # drops them and runs pytest in-process
    _executable(
        bin_ / "pytest",
        '#!/usr/bin/env bash\nargs=()\nskip=0\nfor a in "$@"; do\n'
        "  if [ $skip -gt 0 ]; then skip=$((skip-1)); continue; fi\n"
        '  case "$a" in -n|--dist) skip=1;; --no-loadscope-reorder|--max-worker-restart=*) ;; *) args+=("$a");; esac\n'
        "done\n"
        # no third-party plugins (they only slow a run of one file down)
        f'PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 exec {sys.executable} -m pytest -p no:cacheprovider -q "${{args[@]}}"\n',
    )
    stamp = tmp_path / ".venv" / ".installed"
    stamp.write_text("")
    later = (tmp_path / "setup.py").stat().st_mtime + 10
    os.utime(stamp, (later, later))
    (tmp_path / "tests").mkdir()
    return tmp_path


def _run(tree: Path, *command: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MAKE"))}
    return subprocess.run(command, check=False, cwd=tree, env=env, capture_output=True, text=True, timeout=120)


def test_a_failing_test_fails_make_test_and_ci(tree):
    (tree / "tests" / "test_one.py").write_text("def test_fails():\n    assert 1 == 2\n")
    assert _run(tree, "make", "test").returncode != 0
    ci = _run(tree, ".ci/run")
    assert ci.returncode != 0, ci.stdout + ci.stderr
    assert "collected no test" not in ci.stderr


def test_no_test_collected_fails_make_test_but_not_ci(tree):
    (tree / "tests" / "helpers.py").write_text("X = 1\n")
    make = _run(tree, "make", "test")
    assert make.returncode != 0, "make test must not turn pytest's exit 5 into success"
    ci = _run(tree, ".ci/run")
    assert ci.returncode == 0, ci.stdout + ci.stderr
    assert "pytest collected no test (exit 5)" in ci.stderr


def test_passing_tests_pass_ci(tree):
    (tree / "tests" / "test_one.py").write_text("def test_passes():\n    assert 1 == 1\n")
    ci = _run(tree, ".ci/run")
    assert ci.returncode == 0, ci.stdout + ci.stderr
    assert "collected no test" not in ci.stderr


def test_a_lint_failure_with_no_test_fails_ci(tree):
    # ruff stops make before pytest runs, so there is no report: the empty-collection pass must not apply
    _executable(tree / ".venv" / "bin" / "ruff", "#!/bin/sh\nexit 1\n")
    ci = _run(tree, ".ci/run")
    assert ci.returncode != 0, ci.stdout + ci.stderr


def test_heavy_files_go_out_heaviest_first_computing_and_waiting_in_turn():
    """`make test` hands files out in ``file_order``: two files that mostly wait never go out one after the
    other while a computing one is left, and each kind keeps its heaviest first (one worker never starts the
    longest file last)."""
    from tests.conftest import file_order

    weights = {
        "a.py": (250.0, 0.0),
        "b.py": (120.0, 120.0),
        "c.py": (190.0, 20.0),
        "d.py": (80.0, 80.0),
        "e.py": (60.0, 50.0),
        "f.py": (40.0, 0.0),
    }
    assert file_order(weights) == ["a.py", "b.py", "c.py", "d.py", "f.py", "e.py"]
    assert file_order({"w1.py": (10.0, 10.0), "w2.py": (30.0, 30.0)}) == ["w2.py", "w1.py"]
