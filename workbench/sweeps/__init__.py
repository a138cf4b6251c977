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

from .notebooks import (  # noqa: F401
    IN_PROCESS_NOTEBOOK, IN_PROCESS_RUNNERS, KERNEL_START_TIMEOUT, REPO_ROOT,
    notebook_parameters, run_notebook,
)
from .spec import (  # noqa: F401
    ClusterSettings, EXECUTORS, INDEX_FILE, INJECTED, META_COLUMNS, NOTEBOOK_DIR, PACKAGE_DIR, PipelineSpec,
    ReportSettings, Run, SLURM_ALIVE, SPEC_FIELDS, SPEC_RECORD, STALE_DIR, STATES, SUBMITIT_DIR,
    SpecError, apply_overrides, load_spec, run_key,
)
from .state import (  # noqa: F401
    PlannedRun, code_version, git_dirty, parse_shard, plan, run_state, scheduler_states, select_runs,
)
from .execute import (  # noqa: F401
    PipelineResult, execute_run, run_pipeline, submit_pipeline,
)
from .index import (  # noqa: F401
    collect_runs, index_rows, write_index,
)
from .report import (  # noqa: F401
    build_report, markdown_report, report_figures, summarize,
)
