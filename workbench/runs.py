"""Run directories: the unit of reproducibility (config, environment, metrics, figures)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

TRACKED_PACKAGES = ("torch", "torchvision", "open_clip_torch", "transformers", "numpy", "umap-learn",
                    "plotly", "scikit-learn", "papermill")


def umask_mode(directory: bool = False) -> int:
    """The mode a new file (or directory) gets under the process's umask: what atomic writes restore.

    ``tempfile.mkstemp``/``mkdtemp`` create private (0600/0700) entries; renamed into place they would
    hide results from colleagues on a shared machine, unlike every other file of a run.
    """
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def create_run_dir(root: str | os.PathLike, name: str | None = None, overwrite: bool = False) -> Path:
    """Make ``root/name`` (default: a timestamp) and return it.

    An existing non-empty directory is never reused silently: pass ``overwrite=True`` to write into
    it anyway (files with the same names are then replaced, others are kept).
    """
    name = name or time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(root) / name
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"run directory {run_dir} already exists and is not empty; "
                              "choose another name or pass overwrite=True")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def write_json(path: str | os.PathLike, data) -> Path:
    """Write ``data`` as indented JSON atomically (temp file + rename), so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def write_arrays(path: str | os.PathLike, **arrays) -> Path:
    """Write named numpy arrays to one ``.npz`` file atomically (temp file + rename); None values are left out."""
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items() if v is not None})
    os.replace(tmp, path)
    return path


def read_log_runs(path: str | os.PathLike) -> list[list[dict]]:
    """The records of a JSONL training log (:func:`workbench.train.fit`), split into runs.

    ``fit`` appends to its log, so one file may hold several runs: a step smaller than the one
    before starts a new run (records repeating a step, e.g. an evaluation logged after it, stay in
    theirs). Blank lines are skipped; a malformed line raises ``ValueError`` naming file and line.
    """
    runs, previous = [[]], None
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {line_no}: not valid JSON ({err.msg})") from None
            step = record.get("step") if isinstance(record, dict) else None
            if step is None:
                raise ValueError(f"{path}, line {line_no}: expected an object with a 'step' field")
            if previous is not None and step < previous:
                runs.append([])
            previous = step
            runs[-1].append(record)
    return runs if runs[0] else []


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


def git_commit(directory: str | os.PathLike | None = None) -> str | None:
    """The commit of the checkout holding ``directory`` (the workbench source by default), if any."""
    directory = directory or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment_info() -> dict:
    """Python, platform, package versions, accelerator and git commit, for the run record."""
    import torch

    versions = {}
    for package in TRACKED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": versions,
        "git_commit": git_commit(),
    }
