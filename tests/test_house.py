"""House rules of the repository layout that no other test checks."""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
import tokenize
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


IMPORT_REASONS = ("heavy", "optional", "cycle")
"""What a comment beside an import inside a function must name: a heavy import that a light command (``litft
slurm``, ``litft export``) must not pay for, an optional dependency, or an import cycle."""


def _comments(source: str) -> dict[int, str]:
    """Line number -> the text of the comment on that line."""
    return {tok.start[0]: tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT}


def test_imports_inside_functions_say_why():
    """Imports sit at the top of their module; one inside a function carries a comment (on its line or the line
    above) naming why: heavy, optional, or an import cycle."""
    unexplained, seen = [], 0
    for path in sorted((REPO / "litft").rglob("*.py")):
        source = path.read_text()
        comments = _comments(source)
        for fn in ast.walk(ast.parse(source)):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    seen += 1
                    said = comments.get(node.lineno, "") + comments.get(node.lineno - 1, "")
                    if not any(reason in said.lower() for reason in IMPORT_REASONS):
                        unexplained.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert seen >= 20  # deepspeed, peft, bitsandbytes, datasets, ... stay lazy: the walk found them
    assert sorted(set(unexplained)) == [], f"move to the top of the module, or say why not ({IMPORT_REASONS})"


def test_every_module_imports_alone():
    """Each litft module imports first, as in a fresh interpreter (no import cycle hides behind another module
    that happens to be imported before it): one subprocess, litft's modules dropped from sys.modules before each
    (third-party ones stay loaded: a cycle within litft depends only on litft's own import order)."""
    script = """
import importlib, json, pkgutil, sys, traceback
import litft
names = sorted(m.name for m in pkgutil.walk_packages(litft.__path__, "litft."))
failed = []
for name in names:
    for loaded in [m for m in sys.modules if m == "litft" or m.startswith("litft.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
print("RESULT", json.dumps([len(names), failed]))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    count, failed = json.loads(done.stdout.split("RESULT ")[-1])  # libraries may print on stdout too
    assert count > 60
    assert failed == []
