"""Command line: ``python -m workbench quickstart|train|analyze|pipeline``. Thin: parsing here, work in the library."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .runs import RunDir


def quickstart(args: argparse.Namespace) -> Path:
    """Execute notebooks/00_quickstart.ipynb into a fresh run directory and print its results."""
    from .evaluation import markdown_table
    from .sweeps import NOTEBOOK_DIR, run_notebook
    from .regime import regime_table

    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / time.strftime("quickstart-%Y%m%d-%H%M%S")
    parameters = {"smoke": args.smoke, "shots": args.shots, "ame_weight": args.ame_weight, "seed": args.seed,
                  "world_seed": args.world_seed, "device": args.device, "cache_dir": str(Path(args.cache_dir).resolve())}
    start = time.perf_counter()
    run_notebook(NOTEBOOK_DIR / "00_quickstart.ipynb", run_dir, parameters)
    metrics = RunDir(run_dir).read("metrics")
    print(markdown_table(metrics["models"], {"base_acc": "base", "new_acc": "new", "hm": "HM", "colour_acc": "colour",
                                             "shape_acc": "shape"}, scale=100, digits=1))
    domains = metrics["domains"]
    print()
    print(markdown_table(domains, {k: k.replace("_", " ") for k in next(iter(domains.values()))}, scale=100, digits=1))
    print()
    print(regime_table(metrics["regime"]))
    print(f"\nrun directory: {run_dir}  ({time.perf_counter() - start:.0f} s)")
    print(f"figure: {run_dir / metrics['figure']}")
    return run_dir


def docs(args: argparse.Namespace) -> Path:
    """Render an executed quickstart (full preset) for a code host into docs/notebooks/, running it if needed."""
    from .notebook_docs import render_for_code_host

    run_dir = Path(args.run_dir) if args.run_dir else None
    if run_dir is None:
        run_dir = Path("runs") / time.strftime("docs-quickstart-%Y%m%d-%H%M%S")
        quickstart(argparse.Namespace(smoke=False, shots=16, ame_weight=50.0, seed=0, world_seed=-1, device="auto",
                                      cache_dir=args.cache_dir, run_dir=str(run_dir)))
    executed = run_dir / "00_quickstart.ipynb"
    if not executed.is_file():
        raise SystemExit(f"error: {executed} is missing: --run-dir must name a quickstart run directory")
    if RunDir(run_dir).read("parameters")["parameters"].get("smoke"):
        raise SystemExit(f"error: {run_dir} is a smoke run; the docs show the full preset")
    out = Path(args.out_dir) / "00_quickstart.ipynb"
    counts = render_for_code_host(executed, out)
    print(f"wrote {out} ({counts['bytes'] / 1e6:.2f} MB, {counts['figures']} figure(s) as PNG, "
          f"{counts['widgets_dropped']} progress bar(s) dropped) from {run_dir}")
    if args.path:
        render_path(run_dir / "path", Path(args.out_dir), args.cache_dir)
    return out


# The teaching path (README, "Notebooks"), rendered after the quickstart; 05 needs a GPU and data, so it is left out.
PATH_NOTEBOOKS = ("00_concepts", "04_tutorial_entropy_minimization", "01_manifold_explorer",
                  "02_entropy_and_ambiguity", "03_ame_ablation")


def render_path(run_root: Path, out_dir: Path, cache_dir: str) -> list[Path]:
    """Run each notebook of the path on the full preset (unless run already) and render it for a code host."""
    from .notebook_docs import render_for_code_host
    from .sweeps import NOTEBOOK_DIR, run_notebook

    written = []
    for name in PATH_NOTEBOOKS:
        run_dir, executed = run_root / name, run_root / name / f"{name}.ipynb"
        parameters = {"cache_dir": str(Path(cache_dir).resolve())}
        if name == "02_entropy_and_ambiguity":  # reads 01's two runs instead of training them again
            parameters["explorer_dir"] = str((run_root / "01_manifold_explorer").resolve())
        if not executed.is_file():
            start = time.perf_counter()
            run_notebook(NOTEBOOK_DIR / f"{name}.ipynb", run_dir, parameters, progress=False)
            print(f"ran {name} in {time.perf_counter() - start:.0f} s")
        counts = render_for_code_host(executed, out_dir / f"{name}.ipynb")
        written.append(out_dir / f"{name}.ipynb")
        print(f"wrote {written[-1]} ({counts['bytes'] / 1e6:.2f} MB, {counts['figures']} figure(s) as PNG)")
    return written


def train(args: argparse.Namespace) -> Path:
    """Run one distillation experiment from a config file into a run directory."""
    from .experiment import experiment_config, run_experiment
    from .device import distributed_rank, init_distributed, select_device

    config = experiment_config(args.config, **_overrides(args.set))
    if args.resume and args.run_dir and not RunDir(args.run_dir).has("checkpoint"):
        finished = RunDir(args.run_dir).has("metrics")
        raise SystemExit(f"error: --resume: {args.run_dir} holds no checkpoint.pt"
                         + (" (the run finished; its results are in metrics.json)" if finished else
                            " (no epoch of a run there has finished); start it without --resume"))
    distributed = init_distributed(select_device(config.device))  # torchrun: join the process group
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / time.strftime(f"{Path(args.config).stem}-%Y%m%d-%H%M%S")
    if distributed and not args.run_dir:
        raise SystemExit("error: under torchrun give --run-dir, so that every process writes to the same place")
    metrics = run_experiment(config, run_dir, resume=args.resume, progress=True)
    if distributed_rank()[0] != 0:
        return run_dir
    print(result_line(metrics))
    print(f"run directory: {run_dir}")
    return run_dir


def result_line(metrics: dict) -> str:
    """One line of a run's headline numbers: base / new / HM, or source and target accuracy."""
    if "hm" in metrics:
        return f"base {100 * metrics['base_acc']:.1f}  new {100 * metrics['new_acc']:.1f}  HM {100 * metrics['hm']:.1f}"
    targets = "  ".join(f"{name} {100 * value:.1f}" for name, value in metrics.get("targets", {}).items())
    return f"source accuracy {100 * metrics['accuracy']:.1f}  targets: {targets}  mean {100 * metrics['target_mean']:.1f}"


def analyze(args: argparse.Namespace) -> dict:
    """Rebuild a run's per-sample table and metrics from its directory; optionally compare with another run."""
    from .analysis import analyze_run, compare_run_dirs

    table, metrics = analyze_run(args.run_dir)
    print(f"{len(next(iter(table.values())))} samples; base {100 * metrics['base_acc']:.1f}  "
          f"new {100 * metrics['new_acc']:.1f}  HM {100 * metrics['hm']:.1f}  ECE {metrics['calibration/ece']:.3f}")
    if "ambiguity/spearman" in metrics:
        print(f"ambiguity score vs ground truth: Spearman {metrics['ambiguity/spearman']:.3f}")
    if args.compare:
        comparison = compare_run_dirs(args.run_dir, args.compare)
        print(f"vs {args.compare}: {comparison['wrong_to_right']} wrong -> right, {comparison['right_to_wrong']} "
              f"right -> wrong, mean entropy change {comparison['mean_entropy_change']:+.3f} nats")
    return metrics


def _overrides(pairs: list[str]) -> dict:
    import yaml

    out = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--set expects name=value, got {pair!r}")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads 5e-4 as text; on the command line it is a number
            try:
                parsed = float(parsed) if parsed.strip().lower() not in ("nan", "inf", "-inf", "+inf") else parsed
            except ValueError:
                pass
        out[name.strip()] = parsed
    return out


def _load(args: argparse.Namespace):
    from .sweeps import SpecError, load_spec

    try:
        return load_spec(args.spec, overrides=_overrides(args.set), output=args.output or None)
    except (SpecError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None


def pipeline_run(args: argparse.Namespace) -> int:
    """Execute the missing, failed and interrupted runs of a spec; exit status 1 if one of them failed."""
    from .sweeps import run_pipeline, submit_pipeline

    spec = _load(args)
    if args.executor != "local":
        return _pipeline_submit(args, spec, submit_pipeline)
    if args.cluster or args.wait:
        raise SystemExit("error: --cluster and --wait go with --executor slurm or submitit-local")
    devices = [d for d in args.devices.split(",") if d] if args.devices else None
    try:
        result = run_pipeline(spec, workers=args.workers, shard=args.shard, only_index=args.only_index,
                              rerun_stale=args.rerun_stale, devices=devices, progress=not args.quiet)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    return _print_result(result, spec)


def _pipeline_submit(args: argparse.Namespace, spec, submit_pipeline) -> int:
    """``pipeline run --executor slurm|submitit-local``: submit the runs as a job array through submitit."""
    if args.workers != 1 or args.devices:
        raise SystemExit(f"error: --workers and --devices are for --executor local; with {args.executor} every "
                         "run is its own job (set its GPUs in the spec's cluster: block or with --cluster)")
    wait = args.wait or args.executor == "submitit-local"
    try:
        result = submit_pipeline(spec, executor=args.executor, cluster=_overrides(args.cluster), wait=wait,
                                 shard=args.shard, only_index=args.only_index, rerun_stale=args.rerun_stale,
                                 progress=not args.quiet)
    except (ValueError, ImportError, RuntimeError) as err:  # SpecError is a ValueError
        raise SystemExit(f"error: {err}") from None
    if wait:
        return _print_result(result, spec)
    for planned in result.planned:
        if planned.state in ("stale", "conflict", "running") and planned.run.run_id not in result.jobs:
            print(f"{planned.state}: {planned.run.run_id}: {planned.detail}")
    for run_id, job_id in result.jobs.items():
        print(f"job {job_id}: {run_id}")
    print(result.summary())
    if result.jobs:
        import shlex

        from .sweeps import SUBMITIT_DIR

        same = "".join(f" --set {shlex.quote(s)}" for s in args.set) + (
            f" --output {shlex.quote(args.output)}" if args.output else "")
        print(f"job logs: {spec.output / SUBMITIT_DIR}; each run directory's job.json names its job")
        print(f"check: python -m workbench pipeline plan {shlex.quote(args.spec)}{same}  (queued and running jobs "
              "show as running); run this command again to resubmit the runs that failed or were lost; "
              f"when all are done: python -m workbench pipeline index {shlex.quote(str(spec.output))}")
    return 0


def _print_result(result, spec) -> int:
    for planned in result.planned:
        if planned.state in ("stale", "conflict", "running") and planned.run.run_id not in result.executed:
            print(f"{planned.state}: {planned.run.run_id}: {planned.detail}")
    for run_id in result.failed:
        print(f"failed: {run_id}: {result.executed[run_id].get('error', '')}  "
              f"(see {spec.output / run_id / 'status.json'})")
    print(result.summary())
    print(f"index: {result.index}")
    return 1 if result.failed else 0


def pipeline_plan(args: argparse.Namespace) -> int:
    """Print every selected run of a spec with its index and state; runs nothing."""
    from .sweeps import plan

    spec = _load(args)
    try:
        planned = plan(spec, shard=args.shard, only_index=args.only_index)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    for p in planned:
        print(f"{p.run.index:5d}  {p.state:10s}  {p.run.run_id}" + (f"  ({p.detail})" if p.detail else ""))
    counts = {}
    for p in planned:
        counts[p.state] = counts.get(p.state, 0) + 1
    print(f"{len(planned)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f"; output {spec.output}")
    return 0


def pipeline_index(args: argparse.Namespace) -> int:
    """Rebuild <dir>/index.csv from the run directories."""
    from .sweeps import collect_runs, write_index

    if not Path(args.dir).is_dir():
        raise SystemExit(f"error: {args.dir} is not a directory")
    path = write_index(args.dir)
    counts = {}
    for record in collect_runs(args.dir):
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    print(f"{path}: {sum(counts.values())} runs (" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")")
    return 0


def pipeline_report(args: argparse.Namespace) -> int:
    """Write summary.csv, paired.csv and report.html for the runs of a pipeline output directory."""
    import dataclasses

    from .sweeps import ReportSettings, build_report
    from .runs import read_json

    directory = Path(args.dir)
    if not directory.is_dir():
        raise SystemExit(f"error: {directory} is not a directory")
    settings = None
    if args.metric:
        record = directory / "pipeline.json"
        base = ReportSettings.from_dict(read_json(record).get("report") if record.is_file() else None)
        settings = dataclasses.replace(base, metrics=tuple(args.metric))
    report = build_report(directory, settings, args.out or None)
    for row in report["result"]["paired"]:
        groups = ", ".join(f"{g}={row[g]}" for g in report["result"]["groups"])
        sweep = report["result"]["sweep"]
        print(f"{groups}  {sweep}={row[sweep]} vs {row['off']}  {row['metric']}: "
              f"{row['mean_diff']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}] n={row['n']}")
    print("runs: " + ", ".join(f"{n} {s}" for s, n in sorted(report["counts"].items())))
    for key in ("summary_csv", "paired_csv", "html"):
        print(f"{key.replace('_', '.')}: {report[key]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workbench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    qs = commands.add_parser("quickstart", help="run the quickstart pipeline on the embedded world")
    qs.add_argument("--smoke", action="store_true", help="shrink every stage (seconds instead of minutes)")
    qs.add_argument("--shots", type=int, default=16, help="labelled images per base class (default 16)")
    qs.add_argument("--ame-weight", type=float, default=50.0, help="AME weight omega (default 50)")
    qs.add_argument("--seed", type=int, default=0)
    qs.add_argument("--world-seed", type=int, default=-1, help="seed of the embedded world (default: the preset's)")
    qs.add_argument("--device", default="auto", help="auto, cpu or cuda")
    qs.add_argument("--cache-dir", default="runs/cache", help="world and pretrained models (reused)")
    qs.add_argument("--run-dir", default="", help="results directory (default runs/quickstart-<time>)")
    qs.set_defaults(func=quickstart)
    dc = commands.add_parser("docs", help="render the executed full quickstart (and the teaching path) into "
                                          "docs/notebooks/ for a code host")
    dc.add_argument("--run-dir", default="", help="a finished full quickstart run (default: run one now)")
    dc.add_argument("--cache-dir", default="runs/cache", help="world and pretrained models (reused)")
    dc.add_argument("--out-dir", default="docs/notebooks", help="where the rendered notebooks go")
    dc.add_argument("--no-path", dest="path", action="store_false",
                    help="render the quickstart only, not the path's notebooks (" + ", ".join(PATH_NOTEBOOKS) + ")")
    dc.set_defaults(func=docs)
    tr = commands.add_parser("train", help="one distillation run from a config file (see workbench.experiment); "
                                           "multi-GPU: torchrun --nproc-per-node N -m workbench train …")
    tr.add_argument("--config", required=True, help="YAML/JSON experiment config, e.g. configs/kd_ame.yaml")
    tr.add_argument("--run-dir", default="", help="results directory (default runs/<config>-<time>)")
    tr.add_argument("--resume", action="store_true", help="continue an interrupted run in --run-dir")
    tr.add_argument("--set", action="append", metavar="NAME=VALUE",
                    help="override one setting by its flat name (shots=4, ame_weight=50, epochs=5 …); repeatable")
    tr.set_defaults(func=train)
    an = commands.add_parser("analyze", help="per-sample table + metrics of a finished run (writes "
                                             "analysis_samples.csv, analysis.json); --compare another run on the same samples")
    an.add_argument("run_dir", help="a run directory (python -m workbench train, or a pipeline step)")
    an.add_argument("--compare", default="", help="second run directory: which samples flipped, how entropy moved")
    an.set_defaults(func=analyze)
    _add_pipeline(commands)
    return parser


PIPELINE_HELP = """Scale-out: the runs of a spec are independent and every run keeps its results in its own
directory, so processes executing disjoint runs may share one output directory. One machine, several GPUs:
--devices 0,1,2,3 (one worker per GPU, each sees one through CUDA_VISIBLE_DEVICES). Several
machines: --shard i/n on machine i (runs with index % n == i). A slurm cluster: --executor slurm submits
the runs that are not done as one job array through submitit (one run per task; GPUs, time, partition from
the spec's cluster: block or --cluster NAME=VALUE); run it again to resubmit what failed. Afterwards
`pipeline index DIR` and `pipeline report DIR` rebuild the table and the report from the run directories."""


def _add_pipeline(commands) -> None:
    pl = commands.add_parser("pipeline", help="parameter sweeps of notebooks: run, plan, index, report",
                             description="Sweeps of papermill notebook runs declared in a spec (pipelines/*.yaml).",
                             epilog=PIPELINE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = pl.add_subparsers(dest="pipeline_command", required=True)
    for name, func, text in (("run", pipeline_run, "execute the runs that are missing, failed or interrupted"),
                             ("plan", pipeline_plan, "list the runs with their index and state; run nothing")):
        p = sub.add_parser(name, help=text, epilog=PIPELINE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("spec", help="pipeline spec, e.g. pipelines/ame_ablation.yaml")
        which = p.add_mutually_exclusive_group()
        which.add_argument("--shard", default=None, help="i/n: only the runs whose index %% n == i (0 <= i < n)")
        which.add_argument("--only-index", type=int, default=None, help="only the run at this index (array jobs)")
        p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                       help="override a base parameter, or a grid parameter's values (YAML value; repeatable)")
        p.add_argument("--output", default="", help="output directory instead of the spec's")
        p.set_defaults(func=func)
        if name == "run":
            p.add_argument("--workers", type=int, default=1, help="runs executed at once (default 1)")
            p.add_argument("--devices", default="", help="comma-separated GPU ids, one worker each (CUDA_VISIBLE_DEVICES)")
            p.add_argument("--rerun-stale", action="store_true",
                           help="rerun finished runs whose parameters or code changed (old ones move to .stale/)")
            p.add_argument("--quiet", action="store_true", help="no progress bar")
            p.add_argument("--executor", choices=("local", "slurm", "submitit-local"), default="local",
                           help="local (default): execute here; slurm: submit a job array through submitit; "
                                "submitit-local: the same through submitit's local executor (subprocesses, waits)")
            p.add_argument("--cluster", action="append", default=[], metavar="NAME=VALUE",
                           help="override a field of the spec's cluster: block (gpus_per_node, timeout_min, "
                                "partition, cpus_per_task, mem_gb, array_parallelism; repeatable)")
            p.add_argument("--wait", action="store_true",
                           help="with --executor slurm: wait for the jobs to end, then print the summary")
    ix = sub.add_parser("index", help="rebuild DIR/index.csv (one row per run: parameters, metrics, status)")
    ix.add_argument("dir", help="pipeline output directory")
    ix.set_defaults(func=pipeline_index)
    rp = sub.add_parser("report", help="grouped statistics, paired on/off comparisons, CSV and offline HTML")
    rp.add_argument("dir", help="pipeline output directory")
    rp.add_argument("--metric", action="append", default=[], help="metric to summarise (repeatable; default: the spec's)")
    rp.add_argument("--out", default="", help="report directory (default DIR/report)")
    rp.set_defaults(func=pipeline_report)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = args.func(args)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
