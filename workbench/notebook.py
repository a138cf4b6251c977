"""What every notebook does first, in one call: check its parameters, work from the repository root, open
its run directory.

A notebook's first code cell (tagged ``parameters``) holds flat assignments that papermill may override;
the next cell calls :func:`start` with the type each parameter accepts::

    run = start("manifold-explorer", globals(), smoke=bool, recipe=str, ame_weight=(int, float))
    ...
    run.write("metrics", {...})

``run_dir`` and ``overwrite_run_dir`` are every notebook's last two parameters and are checked always.

A teaching notebook states what the reader should see in its prose, as a bold number followed by a marker,
``**0.97** <!-- expect teacher_hm tol=0.03 -->`` (``smoke=0.41`` adds the smoke preset's value where it
differs), and writes the same number under that key into ``metrics.json``; :func:`check_stated_numbers`
compares the two, so prose and results cannot drift apart.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path

from .runs import RunDir

REPO_ROOT = Path(__file__).resolve().parents[1]  # relative paths in notebooks, configs and specs start here
RUN_PARAMETERS = {"run_dir": str, "overwrite_run_dir": bool}  # what every notebook declares last
_STATED = re.compile(r"\*\*(?P<shown>-?[0-9]+(?:\.[0-9]+)?)\*\*\s*<!-- expect (?P<key>[\w.]+) tol=(?P<tol>[0-9.]+)"
                     r"(?: smoke=(?P<smoke>-?[0-9.]+))? -->")


def check_parameters(values: dict, expected: dict[str, type | tuple[type, ...]]) -> None:
    """Raise ``TypeError`` naming every notebook parameter whose value has the wrong type.

    Papermill injects parameters as given (``-p shots 16`` arrives as an int, ``-p shots "16"`` as a
    string); ``bool`` is never accepted where a number is expected.
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


def start(name: str, namespace: Mapping, chdir: bool = True, **types) -> RunDir:
    """Check a notebook's parameters, move to the repository root and open its run directory.

    Parameters
    ----------
    name : str
        The notebook's short name; an empty ``run_dir`` becomes ``runs/<name>-<timestamp>``.
    namespace : mapping
        The notebook's ``globals()`` after its parameters cell.
    chdir : bool, default True
        Work from the repository root, as pipelines and the command line do, so that relative paths
        (``runs/cache``, ``configs/…``) mean the same everywhere. Skipped when the package is installed
        away from a checkout (no ``notebooks/`` next to it).
    **types
        Every parameter the notebook declares, with the type (or tuple of types) it accepts.

    Returns
    -------
    RunDir
        The run directory, created; a non-empty one is refused unless ``overwrite_run_dir`` is true.
    """
    expected = {**types, **RUN_PARAMETERS}
    missing = [key for key in expected if key not in namespace]
    if missing:
        raise NameError(f"the notebook's parameters cell defines no {', '.join(missing)}; start() checks "
                        f"every parameter it is given, and every notebook declares {', '.join(RUN_PARAMETERS)}")
    check_parameters({key: namespace[key] for key in expected}, expected)
    if chdir and (REPO_ROOT / "notebooks").is_dir():
        os.chdir(REPO_ROOT)
    path = Path(namespace["run_dir"] or Path("runs") / time.strftime(f"{name}-%Y%m%d-%H%M%S"))
    run = RunDir.create(path.parent, path.name, overwrite=namespace["overwrite_run_dir"])
    print("run directory:", run.path)
    return run


def stated_numbers(notebook: str | os.PathLike) -> dict[str, dict]:
    """The numbers a notebook's prose states: ``{key: {"shown", "tolerance", "smoke"}}`` (``smoke`` None when equal)."""
    cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
    stated = {}
    for cell in cells:
        if cell["cell_type"] != "markdown":
            continue
        text = "".join(cell["source"])
        for match in _STATED.finditer(text):
            key = match["key"]
            if key in stated:
                raise ValueError(f"{notebook}: the number {key!r} is stated twice")
            stated[key] = {"shown": float(match["shown"]), "tolerance": float(match["tol"]),
                           "smoke": None if match["smoke"] is None else float(match["smoke"])}
        unmatched = text.count("<!-- expect") - len(_STATED.findall(text))
        if unmatched:
            raise ValueError(f"{notebook}: {unmatched} expect marker(s) not right after a **bold** number")
    return stated


def check_stated_numbers(notebook: str | os.PathLike, numbers: dict, smoke: bool = False) -> list[str]:
    """Every disagreement between the numbers ``notebook`` states and the ``numbers`` a run of it computed.

    A full run is compared with the numbers shown; a smoke run with each marker's ``smoke=`` value, or with
    the number shown where the marker has none (numbers that do not depend on the preset).
    """
    problems = []
    for key, stated in stated_numbers(notebook).items():
        expected = stated["smoke"] if smoke and stated["smoke"] is not None else stated["shown"]
        if key not in numbers:
            problems.append(f"{key}: stated in the prose, not computed by the run")
        elif not abs(float(numbers[key]) - expected) <= stated["tolerance"]:
            problems.append(f"{key}: the prose says {expected:g} (± {stated['tolerance']:g}), the run computed "
                            f"{float(numbers[key]):.4g}")
    return problems
