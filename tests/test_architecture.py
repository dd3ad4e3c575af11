"""The package's shape (docs/architecture.md): imports point one way, and the product never imports the
benchmark. Read from the source with `ast`, imports inside functions included (a lazy import is still a
dependency)."""
from __future__ import annotations

import ast
from pathlib import Path

import activeindex

PACKAGE = Path(activeindex.__file__).parent
INTERFACES = {"activeindex.cli", "activeindex.__main__"}  # the CLI also runs the benchmark (`activeindex benchmark`)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports (``from . import x`` names module x when it is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names}
    return {module for module in found if module in known and module != name}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, set(known)) for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules along it, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_reader_sees_a_cycle_and_lazy_imports():
    """The checker itself: a cycle is found; imports inside functions and relative imports are read."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph()
    assert "activeindex.pipeline" in graph["activeindex.collection"]  # imported inside `_ingest`
    assert "activeindex.ingest" in graph["activeindex.pipeline"]
    assert "activeindex.edits" in graph["activeindex.bench.evaluation"]


def test_no_import_cycle_among_the_package_modules():
    assert find_cycle(import_graph()) is None


def test_the_product_never_imports_the_benchmark():
    offenders = {name: sorted(m for m in imported if m.startswith("activeindex.bench"))
                 for name, imported in import_graph().items()
                 if not name.startswith("activeindex.bench") and name not in INTERFACES}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_method_modules_import_neither_the_collection_nor_the_service():
    method = ["extractor", "onnx_torch", "codec", "perceptual", "coarse", "activation", "transforms", "edits",
              "imageio", "binding"]
    graph = import_graph()
    for name in method:
        assert not {m for m in graph[f"activeindex.{name}"]
                    if m.split(".")[1] in ("collection", "ingest", "pipeline", "service", "bench", "cli")}, name
