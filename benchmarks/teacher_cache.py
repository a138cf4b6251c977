"""Teacher cache: distillation epoch time with cached teacher features vs the teacher run every step.

Usage: .venv/bin/python benchmarks/teacher_cache.py [--images 1920] [--epochs 2] [--repeats 3]

Embedded teacher (4-layer ViT) and student (2-layer ViT), logit KD over 15 classes, batch 64, 32×32
images. "cached": teacher features extracted once (timed separately) into a memory-mapped ``.npy``
by :func:`workbench.cache.cached_image_features`, then read per batch; "live": the teacher encodes
every batch (``teacher_mode="live"``). The two settings alternate and the median of ``--repeats`` is
reported; the ratio live / cached is measured in the same run. Also prints the cache file's size
and how fast it loads (memory map + one full read).
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from workbench import models, recipes
from workbench.cache import cached_image_features, load_features
from workbench.device import select_device
from workbench.train import OptimConfig

import harness


def epoch_seconds(student, images, targets, vectors, mode, epochs, device) -> float:
    config = recipes.DistillConfig(teacher_mode=mode, optim=OptimConfig(epochs=epochs, batch_size=64))
    start = time.perf_counter()
    recipes.distill(copy.deepcopy(student), images, targets, vectors, config, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / epochs


def parse_args(argv=None):
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--images", type=int, default=1920)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    return parser.parse_args(argv)


def run(args) -> dict:
    device = select_device(args.device)
    torch.manual_seed(0)
    teacher = models.create_embedded_model("embedded-vit-teacher")[0].to(device).eval()
    student = models.create_embedded_model("embedded-vit-student")[0].to(device)
    images = np.random.default_rng(0).integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    vectors = F.normalize(torch.randn(15, 384), dim=-1)

    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        features, path = cached_image_features(teacher, images, cache_dir, device=device)
        extract_s = time.perf_counter() - start
        start = time.perf_counter()
        reloaded, _ = cached_image_features(teacher, images, cache_dir, device=device)
        hit_s = time.perf_counter() - start
        start = time.perf_counter()
        full = np.asarray(load_features(path)).sum()
        load_s = time.perf_counter() - start
        size_mb = Path(path).stat().st_size / 2**20
        cached_targets = recipes.TeacherTargets(reloaded, float(teacher.logit_scale.detach().exp()), model=teacher)
        live_targets = recipes.TeacherTargets(None, float(teacher.logit_scale.detach().exp()), model=teacher)
        timings = {"cached": [], "live": []}
        for _ in range(args.repeats):
            timings["cached"].append(epoch_seconds(student, images, cached_targets, vectors, "cached", args.epochs, device))
            timings["live"].append(epoch_seconds(student, images, live_targets, vectors, "live", args.epochs, device))
    cached, live = statistics.median(timings["cached"]), statistics.median(timings["live"])
    return {"device": str(device), "images": args.images, "cached_epoch_s": cached, "live_epoch_s": live,
            "ratio_live_over_cached": live / cached, "extract_s": extract_s, "cache_hit_s": hit_s,
            "cache_mb": size_mb, "full_load_s": load_s, "checksum": float(full)}


def report(r: dict) -> str:
    return "\n".join([
        f"| setting | s / epoch ({r['images']} images, batch 64) |", "|---|---:|",
        f"| teacher live every step | {r['live_epoch_s']:.3f} |", f"| cached teacher features | {r['cached_epoch_s']:.3f} |",
        f"| **ratio live / cached** | **{r['ratio_live_over_cached']:.2f}** |",
        f"one-off extraction {r['extract_s']:.2f} s; cache hit (fingerprints + memory map) {r['cache_hit_s']:.3f} s; "
        f"file {r['cache_mb']:.2f} MiB, full read {r['full_load_s'] * 1000:.1f} ms"])


def main(argv=None) -> dict:
    return harness.main(parse_args, run, report, argv)


if __name__ == "__main__":
    main()
