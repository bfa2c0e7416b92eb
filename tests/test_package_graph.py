"""The package graph runs one way (docs/architecture.md).

common/ is the bottom and imports none of ours; the router (ring, route
answers, SDK) stands on common; the data plane (node/) and the control
plane (control/) stand on common and router and never import each other;
chaos/ and the CLI are on top. Every import counts, including those inside
functions, so a lazy import cannot hide an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OURS = {"common", "node", "router", "control", "chaos"}
ALLOWED = {
    "common": set(),
    "router": {"common"},
    "node": {"common", "router"},
    "control": {"common", "router"},
    "chaos": {"common", "router", "node", "control"},
}


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_packages_below_it(package):
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"no modules found under {package}/"
    wrong = {
        str(path.relative_to(REPO)): sorted(imported_packages(path) - ALLOWED[package] - {package})
        for path in files
    }
    assert {path: extra for path, extra in wrong.items() if extra} == {}


def test_the_check_sees_a_forbidden_arrow(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from control import keys\n    import node.worker\n")
    assert imported_packages(module) == {"control", "node"}
