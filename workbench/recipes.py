"""Distillation recipes: what trains, how the student's logits are formed, which losses apply.

Each recipe builds a ``step_loss`` for :func:`workbench.train.fit`; none has a loop of its own.
AME plugs into any recipe through :class:`DistillConfig.ame_weight` (0 turns it off): the recipe
hands AME the student's image features and the class text features it classifies against.

Recipes implemented here (all train the student's image tower; labels are never used):

``logit_kd``
    ``tau² · KL(teacher ‖ student)`` over the shared class vectors, teacher logits at the teacher's
    own logit scale.
``kdpl``
    KDPL-style symmetric KL ``0.5 KL(pt‖ps) + 0.5 KL(ps‖pt)``; the teacher's cosine similarities are
    scaled by the *student's* logit scale, so both distributions have the same sharpness.
``feature_kd``
    CLIP-KD-style feature matching (cosine or MSE on normalised embeddings) through a linear
    projector from the student's to the teacher's embedding width when they differ, plus
    ``logit_kd_weight`` times logit KD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .losses import AMELoss, FeatureKDLoss, KDLoss, SymmetricKLLoss
from .train import OptimConfig, encode_images, fit, images_to_device, normalize_images

RECIPES = ("logit_kd", "kdpl", "feature_kd")


@dataclass
class DistillConfig:
    """Settings of a distillation run."""

    recipe: str = "logit_kd"  # one of RECIPES
    temperature: float = 1.0  # KD softmax temperature tau
    feature_distance: str = "cosine"  # feature_kd: "cosine" or "mse"
    logit_kd_weight: float = 1.0  # feature_kd: weight of the logit-KD term added to feature matching
    ame_weight: float = 0.0  # AME weight omega; 0 disables AME (paper default when on: 50)
    ame_manifold_dim: int = 64  # width of AME's shared manifold
    ame_hidden_dim: int = 256  # hidden width of AME's text projection MLP
    ame_variant: str = "paper"  # "paper" (softmax over all rows) or "per_sample" (per-image entropy)
    ame_warmup_steps: int = 0  # steps over which omega ramps up linearly; 0 = full weight at once
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimisation settings

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; valid names: {', '.join(RECIPES)}")
        for name in ("temperature", "ame_weight", "logit_kd_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (name == "temperature" and value == 0):
                raise ValueError(f"{name} must be finite and {'> 0' if name == 'temperature' else '>= 0'}, "
                                 f"got {value!r}")

    @classmethod
    def from_dict(cls, data: dict) -> "DistillConfig":
        data = dict(data)
        optim = OptimConfig(**data.pop("optim", {}))
        return cls(optim=optim, **data)

    @property
    def uses_ame(self) -> bool:
        return self.ame_weight > 0


@dataclass
class TeacherTargets:
    """What a teacher contributes, computed once before training (the teacher never runs in the loop)."""

    features: torch.Tensor  # (N, Dt) unit-norm teacher image embeddings of the training images
    logit_scale: float  # the teacher's own logit scale (exp of its parameter)

    def logits(self, class_vectors: torch.Tensor, scale: float | torch.Tensor | None = None) -> torch.Tensor:
        """Teacher logits over ``class_vectors`` at ``scale`` (default: the teacher's own)."""
        return (self.logit_scale if scale is None else scale) * self.features @ class_vectors.T

    @classmethod
    def from_model(cls, teacher, images, device: torch.device | None = None) -> "TeacherTargets":
        return cls(encode_images(teacher, images, device=device), float(teacher.logit_scale.detach().exp()))


def make_ame(config: DistillConfig, width: int, device: torch.device) -> AMELoss:
    """The AME regularizer of ``config`` for features of ``width``, seeded by the run's seed."""
    torch.manual_seed(config.optim.seed)  # AME's projections start the same for the same seed
    return AMELoss(image_dim=width, text_dim=width, manifold_dim=config.ame_manifold_dim,
                   hidden_dim=config.ame_hidden_dim, weight=config.ame_weight,
                   variant=config.ame_variant, warmup_steps=config.ame_warmup_steps).to(device)


def distill(student, images, teacher: TeacherTargets, class_vectors: torch.Tensor, config: DistillConfig,
            device: torch.device, log_path: str | Path | None = None, progress: bool = False,
            checkpoint_path: str | Path | None = None) -> list[dict]:
    """Distil ``teacher`` into ``student``'s image tower with ``config.recipe``, optionally with AME.

    Parameters
    ----------
    student : open_clip model
        Its image tower trains; its text tower and logit scale stay as they are.
    images : uint8 array (N, H, W, 3)
        Training images (labels are not used: the teacher is the only target).
    teacher : TeacherTargets
        Teacher embeddings of the same N images.
    class_vectors : tensor (C, D)
        Unit-norm class text vectors in the student's embedding space, used for the student's logits
        (and the teacher's, which share the space in the embedded world and in same-text-tower pairs).
    log_path, progress, checkpoint_path
        Passed to :func:`workbench.train.fit` (JSONL log, progress bar, per-epoch checkpoint and resume;
        AME's projections are part of the checkpoint, so a resumed run continues them too).
    """
    if len(images) != len(teacher.features):
        raise ValueError(f"{len(images)} images but {len(teacher.features)} rows of teacher features")
    student.to(device)
    vectors = class_vectors.to(device)
    teacher_features = teacher.features.to(device)
    student_scale = student.logit_scale.detach().exp()
    stored = images_to_device(images, device)
    modules: list[nn.Module] = [student.visual]

    if config.recipe == "logit_kd" or config.recipe == "feature_kd":
        kd = KDLoss(config.temperature)
        teacher_logits = teacher.logits(vectors)
    else:
        kd = SymmetricKLLoss(config.temperature)
        teacher_logits = teacher.logits(vectors, scale=student_scale)

    projector = feature_kd = None
    if config.recipe == "feature_kd":
        torch.manual_seed(config.optim.seed)
        width = vectors.shape[1]
        projector = nn.Identity() if width == teacher_features.shape[1] else nn.Linear(width, teacher_features.shape[1])
        projector.to(device)
        modules.append(projector)
        feature_kd = FeatureKDLoss(config.feature_distance)

    ame = make_ame(config, vectors.shape[1], device) if config.uses_ame else None
    if ame is not None:
        modules.append(ame)

    def step_loss(indices):
        features = student.encode_image(normalize_images(stored[indices]), normalize=True)
        terms = kd(student_scale * features @ vectors.T, teacher_logits[indices])
        if feature_kd is not None:
            terms = {k: config.logit_kd_weight * v for k, v in terms.items()}
            terms.update(feature_kd(projector(features), teacher_features[indices]))
        if ame is not None:
            terms.update(ame(features, vectors))
        return terms

    return fit(modules, step_loss, len(stored), config.optim, device, log_path=log_path, progress=progress,
               checkpoint_path=checkpoint_path)
