"""Real-pair plumbing: image files -> ManifestImages -> distill, stock open_clip teacher and student (issue 14, item 7).

Usage: .venv/bin/python benchmarks/real_pair_plumbing.py [--teacher ViT-L-14] [--student ViT-B-16]
       [--steps 3] [--batch-size 8] [--workers 2] [--device auto] [--recipes logit_kd,promptkd]
GPU machine: ... --device cuda --batch-size 64 --steps 10
Smoke check (seconds): ... --smoke  (ViT-M-32 teacher -> ViT-S-32 student, 3 steps of 2 images, 1 worker)

The data path a real run takes, end to end: JPEG files written to a temporary image folder
(``<dir>/{train,test}/<class>/*.jpg``, 400x300 px, so every image is resized and centre-cropped) are
resolved as ``imagefolder:<dir>`` into a manifest, read by ``workbench.image_sources.ManifestImages``
through each model's own open_clip eval transform in DataLoader workers, and distilled with
``workbench.recipes.distill``; class vectors come from each model's own (random) text tower, the
student is scored against its own in logit_kd and against the teacher's in promptkd, as in
``workbench.task``. Both architectures are built with random weights (``models.load_model(name,
None)``): no download, and step time and memory do not depend on the weights. Training runs under
the library's defaults (bf16 autocast and TF32 on CUDA).

Arms, each one ``distill`` run of --steps optimiser steps over --steps x --batch-size images (one epoch),
AME weight 0 and 50 run alternately (median of --repeats):

* logit_kd, cached teacher: the whole student image tower trains;
* promptkd, cached teacher: visual prompts + projector train on the frozen student;
* promptkd, live teacher: the teacher encodes every batch (``teacher_mode="live"``).

The cached teacher's features are extracted once through the loader into the memory-mapped cache of
``workbench.cache.cached_image_features`` (timed: the teacher's own throughput). Step time is the median
interval between optimiser steps (taken by an optimiser step hook, as in ``harness.py``), so ``distill``'s
setup, the loader's start and the first step do not count; --steps must be at least 3. images/s =
batch / step time. Peak memory per arm: ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU the
process's maximum resident set (``resource.getrusage``, reset before each arm through
``/proc/self/clear_refs`` where Linux allows it, else the process's peak so far; forked DataLoader
workers share the process's pages and are not added). Ratios (AME on / off step time; cached / live
images/s) come from the same run.
"""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from workbench import models, recipes
from workbench.cache import cached_image_features
from workbench.image_sources import ManifestImages
from workbench.task import resolve_dataset
from workbench.device import select_device
from workbench.train import OptimConfig

import harness

AME_ON = 50.0  # the paper's omega
FILE_SIZE = (400, 300)  # width, height of the JPEG files: transforms resize and crop, as with real photos
TEMPLATES = ("a photo of a {}.", "a blurry photo of a {}.", "a close-up photo of the {}.")
SMOKE = {"teacher": "ViT-M-32", "student": "ViT-S-32", "steps": 3, "batch": 2, "workers": 1, "classes": 4}


def write_image_folder(root: Path, images: int, classes: int, seed: int = 0) -> Path:
    """``root/{train,test}/class_k/*.jpg``: ``images`` training files (classes in turn), one test file per class."""
    rng = np.random.default_rng(seed)
    width, height = FILE_SIZE
    for split, count in (("train", images), ("test", classes)):
        for i in range(count):
            label = i % classes
            folder = root / split / f"class_{label:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            hue = rng.integers(40, 216, 3)
            pixels = np.clip(hue + rng.normal(0, 30, (height, width, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def _reset_peak_rss() -> bool:
    """Reset this process's peak resident set (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _max_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # ru_maxrss is in KiB on Linux


def arms(recipe_names) -> list[tuple[str, str]]:
    """``(recipe, teacher mode)`` pairs measured: every recipe with the cached teacher, promptkd also live."""
    out = []
    for recipe in recipe_names:
        out.append((recipe, "cached"))
        if recipe == "promptkd":
            out.append((recipe, "live"))
    return out


def run(args) -> dict:
    device = select_device(args.device)
    torch.manual_seed(0)
    load_at_start = os.getloadavg()[0]
    started = time.perf_counter()
    teacher_loaded = models.load_model(args.teacher, None, device=device)
    student_loaded = models.load_model(args.student, None, device=device)
    teacher, student = teacher_loaded.model, student_loaded.model
    t_cfg, s_cfg = models.preprocess_cfg(teacher), models.preprocess_cfg(student)
    _, t_eval = models.image_transforms(teacher)
    _, s_eval = models.image_transforms(student)
    num_images = args.steps * args.batch
    names = [f"class {k}" for k in range(args.classes)]
    teacher_vectors = models.build_class_vectors(teacher, teacher_loaded.tokenizer, names, TEMPLATES, device=device)
    student_vectors = models.build_class_vectors(student, student_loaded.tokenizer, names, TEMPLATES, device=device)
    scale = float(teacher.logit_scale.detach().exp())
    cpu = device.type != "cuda"

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_image_folder(Path(tmp) / "plumbing", num_images, args.classes)
        manifest = resolve_dataset(f"imagefolder:{folder}")
        common = dict(workers=args.workers, seed=0)
        student_view = ManifestImages(manifest, "train", None, s_eval, preprocess_cfg=s_cfg, **common)
        teacher_view = ManifestImages(manifest, "train", None, t_eval, preprocess_cfg=t_cfg, **common)
        setup_s = time.perf_counter() - started

        start = time.perf_counter()
        features, _ = cached_image_features(teacher, teacher_view, Path(tmp) / "cache", batch_size=args.batch,
                                            device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        extract_s = time.perf_counter() - start
        targets = {"cached": recipes.TeacherTargets(features, scale, model=teacher, preprocess_cfg=t_cfg),
                   "live": recipes.TeacherTargets(None, scale, model=teacher, preprocess_cfg=t_cfg)}

        def config(recipe: str, mode: str, ame_weight: float) -> recipes.DistillConfig:
            return recipes.DistillConfig(recipe=recipe, teacher_mode=mode, ame_weight=ame_weight,
                                         optim=OptimConfig(epochs=1, batch_size=args.batch))

        measured = [(recipe, mode, ame) for recipe, mode in arms(args.recipes) for ame in (0.0, AME_ON)]
        times = {arm: [] for arm in measured}
        peaks = {arm: 0.0 for arm in measured}
        rss_reset = True
        for _ in range(args.repeats):
            for arm in measured:
                recipe, mode, ame = arm
                if cpu:
                    rss_reset = _reset_peak_rss() and rss_reset
                else:
                    torch.cuda.reset_peak_memory_stats(device)
                times[arm].append(harness.distill_step_seconds(student, student_view, targets[mode], teacher_vectors,
                                               config(recipe, mode, ame), device,
                                               student_class_vectors=student_vectors))
                peak = _max_rss_gib() if cpu else torch.cuda.max_memory_allocated(device) / 2**30
                peaks[arm] = max(peaks[arm], peak)

    rows = []
    for recipe, mode, ame in measured:
        step_s = statistics.median(times[(recipe, mode, ame)])
        rows.append({"recipe": recipe, "teacher_mode": mode, "ame_weight": ame, "step_s": step_s,
                     "images_per_s": args.batch / step_s, "peak_gib": peaks[(recipe, mode, ame)]})
    by = {(r["recipe"], r["teacher_mode"], r["ame_weight"]): r for r in rows}
    ame_ratios = {f"{recipe}/{mode}": by[(recipe, mode, AME_ON)]["step_s"] / by[(recipe, mode, 0.0)]["step_s"]
                  for recipe, mode in arms(args.recipes)}
    cached_over_live = {}
    if "promptkd" in args.recipes:
        for ame in (0.0, AME_ON):
            cached_over_live[f"promptkd, AME {ame:g}"] = (by[("promptkd", "cached", ame)]["images_per_s"]
                                                          / by[("promptkd", "live", ame)]["images_per_s"])
    return {"device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "teacher": args.teacher, "student": args.student,
            "teacher_size": tuple(t_cfg["size"]), "student_size": tuple(s_cfg["size"]),
            "teacher_width": int(teacher.visual.output_dim), "student_width": int(student.visual.output_dim),
            "steps": args.steps, "batch": args.batch, "images": num_images, "workers": args.workers,
            "classes": args.classes, "templates": len(TEMPLATES), "repeats": args.repeats, "rows": rows,
            "ame_ratios": ame_ratios, "cached_over_live": cached_over_live,
            "teacher_extraction_images_per_s": num_images / extract_s, "setup_s": setup_s,
            "memory": "GPU max_memory_allocated" if not cpu else
            ("max RSS per arm" if rss_reset else "max RSS of the process so far"),
            "torch_threads": torch.get_num_threads(), "wall_s": time.perf_counter() - started,
            "load_average_1min_start": load_at_start, "load_average_1min": os.getloadavg()[0]}


def report(r: dict) -> str:
    memory = "peak GPU GiB" if r["device"].startswith("cuda") else "peak RSS GiB"
    lines = [f"{r['device_name']} ({r['device']}): teacher {r['teacher']} ({r['teacher_size'][0]} px, width "
             f"{r['teacher_width']}) -> student {r['student']} ({r['student_size'][0]} px, width "
             f"{r['student_width']}), "
             f"random weights; {r['images']} JPEG files {FILE_SIZE[0]}x{FILE_SIZE[1]} through ManifestImages, "
             f"{r['workers']} loader workers; batch {r['batch']}, {r['steps']} steps per measurement, "
             f"{r['classes']} classes x {r['templates']} templates, median of {r['repeats']}; torch threads "
             f"{r['torch_threads']}; memory: {r['memory']}; wall {r['wall_s']:.0f} s; 1-min load average "
             f"{r['load_average_1min_start']:.2f} at the start, {r['load_average_1min']:.2f} at the end", "",
             f"| recipe | teacher | AME ω | ms/step | images/s | {memory} |", "|---|---|---:|---:|---:|---:|"]
    for row in r["rows"]:
        lines.append(f"| {row['recipe']} | {row['teacher_mode']} | {row['ame_weight']:g} | "
                     f"{1000 * row['step_s']:,.1f} | {row['images_per_s']:,.2f} | {row['peak_gib']:.2f} |")
    lines += ["", f"teacher feature extraction through the loader (cached arms, one-off): "
                  f"{r['teacher_extraction_images_per_s']:,.2f} images/s"]
    for name, ratio in r["ame_ratios"].items():
        lines.append(f"ratio AME on / off (step time), {name}: {ratio:.3f}")
    for name, ratio in r["cached_over_live"].items():
        lines.append(f"ratio cached / live teacher (images/s), {name}: {ratio:.2f}")
    return "\n".join(lines)


def _recipe_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in recipes.LABEL_FREE_RECIPES]
    if unknown or not names:
        import argparse
        raise argparse.ArgumentTypeError(f"expected comma-separated label-free recipes "
                                         f"({', '.join(recipes.LABEL_FREE_RECIPES)}), got {text!r}")
    return names


def parse_args(argv=None):
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--teacher", default="ViT-L-14", help="teacher open_clip architecture (random weights)")
    parser.add_argument("--student", default="ViT-B-16", help="student open_clip architecture (random weights)")
    parser.add_argument("--steps", type=int, default=3, help="optimiser steps per measurement (>= 3)")
    parser.add_argument("--batch-size", "--batch", dest="batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--recipes", type=_recipe_list, default=["logit_kd", "promptkd"],
                        help="comma-separated: logit_kd, promptkd, kdpl, feature_kd (promptkd also runs live)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--smoke", action="store_true",
                        help=f"tiny settings for a smoke test: {', '.join(f'{k} {v}' for k, v in SMOKE.items())}")
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    if args.steps < 3:
        parser.error("--steps must be at least 3 (step time is the median interval between optimiser steps)")
    return args


def main(argv=None) -> dict:
    return harness.main(parse_args, run, report, argv)


if __name__ == "__main__":
    main()
