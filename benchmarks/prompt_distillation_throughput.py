"""Prompt-distillation throughput: images/s and peak GPU memory, cached vs live teacher (issue 8, item 7).

Usage (a GPU machine): .venv/bin/python benchmarks/prompt_distillation_throughput.py
       [--student ViT-B-16] [--teacher ViT-L-14] [--batch 64] [--images 512] [--epochs 1] [--repeats 3]
Plumbing check anywhere: ... --student embedded-vit-student --teacher embedded-vit-teacher --images 128

PromptKD-style distillation (visual prompts + projector on a frozen student, KD against the
teacher's image features over the class vectors, AME off and on) of random images at the student's
resolution. Architectures are built with random weights: throughput and memory do not depend on
them, and no download is needed. Training runs under the library's defaults: bf16 autocast and TF32
on CUDA. Settings, alternated and repeated (median reported):

* cached: the teacher's features are extracted once (timed: the teacher's own throughput) into the
  memory-mapped cache of :mod:`workbench.cache` and read per batch;
* live: the teacher encodes every batch (``teacher_mode="live"``).

Step time is the median interval between optimiser steps (``distill``'s setup excluded). Peak GPU memory is
``torch.cuda.max_memory_allocated`` over each setting's runs; on CPU it is not reported.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from workbench import models, recipes
from workbench.cache import cached_image_features
from workbench.device import select_device
from workbench.train import OptimConfig

import harness


def _image_size(model) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def run(args) -> dict:
    device = select_device(args.device)
    torch.manual_seed(0)
    teacher = models.load_model(args.teacher, device=device).model
    student = models.load_model(args.student, device=device).model
    size = _image_size(student)
    if _image_size(teacher) != size:
        raise ValueError(f"teacher {args.teacher} takes {_image_size(teacher)} px images, student {args.student} "
                         f"{size} px; choose a pair with one resolution")
    images = np.random.default_rng(0).integers(0, 256, (args.images, size, size, 3), dtype=np.uint8)
    width = int(teacher.visual.output_dim)
    vectors = F.normalize(torch.randn(args.classes, width), dim=-1)
    scale = float(teacher.logit_scale.detach().exp())

    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        features, _ = cached_image_features(teacher, images, cache_dir, batch_size=args.batch, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        extract_s = time.perf_counter() - start
        targets = {"cached": recipes.TeacherTargets(features, scale, model=teacher),
                   "live": recipes.TeacherTargets(None, scale, model=teacher)}

        def config(mode: str, ame_weight: float, epochs: int) -> recipes.DistillConfig:
            return recipes.DistillConfig(recipe="promptkd", teacher_mode=mode, ame_weight=ame_weight,
                                         optim=OptimConfig(epochs=epochs, batch_size=args.batch,
                                                           grad_diagnostics_every=0))  # timed: no diagnostics

        arms = [(mode, ame) for mode in ("cached", "live") for ame in (0.0, 50.0)]
        harness.distill_step_seconds(student, images[:3 * args.batch], harness.first_targets(targets["live"], 0),
                                     vectors, config("live", 50.0, 1), device)  # warm-up
        times = {arm: [] for arm in arms}
        peaks = {arm: 0 for arm in arms}
        for _ in range(args.repeats):
            for arm in arms:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                times[arm].append(harness.distill_step_seconds(student, images, targets[arm[0]], vectors,
                                                               config(*arm, args.epochs), device))
                if device.type == "cuda":
                    peaks[arm] = max(peaks[arm], torch.cuda.max_memory_allocated(device))
    rows = []
    for mode, ame in arms:
        step_s = statistics.median(times[(mode, ame)])
        rows.append({"teacher": mode, "ame_weight": ame, "step_s": step_s, "images_per_s": args.batch / step_s,
                     "peak_gib": peaks[(mode, ame)] / 2**30 if device.type == "cuda" else None})
    by = {(r["teacher"], r["ame_weight"]): r for r in rows}
    return {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "student": args.student, "teacher": args.teacher, "image_size": size, "batch": args.batch,
            "classes": args.classes, "repeats": args.repeats, "rows": rows,
            "teacher_extraction_images_per_s": args.images / extract_s,
            "ratio_cached_over_live": by[("cached", 0.0)]["images_per_s"] / by[("live", 0.0)]["images_per_s"],
            "ratio_ame_over_plain_step": by[("cached", 50.0)]["step_s"] / by[("cached", 0.0)]["step_s"],
            "load_average_1min": os.getloadavg()[0]}


def report(r: dict) -> str:
    lines = [f"{r['device_name']} ({r['device']}): student {r['student']} + visual prompts, teacher {r['teacher']}, "
             f"{r['image_size']} px, batch {r['batch']}, {r['classes']} classes, median of {r['repeats']}; "
             f"1-min load average at the end {r['load_average_1min']:.2f}", "",
             "| teacher | AME ω | ms/step | images/s | peak GPU GiB |", "|---|---:|---:|---:|---:|"]
    for row in r["rows"]:
        peak = "n/a" if row["peak_gib"] is None else f"{row['peak_gib']:.2f}"
        lines.append(f"| {row['teacher']} | {row['ame_weight']:g} | {1000 * row['step_s']:.1f} | "
                     f"{row['images_per_s']:,.1f} | {peak} |")
    lines += ["", f"teacher feature extraction (one-off, cached setting): {r['teacher_extraction_images_per_s']:,.1f} images/s",
              f"ratio cached / live teacher (images/s, AME off): {r['ratio_cached_over_live']:.2f}",
              f"ratio AME on / off (step time, cached teacher): {r['ratio_ame_over_plain_step']:.3f}"]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--student", default="ViT-B-16", help="student architecture (random weights)")
    parser.add_argument("--teacher", default="ViT-L-14", help="teacher architecture (random weights)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per measurement")
    parser.add_argument("--classes", type=int, default=50, help="class vectors (a dataset's base half)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    return harness.main(parse_args, run, report, argv)


if __name__ == "__main__":
    main()
