"""Tiny stand-ins for the benchmark datasets, in the very layouts their build specs read.

``write_stand_in("caltech101", root)`` writes a few small JPEG images per class and the files the spec
of ``data_manifests/benchmarks/caltech101.yaml`` expects (CoOp's split JSON, ImageNet's class folders
and ``classnames.txt``, FGVC-Aircraft's variant lists …) under ``root`` as if it were
``$WORKBENCH_DATA``. The real builders then read them exactly as they read the real datasets, so a
smoke run of a benchmark sweep, of notebook 05 or of a user's cluster set-up exercises the whole
dataset → manifest → training → report path in seconds, on a CPU, offline. The images are coloured
noise (one hue per class); nothing learned on them means anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

IMAGENET_FAMILY = ("imagenet", "imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")
SUBSET_200 = ("imagenet_a", "imagenet_r")  # these cover only part of ImageNet's classes


def _image(rng: np.random.Generator, label: int, classes: int, size: int) -> Image.Image:
    hue = np.array([np.cos(2 * np.pi * label / classes), np.cos(2 * np.pi * (label / classes + 1 / 3)),
                    np.cos(2 * np.pi * (label / classes + 2 / 3))])
    pixels = 128 + 90 * hue[None, None, :] + rng.normal(0, 25, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _root(spec: dict, data_root: Path) -> Path:
    root = spec["root"].replace("${WORKBENCH_DATA}", str(data_root)).replace("$WORKBENCH_DATA", str(data_root))
    if "$" in root:
        raise ValueError(f"stand-in for {spec['name']!r}: its root {spec['root']!r} uses a variable other than "
                         "WORKBENCH_DATA")
    return Path(root)


def _imagenet_names(data_root: Path, classes: int) -> list[tuple[str, str]]:
    """``(wnid, name)`` of the stand-in ImageNet classes; written once to ``imagenet/classnames.txt``."""
    file = data_root / "imagenet" / "classnames.txt"
    if file.is_file():
        return [tuple(line.split(" ", 1)) for line in file.read_text().splitlines() if line.strip()]
    pairs = [(f"n{9000000 + i:08d}", f"stand-in class {i}") for i in range(classes)]
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("".join(f"{wnid} {name}\n" for wnid, name in pairs))
    return pairs


def write_stand_in(spec_name: str, data_root: str | os.PathLike, *, classes: int = 6, train_per_class: int = 3,
                   test_per_class: int = 2, size: int = 32, seed: int = 0) -> Path:
    """Write a stand-in for benchmark ``spec_name`` under ``data_root``; returns the dataset's folder.

    ``classes`` is used where the spec does not fix the class count (datasets whose spec names
    ``classnames`` from ``workbench/datasets/classnames.json`` get all of those classes). ImageNet's
    variants share the stand-in ImageNet's ``classnames.txt``; A and R keep half of its classes, as
    the real ones keep 200 of 1,000.
    """
    from .data import class_names, load_dataset_spec

    spec = load_dataset_spec(spec_name)
    data_root = Path(data_root)
    root = _root(spec, data_root)
    rng = np.random.default_rng(seed)
    args = spec.get("args") or {}
    builder = spec["builder"]
    counts = {"train": train_per_class, "val": 1, "test": test_per_class}

    def save(path: Path, label: int, total: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _image(rng, label, total, size).save(path, quality=90)

    if builder == "coop_split":
        names = class_names(spec["classnames"]) if "classnames" in spec else [f"class {i}" for i in range(classes)]
        image_dir = root / str(args.get("image_dir") or ".")
        doc = {split: [] for split in counts}
        for label, name in enumerate(names):
            folder = name.replace(" ", "_").replace("/", "_")
            for split, count in counts.items():
                for k in range(count):
                    relative = f"{folder}/{split}_{k}.jpg"
                    save(image_dir / relative, label, len(names))
                    doc[split].append([relative, label, name.replace(" ", "_")])
        (root / args["split_file"]).write_text(json.dumps(doc))
    elif builder == "image_folder":
        if spec_name not in IMAGENET_FAMILY:
            raise ValueError(f"no stand-in layout for image_folder dataset {spec_name!r}")
        pairs = _imagenet_names(data_root, classes)
        if spec_name in SUBSET_200:
            pairs = pairs[: max(1, len(pairs) // 2)]
        for split, sub in (args.get("splits") or {}).items():
            for label, (wnid, _) in enumerate(pairs):
                folder = str(label) if args.get("folder_labels") == "int" else wnid
                for k in range(counts.get(split, test_per_class)):
                    save(root / str(args.get("image_dir") or ".") / str(sub) / folder / f"{k}.jpg", label, len(pairs))
    elif builder == "fgvc_aircraft":
        names = [f"variant-{i}" for i in range(classes)]
        root.mkdir(parents=True, exist_ok=True)
        (root / "variants.txt").write_text("".join(f"{n}\n" for n in names))
        for split, count in counts.items():
            lines = []
            for label, name in enumerate(names):
                for k in range(count):
                    image_id = f"{label:03d}{split[:2]}{k}"
                    save(root / "images" / f"{image_id}.jpg", label, len(names))
                    lines.append(f"{image_id} {name}\n")
            (root / f"images_variant_{split}.txt").write_text("".join(lines))
    else:
        raise ValueError(f"no stand-in layout for builder {builder!r} of {spec_name!r}")
    return root
