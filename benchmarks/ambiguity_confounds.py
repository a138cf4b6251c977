"""What holds the teacher's ambiguity AUROC down? The world's pretrained models, split by nuisance factor.

Usage: .venv/bin/python benchmarks/ambiguity_confounds.py [--seeds 0,1,2] [--cache-dir runs/cache] [--device auto]
       [--preset full]

For every world seed it loads (or, first, builds and pretrains: minutes) the preset's world, teacher and
student from ``--cache-dir``, scores the test split with each model's own ambiguity score
(``workbench.analysis.ambiguity_score``) and prints :func:`workbench.analysis.ambiguity_confounds`:

- AUROC (ambiguous vs clean) over all samples; with the occluded clean samples left out; within the
  unoccluded samples; counting only ambiguous samples whose mixing weight exceeds 0.1 and 0.2;
- the mean score of clean samples per value of each discrete factor (occluded, background, texture);
- Spearman, among clean samples, between the score and each continuous factor (noise, size, ...).

Mean ± std over seeds next to each seed's value.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import argument_parser, int_list  # noqa: E402
from workbench import analysis, zoo  # noqa: E402
from workbench.device import select_device  # noqa: E402
from workbench.evaluation import predict  # noqa: E402
from workbench.presets import QuickstartConfig  # noqa: E402

WEIGHTS = (0.1, 0.2)


def confounds(seed: int, cache_dir: str, device, preset_name: str = "full") -> dict[str, dict]:
    preset = dataclasses.replace(QuickstartConfig.load(preset_name), world_seed=seed)
    setup = zoo.load_embedded_setup(preset, cache_dir, device)
    test = setup.splits["test"]
    out = {}
    for name, model in (("teacher", setup.teacher), ("student zero-shot", setup.student)):
        _, logits = predict(model, test.images, setup.class_vectors, device=device)
        out[name] = analysis.ambiguity_confounds(analysis.ambiguity_score(logits), test.ambiguity, test.factors,
                                                 weight_thresholds=WEIGHTS)
    return out


def cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return " | ".join(f"{v:.3f}" for v in values) + f" | {mean:.3f} ± {std:.3f}"


def row_of(result: dict, factor: str, value) -> dict:
    return next(r for r in result["by_value"] if r["factor"] == factor and r["value"] == value)


def report(seeds: list[int], results: list[dict]) -> str:
    head = " | ".join(f"seed {s}" for s in seeds)
    lines = []
    for model in results[0]:
        per_seed = [r[model] for r in results]
        lines += [f"**{model}**", "", f"| ambiguity AUROC | {head} | mean ± std |", "|---|" + "---:|" * (len(seeds) + 1),
                  "| all samples | " + cell([r["auroc"] for r in per_seed]) + " |",
                  "| occluded clean samples left out | "
                  + cell([row_of(r, "occluded", True)["auroc_without_clean"] for r in per_seed]) + " |",
                  "| unoccluded samples only | " + cell([row_of(r, "occluded", False)["auroc_within"] for r in per_seed]) + " |"]
        for i, threshold in enumerate(WEIGHTS):
            lines.append(f"| ambiguous with mixing weight > {threshold} only | "
                         + cell([r["by_weight"][i]["auroc"] for r in per_seed]) + " |")
        lines += ["", f"| mean score of clean samples | {head} | mean ± std |", "|---|" + "---:|" * (len(seeds) + 1)]
        for entry in per_seed[0]["by_value"]:
            factor, value = entry["factor"], entry["value"]
            lines.append(f"| {factor} = {value} (n = {entry['n_clean']} on seed {seeds[0]}) | "
                         + cell([row_of(r, factor, value)["clean_score_mean"] for r in per_seed]) + " |")
        lines += ["", f"| Spearman(score, factor), clean samples | {head} | mean ± std |",
                  "|---|" + "---:|" * (len(seeds) + 1)]
        for factor in per_seed[0]["clean_spearman"]:
            lines.append(f"| {factor} | " + cell([r["clean_spearman"][factor] for r in per_seed]) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argument_parser(__doc__)
    parser.add_argument("--seeds", type=int_list, default=[0, 1, 2])
    parser.add_argument("--cache-dir", default="runs/cache")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--preset", default="full", help="quickstart variant: full or smoke (plumbing checks)")
    args = parser.parse_args(argv)
    seeds = args.seeds
    device = select_device(args.device)
    text = report(seeds, [confounds(seed, args.cache_dir, device, args.preset) for seed in seeds])
    print(text)
    return text


if __name__ == "__main__":
    main()
