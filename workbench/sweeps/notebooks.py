"""One notebook as one pipeline step: papermill with the run's parameters, or the in-process call a
thin notebook makes (found through ``IN_PROCESS_RUNNERS``, never by importing the experiment layer).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..notebook import REPO_ROOT
from ..runs import RunDir, create_run_dir, environment_info, write_json

KERNEL_START_TIMEOUT = 300  # seconds; papermill's 60 s is too short when a sweep starts kernels on a busy node
IN_PROCESS_NOTEBOOK = "run_experiment.ipynb"
# Notebooks whose whole work is one library call, by name -> "module:function" that call makes. Sweeps sit
# above the experiment layer; they reach its step runner through this table rather than an import.
IN_PROCESS_RUNNERS = {IN_PROCESS_NOTEBOOK: "workbench.experiment:run_step"}



def run_notebook(notebook: str | os.PathLike, run_dir: str | os.PathLike, parameters: dict | None = None,
                 overwrite: bool = False, progress: bool = True, execution_timeout: int | None = None) -> Path:
    """Execute ``notebook`` with ``parameters`` into ``run_dir`` and return the executed notebook's path.

    ``run_dir`` receives the executed notebook, ``parameters.json`` and ``environment.json``; the
    notebook gets ``run_dir`` as a parameter and writes its own results there. A non-empty
    ``run_dir`` is refused unless ``overwrite`` is true. ``execution_timeout`` (seconds) bounds each
    cell. A failing cell raises ``papermill.PapermillExecutionError``; the executed notebook is
    still written, up to and including the failing cell.
    """
    import papermill

    notebook = Path(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {notebook} not found")
    run_dir = create_run_dir(Path(run_dir).parent, Path(run_dir).name, overwrite=overwrite)
    parameters = {**(parameters or {}), "run_dir": str(run_dir.resolve()), "overwrite_run_dir": True}
    write_json(RunDir(run_dir).parameters, {"notebook": notebook.name, "parameters": parameters})
    write_json(RunDir(run_dir).environment, environment_info())
    output = run_dir / notebook.name
    sockets = tempfile.mkdtemp(prefix="wb-kernel-")  # short: Unix socket paths are limited to ~100 bytes
    try:
        papermill.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name="python3",
                                   cwd=str(REPO_ROOT), progress_bar=progress, execution_timeout=execution_timeout,
                                   kernel_manager_class=_local_kernel_manager(sockets),
                                   start_timeout=KERNEL_START_TIMEOUT)
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
    return output


def _in_process_runner(notebook):
    """The library function that ``notebook`` (a key of :data:`IN_PROCESS_RUNNERS`) calls, imported by name."""
    import importlib

    module, _, function = IN_PROCESS_RUNNERS[Path(notebook).name].partition(":")
    return getattr(importlib.import_module(module), function)


def _local_kernel_manager(directory: str):
    """A Jupyter kernel manager talking to its kernel over Unix sockets in ``directory`` (its own).

    The kernel only ever serves this process, so nothing needs TCP; over TCP without CurveZMQ keys
    ipykernel warns (rightly) that anyone on the machine could connect, on every notebook run. Each
    notebook gets a directory of its own: by default IPC sockets are named after the working
    directory, where notebooks executed at once (a sweep's workers) would take each other's sockets.
    """
    from jupyter_client.manager import AsyncKernelManager

    return type("LocalKernelManager", (AsyncKernelManager,), {"transport": "ipc",
                                                              "ip": os.path.join(directory, "kernel")})


def notebook_parameters(notebook: str | os.PathLike) -> list[str]:
    """Names assigned in the cell tagged ``parameters`` of ``notebook`` (``ValueError`` if it has none)."""
    import ast

    for cell in json.loads(Path(notebook).read_text()).get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            try:
                tree = ast.parse(source)
            except SyntaxError as err:
                raise ValueError(f"notebook {notebook}: the parameters cell is not valid Python: {err}") from None
            names = []
            for node in tree.body:
                targets = node.targets if isinstance(node, ast.Assign) else \
                    [node.target] if isinstance(node, ast.AnnAssign) else []
                names += [t.id for t in targets if isinstance(t, ast.Name) and t.id not in names]
            return names
    raise ValueError(f"notebook {notebook} has no cell tagged 'parameters' (papermill needs one)")
