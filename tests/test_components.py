"""The components' shape (STYLE.md, issue 27 item 5): one component per module, each body sets up logging
through the one ``log_to_stderr`` and imports nothing of ``kfrelease.components`` (KFP's executor runs with
``_KFP_RUNTIME=true``, where ``kfp.dsl.component``, which ``components/base.py`` needs, does not exist), and
``deploy_staging`` only delegates to the library."""

from __future__ import annotations

import ast
import importlib
import logging
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

from kfp.dsl.base_component import BaseComponent

import kfrelease.components as components_package
from kfrelease.config import LOG_FORMAT, log_to_stderr

MODULES = [m.name for m in pkgutil.iter_modules(components_package.__path__) if m.name != "base"]


def _components(module: str) -> list[str]:
    mod = importlib.import_module(f"{components_package.__name__}.{module}")
    return [name for name, obj in vars(mod).items() if isinstance(obj, BaseComponent)]


def _body(module: str) -> ast.FunctionDef:
    tree = ast.parse(Path(components_package.__path__[0], f"{module}.py").read_text())
    (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    return fn


def test_each_module_holds_one_component():
    assert len(MODULES) >= 15
    many = {m: names for m in MODULES if len(names := _components(m)) != 1}
    assert many == {}, f"modules that do not hold exactly one component: {many}"


def test_each_body_sets_up_logging_only_through_log_to_stderr():
    for module in MODULES:
        source = ast.unparse(_body(module))
        assert "basicConfig" not in source, f"{module}: call log_to_stderr(), not logging.basicConfig"
        assert "kfrelease.components" not in source, f"{module}: a body cannot import kfrelease.components at run time"
        # every body, also one that logs nothing itself: the library code it calls logs (a step's only log is stderr)
        assert "log_to_stderr()" in source, f"{module}: its body does not call the components' log_to_stderr()"


def test_log_to_stderr_logs_info_in_the_services_format(capfd):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = []
    try:
        log_to_stderr()
        logging.getLogger("kfrelease.test").info("staged V1.2.0")
    finally:
        root.handlers[:], root.level = saved
    err = capfd.readouterr().err
    assert err.rstrip().endswith("INFO kfrelease.test: staged V1.2.0")
    assert LOG_FORMAT.startswith("%(asctime)s")


def test_deploy_staging_only_delegates():
    body = _body("deploy_staging")
    statements = [s for s in body.body if not isinstance(s, ast.Expr | ast.Import | ast.ImportFrom)]
    # one return of the library's stage_and_hand_over; no branch, no registry read in the component
    assert [type(s).__name__ for s in statements] == ["Return"], ast.unparse(body)
    assert "stage_and_hand_over(" in ast.unparse(statements[0])


def test_a_body_can_import_what_it_imports_in_kfps_runtime():
    """What a body imports, imported as KFP's executor does (``_KFP_RUNTIME=true``, a fresh interpreter)."""
    imports = sorted(
        {
            ast.unparse(node)
            for module in MODULES
            for node in ast.walk(_body(module))
            if isinstance(node, ast.Import | ast.ImportFrom) and "kfrelease" in ast.unparse(node)
        }
    )
    code = "\n".join(imports)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "_KFP_RUNTIME": "true"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
