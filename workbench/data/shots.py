"""The protocol on a manifest: base/new class subsets, K-shot samples cached on disk, and which training
images a distillation setting (inductive or transductive) may use.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..protocol import base_new_split, few_shot_indices
from ..runs import write_json
from .manifest import Manifest, SETTINGS, logger


@dataclass(frozen=True, eq=False)
class ClassSubset:
    """A subset of a manifest's classes, relabelled ``0..n-1`` in the order of ``classes``."""

    name: str  # "base", "new" or "all"
    classes: np.ndarray  # original labels, sorted; position = new label
    classnames: tuple[str, ...]  # names in new-label order

    @property
    def mapping(self) -> dict[int, int]:
        """Original label -> new label."""
        return {int(c): i for i, c in enumerate(self.classes.tolist())}

    def relabel(self, labels) -> np.ndarray:
        """Original labels -> ``0..n-1``; every label must belong to the subset."""
        labels = np.asarray(labels, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.classes, labels), 0, len(self.classes) - 1)
        bad = self.classes[pos] != labels
        if bad.any():
            raise ValueError(f"label {int(labels[bad][0])} is not one of the {self.name} classes "
                             f"{self.classes.tolist()}")
        return pos.astype(np.int64)

    def original(self, labels) -> np.ndarray:
        """New labels ``0..n-1`` -> original labels."""
        return self.classes[np.asarray(labels, dtype=np.int64)]


def _subset(manifest: Manifest, name: str, classes) -> ClassSubset:
    classes = np.asarray(classes, dtype=np.int64)
    classes.setflags(write=False)
    return ClassSubset(name, classes, tuple(manifest.classnames[c] for c in classes.tolist()))


def all_classes(manifest: Manifest) -> ClassSubset:
    return _subset(manifest, "all", np.arange(manifest.num_classes))


def base_new_classes(manifest: Manifest) -> tuple[ClassSubset, ClassSubset]:
    """Base (first ``ceil(C/2)`` labels) and new classes, each relabelled from 0 (CoOp's protocol)."""
    base, new = base_new_split(manifest.num_classes)
    return _subset(manifest, "base", base), _subset(manifest, "new", new)


def indices_of_classes(manifest: Manifest, split: str, classes) -> np.ndarray:
    """Indices of the samples of ``split`` whose label is in ``classes`` (labels or a ClassSubset)."""
    classes = classes.classes if isinstance(classes, ClassSubset) else np.asarray(classes)
    return np.flatnonzero(np.isin(manifest.split(split).labels, classes)).astype(np.int64)


def _cache_file(cache_dir, manifest: Manifest, split: str, shots: int, seed: int) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", split)
    return Path(cache_dir) / f"{manifest.name}-{manifest.checksum[:16]}-{safe}-{shots}shot-seed{seed}.json"


def _read_cache(file: Path, manifest: Manifest, split: str, shots: int, seed: int, n: int):
    try:
        doc = json.loads(file.read_text())
        ok = (doc["splits_sha256"] == manifest.checksum and doc["split"] == split and doc["shots"] == shots
              and doc["seed"] == seed)
        idx = np.asarray(doc["indices"], dtype=np.int64)
        if ok and idx.ndim == 1 and (len(idx) == 0 or (idx.min() >= 0 and idx.max() < n)):
            return idx
        logger.warning("ignoring few-shot cache %s: it does not match manifest %s", file, manifest.name)
    except (OSError, ValueError, KeyError, TypeError) as err:
        logger.warning("ignoring unreadable few-shot cache %s: %s", file, err)
    return None


def few_shot(manifest: Manifest, shots, seed: int = 0, *, split: str = "train", classes=None,
             cache_dir=None) -> np.ndarray:
    """K images per class of ``split``, seeded, as sorted indices into that split.

    The draw covers all classes (per-class generators, :func:`workbench.protocol.few_shot_indices`)
    and is then restricted to ``classes``, so the base classes' shots are exactly those of the
    full K-shot set, as in CoOp.

    Parameters
    ----------
    shots : int or "all"
        K; the benchmark uses 1, 2, 4, 8, 16 (:data:`STANDARD_SHOTS`). "all" keeps every image.
    seed : int, default 0
        Non-negative seed.
    classes : ClassSubset or array of labels, optional
        Keep only these classes (e.g. the base classes).
    cache_dir : str or os.PathLike, optional
        Folder for ``<name>-<checksum16>-<split>-<K>shot-seed<seed>.json`` files: the first call
        writes the indices, later calls read them (a file that does not match is recomputed).

    Raises
    ------
    ValueError
        If K exceeds the size of the smallest class of the split (the message names the class).
    """
    labels = manifest.split(split).labels
    if isinstance(shots, str) and shots == "all":
        idx = np.arange(len(labels), dtype=np.int64)
    else:
        if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots <= 0:
            raise ValueError(f"shots must be a positive int or 'all', got {shots!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        shots, seed = int(shots), int(seed)
        counts = np.bincount(labels, minlength=manifest.num_classes)
        if counts.min() < shots:
            c = int(counts.argmin())
            raise ValueError(f"K={shots} shots exceeds the smallest class of split '{split}' in manifest "
                             f"'{manifest.name}': class {c} ({manifest.classnames[c]!r}) has {counts[c]} images; "
                             f"use K <= {counts.min()}")
        file = None if cache_dir is None else _cache_file(cache_dir, manifest, split, shots, seed)
        idx = _read_cache(file, manifest, split, shots, seed, len(labels)) if file and file.is_file() else None
        if idx is None:
            idx = few_shot_indices(labels, shots, seed)
            if file is not None:
                write_json(file, {"manifest": manifest.name, "splits_sha256": manifest.checksum, "split": split,
                                  "shots": shots, "seed": seed, "indices": idx.tolist()})
    if classes is not None:
        keep = classes.classes if isinstance(classes, ClassSubset) else np.asarray(classes)
        idx = idx[np.isin(labels[idx], keep)]
    return idx


def distillation_indices(manifest: Manifest, setting: str = "inductive", *, split: str = "train") -> np.ndarray:
    """Training images a distillation run may see, as indices into ``split``.

    "inductive": the base classes' images only (new classes stay unseen); "transductive": the
    images of all classes, to be used *without labels* (build the dataset with ``unlabeled=True``),
    as PromptKD's unlabeled-domain setting does.
    """
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    if setting == "transductive":
        return np.arange(len(manifest.split(split)), dtype=np.int64)
    base, _ = base_new_classes(manifest)
    return indices_of_classes(manifest, split, base)
