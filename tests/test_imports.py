"""The repo's modules import each other one way only: no cycle of imports, at module level or inside a
function. `python tests/test_imports.py` prints the import graph and any cycle."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of imports, as [a, b, ..., a]; [] when the graph has none (a depth-first search)."""
    state = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return []


def test_no_module_imports_another_that_imports_it_back():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]  # the check can fail
    assert cycle(import_graph()) == []


if __name__ == "__main__":
    graph = import_graph()
    for name in sorted(graph):
        print(f"{name:12} -> {', '.join(sorted(graph[name]))}")
    print("a cycle of imports:", " -> ".join(cycle(graph)) or "none")
