"""AME overhead: distillation step time with AME / without, same recipe, batch and data.

Usage: .venv/bin/python benchmarks/ame_overhead.py [--model embedded-vit-student] [--batch 64] [--repeats 3]

Runs the two settings alternately (A, B, A, B, ...) so that machine noise hits both alike, and
prints the median seconds per step of each and their ratio. Goal (issue 8): <= 1.10 for the
embedded tiny models, <= 1.05 for a ViT-B/16 student at 224 px on a GPU.
"""

import argparse
import statistics
import time

import numpy as np
import torch

from workbench import models, recipes
from workbench.train import OptimConfig, select_device


def seconds_per_step(student, images, targets, vectors, ame_weight, batch, device, epochs=4):
    config = recipes.DistillConfig(ame_weight=ame_weight, optim=OptimConfig(epochs=epochs, batch_size=batch))
    start = time.perf_counter()
    history = recipes.distill(student, images, targets, vectors, config, device).history
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / len(history)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded-vit-student")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--classes", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = select_device(args.device)
    torch.manual_seed(0)
    loaded = models.load_model(args.model, device=device)
    size = models.load_model_config(args.model)["vision_cfg"]["image_size"] if args.model in models.list_embedded_models() else 224
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, size, size, 3), dtype=np.uint8)
    with torch.no_grad():
        dim = loaded.model.encode_image(torch.zeros(1, 3, size, size, device=device)).shape[1]
    vectors = torch.nn.functional.normalize(torch.randn(args.classes, dim), dim=-1)
    targets = recipes.TeacherTargets(torch.nn.functional.normalize(torch.randn(args.images, dim), dim=-1), 50.0)
    seconds_per_step(loaded.model, images, targets, vectors, 50.0, args.batch, device, epochs=1)  # warm-up
    off, on = [], []
    for _ in range(args.repeats):
        off.append(seconds_per_step(loaded.model, images, targets, vectors, 0.0, args.batch, device))
        on.append(seconds_per_step(loaded.model, images, targets, vectors, 50.0, args.batch, device))
    t_off, t_on = statistics.median(off), statistics.median(on)
    print(f"device {device}, model {args.model}, batch {args.batch}, {args.classes} classes, {args.repeats} repeats")
    print(f"KD        {1000 * t_off:8.2f} ms/step")
    print(f"KD + AME  {1000 * t_on:8.2f} ms/step")
    print(f"ratio AME/no-AME {t_on / t_off:.3f}")


if __name__ == "__main__":
    main()
