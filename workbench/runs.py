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


class RunDir:
    """One run directory, and the one place that names its files.

    Every writer and reader of a run (experiment, analysis, explorer, sweeps, command line) takes its
    file names from here: ``RunDir("runs/my-run").metrics`` is ``runs/my-run/metrics.json``. A pipeline
    step keeps its experiment in ``<step>/experiment/``; :meth:`find` resolves a step to it.
    """

    FILES = {
        "config": "config.json",  # the resolved experiment config
        "environment": "environment.json",  # Python, packages, accelerator, git commit
        "parameters": "parameters.json",  # a notebook step's parameters
        "dataset": "dataset.json",  # what the run trained and tested on
        "status": "status.json",  # a pipeline step's state, timings and error
        "job": "job.json",  # the cluster job that executes a submitted step
        "metrics": "metrics.json",  # the results; its presence means the run finished
        "log": "train.jsonl",  # one JSON record per logged training step
        "checkpoint": "checkpoint.pt",  # model, optimizer and AME state for exact resume
        "student": "student.safetensors",  # the distilled student's weights
        "recipe_modules": "recipe_modules.safetensors",  # modules a recipe adds to the student (prompts, heads)
        "samples": "samples.csv",  # the per-sample table of the test set, row i = image i
        "embeddings": "embeddings.npz",  # test-set features, class vectors, logits, labels
        "analysis": "analysis.json",  # analyze_run's metrics
        "analysis_samples": "analysis_samples.csv",  # analyze_run's per-sample table
    }
    EXPERIMENT = "experiment"  # a pipeline step's experiment, inside the step's directory

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __getattr__(self, name: str) -> Path:
        files = type(self).FILES
        if name in files:
            return self.path / files[name]
        raise AttributeError(f"RunDir has no file or attribute {name!r}; its files: {', '.join(files)}")

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __truediv__(self, other) -> Path:
        return self.path / other

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RunDir) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    def has(self, name: str) -> bool:
        """Whether the file called ``name`` (a key of :attr:`FILES`) exists."""
        return getattr(self, name).is_file()

    def read(self, name: str):
        """The JSON file called ``name``; a missing file is an error naming the run and what writes it."""
        path = getattr(self, name)
        if not path.is_file():
            raise FileNotFoundError(f"{self.path} has no {path.name}: not a finished run, or not a run directory")
        return read_json(path)

    def write(self, name: str, data) -> Path:
        """Write the JSON file called ``name`` atomically."""
        return write_json(getattr(self, name), data)

    @classmethod
    def find(cls, path: str | os.PathLike, needs: str = "embeddings") -> "RunDir":
        """The run holding file ``needs``: ``path`` itself, or the experiment inside a pipeline step at ``path``."""
        path = Path(path)
        for candidate in (cls(path), cls(path / cls.EXPERIMENT)):
            if candidate.has(needs):
                return candidate
        name = cls.FILES[needs]
        raise FileNotFoundError(f"{path} holds no {name} (nor does {path / cls.EXPERIMENT}); "
                                "is it the directory of a finished run?")

    @classmethod
    def create(cls, root: str | os.PathLike, name: str | None = None, overwrite: bool = False) -> "RunDir":
        """A new run directory ``root/name`` (see :func:`create_run_dir`)."""
        return cls(create_run_dir(root, name, overwrite=overwrite))


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
