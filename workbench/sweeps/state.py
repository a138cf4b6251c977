"""What a run directory says about its run (done, failed, stale, running ...), the code version a run
is checked against, and the plan of the runs a call will execute.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


from ..runs import RunDir, read_json
from .spec import PACKAGE_DIR, PipelineSpec, Run, SLURM_ALIVE, _import_submitit


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
        return read_json(RunDir(run_dir).job)
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
        status = read_json(RunDir(run_dir).status)
    except FileNotFoundError:
        return "conflict", f"{run_dir} exists without {RunDir.FILES['status']}: not a pipeline run; move it away"
    except ValueError:
        return "incomplete", f"unreadable {RunDir.FILES['status']}"
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
            status = read_json(RunDir(output / run.run_id).status)
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
