"""Teacher outputs computed once and kept on disk, memory-mapped.

A teacher's image embeddings depend only on its weights and the pixels, so they are keyed by a
fingerprint of both and stored as ``.npy`` files that later runs map into memory instead of running
the teacher again. Writes go to a temporary file renamed into place, so an interrupted extraction
never leaves a truncated cache entry behind.
"""

from __future__ import annotations

import hashlib
import os
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .image_sources import array_fingerprint, as_source, in_order  # noqa: F401  (cache.array_fingerprint)
from .device import autocast


def model_fingerprint(model: nn.Module) -> str:
    """Short SHA-256 of every tensor in ``model.state_dict()`` (names, shapes, dtypes, values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)  # 1-D, so 0-d scalars can be viewed as bytes
        digest.update(memoryview(flat.view(torch.uint8).numpy()).cast("B"))
    return digest.hexdigest()[:16]


def load_features(path: str | os.PathLike) -> torch.Tensor:
    """A cached ``.npy`` feature file as a CPU tensor backed by a read-only memory map (no copy)."""
    array = np.load(path, mmap_mode="r")
    with warnings.catch_warnings():  # torch warns that the map is read-only; nothing writes to it
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


@torch.no_grad()
def cached_image_features(model: nn.Module, images, cache_dir: str | os.PathLike, batch_size: int = 512,
                          device: torch.device | None = None, dtype=np.float32,
                          fingerprint: str | None = None) -> tuple[torch.Tensor, Path]:
    """Unit-norm image embeddings of ``images`` by ``model``, cached under ``cache_dir``.

    ``images`` is a uint8 NHWC array or an un-augmented image source (:mod:`workbench.image_sources`,
    e.g. a manifest split through the model's eval transform). Returns the features (memory-mapped
    when read from the cache) and the cache file's path. The key combines :func:`model_fingerprint`
    and the source's fingerprint (the pixels of an array; split list, chosen images and transform of
    a manifest), so changed weights or images never reuse stale features. ``dtype=np.float16`` halves
    the file for large datasets. Rows of images a manifest source skipped as unreadable are NaN.
    ``fingerprint`` is ``model_fingerprint(model)`` when the caller has it already (hashing a ViT-L/14's
    weights takes seconds; a run looks features up for several image sets).
    """
    source = as_source(images)
    if len(source) == 0:
        raise ValueError("no images to encode")
    if source.augmented:
        raise ValueError("cached teacher features need un-augmented views; an augmenting recipe runs the "
                         "teacher live (teacher_mode: live)")
    cache_dir = Path(cache_dir)
    path = cache_dir / f"features-{fingerprint or model_fingerprint(model)}-{source.fingerprint()}.npy"
    if path.is_file():
        return load_features(path), path
    cache_dir.mkdir(parents=True, exist_ok=True)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    # A name of this process's own: two runs filling the same entry at once never share a temp file.
    tmp = path.with_name(f"{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp.npy")
    out = None
    try:
        for positions, pixels in source.batches(in_order(len(source), batch_size), device):
            with autocast(device):
                features = model.encode_image(pixels, normalize=True).float().cpu().numpy()
            if out is None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(source), features.shape[1]))
                out[:] = np.nan
            out[positions.cpu().numpy()] = features
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        model.train(was_training)
        if tmp.exists():
            tmp.unlink()
    return load_features(path), path
