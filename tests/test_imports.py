"""The repo's modules import each other one way only: no two of them import each other, at module level or
inside a function. `python tests/test_imports.py` prints the import graph and any two modules in a cycle."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# toy_sd.pretrain trains the evaluator (evaluate.ensure_evaluator) while evaluate needs toy_sd's pinned assets
# (ensure_base, restore_assets) and vae_round_trip: moving those out of toy_sd.py would end this one
KNOWN = {("evaluate", "toy_sd")}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """{module: the repo's top-level modules it imports}, from every import statement, however deep."""
    modules = {p.stem for p in root.glob("*.py")}
    graph = {}
    for name in modules:
        found = set()
        for node in ast.walk(ast.parse((root / f"{name}.py").read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
        graph[name] = found & modules - {name}
    return graph


def two_cycles(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(a, b) for a in graph for b in graph[a] if a < b and a in graph[b]}


def test_no_two_modules_import_each_other():
    assert two_cycles(import_graph()) <= KNOWN


if __name__ == "__main__":
    graph = import_graph()
    for name in sorted(graph):
        print(f"{name:12} -> {', '.join(sorted(graph[name]))}")
    print("modules that import each other:", sorted(two_cycles(graph)) or "none")
