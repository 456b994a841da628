"""auditor/report's shape: no import cycle among its modules (function-level imports included), sections as peers,
each with its method notes. The line limits of every module outside auditor/demo are in test_methods_structure.py."""

from __future__ import annotations

import ast
from pathlib import Path

REPORT = Path(__file__).resolve().parent.parent / "auditor" / "report"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPORT.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(REPORT.rglob("*.py"))}


def _imports(path: Path, known: set[str]) -> set[str]:
    """The auditor.report modules ``path`` imports (anywhere in it, function bodies included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from auditor.report import workers` imports the module auditor.report.workers; a name that is not
            # a module (`from auditor.report.sections import SECTIONS`) comes from the package itself.
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if sub in known:
                    out.add(sub)
                elif node.module in known:
                    out.add(node.module)
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_report_modules_import_no_cycle() -> None:
    modules = _modules()
    graph = {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}
    assert "auditor.report.sections.tcav" in graph and graph["auditor.report.render"], "the walk found no imports"
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"


def test_sections_are_peers() -> None:
    """A section module imports no other method's section (generic and null are the shared parts) nor render."""
    modules = _modules()
    shared = {"auditor.report.sections.generic", "auditor.report.sections.null"}
    for name, path in modules.items():
        if not name.startswith("auditor.report.sections.") or name in shared:
            continue
        bad = {m for m in _imports(path, set(modules))
               if (m.startswith("auditor.report.sections.") and m not in shared) or m == "auditor.report.render"}
        assert not bad, f"{name} imports {sorted(bad)}"


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_every_method_section_has_its_notes() -> None:
    """Every SECTIONS entry says in the appendix how its method works (issue 14: each section with its notes)."""
    from auditor.report.sections import SECTIONS

    assert {"tcav", "sacv", "rsvc", "invert", "artifact_probe"} <= set(SECTIONS)
    bare = [m for m, spec in SECTIONS.items() if not spec.text or spec.title == m]
    assert not bare, f"sections without method notes (NOTES_TITLE, NOTES_TEXT): {bare}"
