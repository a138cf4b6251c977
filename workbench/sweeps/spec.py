"""Pipeline specs: the YAML schema, its validation, the grid of runs, report and cluster settings."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import check_names
from .notebooks import IN_PROCESS_NOTEBOOK, IN_PROCESS_RUNNERS, REPO_ROOT, notebook_parameters


NOTEBOOK_DIR = REPO_ROOT / "notebooks"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the workbench package: its sources make the code version

SPEC_RECORD = "pipeline.json"  # the spec of the last `run`, kept in the output directory for `report`
INDEX_FILE = "index.csv"
STALE_DIR = ".stale"  # finished runs replaced by --rerun-stale are moved here
INJECTED = ("run_dir", "overwrite_run_dir")  # parameters run_notebook sets itself
META_COLUMNS = ("run_id", "grid_index", "notebook", "status", "code_version", "git_commit", "git_dirty",
                "host", "started", "duration_s", "error")
SPEC_FIELDS = ("name", "description", "notebook", "notebooks", "output", "parameters", "grid", "exclude",
               "cell_timeout", "report", "in_process", "cluster")
STATES = ("missing", "done", "failed", "incomplete", "running", "stale", "conflict")
SUBMITIT_DIR = "submitit"  # submitit's pickles and job logs, under the output directory
EXECUTORS = {"slurm": "slurm", "submitit-local": "local"}  # submit_pipeline's executors -> submitit cluster names
# Slurm job states in which a job may still execute its run (anything else: it has ended).
SLURM_ALIVE = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
               "RESIZING", "SUSPENDED", "RESV_DEL_HOLD", "SIGNALING", "STAGE_OUT")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


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


def _settings_block(cls, data, origin: str, block: str, hint: str = "") -> dict:
    """A spec's ``block:`` mapping, its keys checked against the fields of dataclass ``cls``."""
    if not isinstance(data, dict):
        _fail(origin, block, f"expected a mapping, got {type(data).__name__}")
    check_names(data, [f.name for f in dataclasses.fields(cls)], origin, f"{block}.", SpecError, "field", hint=hint)
    return data


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
        if isinstance(data, dict) and any(isinstance(k, bool) for k in data):
            _fail(origin, "report", "a key reads as true/false (YAML 1.1 turns on/off/yes/no into booleans); "
                                    "the fields are off_value and on_value")
        data = dict(_settings_block(cls, data, origin, "report"))
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
        data = _settings_block(cls, data, origin, "cluster", hint="(other slurm parameters go under cluster.extra)")
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
        check_names(data, SPEC_FIELDS, origin, error=SpecError, what="field")
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
