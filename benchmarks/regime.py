"""Re-measure the embedded world's regime (issue 15) over several world seeds with the quickstart pipeline.

Usage: .venv/bin/python benchmarks/regime.py [--seeds 0,1,2] [--cache-dir runs/cache] [--out-dir runs/regime]

For every world seed it runs ``python -m workbench quickstart --world-seed S`` (the full preset: world,
teacher and student pretraining, inductive and transductive KD with AME off and on, test domains) into
``<out-dir>/seed<S>/`` and then prints, from each run's ``metrics.json``:

- the ``"regime"`` object per seed with mean ± std and whether the mean meets its target
  (``workbench.regime.TARGETS``);
- base / new / HM, colour and shape accuracy of every model, mean ± std over seeds;
- the domain table (accuracy over all classes per test domain), mean over seeds;
- wall time of each stage per seed (the first run of a seed pretrains; a cached rerun does not).

Runs already finished (``metrics.json`` present) are read, not rerun; ``--rerun`` runs them again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench.regime import TARGETS, describe_target, meets  # noqa: E402


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_seed(seed: int, args) -> tuple[dict, float]:
    run_dir = Path(args.out_dir) / f"seed{seed}"
    if (run_dir / "metrics.json").is_file() and not args.rerun:
        return json.loads((run_dir / "metrics.json").read_text()), float("nan")
    if run_dir.exists():  # --rerun: this script's own output, replaced
        shutil.rmtree(run_dir)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "workbench", "quickstart", "--world-seed", str(seed), "--cache-dir",
                    args.cache_dir, "--run-dir", str(run_dir)], cwd=ROOT, check=True)
    return json.loads((run_dir / "metrics.json").read_text()), time.perf_counter() - start


def report(seeds: list[int], metrics: list[dict], seconds: list[float]) -> str:
    lines = ["| regime | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std | target | mean meets it |",
             "|---|" + "---:|" * (len(seeds) + 1) + "---|---|"]
    for key, value in metrics[0]["regime"].items():
        if key == "met" or value is None:
            continue
        values = [m["regime"][key] for m in metrics]
        mean, std = mean_std(values)
        target = describe_target(key) if key in TARGETS else ""
        verdict = ("yes" if meets(key, mean) else "no") if key in TARGETS else ""
        lines.append(f"| {key} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {mean:.3f} ± {std:.3f} | "
                     f"{target} | {verdict} |")
    columns = {"base_acc": "base", "new_acc": "new", "hm": "HM", "acc_clean": "clean", "colour_acc": "colour",
               "shape_acc": "shape", "ambiguity_auroc": "AUROC", "ambiguity_spearman": "Spearman"}
    lines += ["", "| model (mean ± std over seeds, %) | " + " | ".join(columns.values()) + " |",
              "|---|" + "---:|" * len(columns)]
    for model in metrics[0]["models"]:
        cells = []
        for key in columns:
            mean, std = mean_std([m["models"][model].get(key) for m in metrics])
            cells.append(f"{100 * mean:.1f} ± {100 * std:.1f}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    domains = list(next(iter(metrics[0]["domains"].values())))
    lines += ["", "| model (mean over seeds, %) | " + " | ".join(d.replace("_", " ") for d in domains) + " |",
              "|---|" + "---:|" * len(domains)]
    for model in metrics[0]["domains"]:
        lines.append(f"| {model} | " + " | ".join(
            f"{100 * mean_std([m['domains'][model][d] for m in metrics])[0]:.1f}" for d in domains) + " |")
    stages = list(metrics[0]["timings"])
    lines += ["", "| wall time (s) | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---:|" * len(seeds)]
    for stage in stages:
        lines.append(f"| {stage} | " + " | ".join(f"{m['timings'].get(stage, float('nan')):.0f}" for m in metrics) + " |")
    lines.append("| whole quickstart (this process) | " + " | ".join(f"{s:.0f}" for s in seconds) + " |")
    return "\n".join(lines)


def main(argv=None) -> str:
    doc = __doc__.strip().splitlines()
    parser = argparse.ArgumentParser(description=doc[0], epilog="\n".join(doc[2:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cache-dir", default="runs/cache")
    parser.add_argument("--out-dir", default="runs/regime")
    parser.add_argument("--rerun", action="store_true", help="run seeds whose metrics.json exists again")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    results = [run_seed(seed, args) for seed in seeds]
    text = report(seeds, [m for m, _ in results], [s for _, s in results])
    print(text)
    return text


if __name__ == "__main__":
    main()
