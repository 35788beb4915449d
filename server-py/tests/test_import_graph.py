"""The server's modules import one way: no import circle, even through imports
deferred into functions (the old scheduler base <-> queued circle was one)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_graph() -> dict[str, set[str]]:
    """Module -> the server modules it imports anywhere in its code (TYPE_CHECKING blocks,
    which never run, are not edges). Importing ``a.b.c`` also runs the package ``a.b``,
    except from inside it."""
    files = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
                continue
            for n in ast.walk(node):
                if isinstance(n, ast.ImportFrom) and n.module:
                    targets.add(n.module)
                    targets.update(f"{n.module}.{a.name}" for a in n.names)
                elif isinstance(n, ast.Import):
                    targets.update(a.name for a in n.names)
        parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        with_packages = {".".join(t.split(".")[:i]) for t in targets for i in range(1, t.count(".") + 2)}
        graph[name] = {t for t in with_packages if t in files and t != name and t not in parents}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_among_the_server_modules():
    graph = _module_graph()
    assert "inferential.server.engine" in graph and "inferential.scheduler.queued" in graph
    assert _cycles(graph) == []


def test_the_cycle_finder_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
