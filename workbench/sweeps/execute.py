"""Executing runs: one run into its directory, a sweep on local workers or shards, a submitit job array."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import time
import traceback as tb
from dataclasses import dataclass, field
from pathlib import Path

from ..runs import RunDir, environment_info, git_commit, read_json, write_json
from .index import _write_text, write_index
from .notebooks import _in_process_runner, run_notebook
from .spec import (
    ClusterSettings, EXECUTORS, PipelineSpec, Run, SPEC_RECORD, STALE_DIR, SUBMITIT_DIR, SpecError, _ANSI,
    _import_submitit,
)
from .state import PlannedRun, git_dirty, plan


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
    files = RunDir(run_dir)
    status = {"status": "running", "runner": "in_process" if in_process else "papermill", "run_id": run.run_id, "grid_index": run.index, "notebook": run.notebook.name,
              "notebook_path": str(run.notebook), "parameters": run.parameters, "grid": run.grid,
              "code_version": version, **(code or {}), "host": platform.node(), "pid": os.getpid(),
              "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "previous_errors": list(previous_errors or [])}
    if job:
        status["job"] = job
    files.write("status", status)
    start = time.perf_counter()
    try:
        if in_process:
            run_step = _in_process_runner(run.notebook)
            files.write("parameters", {"notebook": run.notebook.name, "in_process": True,
                                       "parameters": run.parameters})
            files.write("environment", environment_info())
            run_step(run_dir, overwrite_run_dir=True, **run.parameters)
        else:
            run_notebook(run.notebook, run_dir, run.parameters, overwrite=True, progress=False,
                         execution_timeout=cell_timeout)
        if not files.has("metrics"):
            raise RuntimeError(f"the notebook ran through but wrote no {RunDir.FILES['metrics']} into its run_dir")
        status["status"] = "done"
    except Exception as err:  # noqa: BLE001 - any failure of one run is recorded; the sweep goes on
        status["status"] = "failed"
        status["error"], status["traceback"] = _error_text(err)
    status["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    status["duration_s"] = round(time.perf_counter() - start, 2)
    _tag_tensorboard(run_dir, run, status)
    files.write("status", status)
    return status


def _tag_tensorboard(run_dir: Path, run: Run, status: dict) -> None:
    """Tag the run's TensorBoard logs with its grid point, so that TensorBoard on the sweep's output shows
    one line per run and the HParams table; a failure is recorded, never turned into a failed run."""
    from ..loggers import tag_hparams

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
            old = read_json(RunDir(run_dir).status)
            errors = list(old.get("previous_errors", [])) + [old.get("error") or f"status {old.get('status')!r}"]
        except (OSError, ValueError):
            errors = ["unreadable status.json"]
        shutil.rmtree(run_dir)
    elif planned.state == "stale":
        old = read_json(RunDir(run_dir).status)
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
        write_json(RunDir(output / run.run_id).status, {
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
            status = read_json(RunDir(output / args[0].run_id).status)
            write_json(RunDir(output / args[0].run_id).status, {
                **status, "status": "failed", "error": f"submission failed: {type(err).__name__}: {err}"})
        raise
    for args, job in zip(arguments, jobs):
        run_id = args[0].run_id
        result.jobs[run_id] = str(job.job_id)
        write_json(RunDir(output / run_id).job, {
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
                    status = read_json(RunDir(output / run_id).status)
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
