"""Evaluate a CLIP-style model on a labelled image set under the base-to-new protocol."""

from __future__ import annotations

import numpy as np
import torch

from .protocol import evaluate_base_new
from .train import encode_images, encode_source, map_source


def evaluate_model(model, images, labels, class_vectors: torch.Tensor, base_classes, new_classes,
                   device: torch.device | None = None) -> dict[str, float]:
    """Encode ``images`` with ``model`` and return ``{"base_acc", "new_acc", "hm"}``.

    Accuracy on base (new) samples is computed among the base (new) class vectors only.
    """
    features = encode_images(model, images, device=device)
    return evaluate_base_new(features, labels, class_vectors, base_classes, new_classes)


def _scores_itself(model, class_vectors: torch.Tensor) -> bool:
    # A model that scores its own classes (DHO's mixed heads) does so for those classes; any other
    # class set (a transfer target) is scored zero-shot: logit scale times cosine.
    return hasattr(model, "image_logits") and model.num_classes == class_vectors.shape[0]


def _zero_shot_logits(model, features: torch.Tensor, class_vectors: torch.Tensor) -> torch.Tensor:
    return model.logit_scale.detach().float().exp().cpu() * features @ class_vectors.float().cpu().T


def _own_predictions(model, images, device):
    # One pass: the heads read the raw embedding, which the unit-norm features no longer carry.
    (features, logits), kept = map_source(model, images, model.image_logits, device=device)
    return features, logits, kept


@torch.no_grad()
def predict(model, images, class_vectors: torch.Tensor, device: torch.device | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm image features ``(N, D)`` and logits over ``class_vectors`` ``(N, C)``, float32 on the CPU.

    ``images``: a uint8 array or an image source. Logits are the model's own logit scale times
    cosine, unless the model scores its classes itself (``image_logits``: DHO's mixed heads, whose
    logits are ``log p`` of the mixture).
    """
    from .image_sources import as_source

    source = as_source(images)
    features, logits, kept = predict_source(model, source, class_vectors, device=device)
    if len(kept) != len(source):
        raise ValueError(f"{len(source) - len(kept)} unreadable images were skipped; use predict_source to get "
                         "the positions of the rows")
    return features, logits


@torch.no_grad()
def predict_source(model, images, class_vectors: torch.Tensor, device: torch.device | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """:func:`predict` plus the positions of the images kept (a manifest source may skip unreadable files)."""
    if _scores_itself(model, class_vectors):
        return _own_predictions(model, images, device)
    features, kept = encode_source(model, images, device=device)
    return features, _zero_shot_logits(model, features, class_vectors), kept


def class_logits(model, images, class_vectors: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """``model``'s logits over ``class_vectors``; see :func:`predict`."""
    return predict(model, images, class_vectors, device=device)[1]


def markdown_table(rows: dict[str, dict[str, float]], columns: dict[str, str], scale: float = 1.0,
                   digits: int = 3) -> str:
    """Markdown table with one row per name and the chosen ``{metric key: header}`` columns."""
    lines = ["| model | " + " | ".join(columns.values()) + " |", "|---|" + "---:|" * len(columns)]
    for name, values in rows.items():
        cells = [f"{scale * values[key]:.{digits}f}" for key in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table of base / new / HM accuracy (in %) for each named result."""
    return markdown_table(results, {"base_acc": "base", "new_acc": "new", "hm": "HM"}, scale=100, digits=1)


@torch.no_grad()
def zero_shot_manifest(name: str, manifest, pretrained: str | None = None, split: str = "test",
                       device: torch.device | str | None = None, batch_size: int = 256, workers: int = 0,
                       cache_dir: str | None = None, on_error: str = "error") -> dict[str, float]:
    """Zero-shot base / new / HM of any supported model on a dataset manifest, in one call.

    ``name``/``pretrained`` are resolved by :func:`workbench.models.load_model` (open_clip name + tag,
    ``hf-hub:``, checkpoint, ``local-dir:`` or an embedded model); ``manifest`` is a
    :class:`workbench.data.Manifest` or a path to one. Class vectors come from the manifest's class
    names and templates (disk-cached under ``cache_dir``). Returns ``base_acc``, ``new_acc``, ``hm``,
    ``accuracy`` (over all classes) and ``skipped_images`` (with ``on_error="skip"``).
    """
    from . import data
    from .models import cached_class_vectors, load_model
    from .protocol import base_new_split
    from .device import autocast, select_device

    if not isinstance(manifest, data.Manifest):
        manifest = data.load_manifest(manifest)
    device = select_device("auto") if device is None else torch.device(device)
    loaded = load_model(name, pretrained, device=device, cache_dir=cache_dir)
    vectors = cached_class_vectors(loaded, manifest.classnames, manifest.templates, cache_dir, device=device)
    dataset = data.ManifestDataset(manifest, split, transform=loaded.preprocess, on_error=on_error)
    features, labels = [], []
    for batch in data.make_loader(dataset, batch_size, device, workers=workers):
        if batch is None:  # every image of the batch was skipped
            continue
        images, batch_labels, _ = batch
        with autocast(device):
            encoded = loaded.model.encode_image(images.to(device, non_blocking=True), normalize=True)
        features.append(encoded.float().cpu())
        labels.append(batch_labels)
    if not features:
        raise ValueError(f"no readable image in split {split!r} of manifest {manifest.name!r}")
    features, labels = torch.cat(features), torch.cat(labels)
    base, new = base_new_split(len(manifest.classnames))
    result = evaluate_base_new(features, labels, vectors, base, new)
    result["accuracy"] = float(((features @ vectors.T).argmax(1) == labels).float().mean())
    result["skipped_images"] = float(dataset.skipped)
    return result
