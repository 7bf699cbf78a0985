"""The repository's three parts import each other one way only.

- the method (the top-level modules) never imports the lab;
- the pocket world (pocket/) never imports the lab, and the method reaches it only at its default paths, from
  the modules listed in POCKET_SEAMS;
- no cycle of imports anywhere, at module level or inside a function.
`python tests/test_imports.py` prints the import graph and any cycle.
"""
import ast
from pathlib import Path



ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lab", "pocket")
# the method modules that may import the pocket world, and why: the pinned base at runs/base (pipeline), the
# pocket evaluator (evaluate, real_eval), the pocket CLIP as the zero loss's perceptual network (perceptual)
POCKET_SEAMS = {"pipeline", "evaluate", "real_eval", "perceptual"}


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """{"nft_train": path, "lab.suites": path, ...}: the repository's modules (no package __init__)."""
    files = {p.stem: p for p in root.glob("*.py")}
    for pkg in PACKAGES:
        files |= {f"{pkg}.{p.stem}": p for p in (root / pkg).glob("*.py") if p.stem != "__init__"}
    return files


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """{module: the repository's modules it imports}, from every import statement, however deep."""
    files = module_files(root)
    graph = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}  # `from lab import baselines`
        graph[name] = found & set(files) - {name}
    return graph


def part(module: str) -> str:
    return module.split(".")[0] if "." in module else "method"


def wrong_way(graph: dict[str, set[str]]) -> list[str]:
    """Every import that runs against the direction: method -> lab, pocket -> lab, method -> pocket outside
    POCKET_SEAMS."""
    bad = []
    for module, imported in sorted(graph.items()):
        for other in sorted(imported):
            if part(other) == "lab" and part(module) != "lab":
                bad.append(f"{module} -> {other}")
            elif part(other) == "pocket" and part(module) == "method" and module not in POCKET_SEAMS:
                bad.append(f"{module} -> {other}")
    return bad


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


def test_the_method_never_imports_the_lab_and_reaches_the_pocket_world_only_at_its_seams():
    made_up = {"nft_train": {"lab.suites", "pocket.pinned"}, "pocket.toy_sd": {"lab.report", "pipeline"},
               "lab.suites": {"attack", "pocket.pinned"}, "pipeline": {"pocket.pinned"}}
    assert wrong_way(made_up) == ["nft_train -> lab.suites", "nft_train -> pocket.pinned",
                                  "pocket.toy_sd -> lab.report"]  # the check can fail
    graph = import_graph()
    assert {"nft_train", "lab.suites", "pocket.pinned"} <= set(graph)  # the packages are seen
    assert "lab.suites" in graph["lab.compare"]  # and so are their imports
    assert wrong_way(graph) == []


def test_the_top_level_holds_the_method_only():
    top = sorted(p.stem for p in ROOT.glob("*.py"))
    assert len(top) <= 10, top


if __name__ == "__main__":
    graph = import_graph()
    for name in sorted(graph, key=lambda m: (part(m) != "method", m)):
        print(f"{name:16} -> {', '.join(sorted(graph[name]))}")
    print("a cycle of imports:", " -> ".join(cycle(graph)) or "none")
    print("imports against the direction:", ", ".join(wrong_way(graph)) or "none")
