"""Imports point one way: gateway (the shared library) at the bottom, then the services (none
importing another), the stack runner, the harnesses, and on top the benchmarks and the tests.
Read from the source (ast), so a lazy import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

from gateway.settings import REPO_ROOT

SERVICES = {"bridge", "storage", "query_api", "flink_jobs", "emulator", "console"}
# Each package and the project's packages it may import.
ALLOWED: dict[str, set[str]] = {
    "gateway": set(),
    **{service: {"gateway"} for service in SERVICES},
    "stack": {"gateway", *SERVICES},
    "harness": {"gateway", *SERVICES, "stack"},
    "bench": {"gateway", *SERVICES, "stack", "harness"},
    "tests": {"gateway", *SERVICES, "stack", "harness", "bench"},
}


def _imported(path: Path) -> set[str]:
    tops: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            tops.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            tops.add(node.module.split(".")[0])
    return tops & set(ALLOWED)


def test_every_package_imports_only_the_layers_below_it() -> None:
    wrong: list[str] = []
    for package, allowed in ALLOWED.items():
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            relative = path.relative_to(REPO_ROOT)
            if "node_modules" in relative.parts:
                continue
            for imported in sorted(_imported(path) - allowed - {package}):
                wrong.append(f"{relative} imports {imported}")
    assert wrong == []


def test_the_rule_sees_a_wrong_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from stack.config import StackSettings\n    import tests.oracle\n")
    assert _imported(module) == {"stack", "tests"}
