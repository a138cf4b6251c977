"""Command line: ``python -m workbench quickstart|train``. Thin: parsing here, work in the library."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def quickstart(args: argparse.Namespace) -> Path:
    """Execute notebooks/00_quickstart.ipynb into a fresh run directory and print its results."""
    from .evaluation import results_table
    from .pipeline import NOTEBOOK_DIR, run_notebook

    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / time.strftime("quickstart-%Y%m%d-%H%M%S")
    parameters = {"smoke": args.smoke, "shots": args.shots, "ame_weight": args.ame_weight, "seed": args.seed,
                  "device": args.device, "cache_dir": str(Path(args.cache_dir).resolve())}
    start = time.perf_counter()
    run_notebook(NOTEBOOK_DIR / "00_quickstart.ipynb", run_dir, parameters)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(results_table(metrics["results"]))
    print(f"\nrun directory: {run_dir}  ({time.perf_counter() - start:.0f} s)")
    print(f"figure: {run_dir / metrics['figure']}")
    return run_dir


def train(args: argparse.Namespace) -> Path:
    """Run one distillation experiment from a config file into a run directory."""
    from .experiment import load_experiment_config, run_experiment

    config = load_experiment_config(args.config)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / time.strftime(f"{Path(args.config).stem}-%Y%m%d-%H%M%S")
    metrics = run_experiment(config, run_dir, resume=args.resume, progress=True)
    print(f"base {100 * metrics['base_acc']:.1f}  new {100 * metrics['new_acc']:.1f}  HM {100 * metrics['hm']:.1f}")
    print(f"run directory: {run_dir}")
    return run_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workbench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    qs = commands.add_parser("quickstart", help="run the quickstart pipeline on the embedded world")
    qs.add_argument("--smoke", action="store_true", help="shrink every stage (seconds instead of minutes)")
    qs.add_argument("--shots", type=int, default=16, help="labelled images per base class (default 16)")
    qs.add_argument("--ame-weight", type=float, default=50.0, help="AME weight omega (default 50)")
    qs.add_argument("--seed", type=int, default=0)
    qs.add_argument("--device", default="auto", help="auto, cpu or cuda")
    qs.add_argument("--cache-dir", default="runs/cache", help="world and pretrained models (reused)")
    qs.add_argument("--run-dir", default="", help="results directory (default runs/quickstart-<time>)")
    qs.set_defaults(func=quickstart)
    tr = commands.add_parser("train", help="one distillation run from a config file (see workbench.experiment)")
    tr.add_argument("--config", required=True, help="YAML/JSON experiment config, e.g. configs/kd_ame.yaml")
    tr.add_argument("--run-dir", default="", help="results directory (default runs/<config>-<time>)")
    tr.add_argument("--resume", action="store_true", help="continue an interrupted run in --run-dir")
    tr.set_defaults(func=train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
