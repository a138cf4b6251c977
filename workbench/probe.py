"""Feature-space probe: what KD and AME do to one batch when the features themselves are optimised.

No backbone is involved: a batch of unit-norm student image features is treated as free parameters
(kept on the sphere by normalising), and Adam minimises KD to the teacher's logits, AME's entropy, or
both. With nothing else in the way, each loss's pull shows directly — e.g. that AME alone lowers
H(M) by collapsing the features onto one direction. The tutorial notebook
(``notebooks/04_tutorial_entropy_minimization.ipynb``) is built on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .analysis import effective_rank
from .losses import AMELoss, KDLoss

RECORD_KEYS = ("manifold_entropy", "accuracy", "effective_rank", "moved")


class FeatureProbe:
    """One batch to probe, and the optimisation settings shared by every run on it.

    Parameters
    ----------
    student_features : tensor (B, Di)
        Unit-norm student image features: the starting point of every run.
    class_vectors : tensor (C, Di)
        Unit-norm class text vectors the features are scored against (the same width: logits are
        scaled cosine similarities).
    teacher_logits : tensor (B, C)
        KD's targets.
    targets : tensor (B,)
        Class position of each image among ``class_vectors`` (for the accuracy column).
    logit_scale : float
        Multiplies the cosine similarities into logits.
    steps : int
        Adam steps per run.
    lr : float
        Adam's learning rate, for the features and (when trained) AME's projections.
    seed : int
        Seeds AME's projections, so every run starts from the same ones.
    """

    def __init__(self, student_features: torch.Tensor, class_vectors: torch.Tensor, teacher_logits: torch.Tensor,
                 targets: torch.Tensor, logit_scale: float, steps: int, lr: float, seed: int = 0):
        batch, width = student_features.shape
        if class_vectors.dim() != 2 or class_vectors.shape[1] != width:
            raise ValueError(f"class_vectors must have shape (classes, {width}); got {tuple(class_vectors.shape)}")
        if teacher_logits.shape != (batch, len(class_vectors)):
            raise ValueError(f"teacher_logits must have shape ({batch}, {len(class_vectors)}); "
                             f"got {tuple(teacher_logits.shape)}")
        if targets.shape != (batch,):
            raise ValueError(f"targets must have shape ({batch},); got {tuple(targets.shape)}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be an int >= 0, got {steps!r}")
        self.student_features, self.class_vectors = student_features, class_vectors
        self.teacher_logits, self.targets = teacher_logits, targets
        self.logit_scale, self.steps, self.lr, self.seed = logit_scale, steps, lr, seed
        self.kd = KDLoss(temperature=1.0)

    def run(self, use_kd: bool, ame_weight: float, train_projections: bool = True,
            variant: str = "paper") -> list[dict]:
        """Optimise the batch's features; one record per step (``steps + 1``, the start included).

        ``train_projections=False`` freezes AME's projections, so only the features can lower H(M).
        Each record holds the step, H(M), accuracy against ``targets``, the features' effective rank
        and ``moved``: 1 − mean cosine between each feature and its starting point.
        """
        text = self.class_vectors
        torch.manual_seed(self.seed)
        ame = AMELoss(image_dim=self.student_features.shape[1], text_dim=text.shape[1], weight=ame_weight,
                      variant=variant).to(self.student_features.dtype)
        z = self.student_features.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([z, *ame.parameters()] if train_projections else [z], lr=self.lr)
        records = []
        for step in range(self.steps + 1):
            features = F.normalize(z, dim=1)
            logits = self.logit_scale * features @ text.T
            terms = ame(features, text)
            loss = ((self.kd(logits, self.teacher_logits)["kd_loss"] if use_kd else 0)
                    + (terms["ame_loss"] if ame_weight else 0))
            records.append({"step": step, "manifold_entropy": terms["manifold_entropy"].item(),
                            "accuracy": (logits.argmax(1) == self.targets).double().mean().item(),
                            "effective_rank": effective_rank(features.detach()),
                            "moved": 1 - (features.detach() * self.student_features).sum(1).mean().item()})
            if step < self.steps:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return records


def summary(runs: dict[str, list[dict]]) -> str:
    """One line per named run: each quantity at the first and the last step."""
    lines = []
    for name, records in runs.items():
        first, last = records[0], records[-1]
        lines.append(f"{name:9s} H(M) {first['manifold_entropy']:.3f} -> {last['manifold_entropy']:.3f}   "
                     f"accuracy {first['accuracy']:.2f} -> {last['accuracy']:.2f}   effective rank "
                     f"{first['effective_rank']:.1f} -> {last['effective_rank']:.1f}   "
                     f"1 - cos(start, end) {last['moved']:.2f}")
    return "\n".join(lines)
