"""The cluster code's three packages keep their direction (issue 27): ``render`` imports neither the
``driver`` nor the ``policy`` evaluation, and nothing under ``kfrelease.k8s`` imports ``kfrelease.demo``
(the platform's manifests are rendered from ``manifests/sources/models.yaml``, not from the demo)."""

import ast
from pathlib import Path

import kfrelease.k8s

K8S = Path(kfrelease.k8s.__file__).parent


def imported_modules(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def test_the_renderers_import_neither_the_driver_nor_the_policy_evaluators():
    for path in (K8S / "render").glob("*.py"):
        wrong = {m for m in imported_modules(path) if m.startswith(("kfrelease.k8s.driver", "kfrelease.k8s.policy"))}
        assert not wrong, f"{path.name} imports {sorted(wrong)}"


def test_no_cluster_module_imports_the_demo():
    for path in K8S.rglob("*.py"):
        wrong = {m for m in imported_modules(path) if m.startswith("kfrelease.demo")}
        assert not wrong, f"{path.relative_to(K8S)} imports {sorted(wrong)}"
