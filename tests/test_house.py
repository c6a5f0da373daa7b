"""House rules of the repository layout that no other test checks."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add(node.module or "")
    return names


def test_scripts_and_the_package_do_not_import_the_tests():
    files = sorted((REPO / "scripts").glob("*.py")) + sorted((REPO / "litft").rglob("*.py"))
    assert len(files) > 40
    offenders = {str(p.relative_to(REPO)): sorted(m for m in _imported_modules(p) if m.split(".")[0] == "tests")
                 for p in files}
    assert {p: m for p, m in offenders.items() if m} == {}, "move what they need into litft/ (e.g. litft/testing.py)"


def test_commands_do_not_import_each_other():
    """Shared flags and helpers live in non-command modules (litft/inference.py): a command is one recipe."""
    files = sorted((REPO / "litft" / "commands").glob("*.py"))
    assert len(files) >= 7
    offenders = {p.name: sorted(m for m in _imported_modules(p) if m.startswith("litft.commands")) for p in files}
    assert {p: m for p, m in offenders.items() if m} == {}
