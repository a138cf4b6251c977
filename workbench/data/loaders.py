"""Images of a manifest as a ``Dataset`` and a ``DataLoader`` (pinned memory on CUDA, persistent workers,
unreadable images skipped and counted when asked).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info

from .manifest import (
    ImageReadError, Manifest, ON_ERROR, PathEscapeError, _MAX_WORKER_SLOTS, _fail, _inside, expand_path, logger,
)
from .shots import ClassSubset, indices_of_classes


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB image -> float tensor (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)


class ManifestDataset(Dataset):
    """Images of one manifest split as ``(image, label, index)``.

    Parameters
    ----------
    manifest : Manifest
    split : str, default "test"
    transform : callable, optional
        PIL RGB image -> tensor (e.g. open_clip's preprocess); default: float tensor in [0, 1].
    indices : array of int, optional
        Indices into the split (e.g. from :func:`few_shot`); default all (of ``classes``).
    classes : ClassSubset, optional
        Return labels relabelled to this subset (base / new); indices default to its images.
    unlabeled : bool, default False
        Return label -1 (transductive training must not see labels).
    on_error : {"error", "skip"}, default "error"
        A missing or undecodable image raises :class:`ImageReadError` naming the file, or is
        skipped: the item becomes ``None`` (dropped by :func:`collate_skipping`), a warning names
        the file, and :attr:`skipped` counts it across loader workers. A path leaving the image
        root always raises :class:`PathEscapeError`.
    image_root : str or os.PathLike, optional
        Override the manifest's image root.

    ``index`` in each item is the position in the manifest split, whatever the subset.
    """

    def __init__(self, manifest: Manifest, split: str = "test", transform=None, *, indices=None,
                 classes: ClassSubset | None = None, unlabeled: bool = False, on_error: str = "error",
                 image_root=None):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        entries = manifest.split(split)
        root = manifest.root() if image_root is None else expand_path(image_root)
        if not root.is_dir():
            raise FileNotFoundError(f"image root {root} of manifest '{manifest.name}' ({manifest.origin}) is not "
                                    "a folder; set the data location (e.g. WORKBENCH_DATA) or pass image_root=...")
        if indices is None:
            indices = np.arange(len(entries)) if classes is None else indices_of_classes(manifest, split, classes)
        indices = np.asarray(indices, dtype=np.int64)
        if indices.ndim != 1 or (len(indices) and (indices.min() < 0 or indices.max() >= len(entries))):
            raise ValueError(f"indices must be 1-D and within 0..{len(entries) - 1} for split {split!r}")
        labels = entries.labels[indices]
        self.manifest, self.split, self.transform = manifest, split, transform
        self.indices = indices
        self.labels = classes.relabel(labels) if classes is not None else labels.copy()
        self.classnames = classes.classnames if classes is not None else manifest.classnames
        self.unlabeled, self.on_error = unlabeled, on_error
        self.root = os.path.realpath(root)
        self._paths = entries.paths
        self._skips = torch.zeros(_MAX_WORKER_SLOTS + 1, dtype=torch.int64).share_memory_()
        self.skipped_paths: list[str] = []  # files skipped in this process (workers keep their own)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def skipped(self) -> int:
        """How many unreadable images were skipped so far, over all loader workers."""
        return int(self._skips.sum())

    def _file(self, index: int) -> str:
        full = os.path.join(self.root, self._paths[index])
        real = os.path.realpath(full)
        if not _inside(real, self.root):
            _fail(self.manifest.origin, f"splits.{self.split}[{index}].path", f"{self._paths[index]!r} resolves "
                  f"to {real}, outside the image root {self.root} (a symlink pointing out of the root?)",
                  PathEscapeError)
        return full

    def __getitem__(self, i: int):
        index = int(self.indices[i])
        path = self._file(index)
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            if self.on_error == "error":
                raise ImageReadError(f"cannot read image {path} (manifest '{self.manifest.name}', split "
                                     f"'{self.split}', index {index}): {err}") from err
            info = get_worker_info()
            self._skips[0 if info is None else 1 + info.id % _MAX_WORKER_SLOTS] += 1
            self.skipped_paths.append(path)
            logger.warning("skipping unreadable image %s: %s", path, err)
            return None
        image = self.transform(image) if self.transform is not None else _to_tensor(image)
        return image, -1 if self.unlabeled else int(self.labels[i]), index


def collate_skipping(batch):
    """``default_collate`` without the ``None`` items of skipped images; ``None`` if all were skipped."""
    batch = [b for b in batch if b is not None]
    return default_collate(batch) if batch else None


def make_loader(dataset, batch_size: int, device="cpu", *, workers: int = 0, shuffle: bool = False,
                drop_last: bool = False, seed: int | None = None, collate_fn=None) -> DataLoader:
    """A ``DataLoader`` with pinned memory on CUDA and persistent workers when ``workers > 0``.

    Parameters
    ----------
    batch_size : int
        > 0.
    device : str or torch.device, default "cpu"
        Where batches will go; "cuda" turns on ``pin_memory``.
    workers : int, default 0
        Loader processes; > 0 keeps them alive across epochs (``persistent_workers``).
    shuffle : bool, default False
    seed : int, optional
        Seeds the shuffling (and the workers' base seed) for reproducible order.
    collate_fn : callable, optional
        Default: :func:`collate_skipping` for datasets with ``on_error="skip"`` (a batch whose
        images were all skipped comes out as ``None``), else ``default_collate``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a non-negative int, got {workers!r}")
    if collate_fn is None:
        collate_fn = collate_skipping if getattr(dataset, "on_error", "error") == "skip" else default_collate
    generator = None if seed is None else torch.Generator().manual_seed(int(seed))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=workers,
                      pin_memory=torch.device(device).type == "cuda", persistent_workers=workers > 0,
                      collate_fn=collate_fn, generator=generator)
