"""Imports of the library: a function-local import says why it is not at the top of its module, and the few
arrows the layout forbids are absent (``LAYERS``).

README, "Contributing": a function-local import in the library carries its reason. The reasons are

- ``# heavy: pandas``: the import would load a package that importing this module does not (pandas, kfp,
  kserve, scikit-learn, ...), so the commands and modules that never call the function stay light (``kfrelease
  status`` does not import pandas: ``tests/test_cli_output.py``);
- ``# optional: xgboost (the boosters extra)``: a package of an extra, absent from a plain install;
- ``# cycle: kfrelease.x imports this module``: at the top it would close an import cycle.

Everything else is imported at the top of its module. The reason is written on the import's line (or on any
line of a parenthesised import), or in the comment lines right above it.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REASON = re.compile(r"#\s*(heavy|optional|cycle):\s*\S")


def unexplained_local_imports(root: Path) -> list[str]:
    """``path:line: statement`` of each function-local import under ``root`` without a reason."""
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.as_posix()
        text = path.read_text()
        lines = text.splitlines()
        for node in _local_imports(ast.parse(text)):
            own = lines[node.lineno - 1 : node.end_lineno]
            above = []  # the comment lines right above the import
            for line in reversed(lines[: node.lineno - 1]):
                if not line.strip().startswith("#"):
                    break
                above.append(line)
            if not any(REASON.search(line) for line in own + above):
                out.append(f"{rel}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return out


def _local_imports(tree: ast.AST):
    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and in_function:
                yield child
            yield from walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    yield from walk(tree, False)


def test_every_function_local_import_in_the_library_says_why():
    found = unexplained_local_imports(ROOT / "kfrelease")
    assert not found, (
        f"{len(found)} function-local import(s) without a reason: import at the top of the module, or say why "
        "(# heavy: <package>, # optional: <package>, # cycle: <module> imports this module):\n" + "\n".join(found)
    )


def test_the_check_finds_an_unexplained_import_and_accepts_each_kind_of_reason(tmp_path):
    """The walk above can fail: a local import with no reason, or with a comment that is not a reason, is named."""
    module = tmp_path / "m.py"
    module.write_text(
        "import json\n\n\n"
        "def f():\n"
        "    import pandas as pd  # heavy: pandas\n"
        "    # optional: xgboost (the boosters extra)\n"
        "    import xgboost\n"
        "    from kfrelease.lake import (  # cycle: kfrelease.lake imports this module\n"
        "        engine,\n"
        "    )\n"
        "    import os\n"
        "    import re  # noqa: F401\n"
        "    return json, pd, xgboost, engine, os, re\n"
    )
    assert unexplained_local_imports(tmp_path) == [
        f"{module.as_posix()}:11: import os",
        f"{module.as_posix()}:12: import re  # noqa: F401",
    ]


#: Checkout folders installed as packages of their own name (setup.py ``package_dir``).
MAPPED = {"components": "kfrelease.components", "pipelines": "kfrelease.pipelines", "serving": "kfrelease.serving"}

#: (importer, imported, why): no module under the first package imports the second, at the top or in a function.
LAYERS = (
    (
        "kfrelease.rollout",
        "kfrelease.release",
        "the rollout spec is data the release reads; its types live in rollout/, so release/ depends on rollout/",
    ),
    (
        "kfrelease",
        "kfrelease.demo",
        (
            "the demo is a tenant of the platform (its models, data, traffic): only demo/ itself and the "
            "`kfrelease demo` command (cli/) use it; platform manifests and components know no model"
        ),
    ),
)
#: Packages a LAYERS rule with importer ``kfrelease`` does not cover (the demo, and the CLI that starts it).
DEMO_USERS = ("kfrelease.demo", "kfrelease.cli")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] in MAPPED:
        parts[:1] = MAPPED[parts[0]].split(".")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in a file, function-local ones included, relative ones resolved."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            out += [(node.lineno, f"{module}.{alias.name}" if not node.module else module) for alias in node.names]
    return out


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def forbidden_imports(paths) -> list[str]:
    found = []
    for path in paths:
        importer = module_name(path)
        for line, module in imported_modules(path):
            for source, target, why in LAYERS:
                exempt = target == "kfrelease.demo" and any(_within(importer, p) for p in DEMO_USERS)
                if _within(importer, source) and _within(module, target) and not exempt:
                    found.append(f"{path.relative_to(ROOT)}:{line}: imports {module} ({why})")
    return found


def library_files() -> list[Path]:
    return [p for folder in ("kfrelease", *MAPPED) for p in sorted((ROOT / folder).rglob("*.py"))]


def test_no_import_runs_against_the_layout():
    found = forbidden_imports(library_files())
    assert not found, "imports the layout forbids:\n" + "\n".join(found)


def test_the_layout_check_sees_top_level_local_and_relative_imports(tmp_path, monkeypatch):
    """The check can fail: each way of writing a forbidden import is named, an allowed one is not."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "kfrelease" / "rollout").mkdir(parents=True)
    (tmp_path / "kfrelease" / "cli").mkdir()
    (tmp_path / "components").mkdir()
    spec = tmp_path / "kfrelease" / "rollout" / "spec.py"
    spec.write_text("from ..release import decision\n\n\ndef f():\n    import kfrelease.release.checks\n")
    component = tmp_path / "components" / "train.py"
    component.write_text("from kfrelease.demo.data import diabetes_frame\n")
    command = tmp_path / "kfrelease" / "cli" / "demo.py"
    command.write_text("from kfrelease.demo import flow\nfrom kfrelease.rollout import spec\n")
    found = forbidden_imports([spec, component, command])
    assert [f.split(" (")[0] for f in found] == [
        "kfrelease/rollout/spec.py:1: imports kfrelease.release",
        "kfrelease/rollout/spec.py:5: imports kfrelease.release.checks",
        "components/train.py:1: imports kfrelease.demo.data",
    ]
