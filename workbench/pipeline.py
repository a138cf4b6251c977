"""Notebooks as parameterised, reproducible pipeline steps (executed with papermill)."""

from __future__ import annotations

import os
from pathlib import Path

from .runs import create_run_dir, environment_info, write_json

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def run_notebook(notebook: str | os.PathLike, run_dir: str | os.PathLike, parameters: dict | None = None,
                 overwrite: bool = False, progress: bool = True) -> Path:
    """Execute ``notebook`` with ``parameters`` into ``run_dir`` and return the executed notebook's path.

    ``run_dir`` receives the executed notebook, ``parameters.json`` and ``environment.json``; the
    notebook gets ``run_dir`` as a parameter and writes its own results there. A non-empty
    ``run_dir`` is refused unless ``overwrite`` is true.
    """
    import papermill

    notebook = Path(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {notebook} not found")
    run_dir = create_run_dir(Path(run_dir).parent, Path(run_dir).name, overwrite=overwrite)
    parameters = {**(parameters or {}), "run_dir": str(run_dir.resolve()), "overwrite_run_dir": True}
    write_json(run_dir / "parameters.json", {"notebook": notebook.name, "parameters": parameters})
    write_json(run_dir / "environment.json", environment_info())
    output = run_dir / notebook.name
    papermill.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name="python3",
                               cwd=str(REPO_ROOT), progress_bar=progress)
    return output


def check_parameters(values: dict, expected: dict[str, type | tuple[type, ...]]) -> None:
    """Raise ``TypeError`` naming every notebook parameter whose value has the wrong type.

    Papermill injects parameters as given (``-p shots 16`` arrives as an int, ``-p shots "16"`` as a
    string), so notebooks call this right after their parameters cell; ``bool`` is never accepted
    where a number is expected.
    """
    problems = []
    for name, kinds in expected.items():
        value = values[name]
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            wanted = " or ".join(k.__name__ for k in kinds)
            problems.append(f"{name}={value!r} ({type(value).__name__}, expected {wanted})")
    if problems:
        raise TypeError("notebook parameters of the wrong type: " + "; ".join(problems))
