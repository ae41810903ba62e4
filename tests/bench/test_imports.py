"""Who imports whom, function-local imports included: the benches import each other without a
cycle and without another module's private names, and the engine never imports the benches."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imports(package: str) -> dict[str, set[str]]:
    """Module -> every name it imports from this repository's packages ("bench.servers.stop")."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
        found[module] = {n for n in names if n.split(".")[0] in ("bench", "engine", "kernels")}
    return found


def test_the_benches_import_each_other_without_a_cycle():
    edges = imports("bench")
    graph = {m: {n for n in names if n in edges and n != m} for m, names in edges.items()}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for other in sorted(graph[module]):
            assert state.get(other) != "open", "import cycle: " + " -> ".join(path + [other])
            if other not in state:
                visit(other, path + [other])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_bench_imports_another_bench_modules_private_names():
    private = sorted(f"{m} -> {n}" for m, names in imports("bench").items() for n in names
                     if n.startswith("bench.") and n.rsplit(".", 1)[-1].startswith("_")
                     and not n.rsplit(".", 1)[-1].startswith("__"))
    assert private == []


def test_the_engine_never_imports_the_benches():
    assert sorted(f"{m} -> {n}" for m, names in imports("engine").items() for n in names
                  if n.split(".")[0] == "bench") == []
