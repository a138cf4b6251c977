"""Evaluate a CLIP-style model on a labelled image set under the base-to-new protocol."""

from __future__ import annotations

import torch

from .protocol import evaluate_base_new
from .train import encode_images


def evaluate_model(model, images, labels, class_vectors: torch.Tensor, base_classes, new_classes,
                   device: torch.device | None = None) -> dict[str, float]:
    """Encode ``images`` with ``model`` and return ``{"base_acc", "new_acc", "hm"}``.

    Accuracy on base (new) samples is computed among the base (new) class vectors only.
    """
    features = encode_images(model, images, device=device)
    return evaluate_base_new(features, labels, class_vectors, base_classes, new_classes)


@torch.no_grad()
def class_logits(model, images, class_vectors: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """``model``'s logits over ``class_vectors`` (its own logit scale times cosine), float32 on the CPU."""
    features = encode_images(model, images, device=device)
    return model.logit_scale.detach().float().exp().cpu() * features @ class_vectors.float().cpu().T


def results_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table of base / new / HM accuracy (in %) for each named result."""
    lines = ["| model | base | new | HM |", "|---|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {100 * r['base_acc']:.1f} | {100 * r['new_acc']:.1f} | {100 * r['hm']:.1f} |")
    return "\n".join(lines)
