"""AME overhead: distillation step time with AME / without, same recipe, batch and data (issue 8, item 1).

Usage: .venv/bin/python benchmarks/ame_overhead.py [--model embedded-vit-student] [--recipe logit_kd]
       [--batch 64] [--images 512] [--epochs 4] [--repeats 3]
Standard student size: --model ViT-B-16 --recipe promptkd --teacher-width 768 --images 128 --epochs 1

The two settings (AME weight 0 and 50) run alternately (off, on, off, on, ...) so that machine noise
hits both alike; the median seconds per step of each and their ratio come from the same run. Every
measurement starts from the same student weights; step time is the median interval between
optimiser steps, so building the optimiser and AME's projections does not count. Open_clip architectures (ViT-B-16 ...) are built
with random weights at their own image size — step time does not depend on the weights. The teacher
is represented by random unit features of --teacher-width (default: the student's width, which
logit_kd needs; PromptKD's ViT-L/14 teacher has 768), so only the student's step is timed, as with
the teacher cache. Goals: <= 1.10 for the embedded tiny models, <= 1.05 for a ViT-B/16 student at
224 px, batch 64.
"""

from __future__ import annotations

import os
import statistics

import numpy as np
import torch
import torch.nn.functional as F

from workbench import models, recipes
from workbench.device import select_device
from workbench.train import OptimConfig

import harness

AME_ON = 50.0  # the paper's omega


def run(args) -> dict:
    device = select_device(args.device)
    torch.manual_seed(0)
    loaded = models.load_model(args.model, device=device)
    student = loaded.model
    size = student.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    width = int(student.visual.output_dim)
    teacher_width = args.teacher_width or width
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, size, size, 3), dtype=np.uint8)
    vectors = F.normalize(torch.randn(args.classes, teacher_width), dim=-1)
    targets = recipes.TeacherTargets(F.normalize(torch.randn(args.images, teacher_width), dim=-1), 100.0)

    def config(ame_weight: float, epochs: int) -> recipes.DistillConfig:
        return recipes.DistillConfig(recipe=args.recipe, ame_weight=ame_weight,
                                     optim=OptimConfig(epochs=epochs, batch_size=args.batch,
                                                       grad_diagnostics_every=0))  # timed: no diagnostics

    # Warm-up (allocator, kernels, lazy imports), then the two settings alternately.
    harness.distill_step_seconds(student, images[:3 * args.batch], harness.first_targets(targets, 3 * args.batch), vectors,
                                 config(AME_ON, 1), device)
    off, on = [], []
    for _ in range(args.repeats):
        off.append(harness.distill_step_seconds(student, images, targets, vectors, config(0.0, args.epochs), device))
        on.append(harness.distill_step_seconds(student, images, targets, vectors, config(AME_ON, args.epochs), device))
    t_off, t_on = statistics.median(off), statistics.median(on)
    return {"device": str(device), "model": args.model, "recipe": args.recipe, "image_size": size,
            "batch": args.batch, "classes": args.classes, "teacher_width": teacher_width,
            "steps_per_measurement": args.epochs * -(-args.images // args.batch), "repeats": args.repeats,
            "torch_threads": torch.get_num_threads(), "off_s": off, "on_s": on,
            "off_step_s": t_off, "on_step_s": t_on, "ratio": t_on / t_off,
            "load_average_1min": os.getloadavg()[0]}


def report(r: dict) -> str:
    return "\n".join([
        f"device {r['device']}, student {r['model']} at {r['image_size']} px, recipe {r['recipe']}, batch {r['batch']}, "
        f"{r['classes']} classes, teacher width {r['teacher_width']}, {r['steps_per_measurement']} steps per "
        f"measurement, median of {r['repeats']}, torch threads {r['torch_threads']}, "
        f"1-min load average at the end {r['load_average_1min']:.2f}", "",
        "| student | recipe | KD ms/step | KD + AME ms/step | ratio |", "|---|---|---:|---:|---:|",
        f"| {r['model']} | {r['recipe']} | {1000 * r['off_step_s']:.2f} | {1000 * r['on_step_s']:.2f} | "
        f"{r['ratio']:.3f} |"])


def parse_args(argv=None):
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--model", default="embedded-vit-student",
                        help="student: an embedded model or an open_clip architecture (random weights)")
    parser.add_argument("--recipe", default="logit_kd", choices=recipes.RECIPES)
    parser.add_argument("--teacher-width", type=int, default=0,
                        help="width of the teacher features and class vectors (default: the student's)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per measurement")
    parser.add_argument("--classes", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.recipe == "dho":
        parser.error("dho needs labelled images; time logit_kd, promptkd, kdpl or feature_kd")
    return args


def main(argv=None) -> dict:
    return harness.main(parse_args, run, report, argv)


if __name__ == "__main__":
    main()
