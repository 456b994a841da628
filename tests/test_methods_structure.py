"""The package's shape (DESIGN.md standards): no module over 600 lines, no function over 80 lines, an acyclic
import graph, and a method registry that imports no torch, over all of auditor/ except auditor/demo (which has owners
and limits of its own; tests/test_report_structure.py adds auditor/report's own rules)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "auditor"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    """{dotted name: path} of the package's modules outside demo/ (auditor/report included)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        if rel.parts[1:2] == ("demo",):
            continue
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def test_no_module_is_over_the_line_limit():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def test_no_function_is_over_the_line_limit():
    long = {}
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                span = node.end_lineno - node.lineno + 1
                if span > MAX_FUNCTION_LINES:
                    long[f"{name}.{node.name}"] = span
    assert not long, long


def _imports(name: str, path: Path) -> set[str]:
    """The auditor modules `name` imports when it is imported: module-level statements only (an import inside a
    function runs when it is called, and `if TYPE_CHECKING:` never runs), with every package on their way."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    statements = list(tree.body)
    while statements:
        node = statements.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.If, ast.Try)):
            statements.extend(node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", []))
            statements.extend(h for handler in getattr(node, "handlers", []) for h in handler.body)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    out = set()
    for target in found:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            candidate = ".".join(parts[:i])
            if candidate in MODULES and candidate != name:
                out.add(candidate)
    # A module's own packages are imported before it: not edges of its own.
    return {t for t in out if not name.startswith(t + ".")}


def test_the_import_graph_is_acyclic():
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_import_graph_sees_imports():
    """The graph above is not empty by mistake: the pipeline imports the registry and the policy."""
    edges = _imports("auditor.pipeline", MODULES["auditor.pipeline"])
    assert {"auditor.methods", "auditor.policy", "auditor.results"} <= edges


def _fresh(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_registry_imports_no_torch():
    """`auditor render` and `auditor diff` read METHODS; importing every method module took 3.5 s with torch."""
    out = _fresh("import sys, auditor.methods, auditor.policy, auditor.diff; "
                 "print('torch' in sys.modules, 'auditor.methods.tcav' in sys.modules)")
    assert out == "False False"
