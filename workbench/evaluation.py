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
def predict(model, images, class_vectors: torch.Tensor, device: torch.device | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm image features ``(N, D)`` and logits over ``class_vectors`` ``(N, C)`` (the model's own
    logit scale times cosine), both float32 on the CPU."""
    features = encode_images(model, images, device=device)
    return features, model.logit_scale.detach().float().exp().cpu() * features @ class_vectors.float().cpu().T


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
