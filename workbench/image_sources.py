"""Where a run's pixels come from: in-memory arrays or a dataset manifest's image files.

:func:`workbench.train.fit` decides which samples make up each batch; an image source turns those
indices into model-ready pixels on the device. Two sources share one small contract
(``len``, ``fingerprint()``, ``batches(index_batches, device, epoch)``):

:class:`ArrayImages`
    uint8 ``(N, H, W, 3)`` arrays held in memory (the embedded world). They are copied to the device
    once and scaled per batch, which is as fast as pixels can arrive.
:class:`ManifestImages`
    The files of one manifest split (see :mod:`workbench.data`), decoded and transformed by
    ``DataLoader`` workers with a model's own open_clip transform (eval, or train augmentation),
    pinned memory on CUDA. Each epoch decodes every image it uses exactly once; nothing is re-read
    within a step. Augmentation is seeded by ``(seed, epoch, sample)``, so a run is reproducible
    whatever the number of workers or processes and resumes exactly after an interruption.

:class:`ViewAdapter` hands a live teacher the student's (possibly augmented) view at the teacher's
own resolution and normalisation, so both models see the same crop, as PromptKD's teacher does.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

# The embedded world's images are stored as uint8 RGB; its models see them scaled to [-1, 1].
IMAGE_MEAN = 0.5
IMAGE_STD = 0.5


def array_fingerprint(array) -> str:
    """Short SHA-256 of an array's shape, dtype and bytes."""
    array = np.ascontiguousarray(np.asarray(array))
    digest = hashlib.sha256(f"{array.shape}{array.dtype}".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()[:16]



def images_to_device(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 NHWC images → uint8 NCHW tensor on ``device`` (pinned first on CUDA for async copies)."""
    tensor = torch.as_tensor(images).permute(0, 3, 1, 2).contiguous()
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def normalize_images(batch: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW → float NCHW scaled to the embedded models' input range."""
    return (batch.float() / 255.0 - IMAGE_MEAN) / IMAGE_STD


def in_order(count: int, batch_size: int) -> list[torch.Tensor]:
    """Index batches ``0..count-1`` in order (for encoding a whole source)."""
    return [torch.arange(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


class ArrayImages:
    """uint8 ``(N, H, W, 3)`` images in memory, scaled to ``[-1, 1]`` per batch (the embedded world)."""

    augmented = False

    def __init__(self, images: np.ndarray | torch.Tensor):
        if not isinstance(images, (np.ndarray, torch.Tensor)) or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"ArrayImages needs uint8 images of shape (N, H, W, 3), got "
                             f"{getattr(images, 'shape', type(images).__name__)}")
        self.images = images
        self._stored: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.images)

    def fingerprint(self) -> str:
        return array_fingerprint(self.images)

    def subset(self, indices) -> "ArrayImages":
        return ArrayImages(self.images[np.asarray(indices)])

    def preprocess_cfg(self) -> dict:
        size = tuple(self.images.shape[1:3])
        return {"size": size, "mean": (IMAGE_MEAN,) * 3, "std": (IMAGE_STD,) * 3}

    def batches(self, index_batches: Sequence[torch.Tensor], device: torch.device,
                epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(indices, pixels)`` per batch; indices stay where they were given (on ``device`` in training)."""
        key = str(device)
        if key not in self._stored:  # one host-to-device copy for the whole run
            self._stored = {key: images_to_device(self.images, device)}
        stored = self._stored[key]
        for indices in index_batches:
            yield indices, normalize_images(stored[indices.to(stored.device)])

    def thumbnails(self):
        """The images themselves (row ``i`` is sample ``i``), for galleries and the explorer."""
        return self.images



class AugmentedArrayImages(ArrayImages):
    """In-memory images under PromptKD's train augmentation (its config: ``random_resized_crop``, ``random_flip``).

    Each image of a batch gets a random crop of 8–100 % of its area, aspect ratio 3/4–4/3, resized back to the
    image's size (bilinear, antialiased), and a horizontal flip with probability 1/2, drawn from
    ``(seed, epoch, index)`` so that a run repeats exactly and each epoch sees new views. A live teacher gets the
    same pixels as the student (``augmented`` tells the recipes to run it live).
    """

    augmented = True

    def __init__(self, images: np.ndarray | torch.Tensor, seed: int = 0, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        super().__init__(images)
        if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"crop scale must satisfy 0 < low <= high <= 1 and ratio 0 < low <= high; got "
                             f"scale={scale}, ratio={ratio}")
        self.seed, self.scale, self.ratio = int(seed), tuple(scale), tuple(ratio)

    def fingerprint(self) -> str:
        return f"{super().fingerprint()}-rrc{self.scale}{self.ratio}-flip-seed{self.seed}"

    def subset(self, indices) -> "AugmentedArrayImages":
        return AugmentedArrayImages(self.images[np.asarray(indices)], self.seed, self.scale, self.ratio)

    def crop_box(self, rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` as torchvision's RandomResizedCrop draws it (ten tries, then the central crop)."""
        area = height * width
        log_ratio = np.log(self.ratio)
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
        aspect = width / height
        if aspect < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif aspect > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            h, w = height, width
        return (height - h) // 2, (width - w) // 2, h, w

    def batches(self, index_batches: Sequence[torch.Tensor], device: torch.device,
                epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for indices, pixels in super().batches(index_batches, device, epoch):
            height, width = pixels.shape[-2:]
            views = []
            for image, index in zip(pixels, indices.tolist()):
                rng = np.random.default_rng((self.seed, epoch, index))
                top, left, h, w = self.crop_box(rng, height, width)
                view = F.interpolate(image[None, :, top:top + h, left:left + w], size=(height, width),
                                     mode="bilinear", align_corners=False, antialias=True)[0]
                views.append(view.flip(-1) if rng.random() < 0.5 else view)
            yield indices, torch.stack(views)

class _SeededView(Dataset):
    """Sample ``i`` of a manifest split through ``transform``, its randomness seeded by (seed, epoch, i)."""

    def __init__(self, dataset, seed: int, epoch: int, augmented: bool):
        self.dataset, self.seed, self.epoch, self.augmented = dataset, seed, epoch, augmented

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        if self.augmented:
            # torchvision's random transforms draw from torch's global generator: fork it so that the
            # view depends on (seed, epoch, sample) only, not on worker count or on what ran before.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(hash((self.seed, self.epoch, int(i))) & 0x7FFF_FFFF_FFFF)
                item = self.dataset[i]
        else:
            item = self.dataset[i]
        return None if item is None else (item[0], int(i))


def _collate_positions(batch):
    kept = [b for b in batch if b is not None]
    if not kept:
        return None
    return torch.stack([b[0] for b in kept]), torch.tensor([b[1] for b in kept], dtype=torch.long)


class ManifestImages:
    """The images ``indices`` of a manifest split, through a model's transform, batch by batch.

    Parameters
    ----------
    manifest : workbench.data.Manifest
    split : str
    indices : array of int, optional
        Positions in the split (e.g. few-shot draws); sample ``i`` of the source is ``indices[i]``.
        Default: the whole split.
    transform : callable
        PIL image → float tensor ``(3, H, W)``: a model's open_clip eval or train transform.
    augmented : bool, default False
        Whether ``transform`` is random (a train augmentation). Cached teacher features need
        un-augmented views; recipes that augment run the teacher live.
    preprocess_cfg : dict, optional
        ``size``, ``mean``, ``std`` of the transform's output (open_clip's ``visual.preprocess_cfg``),
        used to adapt views between models.
    workers : int, default 0
        DataLoader worker processes.
    seed : int, default 0
        Seeds the augmentation (with the epoch and the sample).
    on_error : {"error", "skip"}
        An unreadable image raises :class:`workbench.data.ImageReadError` naming the file, or is
        dropped from its batch (``batches`` yields the indices actually loaded).
    image_root : path, optional
        Overrides the manifest's image root.
    """

    def __init__(self, manifest, split: str, indices=None, transform=None, *, augmented: bool = False,
                 preprocess_cfg: dict | None = None, workers: int = 0, seed: int = 0, on_error: str = "error",
                 image_root=None):
        from .data import ManifestDataset

        self.manifest, self.split = manifest, split
        self.indices = np.arange(len(manifest.split(split)), dtype=np.int64) if indices is None \
            else np.asarray(indices, dtype=np.int64)
        self.transform, self.augmented = transform, bool(augmented)
        self.workers, self.seed, self.on_error, self.image_root = int(workers), int(seed), on_error, image_root
        self._preprocess_cfg = dict(preprocess_cfg or {})
        self.dataset = ManifestDataset(manifest, split, transform, indices=self.indices, unlabeled=True,
                                       on_error=on_error, image_root=image_root)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        return self.manifest.split(self.split).labels[self.indices]

    def subset(self, positions) -> "ManifestImages":
        return ManifestImages(self.manifest, self.split, self.indices[np.asarray(positions, dtype=np.int64)],
                              self.transform, augmented=self.augmented, preprocess_cfg=self._preprocess_cfg,
                              workers=self.workers, seed=self.seed, on_error=self.on_error,
                              image_root=self.image_root)

    def with_transform(self, transform, *, augmented: bool = False, preprocess_cfg: dict | None = None
                       ) -> "ManifestImages":
        """The same images through another model's transform (e.g. the teacher's eval view)."""
        return ManifestImages(self.manifest, self.split, self.indices, transform, augmented=augmented,
                              preprocess_cfg=preprocess_cfg, workers=self.workers, seed=self.seed,
                              on_error=self.on_error, image_root=self.image_root)

    def preprocess_cfg(self) -> dict:
        return self._preprocess_cfg

    def fingerprint(self) -> str:
        """Changes with the split list, the chosen images and the transform (so caches never go stale)."""
        digest = hashlib.sha256(f"{self.manifest.name}|{self.manifest.checksum}|{self.split}|".encode())
        digest.update(self.indices.tobytes())
        digest.update(repr(self.transform).encode())
        return digest.hexdigest()[:16]

    def batches(self, index_batches: Sequence[torch.Tensor], device: torch.device,
                epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(indices, pixels)`` per batch, decoded by the workers one epoch at a time.

        With ``on_error="skip"`` unreadable images are left out of ``indices`` and ``pixels``; a batch
        with no readable image raises :class:`workbench.data.ImageReadError`.
        """
        from .data import ImageReadError

        batches = [torch.as_tensor(b).cpu() for b in index_batches]
        loader = DataLoader(_SeededView(self.dataset, self.seed, epoch, self.augmented),
                            batch_sampler=[b.tolist() for b in batches], num_workers=self.workers,
                            pin_memory=device.type == "cuda", collate_fn=_collate_positions,
                            generator=torch.Generator().manual_seed(self.seed))
        # Indices go back where the caller keeps them (fit: on the training device).
        index_device = index_batches[0].device if len(index_batches) and torch.is_tensor(index_batches[0]) \
            else torch.device("cpu")
        for wanted, loaded in zip(batches, loader):
            if loaded is None:
                raise ImageReadError(f"no readable image in a batch of manifest '{self.manifest.name}', split "
                                     f"'{self.split}' (positions {wanted.tolist()[:8]}…); see the warnings above")
            pixels, positions = loaded
            yield positions.to(index_device), pixels.to(device, non_blocking=True)

    def thumbnails(self, size: int = 96) -> FileThumbnails:
        """The source's images as small arrays, read on demand."""
        from .data import expand_path

        root = self.manifest.root() if self.image_root is None else expand_path(self.image_root)
        paths = self.manifest.split(self.split).paths
        return FileThumbnails(root, [paths[i] for i in self.indices.tolist()], size=size)


class FileThumbnails:
    """A lazy sequence of small uint8 RGB arrays of image files (for galleries and the explorer).

    Nothing is read until an item is asked for; item ``i`` is ``root/paths[i]``.
    """

    def __init__(self, root, paths: Sequence[str], size: int = 96):
        self.root, self.paths, self.size = str(root), list(paths), int(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        import os

        from PIL import Image

        with Image.open(os.path.join(self.root, self.paths[int(i)])) as image:
            image = image.convert("RGB")
            image.thumbnail((self.size, self.size))
            return np.asarray(image, dtype=np.uint8)


def as_source(images):
    """An image source for ``images``: a source is returned as is, an array is wrapped in :class:`ArrayImages`."""
    if hasattr(images, "batches") and hasattr(images, "fingerprint"):
        return images
    return ArrayImages(images)


class ViewAdapter:
    """Pixels prepared for one model (``source`` cfg) → the same view prepared for another (``target`` cfg).

    Un-normalises, resizes (bicubic, as open_clip) when the input sizes differ, and normalises again;
    the identity when both models preprocess alike.
    """

    def __init__(self, source: dict, target: dict):
        self.identity = _same_cfg(source, target)
        if not self.identity:
            self.size = tuple(_pair(target["size"]))
            self.src_mean, self.src_std = _channel(source["mean"]), _channel(source["std"])
            self.dst_mean, self.dst_std = _channel(target["mean"]), _channel(target["std"])
            self.resize = tuple(_pair(source["size"])) != self.size

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return pixels
        device, dtype = pixels.device, pixels.dtype
        x = pixels * self.src_std.to(device, dtype) + self.src_mean.to(device, dtype)
        if self.resize:
            x = F.interpolate(x, size=self.size, mode="bicubic", align_corners=False).clamp_(0, 1)
        return (x - self.dst_mean.to(device, dtype)) / self.dst_std.to(device, dtype)


def _pair(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)


def _channel(values) -> torch.Tensor:
    values = [float(values)] * 3 if isinstance(values, (int, float)) else [float(v) for v in values]
    return torch.tensor(values).view(1, 3, 1, 1)


def _same_cfg(a: dict, b: dict) -> bool:
    return (_pair(a["size"]) == _pair(b["size"])
            and all(math.isclose(x, y, rel_tol=1e-6) for key in ("mean", "std")
                    for x, y in zip(_channel(a[key]).flatten().tolist(), _channel(b[key]).flatten().tolist())))
