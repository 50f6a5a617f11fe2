"""Imports of the library: a function-local import says why it is not at the top of its module.

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
