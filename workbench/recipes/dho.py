"""DHO (Kang et al., 2025, "Simple yet Effective Semi-supervised Knowledge Distillation from
Vision-Language Models via Dual-Head Optimization").

Matched to erjui/DHO ``train_imgnet_semi.py`` (the CLIP-student script) for the student and
``train_others.py`` (the few-shot script) for the loss weights and the mixing search: two linear heads
with bias over the student's image embedding, both initialised to the student's zero-shot classifier
(biases 0); the CE head reads the raw embedding, the KD head the unit-norm one times a fixed 100.
CE on labelled images; KD at temperature 2 on labelled and unlabelled images as two terms, each
averaged over its own images; ``loss = 0.5 CE + 0.5 (KD_labelled + KD_unlabelled)``. Each step takes
one batch of labelled and one of unlabelled images, the two loaders zipped as in ``train_others.py``:
an epoch is one pass over the labelled images, each epoch with a fresh draw of unlabelled ones. The
whole image tower trains. At inference ``p = α softmax(z_ce) + (1 − α) softmax(z_kd / β)``, α in steps of 0.05 and β
among seven values chosen by accuracy on labelled validation images (α = β = 0.5 without them).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..losses import KDLoss
from .base import Recipe, StepOutput

DHO_ALPHAS = tuple(round(0.05 * i, 2) for i in range(21))  # train_others.py: np.arange(0, 1.05, 0.05)
DHO_BETAS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 4.0)  # train_others.py: beta_range
DHO_KD_SCALE = 100.0  # train_imgnet_semi.py: kd_head(normalize(f)) * 100


class DualHeadStudent(nn.Module):
    """DHO's student: an image tower with a CE head and a KD head over the same classes.

    ``z_ce = ce_head(f)`` on the raw embedding ``f``, ``z_kd = 100 · kd_head(f / ‖f‖)``; both heads start
    at the zero-shot text classifier ``class_vectors`` with zero bias. Inference mixes
    ``p = α softmax(z_ce) + (1 − α) softmax(z_kd / β)``; :meth:`image_logits` returns ``log p`` so that
    every probability-based metric sees the mixture.
    """

    def __init__(self, student: nn.Module, class_vectors: torch.Tensor, alpha: float = 0.5, beta: float = 0.5,
                 kd_scale: float = DHO_KD_SCALE):
        super().__init__()
        self.student = student
        width, classes = class_vectors.shape[1], class_vectors.shape[0]
        self.ce_head = nn.Linear(width, classes)
        self.kd_head = nn.Linear(width, classes)
        with torch.no_grad():
            for head in (self.ce_head, self.kd_head):
                head.weight.copy_(class_vectors)
                head.bias.zero_()
        self.kd_scale = float(kd_scale)
        self.register_buffer("logit_scale", student.logit_scale.detach().clone())
        self.set_mixing(alpha, beta)

    def set_mixing(self, alpha: float, beta: float) -> None:
        if not 0 <= alpha <= 1 or not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"DHO mixing needs alpha in [0, 1] and beta > 0, got alpha={alpha!r}, beta={beta!r}")
        self.alpha, self.beta = float(alpha), float(beta)

    @property
    def num_classes(self) -> int:
        return self.ce_head.weight.shape[0]

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.student.encode_image(images, normalize=normalize)

    def head_logits(self, raw_features: torch.Tensor, classes: torch.Tensor | None = None):
        """``(z_ce, z_kd)`` of raw (un-normalised) embeddings, over ``classes`` (indices) or all classes."""
        heads = [(self.ce_head.weight, self.ce_head.bias), (self.kd_head.weight, self.kd_head.bias)]
        if classes is not None:
            heads = [(w[classes], b[classes]) for w, b in heads]
        raw = raw_features.to(self.ce_head.weight.dtype)
        z_ce = F.linear(raw, *heads[0])
        z_kd = self.kd_scale * F.linear(F.normalize(raw, dim=-1), *heads[1])
        return z_ce, z_kd

    def image_logits(self, images: torch.Tensor, alpha: float | None = None, beta: float | None = None):
        """``(unit-norm features, log p)`` of ``images`` under the mixed heads, all classes."""
        raw = self.student.encode_image(images)
        z_ce, z_kd = self.head_logits(raw)
        alpha = self.alpha if alpha is None else alpha
        beta = self.beta if beta is None else beta
        return F.normalize(raw, dim=-1), log_mixture(z_ce, z_kd, alpha, beta)


def log_mixture(z_ce: torch.Tensor, z_kd: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """``log(α softmax(z_ce) + (1 − α) softmax(z_kd / β))``, in log space so a zero weight never gives NaN."""
    parts = [F.log_softmax(z_ce, dim=1) + math.log(alpha) if alpha > 0 else None,
             F.log_softmax(z_kd / beta, dim=1) + math.log(1 - alpha) if alpha < 1 else None]
    return torch.logsumexp(torch.stack([p for p in parts if p is not None]), dim=0)


@torch.no_grad()
def choose_dho_mixing(model: DualHeadStudent, images, labels, classes: torch.Tensor,
                      device: torch.device) -> dict[str, float]:
    """Pick DHO's (α, β) by accuracy on labelled validation images, as ``train_others.py`` does.

    Accuracy is among ``classes`` (the classes training saw); β is the outer loop and the first
    maximum wins. Sets the model's mixing and returns ``{"alpha", "beta", "val_acc"}``.
    """
    from ..train import map_source

    classes = classes.to(device)
    (z_ce, z_kd), _ = map_source(model, images, lambda pixels: model.head_logits(
        model.student.encode_image(pixels).float(), classes), device=device)
    position = {int(c): i for i, c in enumerate(classes.tolist())}
    targets = torch.tensor([position[int(y)] for y in np.asarray(labels)], device=z_ce.device)
    best = None
    for beta in DHO_BETAS:
        for alpha in DHO_ALPHAS:
            accuracy = float((log_mixture(z_ce, z_kd, alpha, beta).argmax(1) == targets).float().mean())
            if best is None or accuracy > best["val_acc"]:
                best = {"alpha": alpha, "beta": beta, "val_acc": accuracy}
    model.set_mixing(best["alpha"], best["beta"])
    return best


def paired_plan(labelled: torch.Tensor, unlabelled: torch.Tensor):
    """Each step a batch of labelled positions and one of unlabelled ones: the two loaders zipped, so an
    epoch is one pass over the labelled images (``train_others.py``); unlabelled ones are drawn afresh
    each epoch and cycle when there are fewer of them."""
    def plan(generator: torch.Generator, batch_size: int) -> list[torch.Tensor]:
        order = labelled[torch.randperm(len(labelled), generator=generator)]
        batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
        if not len(unlabelled):
            return batches
        cycles = math.ceil(len(batches) * batch_size / len(unlabelled))
        pool = torch.cat([unlabelled[torch.randperm(len(unlabelled), generator=generator)] for _ in range(cycles)])
        return [torch.cat([batch, pool[step * batch_size:(step + 1) * batch_size]])
                for step, batch in enumerate(batches)]
    return plan


class DHO(Recipe):
    name = "dho"
    needs_labels = True
    defaults = {"temperature": 2.0, "kd_weight": 1.0, "kd_reduction": "batchmean", "dho_label_weight": 0.5}
    optim_defaults = {"epochs": 200, "batch_size": 64, "lr": 0.001, "weight_decay": 0.01, "warmup_fraction": 0.1,
                      "grad_clip": 0.0}

    def __init__(self, context):
        super().__init__(context)
        self.model = DualHeadStudent(context.student, context.student_vectors).to(context.device)
        self.kd = KDLoss(self.config.temperature, reduction=self.config.kd_reduction)
        classes = context.classes
        position = torch.full((len(context.vectors),), -1, dtype=torch.long)
        position[classes.cpu()] = torch.arange(len(classes))
        labels = torch.as_tensor(np.asarray(context.labels)).long()
        if labels.shape != (context.num_images,):
            raise ValueError(f"labels must have shape ({context.num_images},), got {tuple(labels.shape)}")
        bad = labels[(labels >= 0) & (position[labels.clamp(min=0)] < 0)]
        if len(bad):
            raise ValueError(f"labelled images of classes outside train_classes: {sorted(set(bad.tolist()))[:10]}")
        if not bool((labels >= 0).any()):
            raise ValueError("recipe 'dho' needs at least one labelled training image")
        self.targets = torch.where(labels >= 0, position[labels.clamp(min=0)], -1).to(context.device)
        self.labelled = torch.nonzero(labels >= 0).flatten()
        self.unlabelled = torch.nonzero(labels < 0).flatten()

    def trainable(self):
        return [self.context.student.visual, self.model.ce_head, self.model.kd_head]

    def batch_plan(self):
        return paired_plan(self.labelled, self.unlabelled)

    def step(self, teacher_features, pixels, indices) -> StepOutput:
        raw = self.model.encode_image(pixels)
        z_ce, z_kd = self.model.head_logits(raw, self.context.classes)
        teacher_logits = self.context.teacher_logits(teacher_features)
        targets = self.targets[indices]
        labelled = targets >= 0
        w = self.config.dho_label_weight
        ce = F.cross_entropy(z_ce[labelled], targets[labelled]) if bool(labelled.any()) else z_ce.sum() * 0
        kd = sum(self.kd(z_kd[rows], teacher_logits[rows])["kd_loss"]
                 for rows in (labelled, ~labelled) if bool(rows.any()))
        terms = {"kd_loss": (1 - w) * self.config.kd_weight * kd, "ce_loss": w * ce}
        return StepOutput(terms, F.normalize(raw, dim=-1), self.context.student_train_vectors)

    def finish(self, validation):
        if validation is None:
            return {}
        return {"dho_mixing": choose_dho_mixing(self.model, validation[0], validation[1], self.context.classes,
                                                self.context.device)}

    def modules_to_save(self):
        return {"ce_head": self.model.ce_head, "kd_head": self.model.kd_head}
