"""Embedding extraction throughput (images/s), teacher and student, library path vs baselines (issue 8, item 4).

Usage: .venv/bin/python benchmarks/extraction_throughput.py [--images 2048] [--repeats 3]

Images are embedded-world images (``world.generate_split``, uint8 32x32 RGB, held in memory, as the
quickstart holds them). For each embedded model (random image tower: weights do not change the
speed) one run measures, interleaved repeat by repeat so that machine noise hits all alike:

* ``encode_images`` at the library's default batch size: the library's path for the embedded
  world (uint8 array -> one tensor, normalised and encoded in batches; no DataLoader);
* ``encode_images`` at each other size of ``--batch-sizes`` (CPU throughput depends strongly on it);
* ``make_loader`` with ``workers=0`` and batch 256, the settings ``evaluation.zero_shot_manifest`` uses
  for image files: per-image PIL -> preprocess in the main process, then the same encoder;
* ``make_loader`` with ``workers=1``: the single-worker loader the issue compares against;
* batch 1: ``encode_images(batch_size=1)`` on the first ``--batch-one-images`` images.

The loader rows read the in-memory images through PIL, not files, so they time the per-image
transform and collation but not decoding. Each figure is the median over ``--repeats``; ratios
are library default / row.
"""

from __future__ import annotations

import inspect
import os
import statistics
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from workbench import data, evaluation, models, world
from workbench.train import encode_images

import harness

LIBRARY_BATCH = inspect.signature(encode_images).parameters["batch_size"].default
LOADER_BATCH = inspect.signature(evaluation.zero_shot_manifest).parameters["batch_size"].default
LOADER_WORKERS = inspect.signature(evaluation.zero_shot_manifest).parameters["workers"].default


class InMemoryImages(Dataset):
    """uint8 NHWC images as ``(preprocess(PIL image), label, index)``, like ``data.ManifestDataset``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i]), i


@torch.no_grad()
def encode_with_loader(model, dataset, batch_size: int, workers: int, device) -> torch.Tensor:
    """The manifest path of ``zero_shot_manifest``: DataLoader batches -> ``encode_image``."""
    features = []
    for images, _, _ in data.make_loader(dataset, batch_size, device, workers=workers):
        features.append(model.encode_image(images.to(device), normalize=True).float().cpu())
    return torch.cat(features)


def throughputs(loaded, images, labels, args, device) -> dict[str, tuple[int, float]]:
    """Row name -> (images, median seconds) for one model."""
    dataset = InMemoryImages(images, labels, loaded.preprocess)
    one = images[:min(args.batch_one_images, len(images))]
    cases = {f"encode_images, batch {LIBRARY_BATCH} (library default)":
             (len(images), lambda: encode_images(loaded.model, images, device=device))}
    for size in args.batch_sizes:
        if size != LIBRARY_BATCH:
            cases[f"encode_images, batch {size}"] = (
                len(images), lambda size=size: encode_images(loaded.model, images, batch_size=size, device=device))
    cases[f"make_loader, workers={LOADER_WORKERS}, batch {LOADER_BATCH} (manifest path)"] = (
        len(images), lambda: encode_with_loader(loaded.model, dataset, LOADER_BATCH, LOADER_WORKERS, device))
    cases[f"make_loader, workers=1 (single worker), batch {LOADER_BATCH}"] = (
        len(images), lambda: encode_with_loader(loaded.model, dataset, LOADER_BATCH, 1, device))
    cases[f"batch 1 (first {len(one)} images)"] = (
        len(one), lambda: encode_images(loaded.model, one, batch_size=1, device=device))
    encode_images(loaded.model, images[:64], device=device)  # warm-up
    times = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (_, fn) in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: (n, statistics.median(times[name])) for name, (n, _) in cases.items()}


def run(args) -> dict:
    """Measure; return ``{model: {row: {"images", "seconds", "images_per_s", "ratio"}}}`` plus context."""
    device = torch.device(args.device)
    split = world.generate_split(world.load_world_spec(), "benchmark", args.images, seed=0)
    results = {"images": args.images, "repeats": args.repeats, "models": {}}
    for name in args.models:
        torch.manual_seed(0)
        loaded = models.load_model(name, device=device)
        rows = throughputs(loaded, split.images, split.labels, args, device)
        library = next(iter(rows.values()))
        library_rate = library[0] / library[1]
        results["models"][name] = {row: {"images": n, "seconds": s, "images_per_s": n / s,
                                         "ratio": library_rate / (n / s)} for row, (n, s) in rows.items()}
    results["load_average_1min"] = os.getloadavg()[0]
    return results


def report(results: dict) -> str:
    lines = [f"{results['images']} embedded-world images (uint8 32x32 RGB), median of {results['repeats']} "
             f"interleaved repeats, torch threads {torch.get_num_threads()}, 1-min load average at the end "
             f"{results['load_average_1min']:.2f}", "",
             "| model | path | images | images/s | library default / this |", "|---|---|---:|---:|---:|"]
    for model, rows in results["models"].items():
        for row, r in rows.items():
            lines.append(f"| {model} | {row} | {r['images']} | {r['images_per_s']:,.0f} | {r['ratio']:.2f} |")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--images", type=int, default=2048, help="images per measurement (default 2048)")
    parser.add_argument("--batch-one-images", type=int, default=256, help="images for the batch-1 row (default 256)")
    parser.add_argument("--batch-sizes", type=harness.int_list, default=[64],
                        help=f"other encode_images batch sizes to time, comma-separated (default 64; the "
                             f"library default {LIBRARY_BATCH} is always timed)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats, median reported (default 3)")
    parser.add_argument("--models", type=lambda t: t.split(","), default=["embedded-vit-teacher", "embedded-vit-student"],
                        help="embedded models, comma-separated (default teacher and student)")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    return harness.main(parse_args, run, report, argv)


if __name__ == "__main__":
    main()
