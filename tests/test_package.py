"""The package's shape: no import cycle between its modules (imports inside functions included)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"


def _import_graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    graph = {}
    for name in modules:
        edges = set()
        for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
                edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_of_the_package_imports_itself_round_a_cycle():
    graph = _import_graph()
    assert len(graph) > 20
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_public_names_resolve_to_their_modules_and_the_package_imports_cheaply():
    import subprocess
    import sys

    import workbench

    for name, module in workbench._EXPORTS.items():
        value = getattr(workbench, name)
        assert getattr(__import__(f"workbench.{module}", fromlist=[name]), name) is value, name
    assert set(workbench._EXPORTS) <= set(dir(workbench))
    # A fresh interpreter: importing the package (and a loss) pulls in no plotting or model-zoo code.
    probe = ("import sys, workbench; from workbench import AMELoss; "
             "print(sorted(m for m in ('open_clip', 'plotly', 'umap', 'papermill') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    try:
        workbench.NoSuchName
    except AttributeError as err:
        assert "no attribute 'NoSuchName'" in str(err)
    else:
        raise AssertionError("unknown names must raise AttributeError")
