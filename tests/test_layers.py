"""The layers of the repository, read from its import statements (parsed with `ast`, nothing imported).

The model layer sits below the agents: models.py loads, samples and scores any causal LM and knows
nothing of prompts, tags or parsers, so it imports nothing from agents.py, directly or through another
module (agents.py imports models.py, for `Policy`). And no two top-level modules import each other
round a circle, so each file can be read after the files it imports.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def import_graph(root: Path) -> dict[str, set[str]]:
    """Which top-level module imports which: {module: the repository's modules it imports}, every
    import counted (at the top of the file or inside a function). The package data/ is one node."""
    files = {p.stem: [p] for p in root.glob("*.py")}
    files["data"] = sorted((root / "data").glob("*.py"))
    graph = {}
    for module, paths in files.items():
        imported = set()
        for path in paths:
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
        graph[module] = imported & set(files) - {module}  # relative imports stay inside their package
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module that `start` imports, directly or through other modules."""
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the modules along it with the first repeated at the end, or None."""
    done: set[str] = set()

    def visit(path: list[str]) -> list[str] | None:
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt in path:
                return path[path.index(nxt):] + [nxt]
            if nxt not in done:
                found = visit(path + [nxt])
                if found:
                    return found
        done.add(path[-1])
        return None
    for module in sorted(graph):
        found = None if module in done else visit([module])
        if found:
            return found
    return None


def test_the_model_layer_imports_nothing_from_the_agents():
    graph = import_graph(ROOT)
    below_models = reachable(graph, "models")
    assert "agents" not in below_models, f"models.py imports agents.py (all it reaches: {sorted(below_models)})"
    assert "models" in graph["agents"]  # the agents name the model layer's Policy in their signatures


def test_no_import_circle_among_the_top_level_modules_and_data():
    graph = import_graph(ROOT)
    assert {"models", "agents", "comam", "train", "data"} <= set(graph)  # the graph was read
    assert circle(graph) is None, " -> ".join(circle(graph))


def test_the_checks_catch_an_upside_down_import_and_a_circle(tmp_path):
    """On a made-up repository, an import from agents.py in models.py (even through a third module,
    even inside a function) and a circle through the data package are both found."""
    (tmp_path / "data").mkdir()
    (tmp_path / "agents.py").write_text("import models\nfrom data.example import Line\n")
    (tmp_path / "helpers.py").write_text("def f():\n    from agents import TAGS\n")
    (tmp_path / "models.py").write_text("import torch\nimport helpers\n")
    (tmp_path / "data" / "example.py").write_text("from . import other\nimport cli\n")
    (tmp_path / "cli.py").write_text("import json\n")
    graph = import_graph(tmp_path)
    assert graph == {"agents": {"models", "data"}, "helpers": {"agents"}, "models": {"helpers"},
                     "data": {"cli"}, "cli": set()}
    assert reachable(graph, "models") == {"helpers", "agents", "models", "data", "cli"}  # round the circle
    assert circle(graph) == ["agents", "models", "helpers", "agents"]
    (tmp_path / "helpers.py").write_text("import json\n")  # the upward import gone: no circle either
    assert "agents" not in reachable(import_graph(tmp_path), "models") and circle(import_graph(tmp_path)) is None
    (tmp_path / "cli.py").write_text("import data\n")  # data -> cli -> data
    assert circle(import_graph(tmp_path)) == ["data", "cli", "data"]
