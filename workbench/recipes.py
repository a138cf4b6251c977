"""Distillation recipes: what trains, how the student's logits are formed, which losses apply.

Each recipe builds a ``step_loss`` for :func:`workbench.train.fit`; none has a loop of its own.
AME plugs into any recipe through :class:`DistillConfig.ame_weight` (0 turns it off): the recipe
hands AME the student's image features and the class text features it classifies against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .losses import AMELoss, KDLoss
from .train import OptimConfig, fit, images_to_device, normalize_images


@dataclass
class DistillConfig:
    """Settings of a distillation run."""

    temperature: float = 1.0  # KD softmax temperature tau
    ame_weight: float = 0.0  # AME weight omega; 0 disables AME (paper default when on: 50)
    ame_manifold_dim: int = 64  # width of AME's shared manifold
    ame_hidden_dim: int = 256  # hidden width of AME's text projection MLP
    ame_variant: str = "paper"  # "paper" (softmax over all rows) or "per_sample" (per-image entropy)
    ame_warmup_steps: int = 0  # steps over which omega ramps up linearly; 0 = full weight at once
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimisation settings

    @classmethod
    def from_dict(cls, data: dict) -> "DistillConfig":
        data = dict(data)
        optim = OptimConfig(**data.pop("optim", {}))
        return cls(optim=optim, **data)

    @property
    def uses_ame(self) -> bool:
        return self.ame_weight > 0


def logit_kd(student, images, teacher_logits: torch.Tensor, class_vectors: torch.Tensor,
             config: DistillConfig, device: torch.device, log_path: str | Path | None = None,
             progress: bool = False) -> list[dict]:
    """Plain logit distillation of ``student``'s image tower, optionally with AME.

    Parameters
    ----------
    student : open_clip model
        Its image tower trains; its text tower and logit scale stay as they are.
    images : uint8 array (N, H, W, 3)
        Training images (labels are not used: the teacher's soft labels are the only target).
    teacher_logits : tensor (N, C)
        Teacher logits over the same C classes, computed once before training.
    class_vectors : tensor (C, D)
        Unit-norm class text vectors shared by teacher and student.
    """
    if len(images) != len(teacher_logits):
        raise ValueError(f"{len(images)} images but {len(teacher_logits)} rows of teacher logits")
    if teacher_logits.shape[1] != class_vectors.shape[0]:
        raise ValueError(f"teacher logits cover {teacher_logits.shape[1]} classes, "
                         f"class_vectors {class_vectors.shape[0]}")
    student.to(device)
    kd = KDLoss(config.temperature)
    modules = [student.visual]
    ame = None
    if config.uses_ame:
        torch.manual_seed(config.optim.seed)  # AME's projections start the same for the same seed
        width = class_vectors.shape[1]
        ame = AMELoss(image_dim=width, text_dim=width, manifold_dim=config.ame_manifold_dim,
                      hidden_dim=config.ame_hidden_dim, weight=config.ame_weight,
                      variant=config.ame_variant, warmup_steps=config.ame_warmup_steps).to(device)
        modules.append(ame)
    stored = images_to_device(images, device)
    targets = teacher_logits.to(device)
    vectors = class_vectors.to(device)
    scale = student.logit_scale.detach().exp()

    def step_loss(indices):
        features = student.encode_image(normalize_images(stored[indices]), normalize=True)
        terms = kd(scale * features @ vectors.T, targets[indices])
        if ame is not None:
            terms.update(ame(features, vectors))
        return terms

    return fit(modules, step_loss, len(stored), config.optim, device, log_path=log_path, progress=progress)
