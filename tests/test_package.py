"""The package's shape: no import cycle between its modules (imports inside functions included)."""

import ast
import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "workbench"


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (dotted below ``workbench``; a package is its ``__init__``)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    graph = {}
    for name, path in files.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        package = [] if package == ["workbench"] else package
        edges = set()
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level == 0 or id(node) in typing_only:
                continue
            base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
            target = base + (node.module.split(".") if node.module else [])
            for alias in node.names:  # `from . import x` and `from .pkg import sub` name modules
                sub = ".".join(target + [alias.name])
                edges.add(sub if sub in files else ".".join(target) or "workbench")
        graph[name] = {e for e in edges if e in files and e != name}
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
    assert len(graph) > 50
    assert {"data.shots", "sweeps.report", "analysis.metrics"} <= set(graph)
    # relative imports of every depth resolve: a submodule sees its siblings and the layers below
    assert {"data.manifest", "protocol"} <= graph["data.shots"]
    assert "analysis" in graph["sweeps.report"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_no_layer_reaches_up_to_the_sweeps_or_the_command_line():
    """Sweeps and the CLI use the library; nothing in the library imports them (sweeps find step runners by table)."""
    graph = _import_graph()
    users = {"__main__"} | {name for name in graph if name == "sweeps" or name.startswith("sweeps.")}
    reaching_up = {name: sorted(edges & users) for name, edges in graph.items() if name not in users and edges & users}
    assert reaching_up == {}


def test_no_module_is_longer_than_500_lines():
    sizes = {_module_name(p): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert len(sizes) > 50
    assert {name: n for name, n in sizes.items() if n > 500} == {}


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


def test_an_installed_wheel_carries_the_data_manifests(tmp_path):
    """A non-editable install finds the world, the benchmark specs and the vocabularies without the checkout."""
    import subprocess
    import sys
    import zipfile

    root = PACKAGE.parent
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
                            "-w", str(tmp_path / "dist"), str(root)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    wheel = zipfile.ZipFile(next((tmp_path / "dist").glob("*.whl")))
    shipped = {p.relative_to(root).as_posix() for p in (root / "data_manifests").rglob("*") if p.is_file()}
    assert len(shipped) > 15
    assert {f"workbench/{name}" for name in shipped} <= set(wheel.namelist())
    wheel.extractall(tmp_path / "site")
    probe = ("import workbench, workbench.data as d, workbench.task as t, workbench.world as w; "
             "print(workbench.__file__); print(len(w.load_world_spec().class_names)); print(len(d.list_specs())); "
             "print(d.evaluation_sets('cross_dataset').source); print(len(t.read_vocabulary('embedded_generic', [])))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert done.returncode == 0, done.stderr
    where, classes, specs, source, vocabulary = done.stdout.split()
    assert where.startswith(str(tmp_path / "site"))  # the installed copy, not the checkout
    assert int(classes) == 30 and int(specs) == len(list((root / "data_manifests" / "benchmarks").glob("*.yaml")))
    assert source == "imagenet" and int(vocabulary) > 100
