"""Notebooks as parameterised, reproducible pipeline steps: papermill runs, sweeps, an index and a report.

A **pipeline spec** (YAML, read with ``yaml.safe_load``) names a notebook, base parameters and a
parameter grid::

    name: ame_ablation                      # letters, digits, '.', '_', '-'
    notebook: notebooks/run_experiment.ipynb  # or `notebooks: [a.ipynb, b.ipynb]`
    output: runs/pipelines/ame_ablation     # default runs/pipelines/<name>
    parameters: {preset: full, epochs: 20}  # passed to every run
    grid:                                   # cartesian product, in this order (last varies fastest)
      recipe: [logit_kd, promptkd]
      ame_weight: [0, 50]
      seed: [0, 1, 2]
    exclude:                                # optional: drop grid points matching every key of an entry
      - {recipe: promptkd, ame_weight: 0}   # a value may also be a list (matches any of them)
    cell_timeout: 3600                      # optional: seconds one notebook cell may run
    report: {metrics: [hm], seed: seed, sweep: ame_weight, off_value: 0, on_value: 50}  # ReportSettings
    cluster: {gpus_per_node: 1, timeout_min: 720, partition: null}  # optional: ClusterSettings

Relative paths (``notebook``, ``output``) are relative to the current directory; notebooks run with
the repository root as their working directory. Every parameter must be declared in the notebook's
cell tagged ``parameters`` (``run_dir`` and ``overwrite_run_dir`` are set by the pipeline).

Each grid point is a :class:`Run` with a stable position (``index``, the ``--only-index`` of a cluster
array job) and a readable id, e.g. ``recipe=logit_kd__ame_weight=50__seed=0``, which names its run
directory ``<output>/<id>/``. The run directory holds the executed notebook, ``parameters.json``,
``environment.json``, ``status.json`` (status, parameters, code version, timings, error and traceback)
and whatever the notebook writes there, at least ``metrics.json``. TensorBoard logs the run writes
(``run_experiment`` does) are tagged with the run's grid point, so ``tensorboard --logdir <output>`` shows
one line per run and the HParams table.

Running is idempotent: a run whose ``status.json`` says ``done`` with the same parameters and the same
:func:`code_version` is skipped; failed or interrupted runs are retried from an empty directory; a done
run whose parameters or code changed is *stale* and only rerun when asked (its directory is then moved
to ``<output>/.stale/``, never overwritten). The index (:func:`write_index`) and the report
(:func:`build_report`) are rebuilt from the run directories alone, so runs may be spread over machines
(``shard``/``only_index``) that share the output directory, or copied together afterwards.

On a cluster, :func:`submit_pipeline` submits the runs that are not done as a job array through
submitit (one run per array task, settings from the spec's ``cluster:`` block); every task calls
:func:`execute_run`, so a run directory looks the same whichever way it was executed, plus a
``job.json`` naming its job. Logs of the jobs go to ``<output>/submitit/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import itertools
import json
import math
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
import traceback as tb
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config import flatten  # noqa: F401  (pipeline.flatten: part of this module's public names)
from .runs import create_run_dir, environment_info, git_commit, read_json, write_json

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
PACKAGE_DIR = Path(__file__).resolve().parent

STATUS_FILE = "status.json"  # written by the pipeline into every run directory
METRICS_FILE = "metrics.json"  # written by the notebook into its run directory
SPEC_RECORD = "pipeline.json"  # the spec of the last `run`, kept in the output directory for `report`
INDEX_FILE = "index.csv"
STALE_DIR = ".stale"  # finished runs replaced by --rerun-stale are moved here
INJECTED = ("run_dir", "overwrite_run_dir")  # parameters run_notebook sets itself
META_COLUMNS = ("run_id", "grid_index", "notebook", "status", "code_version", "git_commit", "git_dirty",
                "host", "started", "duration_s", "error")
SPEC_FIELDS = ("name", "description", "notebook", "notebooks", "output", "parameters", "grid", "exclude",
               "cell_timeout", "report", "in_process", "cluster")
# The notebook whose whole work is one library call, which in_process specs make directly.
KERNEL_START_TIMEOUT = 300  # seconds; papermill's 60 s is too short when a sweep starts kernels on a busy node
IN_PROCESS_NOTEBOOK = "run_experiment.ipynb"
# Notebooks whose whole work is one library call, by name -> "module:function" that call makes. Sweeps sit
# above the experiment layer; they reach its step runner through this table rather than an import.
IN_PROCESS_RUNNERS = {IN_PROCESS_NOTEBOOK: "workbench.experiment:run_step"}
STATES = ("missing", "done", "failed", "incomplete", "running", "stale", "conflict")
JOB_FILE = "job.json"  # written by submit_pipeline into the run directory of every submitted run
SUBMITIT_DIR = "submitit"  # submitit's pickles and job logs, under the output directory
EXECUTORS = {"slurm": "slurm", "submitit-local": "local"}  # submit_pipeline's executors -> submitit cluster names
# Slurm job states in which a job may still execute its run (anything else: it has ended).
SLURM_ALIVE = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
               "RESIZING", "SUSPENDED", "RESV_DEL_HOLD", "SIGNALING", "STAGE_OUT")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# ----------------------------------------------------------------------------- single notebooks
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
    write_json(run_dir / "parameters.json", {"notebook": notebook.name, "parameters": parameters})
    write_json(run_dir / "environment.json", environment_info())
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


# ----------------------------------------------------------------------------- spec
class SpecError(ValueError):
    """A pipeline spec that cannot be run; the message names the file and the field."""


def _fail(origin: str, where: str, problem: str):
    raise SpecError(f"{origin}: {where}: {problem}")


def _json_value(value, origin: str, where: str):
    """``value`` if it survives a JSON round trip unchanged (papermill passes parameters as data)."""
    try:
        if json.loads(json.dumps(value, allow_nan=False)) == value:
            return value
    except (TypeError, ValueError):
        pass
    _fail(origin, where, f"{value!r} ({type(value).__name__}) is not plain data "
                         "(use strings, numbers, booleans, null, lists and mappings)")


@dataclass(frozen=True)
class ReportSettings:
    """What :func:`build_report` summarises; the ``report:`` block of a spec."""

    metrics: tuple[str, ...] = ("hm", "base_acc", "new_acc")  # flattened metrics.json keys ("a/b" for nested)
    seed: str = "seed"  # parameter that indexes repeats; statistics are taken over it
    sweep: str = "ame_weight"  # parameter on the x axis of the curve; `off` of it is the paired baseline
    off_value: float | int | str | bool | None = 0  # value of `sweep` that means "off" (AME disabled)
    on_value: float | int | str | bool | None = 50  # value of `sweep` in the on/off bars (absent: the largest)
    confidence: float = 0.95  # coverage of the bootstrap confidence intervals

    @classmethod
    def from_dict(cls, data, origin: str = "report") -> "ReportSettings":
        if data is None:
            return cls()
        if not isinstance(data, dict):
            _fail(origin, "report", f"expected a mapping, got {type(data).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        if any(isinstance(k, bool) for k in data):
            _fail(origin, "report", "a key reads as true/false (YAML 1.1 turns on/off/yes/no into booleans); "
                                    "the fields are off_value and on_value")
        unknown = sorted(map(str, set(data) - set(known)))
        if unknown:
            _fail(origin, "report", f"unknown fields {unknown}; expected some of {known}")
        data = dict(data)
        if "metrics" in data:
            metrics = data["metrics"]
            if isinstance(metrics, str):
                metrics = [metrics]
            if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) and m for m in metrics):
                _fail(origin, "report.metrics", f"expected a non-empty list of metric names, got {metrics!r}")
            data["metrics"] = tuple(metrics)
        for name in ("seed", "sweep"):
            if name in data and not (isinstance(data[name], str) and data[name]):
                _fail(origin, f"report.{name}", f"expected a parameter name, got {data[name]!r}")
        confidence = data.get("confidence", 0.95)
        if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
            _fail(origin, "report.confidence", f"expected a number in (0, 1), got {confidence!r}")
        for name in ("off_value", "on_value"):
            if isinstance(data.get(name), (list, dict)):
                _fail(origin, f"report.{name}", f"expected one value of the sweep parameter, got {data[name]!r}")
        return cls(**data)


# First-class ClusterSettings fields, by the submitit slurm parameter each one sets; `cluster.extra` may not
# give these (nor split a run over several tasks or nodes: one run is one process).
_CLUSTER_RESERVED = {"partition": "partition", "time": "timeout_min", "gpus_per_node": "gpus_per_node",
                     "num_gpus": "gpus_per_node", "cpus_per_task": "cpus_per_task", "mem": "mem_gb",
                     "array_parallelism": "array_parallelism", "job_name": None, "nodes": None,
                     "ntasks_per_node": None, "timeout_min": "timeout_min", "mem_gb": "mem_gb",
                     "tasks_per_node": None, "name": None}


def _import_submitit():
    try:
        import submitit
    except ImportError as err:
        raise ImportError("submitting pipeline runs to a cluster needs the submitit package "
                          "(pip install 'submitit>=1.5'; it is a dependency of the workbench)") from err
    return submitit


@dataclass(frozen=True)
class ClusterSettings:
    """Resources of every array task of :func:`submit_pipeline`; the ``cluster:`` block of a spec."""

    partition: str | None = None  # slurm partition (None: the cluster's default)
    gpus_per_node: int = 0  # GPUs of one run
    cpus_per_task: int | None = None  # CPU cores of one run (None: the cluster's default)
    mem_gb: float | None = None  # memory of one run (None: the cluster's default)
    timeout_min: int = 60  # wall-clock limit of one run, minutes
    array_parallelism: int | None = None  # array tasks running at once (None: submitit's default, 256)
    extra: dict = field(default_factory=dict)  # other submitit slurm parameters: account, qos, constraint, setup …

    @classmethod
    def from_dict(cls, data, origin: str = "cluster") -> "ClusterSettings":
        if data is None:
            return cls()
        if not isinstance(data, dict):
            _fail(origin, "cluster", f"expected a mapping, got {type(data).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(map(str, set(data) - set(known)))
        if unknown:
            _fail(origin, "cluster", f"unknown fields {unknown}; expected some of {known} "
                                     "(other slurm parameters go under cluster.extra)")
        data = dict(data)

        for name, minimum, optional in (("gpus_per_node", 0, False), ("timeout_min", 1, False),
                                        ("cpus_per_task", 1, True), ("array_parallelism", 1, True)):
            value = data.get(name)
            if name not in data or value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                _fail(origin, f"cluster.{name}", f"expected an integer >= {minimum}"
                      + (" or null" if optional else "") + f", got {value!r}")
        mem = data.get("mem_gb")
        if mem is not None and (isinstance(mem, bool) or not isinstance(mem, (int, float)) or not mem > 0):
            _fail(origin, "cluster.mem_gb", f"expected a number of GB > 0 or null, got {mem!r}")
        partition = data.get("partition")
        if partition is not None and not (isinstance(partition, str) and partition.strip()):
            _fail(origin, "cluster.partition", f"expected a partition name or null (the default), got {partition!r}")
        extra = data.get("extra") or {}
        if not isinstance(extra, dict):
            _fail(origin, "cluster.extra", f"expected a mapping of slurm parameter: value, got {type(extra).__name__}")
        extra = {str(k): _json_value(v, origin, f"cluster.extra.{k}") for k, v in extra.items()}
        valid = None
        if extra:
            try:
                valid = set(_import_submitit().SlurmExecutor._valid_parameters())
            except (ImportError, AttributeError):
                pass  # checked by submitit itself when the runs are submitted
        for key in extra:
            if key in _CLUSTER_RESERVED:
                own = _CLUSTER_RESERVED[key]
                _fail(origin, f"cluster.extra.{key}", f"give it as cluster.{own}" if own else
                      "set by the pipeline itself (one run is one task on one node, named after the spec)")
            if valid is not None and key not in valid:
                _fail(origin, f"cluster.extra.{key}", "not a submitit slurm parameter; expected some of "
                                                      f"{sorted(valid - set(_CLUSTER_RESERVED))}")
        data["extra"] = extra
        return cls(**data)

    def submitit_parameters(self, name: str) -> dict:
        """Keyword arguments of ``submitit.AutoExecutor.update_parameters`` for a job array named ``name``."""
        out = {"name": name, "timeout_min": self.timeout_min, "gpus_per_node": self.gpus_per_node,
               "tasks_per_node": 1, "nodes": 1}
        if self.cpus_per_task is not None:
            out["cpus_per_task"] = self.cpus_per_task
        if self.mem_gb is not None:
            out["mem_gb"] = self.mem_gb
        if self.partition is not None:
            out["slurm_partition"] = self.partition
        if self.array_parallelism is not None:
            out["slurm_array_parallelism"] = self.array_parallelism
        out.update({f"slurm_{k}": v for k, v in self.extra.items()})
        return out


@dataclass(frozen=True)
class Run:
    """One notebook execution of a pipeline: a grid point."""

    index: int  # position in the expanded grid (stable for a given spec); --only-index selects it
    run_id: str  # readable, file-system safe, unique within the spec: the run directory's name
    notebook: Path  # notebook to execute
    parameters: dict  # every parameter passed to the notebook (base parameters, then the grid point)
    grid: dict  # the grid point alone


def _format_value(value) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return re.sub(r"[^A-Za-z0-9._+-]+", "-", value).strip("-") or "-"
    return "h" + hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()[:8]


def run_key(point: dict) -> str:
    """The readable id of a grid point: ``name=value`` pairs joined by ``__`` (long ids end in a hash)."""
    key = "__".join(f"{name}={_format_value(value)}" for name, value in point.items())
    if len(key) > 150:
        key = key[:140] + "__" + hashlib.sha1(key.encode()).hexdigest()[:8]
    return key


@dataclass
class PipelineSpec:
    """A validated pipeline spec; :meth:`runs` expands its grid."""

    name: str
    notebooks: tuple[Path, ...]
    output: Path
    parameters: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    exclude: list = field(default_factory=list)
    cell_timeout: int | None = None
    report: ReportSettings = field(default_factory=ReportSettings)
    description: str = ""
    origin: str = "spec"
    in_process: bool = False  # call workbench.experiment.run_step instead of executing the notebook
    cluster: ClusterSettings = field(default_factory=ClusterSettings)  # submit_pipeline's resources per run

    @classmethod
    def from_dict(cls, data, origin: str = "spec", check_notebooks: bool = True) -> "PipelineSpec":
        """Validate ``data`` (a parsed spec); every problem raises :class:`SpecError` naming the field.

        With ``check_notebooks`` each notebook must exist and declare every parameter of the spec.
        """
        if not isinstance(data, dict):
            raise SpecError(f"{origin}: expected a mapping of fields, got {type(data).__name__}")
        unknown = sorted(set(map(str, data)) - set(SPEC_FIELDS))
        if unknown:
            _fail(origin, "top level", f"unknown fields {unknown}; expected some of {list(SPEC_FIELDS)}")
        name = data.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            _fail(origin, "name", f"expected a name of letters, digits, '.', '_' or '-', got {name!r}")
        if ("notebook" in data) == ("notebooks" in data):
            _fail(origin, "notebook", "give exactly one of 'notebook' (a path) or 'notebooks' (a list of paths)")
        notebooks = data.get("notebooks", [data.get("notebook")])
        if not isinstance(notebooks, list) or not notebooks or not all(isinstance(n, str) and n for n in notebooks):
            _fail(origin, "notebooks" if "notebooks" in data else "notebook",
                  f"expected a notebook path or a non-empty list of them, got {notebooks!r}")
        if len({Path(n).stem for n in notebooks}) != len(notebooks):
            _fail(origin, "notebooks", f"notebook names must differ (they prefix the run ids), got {notebooks}")
        output = data.get("output", f"runs/pipelines/{name}")
        if not isinstance(output, str) or not output:
            _fail(origin, "output", f"expected a directory path, got {output!r}")
        description = data.get("description", "")
        if not isinstance(description, str):
            _fail(origin, "description", f"expected text, got {description!r}")

        parameters = data.get("parameters") or {}
        if not isinstance(parameters, dict):
            _fail(origin, "parameters", f"expected a mapping of name: value, got {type(parameters).__name__}")
        parameters = {str(k): _json_value(v, origin, f"parameters.{k}") for k, v in parameters.items()}

        grid = data.get("grid") or {}
        if not isinstance(grid, dict):
            _fail(origin, "grid", f"expected a mapping of name: [values], got {type(grid).__name__}")
        checked = {}
        for key, values in grid.items():
            key = str(key)
            if not isinstance(values, list) or not values:
                _fail(origin, f"grid.{key}", f"expected a non-empty list of values, got {values!r}")
            values = [_json_value(v, origin, f"grid.{key}") for v in values]
            ids = [_format_value(v) for v in values]
            if len(set(ids)) != len(ids):
                _fail(origin, f"grid.{key}", f"values must be distinct (also as run-id text), got {values}")
            if key in parameters:
                _fail(origin, f"grid.{key}", "also set in 'parameters'; give it in one place")
            checked[key] = values
        grid = checked
        names = list(parameters) + list(grid)
        for key in names:
            where = f"grid.{key}" if key in grid else f"parameters.{key}"
            if key in INJECTED:
                _fail(origin, where, f"{key!r} is set by the pipeline itself")
            if key in META_COLUMNS:
                _fail(origin, where, f"{key!r} is a column of the results index; rename the parameter")

        exclude = data.get("exclude") or []
        if not isinstance(exclude, list):
            _fail(origin, "exclude", f"expected a list of mappings, got {type(exclude).__name__}")
        for i, entry in enumerate(exclude):
            if not isinstance(entry, dict) or not entry:
                _fail(origin, f"exclude[{i}]", f"expected a non-empty mapping of grid parameter: value, got {entry!r}")
            for key in entry:
                if key not in grid:
                    _fail(origin, f"exclude[{i}].{key}", f"not a grid parameter; grid parameters: {list(grid)}")

        timeout = data.get("cell_timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1):
            _fail(origin, "cell_timeout", f"expected a positive number of seconds, got {timeout!r}")
        report = ReportSettings.from_dict(data.get("report"), origin)
        cluster = ClusterSettings.from_dict(data.get("cluster"), origin)
        in_process = data.get("in_process", False)
        if not isinstance(in_process, bool):
            _fail(origin, "in_process", f"expected true or false, got {in_process!r}")
        if in_process and any(Path(n).name not in IN_PROCESS_RUNNERS for n in notebooks):
            _fail(origin, "in_process", f"only specs of notebooks/{IN_PROCESS_NOTEBOOK} can run in process "
                                        f"(its one call, workbench.experiment.run_step, is made directly)")

        paths = tuple(Path(n) for n in notebooks)
        if check_notebooks:
            where = "notebooks" if "notebooks" in data else "notebook"
            for path in paths:
                if not path.is_file():
                    _fail(origin, where, f"notebook {path} not found (relative paths start at {Path.cwd()})")
                try:
                    declared = notebook_parameters(path)
                except ValueError as err:
                    _fail(origin, where, str(err))
                missing = [n for n in names if n not in declared]
                if missing:
                    _fail(origin, "parameters/grid", f"{missing} not declared in the parameters cell of "
                                                      f"{path.name}; it declares {declared}")
        spec = cls(name=name, notebooks=paths, output=Path(output), parameters=parameters, grid=grid,
                   exclude=list(exclude), cell_timeout=timeout, report=report, description=description,
                   origin=origin, in_process=in_process, cluster=cluster)
        runs = spec.runs()
        if not runs:
            _fail(origin, "exclude", "every grid point is excluded; nothing to run")
        seen = {}
        for run in runs:
            if run.run_id in seen:
                _fail(origin, "grid", f"grid points {seen[run.run_id]} and {run.grid} get the same run id "
                                      f"{run.run_id!r}")
            seen[run.run_id] = run.grid
        return spec

    def runs(self) -> list[Run]:
        """Every run of the spec, notebooks outermost, then the grid in spec order (last key fastest)."""
        names = list(self.grid)
        points = [dict(zip(names, values)) for values in itertools.product(*self.grid.values())]
        points = [p for p in points if not any(_excluded(p, entry) for entry in self.exclude)]
        out = []
        for notebook in self.notebooks:
            for point in points:
                key = run_key(point) if point else "run"
                run_id = f"{notebook.stem}__{key}" if len(self.notebooks) > 1 else key
                out.append(Run(len(out), run_id, notebook, {**self.parameters, **point}, dict(point)))
        return out

    def record(self) -> dict:
        """The spec as plain data (written to ``<output>/pipeline.json`` by :func:`run_pipeline`)."""
        return {"name": self.name, "description": self.description, "origin": self.origin,
                "notebooks": [str(n) for n in self.notebooks], "output": str(self.output),
                "parameters": self.parameters, "grid": self.grid, "exclude": self.exclude,
                "cell_timeout": self.cell_timeout, "report": dataclasses.asdict(self.report),
                "in_process": self.in_process, "cluster": dataclasses.asdict(self.cluster)}


def _excluded(point: dict, entry: dict) -> bool:
    return all(point[k] in v if isinstance(v, list) else point[k] == v for k, v in entry.items())


def apply_overrides(data: dict, overrides: dict | None) -> dict:
    """A copy of spec ``data`` with ``overrides`` applied: a grid parameter gets the given value(s) as its
    whole list, any other name sets a base parameter (``--set smoke=true``)."""
    data = json.loads(json.dumps(data)) if isinstance(data, dict) else data
    if not overrides or not isinstance(data, dict):
        return data
    grid = data.get("grid") or {}
    for key, value in overrides.items():
        if key in grid:
            grid[key] = value if isinstance(value, list) else [value]
        else:
            data.setdefault("parameters", {})
            data["parameters"] = {**(data["parameters"] or {}), key: value}
    if grid:
        data["grid"] = grid
    return data


def load_spec(path: str | os.PathLike, overrides: dict | None = None, output: str | os.PathLike | None = None,
              check_notebooks: bool = True) -> PipelineSpec:
    """Read and validate a pipeline spec; ``overrides`` as in :func:`apply_overrides`, ``output`` replaces
    the spec's output directory."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pipeline spec {path} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    data = apply_overrides(data, overrides)
    if output is not None and isinstance(data, dict):
        data["output"] = str(output)
    return PipelineSpec.from_dict(data, origin=str(path), check_notebooks=check_notebooks)


# ----------------------------------------------------------------------------- code version and state
def _sources_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*")):
        if path.suffix in (".py", ".json", ".yaml", ".yml") and "__pycache__" not in path.parts and path.is_file():
            digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _notebook_digest(notebook: Path) -> str:
    """Hash of the code cells' sources only: outputs, counts and metadata do not change the code."""
    cells = json.loads(Path(notebook).read_text()).get("cells", [])
    sources = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
               for c in cells if c.get("cell_type") == "code"]
    return hashlib.sha256(json.dumps(sources).encode()).hexdigest()


def code_version(notebook: str | os.PathLike, sources_digest: str | None = None) -> str:
    """12 hex digits naming the code a run executes: every source and data file of ``workbench/``
    plus the code cells of ``notebook``. Any edit (committed or not) gives a new version."""
    both = (sources_digest or _sources_digest()) + _notebook_digest(Path(notebook))
    return hashlib.sha256(both.encode()).hexdigest()[:12]


def git_dirty(directory: str | os.PathLike | None = None) -> bool | None:
    """Whether tracked files of the checkout differ from its commit (``None`` outside git)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=directory or PACKAGE_DIR,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) or a == b


def _run_job(run_dir: Path, status: dict) -> dict | None:
    """The job of a submitted run: ``job.json`` (written at submission), else the job its status names."""
    try:
        return read_json(run_dir / JOB_FILE)
    except (OSError, ValueError):
        return status.get("job") if isinstance(status.get("job"), dict) else None


def _job_alive(job: dict | None, scheduler: dict | None) -> tuple[bool, str]:
    """Whether the job of a queued or running run may still execute it, and what is known of it."""
    if not job or not job.get("job_id"):
        return False, ""
    job_id = str(job["job_id"])
    if job.get("executor") == "submitit-local":  # the job id is the pid of submitit's local controller
        alive = job.get("host") == platform.node() and _pid_alive(job_id)
        return alive, f"job {job_id} (submitit-local) " + ("running" if alive else "ended")
    state = (scheduler or {}).get(job_id)
    alive = state is not None and state.split()[0].upper() in SLURM_ALIVE
    return alive, f"job {job_id} {state or 'not known to the scheduler'}"


def run_state(run: Run, output: str | os.PathLike, version: str, scheduler: dict | None = None) -> tuple[str, str]:
    """``(state, detail)`` of ``run`` in ``output`` for code ``version``; states:

    ``missing`` (no directory, or an empty one), ``done`` (finished with these parameters and this code),
    ``failed``, ``incomplete`` (interrupted), ``running`` (by a live process on this host, or queued or
    running as a job that the scheduler still lists as alive), ``stale`` (finished, but with other
    parameters or code) and ``conflict`` (a directory the pipeline did not write: it is never touched).
    ``scheduler`` maps slurm job ids to their states (:func:`scheduler_states`).
    """
    run_dir = Path(output) / run.run_id
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return "missing", ""
    try:
        status = read_json(run_dir / STATUS_FILE)
    except FileNotFoundError:
        return "conflict", f"{run_dir} exists without {STATUS_FILE}: not a pipeline run; move it away"
    except ValueError:
        return "incomplete", f"unreadable {STATUS_FILE}"
    state = status.get("status")
    if state == "done":
        changes = []
        old = status.get("parameters") or {}
        differ = sorted(k for k in set(old) | set(run.parameters) if not _same(old.get(k), run.parameters.get(k)))
        if differ:
            changes.append("parameters differ: " + ", ".join(
                f"{k} {old.get(k)!r} -> {run.parameters.get(k)!r}" for k in differ))
        if status.get("notebook") != run.notebook.name:
            changes.append(f"notebook {status.get('notebook')} -> {run.notebook.name}")
        if status.get("code_version") != version:
            changes.append(f"code version {status.get('code_version')} -> {version}")
        return ("stale", "; ".join(changes)) if changes else ("done", "")
    if state == "failed":
        return "failed", status.get("error", "")
    if state == "running" and status.get("host") == platform.node() and _pid_alive(status.get("pid")):
        return "running", f"by process {status.get('pid')} on this host"
    if state in ("queued", "running"):
        alive, detail = _job_alive(_run_job(run_dir, status), scheduler)
        if alive:
            return "running", detail
        if detail:
            return "incomplete", f"status {state!r}, {detail} (interrupted)"
    return "incomplete", f"status {state!r} (interrupted)"


def scheduler_states(job_ids) -> dict[str, str]:
    """Slurm states (``PENDING``, ``RUNNING``, ``COMPLETED`` …) of ``job_ids`` from one ``sacct`` call made
    through submitit; empty where ``sacct`` or submitit is missing (the jobs then count as ended)."""
    job_ids = sorted({str(j) for j in job_ids})
    if not job_ids or shutil.which("sacct") is None:
        return {}
    try:
        submitit = _import_submitit()
    except ImportError:
        return {}
    jobs = [submitit.SlurmJob(folder=".", job_id=job_id) for job_id in job_ids]
    jobs[0].get_info(mode="force")  # one sacct call for every registered job
    return {job.job_id: job.watcher.get_state(job.job_id, mode="cache") for job in jobs}


def _submitted_jobs(runs: list[Run], output: Path) -> list[str]:
    """Slurm job ids of the queued or running runs among ``runs`` (what :func:`plan` asks the scheduler about)."""
    ids = []
    for run in runs:
        try:
            status = read_json(output / run.run_id / STATUS_FILE)
        except (OSError, ValueError):
            continue
        if status.get("status") in ("queued", "running"):
            job = _run_job(output / run.run_id, status)
            if job and job.get("executor") == "slurm" and job.get("job_id"):
                ids.append(str(job["job_id"]))
    return ids


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``: shard ``i`` of ``n`` takes the runs whose index ``% n == i``."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not int(match[1]) < int(match[2]):
        raise ValueError(f"shard must be 'i/n' with 0 <= i < n (e.g. 0/4), got {text!r}")
    return int(match[1]), int(match[2])


def select_runs(runs: list[Run], shard: tuple[int, int] | str | None = None, only_index: int | None = None) -> list[Run]:
    """The runs one machine or array task executes: shard ``(i, n)`` or the single run ``only_index``."""
    if shard is not None and only_index is not None:
        raise ValueError("give either a shard or an index, not both")
    if only_index is not None:
        if not 0 <= only_index < len(runs):
            raise ValueError(f"index {only_index} out of range: the spec has {len(runs)} runs (0..{len(runs) - 1})")
        return [runs[only_index]]
    if shard is not None:
        i, n = parse_shard(shard) if isinstance(shard, str) else parse_shard(f"{shard[0]}/{shard[1]}")
        return [r for r in runs if r.index % n == i]
    return list(runs)


@dataclass
class PlannedRun:
    run: Run
    state: str  # one of STATES
    detail: str  # why (parameter or code changes, the error of a failed run …)
    code_version: str


def plan(spec: PipelineSpec, shard=None, only_index: int | None = None, version: str | None = None) -> list[PlannedRun]:
    """The state of every selected run of ``spec``; ``version`` replaces :func:`code_version` (tests)."""
    digest = _sources_digest() if version is None else None
    versions = {nb: version or code_version(nb, digest) for nb in spec.notebooks}
    runs = select_runs(spec.runs(), shard, only_index)
    scheduler = scheduler_states(_submitted_jobs(runs, Path(spec.output)))
    return [PlannedRun(run, *run_state(run, spec.output, versions[run.notebook], scheduler), versions[run.notebook])
            for run in runs]


# ----------------------------------------------------------------------------- execution
def _error_text(err: BaseException) -> tuple[str, str]:
    ename, evalue = type(err).__name__, str(err)
    if hasattr(err, "ename") and hasattr(err, "traceback"):  # papermill.PapermillExecutionError
        trace = _ANSI.sub("", "\n".join(err.traceback or []))
        return f"{err.ename}: {err.evalue} (cell {err.exec_count})", trace
    return f"{ename}: {evalue}", "".join(tb.format_exception(type(err), err, err.__traceback__))


def execute_run(run: Run, output: str | os.PathLike, version: str, code: dict | None = None,
                cell_timeout: int | None = None, previous_errors: list | None = None,
                in_process: bool = False, job: dict | None = None) -> dict:
    """Execute ``run`` into ``<output>/<run_id>`` (created empty by the caller or absent) and return its
    ``status.json``: ``done`` when the notebook ran through and wrote ``metrics.json``, else ``failed``
    with the error and traceback (the executed notebook keeps every cell up to the failing one).

    ``in_process`` calls :func:`workbench.experiment.run_step` with the run's parameters in this
    process instead of starting a kernel for the notebook: same run directory, no kernel start-up,
    and the world and pretrained models stay loaded from one run to the next. ``job`` (the cluster job
    executing the run, from :func:`submit_pipeline`) is recorded in the status.
    """
    run_dir = Path(output) / run.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    status = {"status": "running", "runner": "in_process" if in_process else "papermill", "run_id": run.run_id, "grid_index": run.index, "notebook": run.notebook.name,
              "notebook_path": str(run.notebook), "parameters": run.parameters, "grid": run.grid,
              "code_version": version, **(code or {}), "host": platform.node(), "pid": os.getpid(),
              "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "previous_errors": list(previous_errors or [])}
    if job:
        status["job"] = job
    write_json(run_dir / STATUS_FILE, status)
    start = time.perf_counter()
    try:
        if in_process:
            run_step = _in_process_runner(run.notebook)
            write_json(run_dir / "parameters.json", {"notebook": run.notebook.name, "in_process": True,
                                                     "parameters": run.parameters})
            write_json(run_dir / "environment.json", environment_info())
            run_step(run_dir, overwrite_run_dir=True, **run.parameters)
        else:
            run_notebook(run.notebook, run_dir, run.parameters, overwrite=True, progress=False,
                         execution_timeout=cell_timeout)
        if not (run_dir / METRICS_FILE).is_file():
            raise RuntimeError(f"the notebook ran through but wrote no {METRICS_FILE} into its run_dir")
        status["status"] = "done"
    except Exception as err:  # noqa: BLE001 - any failure of one run is recorded; the sweep goes on
        status["status"] = "failed"
        status["error"], status["traceback"] = _error_text(err)
    status["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    status["duration_s"] = round(time.perf_counter() - start, 2)
    _tag_tensorboard(run_dir, run, status)
    write_json(run_dir / STATUS_FILE, status)
    return status


def _tag_tensorboard(run_dir: Path, run: Run, status: dict) -> None:
    """Tag the run's TensorBoard logs with its grid point, so that TensorBoard on the sweep's output shows
    one line per run and the HParams table; a failure is recorded, never turned into a failed run."""
    from .loggers import tag_hparams

    try:
        tag_hparams(run_dir, run.grid)
    except Exception as err:  # noqa: BLE001 - the run's own results stand whatever happens to its view
        status["tensorboard_error"] = f"{type(err).__name__}: {err}"


def _prepare(planned: PlannedRun, output: Path) -> list:
    """Empty the run directory of a failed or interrupted run (keeping its errors), or move a stale one
    to ``<output>/.stale/``; returns the earlier errors to carry over."""
    run_dir = output / planned.run.run_id
    errors = []
    if planned.state in ("failed", "incomplete"):
        try:
            old = read_json(run_dir / STATUS_FILE)
            errors = list(old.get("previous_errors", [])) + [old.get("error") or f"status {old.get('status')!r}"]
        except (OSError, ValueError):
            errors = ["unreadable status.json"]
        shutil.rmtree(run_dir)
    elif planned.state == "stale":
        old = read_json(run_dir / STATUS_FILE)
        target = output / STALE_DIR / f"{planned.run.run_id}.{old.get('code_version')}.{time.strftime('%Y%m%d-%H%M%S')}"
        target.parent.mkdir(parents=True, exist_ok=True)
        run_dir.rename(target)
    return errors


def _init_worker(devices) -> None:
    if devices is not None:  # one accelerator per worker process, inherited by the notebook's kernel
        os.environ["CUDA_VISIBLE_DEVICES"] = str(devices.get())


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` found and did."""

    planned: list[PlannedRun]  # every selected run with its state before this call
    executed: dict[str, dict] = field(default_factory=dict)  # run id -> status.json of the runs executed now
    index: Path | None = None  # the rebuilt index
    jobs: dict[str, str] = field(default_factory=dict)  # run id -> job id of the runs submitted now
    executor: str = "local"  # how the runs were executed: local, slurm or submitit-local

    def count(self, state: str) -> int:
        return sum(p.state == state for p in self.planned)

    @property
    def failed(self) -> list[str]:
        return [rid for rid, s in self.executed.items() if s["status"] != "done"]

    def summary(self) -> str:
        ran = len(self.executed)
        parts = [f"{len(self.planned)} runs selected", f"{self.count('done')} already done (skipped)"]
        if self.jobs:
            parts.append(f"submitted {len(self.jobs)} as {self.executor} jobs")
        if self.executed or not self.jobs:
            parts.append(f"ran {ran}: {ran - len(self.failed)} done, {len(self.failed)} failed")
        skipped_stale = sum(p.state == "stale" and p.run.run_id not in self.executed for p in self.planned)
        if skipped_stale:
            parts.append(f"{skipped_stale} stale (finished with other parameters or code; --rerun-stale reruns them)")
        for state in ("conflict", "running"):
            if self.count(state):
                parts.append(f"{self.count(state)} {state} (left alone)")
        return "; ".join(parts)


def run_pipeline(spec: PipelineSpec, workers: int = 1, shard=None, only_index: int | None = None,
                 rerun_stale: bool = False, devices: list[str] | None = None, progress: bool = True,
                 version: str | None = None, write_index_file: bool = True) -> PipelineResult:
    """Execute the missing, failed and interrupted runs of ``spec`` (of one shard, or one index).

    Parameters
    ----------
    spec : PipelineSpec
        From :func:`load_spec`.
    workers : int, default 1
        Runs executed at once, each in its own process (papermill starts one kernel per run). With
        more than one, the first run executes alone so that shared caches (world, pretrained models)
        are written once before the others start.
    shard : "i/n" or (i, n), optional
        Execute only the runs whose index ``% n == i`` (one machine of ``n``).
    only_index : int, optional
        Execute only the run at this index (a cluster array task: ``--only-index $SLURM_ARRAY_TASK_ID``).
    rerun_stale : bool, default False
        Rerun finished runs whose parameters or code changed; their old directory is moved to
        ``<output>/.stale/``. Otherwise they are reported and left alone.
    devices : list of str, optional
        Accelerator ids; worker ``k`` sees only one of them through ``CUDA_VISIBLE_DEVICES``
        (``workers`` defaults to their number and may not exceed it).
    progress : bool, default True
        A tqdm bar over the runs to execute.
    version : str, optional
        Code version to record and compare instead of :func:`code_version` (tests).
    write_index_file : bool, default True
        Rebuild ``<output>/index.csv`` at the end.
    """
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    devices = [str(d) for d in devices] if devices else None
    if devices and workers == 1:
        workers = len(devices)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if devices and workers > len(devices):
        raise ValueError(f"{workers} workers but {len(devices)} devices: give at most one worker per device")
    output = Path(spec.output)
    output.mkdir(parents=True, exist_ok=True)
    _write_text(output / SPEC_RECORD, json.dumps(spec.record(), indent=2) + "\n")
    planned = plan(spec, shard, only_index, version)
    result = PipelineResult(planned)
    todo = [p for p in planned if p.state in ("missing", "failed", "incomplete") or p.state == "stale" and rerun_stale]
    code = {"git_commit": git_commit(), "git_dirty": git_dirty()}
    jobs = [(p.run, output, p.code_version, code, spec.cell_timeout, _prepare(p, output), spec.in_process)
            for p in todo]

    bar = tqdm(total=len(jobs), desc=spec.name, unit="run", disable=not progress or not jobs)

    def finished(status: dict) -> None:
        result.executed[status["run_id"]] = status
        if status["status"] != "done":
            bar.write(f"failed: {status['run_id']}: {status.get('error', '')}")
        bar.update(1)
        bar.set_postfix(failed=len(result.failed))

    try:
        if workers == 1 or len(jobs) <= 1:
            saved = os.environ.get("CUDA_VISIBLE_DEVICES")
            if devices:
                os.environ["CUDA_VISIBLE_DEVICES"] = devices[0]
            try:
                for job in jobs:
                    finished(execute_run(*job))
            finally:
                if devices:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None) if saved is None else \
                        os.environ.__setitem__("CUDA_VISIBLE_DEVICES", saved)
        else:
            import multiprocessing

            context = multiprocessing.get_context("spawn")  # no fork of a process holding threads or CUDA
            queue = None
            if devices:
                queue = context.Queue()
                for device in devices[:workers]:
                    queue.put(device)
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                     initargs=(queue,)) as pool:
                finished(pool.submit(execute_run, *jobs[0]).result())  # fills shared caches once
                futures = [pool.submit(execute_run, *job) for job in jobs[1:]]
                for future in as_completed(futures):
                    finished(future.result())
    finally:
        bar.close()
        if write_index_file:
            result.index = write_index(output)
    return result


def _submitted_run(run: Run, output: str, version: str, code: dict, cell_timeout: int | None,
                   previous_errors: list, in_process: bool, cwd: str, executor: str) -> dict:
    """What one array task of :func:`submit_pipeline` executes: :func:`execute_run`, from the directory the
    runs were submitted from, recording the job."""
    os.chdir(cwd)  # relative notebook and output paths mean what they meant to the submitter
    job = {"executor": executor}
    try:
        environment = _import_submitit().JobEnvironment()
        job.update(job_id=str(environment.job_id), host=platform.node())
    except (ImportError, RuntimeError):
        pass
    return execute_run(run, output, version, code, cell_timeout, previous_errors, in_process, job=job)


def submit_pipeline(spec: PipelineSpec, executor: str = "slurm", cluster: dict | None = None, wait: bool = False,
                    shard=None, only_index: int | None = None, rerun_stale: bool = False,
                    folder: str | os.PathLike | None = None, progress: bool = True,
                    version: str | None = None) -> PipelineResult:
    """Submit the missing, failed and interrupted runs of ``spec`` as one job array through submitit.

    Each array task executes one run with :func:`execute_run`, so its directory holds what a local run
    leaves (``status.json`` then also names the job), plus ``job.json`` (job id, log files) written at
    submission. Until its job starts, a submitted run's status is ``queued``; :func:`plan` counts a queued
    or running run as ``running`` while its job is still pending or running, so submitting again
    resubmits only what is not done and not under way.

    Parameters
    ----------
    spec : PipelineSpec
        From :func:`load_spec`; its ``cluster`` settings give the resources of every task.
    executor : {"slurm", "submitit-local"}
        ``slurm``: a slurm job array (``sbatch`` must be available). ``submitit-local``: submitit's local
        executor, one subprocess per run on this machine (to try the cluster path without a cluster).
    cluster : dict, optional
        Overrides of the spec's ``cluster:`` block (same fields, validated the same way).
    wait : bool, default False
        Block until every job has ended, then rebuild the index; ``executed`` holds the runs' statuses.
    shard, only_index, rerun_stale, version
        As in :func:`run_pipeline`: which runs are selected, whether stale runs are redone.
    folder : path, optional
        submitit's folder (pickles and job logs), default ``<output>/submitit``.
    progress : bool, default True
        A tqdm bar over the jobs while waiting.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {sorted(EXECUTORS)}, got {executor!r}")
    submitit = _import_submitit()
    settings = spec.cluster
    if cluster:
        origin = f"{spec.origin} (with cluster overrides {sorted(cluster)})"
        settings = ClusterSettings.from_dict({**dataclasses.asdict(spec.cluster), **cluster}, origin)
    output = Path(spec.output)
    planned = plan(spec, shard, only_index, version)  # before anything is written
    result = PipelineResult(planned, executor=executor)
    todo = [p for p in planned if p.state in ("missing", "failed", "incomplete") or p.state == "stale" and rerun_stale]
    if todo:
        folder = Path(folder) if folder else output / SUBMITIT_DIR
        auto = submitit.AutoExecutor(folder=folder / "%j", cluster=EXECUTORS[executor])
        try:
            auto.update_parameters(**settings.submitit_parameters(spec.name))
        except (NameError, ValueError, AssertionError) as err:  # submitit's own checks of the parameters
            raise SpecError(f"{spec.origin}: cluster: submitit refuses the settings: {err}") from None
    output.mkdir(parents=True, exist_ok=True)
    _write_text(output / SPEC_RECORD, json.dumps(spec.record(), indent=2) + "\n")
    if not todo:
        if wait:
            result.index = write_index(output)
        return result

    code = {"git_commit": git_commit(), "git_dirty": git_dirty()}
    cwd = os.getcwd()
    arguments = []
    for p in todo:
        errors = _prepare(p, output)
        run = p.run
        write_json(output / run.run_id / STATUS_FILE, {
            "status": "queued", "runner": "in_process" if spec.in_process else "papermill", "run_id": run.run_id,
            "grid_index": run.index, "notebook": run.notebook.name, "notebook_path": str(run.notebook),
            "parameters": run.parameters, "grid": run.grid, "code_version": p.code_version, **code,
            "executor": executor, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "previous_errors": errors})
        arguments.append((run, str(output), p.code_version, code, spec.cell_timeout, errors, spec.in_process, cwd,
                          executor))
    try:
        jobs = auto.map_array(_submitted_run, *zip(*arguments))
    except Exception as err:
        for args in arguments:  # nothing was queued: say so, and let the next submission retry them
            status = read_json(output / args[0].run_id / STATUS_FILE)
            write_json(output / args[0].run_id / STATUS_FILE, {
                **status, "status": "failed", "error": f"submission failed: {type(err).__name__}: {err}"})
        raise
    for args, job in zip(arguments, jobs):
        run_id = args[0].run_id
        result.jobs[run_id] = str(job.job_id)
        write_json(output / run_id / JOB_FILE, {
            "executor": executor, "job_id": str(job.job_id), "host": platform.node(),
            "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stdout": str(job.paths.stdout),
            "stderr": str(job.paths.stderr), "submitit_folder": str(job.paths.folder)})
    if not wait:
        return result

    from tqdm.auto import tqdm

    with tqdm(total=len(jobs), desc=spec.name, unit="job", disable=not progress) as bar:
        for args, job in zip(arguments, jobs):
            run_id = args[0].run_id
            try:
                status = job.result()
            except Exception as err:  # noqa: BLE001 - the job died (time limit, cancelled, node failure)
                try:
                    status = read_json(output / run_id / STATUS_FILE)
                except (OSError, ValueError):
                    status = {}
                if status.get("status") not in ("done", "failed"):
                    status = {**status, "run_id": run_id, "status": "failed",
                              "error": f"job {job.job_id} ended without finishing the run: {type(err).__name__}: "
                                       f"{str(err).strip().splitlines()[-1] if str(err).strip() else ''}"}
            result.executed[run_id] = status
            if status.get("status") != "done":
                bar.write(f"failed: {run_id}: {status.get('error', '')}")
            bar.update(1)
    result.index = write_index(output)
    return result


# ----------------------------------------------------------------------------- index
def _write_text(path: Path, text: str) -> Path:
    """Atomic write with a temporary name unique to this process and thread (several writers may race)."""
    import threading

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{platform.node()}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def collect_runs(output: str | os.PathLike) -> list[dict]:
    """One record per run directory of ``output`` (those with a ``status.json``), ordered by grid index:
    ``{"run_id", …meta, "parameters": {…}, "metrics": {flattened metrics.json of a done run}}``."""
    records = []
    for status_file in Path(output).glob(f"*/{STATUS_FILE}"):
        run_dir = status_file.parent
        if run_dir.name.startswith("."):
            continue
        try:
            status = read_json(status_file)
        except ValueError as err:
            status = {"status": "unreadable", "error": f"{STATUS_FILE}: {err}"}
        metrics = {}
        if status.get("status") == "done":
            try:
                metrics = flatten(read_json(run_dir / METRICS_FILE))
            except (OSError, ValueError) as err:
                status = {**status, "status": "unreadable", "error": f"{METRICS_FILE}: {err}"}
        record = {key: status.get(key) for key in META_COLUMNS}
        record["run_id"] = run_dir.name
        record["parameters"] = status.get("parameters") or {}
        record["metrics"] = metrics
        records.append(record)
    key = (lambda r: (r["grid_index"] if isinstance(r["grid_index"], int) else math.inf, r["run_id"]))
    return sorted(records, key=key)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _csv_text(header: list[str], rows: list[dict]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(row.get(h)) for h in header])
    return buffer.getvalue()


def index_rows(records: list[dict]) -> tuple[list[str], list[dict]]:
    """Flat rows of :func:`collect_runs` records: meta columns, parameters, then ``metrics/<key>``."""
    params, metrics = {}, {}
    for record in records:
        params.update(dict.fromkeys(record["parameters"]))
        metrics.update(dict.fromkeys(record["metrics"]))
    header = list(META_COLUMNS) + list(params) + [f"metrics/{m}" for m in metrics]
    rows = [{**{k: r[k] for k in META_COLUMNS}, **r["parameters"],
             **{f"metrics/{k}": v for k, v in r["metrics"].items()}} for r in records]
    return header, rows


def write_index(output: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    """Rebuild the results index (``<output>/index.csv``) from the run directories, atomically: one row per
    run (meta columns, parameters, flattened metrics as ``metrics/<key>``)."""
    header, rows = index_rows(collect_runs(output))
    return _write_text(Path(path) if path else Path(output) / INDEX_FILE, _csv_text(header, rows))


# ----------------------------------------------------------------------------- report
def _sort_key(value):
    if isinstance(value, bool) or value is None:
        return (0, str(value))
    if isinstance(value, (int, float)):
        return (1, value)
    return (2, json.dumps(value, sort_keys=True))


def _norm(value) -> str:
    """A text key under which equal parameter values match (``0`` and ``0.0`` alike)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _label(names: list[str], key: tuple) -> str:
    return ", ".join(f"{n}={_format_value(v) if not isinstance(v, str) else v}" for n, v in zip(names, key)) or "all runs"


def summarize(records: list[dict], settings: ReportSettings = ReportSettings()) -> dict:
    """Grouped statistics over seeds and paired on/off comparisons of done ``records``.

    Groups are the combinations of every parameter that varies among the done runs except
    ``settings.seed`` and ``settings.sweep``; within a group, runs are split by the sweep value.
    Returns ``{"groups": [names], "metrics": [found], "missing_metrics": [...], "summary": rows,
    "paired": rows}``: a summary row holds the group's parameters, the sweep value, ``metric`` and
    :func:`workbench.analysis.seed_summary`'s mean/std/ci_low/ci_high/n; a paired row compares each
    sweep value with ``settings.off_value`` on the seeds both have (:func:`~workbench.analysis.paired_comparison`;
    NaN statistics below two pairs).
    """
    from .analysis import paired_comparison, seed_summary

    done = [r for r in records if r["status"] == "done"]
    for r in done:
        r.setdefault("parameters", {})
    names = {}
    for r in done:
        names.update(dict.fromkeys(r["parameters"]))
    if len({r["notebook"] for r in done}) > 1:
        names = {"notebook": None, **names}

    def value(r, name):
        return r["notebook"] if name == "notebook" and name not in r["parameters"] else r["parameters"].get(name)

    varying = [n for n in names if len({_norm(value(r, n)) for r in done}) > 1]
    groups = [n for n in varying if n not in (settings.seed, settings.sweep)]
    has_sweep = any(settings.sweep in r["parameters"] for r in done)
    available = {m for r in done for m in r["metrics"]}
    metrics = [m for m in settings.metrics if m in available]
    missing = [m for m in settings.metrics if m not in available]

    def cell_key(group, sweep_value):
        return tuple(map(_norm, group)), _norm(sweep_value)

    cells = {}  # (group key, sweep value) -> records
    for r in done:
        key = (tuple(value(r, n) for n in groups), value(r, settings.sweep) if has_sweep else None)
        cells.setdefault(cell_key(*key), (key, []))[1].append(r)
    ordered = sorted(cells.values(), key=lambda c: ([_sort_key(v) for v in c[0][0]], _sort_key(c[0][1])))

    summary, paired = [], []
    for (group, sweep_value), members in ordered:
        base = {**dict(zip(groups, group)), **({settings.sweep: sweep_value} if has_sweep else {})}
        for metric in metrics:
            values = [(value(r, settings.seed), r["metrics"][metric]) for r in members
                      if _finite(r["metrics"].get(metric))]
            if not values:
                continue
            stats = seed_summary([v for _, v in values], confidence=settings.confidence)
            summary.append({**base, "metric": metric, **stats,
                            "seeds": sorted((s for s, _ in values), key=_sort_key)})
        if not has_sweep or _norm(sweep_value) == _norm(settings.off_value):
            continue
        off = cells.get(cell_key(group, settings.off_value))
        if off is None:
            continue
        off_by_seed = {_norm(value(r, settings.seed)): r for r in off[1]}
        for metric in metrics:
            pairs = []
            for r in members:
                partner = off_by_seed.get(_norm(value(r, settings.seed)))
                if partner and _finite(r["metrics"].get(metric)) and _finite(partner["metrics"].get(metric)):
                    pairs.append((value(r, settings.seed), r["metrics"][metric], partner["metrics"][metric]))
            if not pairs:
                continue
            pairs.sort(key=lambda p: _sort_key(p[0]))
            on_values, off_values = [p[1] for p in pairs], [p[2] for p in pairs]
            if len(pairs) >= 2:
                comparison = paired_comparison(on_values, off_values, confidence=settings.confidence)
            else:
                comparison = {"mean_diff": on_values[0] - off_values[0], "ci_low": math.nan, "ci_high": math.nan,
                              "exceeds_noise": False, "p_value": math.nan, "n": 1}
            paired.append({**base, "off": settings.off_value, "metric": metric,
                           "mean_on": sum(on_values) / len(pairs), "mean_off": sum(off_values) / len(pairs),
                           **comparison, "seeds": [p[0] for p in pairs]})
    from .analysis import holm_adjust

    for metric in metrics:  # each metric's comparisons are one family: Holm's correction over all of them
        rows = [r for r in paired if r["metric"] == metric]
        counted = sum(1 for r in rows if _finite(r["p_value"]))
        for r, adjusted in zip(rows, holm_adjust([r["p_value"] for r in rows])):
            r.update(p_holm=float(adjusted), comparisons=counted,
                     holds_after_holm=bool(adjusted < 1 - settings.confidence))
    return {"groups": groups, "sweep": settings.sweep if has_sweep else None, "metrics": metrics,
            "missing_metrics": missing, "summary": summary, "paired": paired}


def report_figures(result: dict, settings: ReportSettings = ReportSettings()) -> list:
    """Plotly figures of :func:`summarize`'s result, per metric: the sweep curve (mean ± std over seeds),
    on vs off bars per group and the paired difference with its confidence interval."""
    import plotly.graph_objects as go

    figures = []
    groups, sweep = result["groups"], result["sweep"]
    pct = int(round(100 * settings.confidence))
    for metric in result["metrics"]:
        rows = [r for r in result["summary"] if r["metric"] == metric]
        by_group = {}
        for r in rows:
            by_group.setdefault(tuple(_norm(r[g]) for g in groups), []).append(r)
        sweep_values = {_norm(r[sweep]) for r in rows} if sweep else set()
        if sweep and len(sweep_values) > 1:
            fig = go.Figure()
            for members in by_group.values():
                members = sorted(members, key=lambda r: _sort_key(r[sweep]))
                fig.add_trace(go.Scatter(
                    x=[_format_value(r[sweep]) for r in members], y=[r["mean"] for r in members],
                    error_y=dict(type="data", array=[0 if math.isnan(r["std"]) else r["std"] for r in members]),
                    mode="lines+markers", name=_label(groups, tuple(members[0][g] for g in groups)),
                    customdata=[[r["n"], r["ci_low"], r["ci_high"]] for r in members],
                    hovertemplate=(f"{sweep}=%{{x}}<br>{metric} %{{y:.4f}}<br>n=%{{customdata[0]}}<br>"
                                   f"{pct}% CI [%{{customdata[1]:.4f}}, %{{customdata[2]:.4f}}]<extra></extra>")))
            fig.update_layout(title=f"{metric} against {sweep} (mean ± std over seeds)",
                              xaxis=dict(title=sweep, type="category"), yaxis_title=metric, template="plotly_white")
            figures.append(fig)
        paired = [r for r in result["paired"] if r["metric"] == metric]
        if not paired:
            continue
        on_values = {_norm(r[sweep]): r[sweep] for r in paired}
        on = settings.on_value if _norm(settings.on_value) in on_values else max(on_values.values(), key=_sort_key)
        chosen = [r for r in paired if _norm(r[sweep]) == _norm(on)]
        labels = [_label(groups, tuple(r[g] for g in groups)) for r in chosen]
        stats = {(tuple(_norm(r[g]) for g in groups), _norm(r[sweep])): r for r in rows}

        def std_of(r, sweep_value):
            s = stats.get((tuple(_norm(r[g]) for g in groups), _norm(sweep_value)))
            return 0 if s is None or math.isnan(s["std"]) else s["std"]

        fig = go.Figure([
            go.Bar(name=f"off ({sweep}={_format_value(settings.off_value)})", x=labels, y=[r["mean_off"] for r in chosen],
                   error_y=dict(type="data", array=[std_of(r, settings.off_value) for r in chosen])),
            go.Bar(name=f"on ({sweep}={_format_value(on)})", x=labels, y=[r["mean_on"] for r in chosen],
                   error_y=dict(type="data", array=[std_of(r, r[sweep]) for r in chosen]),
                   customdata=[[r["mean_diff"], r["ci_low"], r["ci_high"], r["n"]] for r in chosen],
                   hovertemplate=("%{x}<br>on %{y:.4f}<br>on − off %{customdata[0]:+.4f} "
                                  f"[{pct}% CI %{{customdata[1]:+.4f}}, %{{customdata[2]:+.4f}}], "
                                  "n=%{customdata[3]}<extra></extra>"))])
        fig.update_layout(barmode="group", title=f"{metric}: {sweep} on vs off (mean ± std over seeds)",
                          yaxis_title=metric, template="plotly_white")
        figures.append(fig)
        fig = go.Figure()
        by_group = {}
        for r in paired:
            by_group.setdefault(tuple(_norm(r[g]) for g in groups), []).append(r)
        for members in by_group.values():
            members = sorted(members, key=lambda r: _sort_key(r[sweep]))
            fig.add_trace(go.Scatter(
                x=[_format_value(r[sweep]) for r in members], y=[r["mean_diff"] for r in members],
                error_y=dict(type="data", symmetric=False,
                             array=[0 if math.isnan(r["ci_high"]) else r["ci_high"] - r["mean_diff"] for r in members],
                             arrayminus=[0 if math.isnan(r["ci_low"]) else r["mean_diff"] - r["ci_low"]
                                         for r in members]),
                mode="markers+lines", name=_label(groups, tuple(members[0][g] for g in groups))))
        fig.add_hline(y=0, line_dash="dot", line_color="grey")
        fig.update_layout(title=f"{metric}: paired difference on − off over shared seeds ({pct}% bootstrap CI)",
                          xaxis=dict(title=sweep, type="category"), yaxis_title=f"Δ {metric}", template="plotly_white")
        figures.append(fig)
    return figures


def _html_table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _num(value, signed: bool = False) -> str:
    if not _finite(value):
        return "–"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def build_report(output: str | os.PathLike, settings: ReportSettings | None = None,
                 report_dir: str | os.PathLike | None = None) -> dict:
    """Summarise the done runs of ``output`` into ``report_dir`` (default ``<output>/report``).

    Writes ``summary.csv`` (mean, std and bootstrap CI over seeds per group, sweep value and metric),
    ``paired.csv`` (each sweep value against ``settings.off_value`` on shared seeds), ``report.html``, a
    static page with plotly.js inlined (opens offline), and ``report.md`` (:func:`markdown_report`). ``settings`` default to the ``report:`` block of
    the spec recorded in ``<output>/pipeline.json``. Returns the paths and :func:`summarize`'s result.
    """
    import plotly.io as pio

    output = Path(output)
    if not output.is_dir():
        raise FileNotFoundError(f"pipeline output directory {output} not found")
    record = {}
    if (output / SPEC_RECORD).is_file():
        record = read_json(output / SPEC_RECORD)
    if settings is None:
        settings = ReportSettings.from_dict(record.get("report"), str(output / SPEC_RECORD))
    report_dir = Path(report_dir) if report_dir else output / "report"
    records = collect_runs(output)
    result = summarize(records, settings)
    groups = result["groups"] + ([result["sweep"]] if result["sweep"] else [])
    stats = ["mean", "std", "ci_low", "ci_high", "n", "seeds"]
    summary_csv = _write_text(report_dir / "summary.csv",
                              _csv_text(groups + ["metric"] + stats, result["summary"]))
    paired_cols = ["off", "metric", "n", "mean_on", "mean_off", "mean_diff", "ci_low", "ci_high", "p_value",
                   "exceeds_noise", "p_holm", "comparisons", "holds_after_holm", "seeds"]
    paired_csv = _write_text(report_dir / "paired.csv", _csv_text(groups + paired_cols, result["paired"]))

    counts = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    versions = sorted({str(r["code_version"]) for r in records if r["status"] == "done"})
    figures = report_figures(result, settings)
    pct = int(round(100 * settings.confidence))
    parts = [f"<h1>{html.escape(record.get('name', output.name))}: pipeline report</h1>",
             f"<p>{html.escape(record.get('description', ''))}</p>",
             f"<p>Output directory <code>{html.escape(str(output))}</code>; generated "
             f"{time.strftime('%Y-%m-%d %H:%M')}. Runs: "
             + html.escape(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none") + ".</p>",
             f"<p>Statistics over <code>{html.escape(settings.seed)}</code>: mean ± sample std, {pct}% "
             "percentile bootstrap CI of the mean; paired comparisons use only seeds present in both arms "
             "(bootstrap over seeds, paired t-test p-value, and that p-value Holm-adjusted over all of the "
             "report's comparisons of the metric).</p>"]
    if len(versions) > 1:
        parts.append(f"<p class='warn'>Done runs come from {len(versions)} code versions: "
                     f"{html.escape(', '.join(versions))}.</p>")
    if result["missing_metrics"]:
        parts.append(f"<p class='warn'>Metrics not found in any done run: "
                     f"{html.escape(', '.join(result['missing_metrics']))}.</p>")
    failed = [r for r in records if r["status"] != "done"]
    for i, fig in enumerate(figures):
        parts.append(pio.to_html(fig, full_html=False, include_plotlyjs=i == 0, default_width="100%",
                                 default_height="480px"))
    if result["paired"]:
        parts.append("<h2>Paired comparisons (on − off)</h2>")
        parts.append(_html_table(
            result["groups"] + [result["sweep"], "metric", "n", "on", "off", "on − off", f"{pct}% CI", "p", "beyond noise",
                                "p (Holm)", "holds after Holm"],
            [[r[g] for g in result["groups"]] + [r[result["sweep"]], r["metric"], r["n"], _num(r["mean_on"]),
              _num(r["mean_off"]), _num(r["mean_diff"], True), f"[{_num(r['ci_low'], True)}, {_num(r['ci_high'], True)}]",
              _num(r["p_value"]), "yes" if r["exceeds_noise"] else "no",
              f"{_num(r['p_holm'])} of {r['comparisons']}", "yes" if r["holds_after_holm"] else "no"]
             for r in result["paired"]]))
    if result["summary"]:
        parts.append("<h2>Summary over seeds</h2>")
        parts.append(_html_table(
            groups + ["metric", "n", "mean ± std", f"{pct}% CI"],
            [[r[g] for g in groups] + [r["metric"], r["n"], f"{_num(r['mean'])} ± {_num(r['std'])}",
                                       f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]"] for r in result["summary"]]))
    if failed:
        parts.append("<h2>Runs not done</h2>")
        parts.append(_html_table(["run", "status", "error"],
                                 [[r["run_id"], r["status"], (r["error"] or "")[:300]] for r in failed]))
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:0.9em;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:3px 8px;text-align:left}.warn{color:#a40}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(record.get('name', output.name))}"
            f" report</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    report_html = _write_text(report_dir / "report.html", page)
    report_md = _write_text(report_dir / "report.md", markdown_report(result, settings))
    return {"summary_csv": summary_csv, "paired_csv": paired_csv, "html": report_html, "markdown": report_md,
            "result": result, "counts": counts}


def markdown_report(result: dict, settings: ReportSettings = ReportSettings()) -> str:
    """One Markdown table per metric: a row per group, ``mean ± std`` over seeds per sweep value, and the
    paired difference ``on_value − off_value`` with its CI, the number of seed pairs n and the Holm-adjusted
    p-value over all the metric's comparisons (what README tables quote)."""
    groups, sweep = result["groups"], result["sweep"]
    pct = int(round(100 * settings.confidence))
    sections = []
    for metric in result["metrics"]:
        rows = [r for r in result["summary"] if r["metric"] == metric]
        values = sorted({_norm(r[sweep]) for r in rows}, key=lambda v: _sort_key(json.loads(v))) if sweep else []
        cells: dict[tuple, dict] = {}
        for r in rows:
            key = tuple(_norm(r[g]) for g in groups)
            entry = cells.setdefault(key, {"group": [r[g] for g in groups]})
            entry[_norm(r[sweep]) if sweep else None] = f"{_num(r['mean'])} ± {_num(r['std'])}"
        diffs = {tuple(_norm(r[g]) for g in groups): r for r in result["paired"]
                 if r["metric"] == metric and sweep and _norm(r[sweep]) == _norm(settings.on_value)}
        header = list(groups) + ([f"{sweep}={json.loads(v)}" for v in values] if sweep else ["mean ± std"])
        with_diff = bool(diffs)
        if with_diff:
            family = next(iter(diffs.values()))["comparisons"]
            header += [f"{settings.on_value} − {settings.off_value} [{pct}% CI]", "n",
                       f"p, Holm over {family}"]
        lines = [f"**{metric}** (mean ± std over {settings.seed})", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(groups) + "---:|" * (len(header) - len(groups))]
        for key in sorted(cells, key=lambda k: [_sort_key(json.loads(v)) for v in k]):
            entry = cells[key]
            row = [str(v) for v in entry["group"]] + [entry.get(v, "–") for v in (values or [None])]
            if with_diff:
                d = diffs.get(key)
                row += ([f"{_num(d['mean_diff'], True)} [{_num(d['ci_low'], True)}, {_num(d['ci_high'], True)}]",
                         str(d["n"]), _num(d["p_holm"])] if d else ["–", "–", "–"])
            lines.append("| " + " | ".join(row) + " |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"
