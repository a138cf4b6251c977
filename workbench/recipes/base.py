"""What every recipe shares: the teacher's targets, the context a recipe is built from, the recipe class.

A recipe is a class listed by name in :mod:`workbench.recipes.registry`. :func:`workbench.recipes.distill`
builds it from a :class:`DistillContext` — the student, the teacher's targets, the class vectors and
the classes training sees, already checked — and trains the modules it names, calling
:meth:`Recipe.step` once per batch. The recipe returns its named loss terms together with the image
features and class rows AME should see, so AME attaches to any recipe in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn

from ..train import encode_images

if TYPE_CHECKING:  # config.py imports the recipe table, which imports this module
    from .config import DistillConfig


@dataclass
class TeacherTargets:
    """What a teacher contributes: its image embeddings of the training images and its logit scale.

    ``features`` computed once before training (``teacher_mode="cached"``; may be a memory-mapped
    array from :func:`workbench.cache.cached_image_features`), or ``model`` run on every batch
    (``"live"``, needed when images are augmented differently each epoch).
    """

    features: torch.Tensor | None  # (N, Dt) unit-norm teacher image embeddings, or None when live
    logit_scale: float  # the teacher's own logit scale (exp of its parameter)
    model: nn.Module | None = None  # the teacher itself, for live targets
    preprocess_cfg: dict | None = None  # the teacher's input size/mean/std; None: as the student's views

    def logits(self, class_vectors: torch.Tensor, scale: float | torch.Tensor | None = None) -> torch.Tensor:
        """Teacher logits of the cached features over ``class_vectors`` at ``scale`` (default: the teacher's)."""
        return (self.logit_scale if scale is None else scale) * self.features @ class_vectors.T

    @classmethod
    def from_model(cls, teacher, images, device: torch.device | None = None, live: bool = False) -> "TeacherTargets":
        scale = float(teacher.logit_scale.detach().exp())
        cfg = getattr(teacher.visual, "preprocess_cfg", None)
        if live:
            return cls(None, scale, model=teacher, preprocess_cfg=cfg)
        return cls(encode_images(teacher, images, device=device), scale, model=teacher, preprocess_cfg=cfg)

    def __len__(self) -> int:
        return -1 if self.features is None else len(self.features)


@dataclass
class DistillContext:
    """Everything a recipe is built from, checked by :func:`workbench.recipes.distill`.

    Vectors are unit-norm float tensors on ``device``; ``classes`` are the indices of the classes
    training sees (base classes in the inductive protocol, every class in the transductive one).
    """

    student: nn.Module  # open_clip model, already on device
    teacher: "TeacherTargets"
    config: "DistillConfig"  # resolved: every recipe setting filled in
    device: torch.device
    vectors: torch.Tensor  # (C, Dt) every class in the teacher's text space
    student_vectors: torch.Tensor  # (C, Ds) the same classes from the student's text tower
    classes: torch.Tensor  # (C_train,) long
    shared_text: bool  # True: one text tower for both (student_vectors is vectors)
    num_images: int
    labels: np.ndarray | None = None  # class of each training image or -1
    vocabulary: torch.Tensor | None = None  # class-agnostic KDPL: (V, Dt)
    student_vocabulary: torch.Tensor | None = None  # (V, Ds)
    class_names: list[str] | None = None  # every class's name, for recipes that encode names (KDPL's CoOp)
    tokenizer: object | None = None  # the student's tokenizer, likewise

    @property
    def train_vectors(self) -> torch.Tensor:
        return self.vectors[self.classes]

    @property
    def student_train_vectors(self) -> torch.Tensor:
        return self.student_vectors[self.classes]

    @property
    def student_width(self) -> int:
        return int(self.student.visual.output_dim)

    def teacher_logits(self, teacher_features: torch.Tensor, scale=None) -> torch.Tensor:
        """Teacher logits over the training classes at ``scale`` (default: the teacher's own)."""
        scale = self.teacher.logit_scale if scale is None else scale
        return scale * teacher_features @ self.train_vectors.T


@dataclass
class StepOutput:
    """One batch's loss terms, and the rows AME regularizes: the student's image features and class rows."""

    terms: dict[str, torch.Tensor]
    image_rows: torch.Tensor
    class_rows: torch.Tensor


class Recipe:
    """A distillation recipe: its settings, its trainable modules and its loss terms.

    Subclasses set ``name``, ``defaults`` — the :class:`~workbench.recipes.DistillConfig` fields the
    recipe reads, each with the official value of the method's reference code (``docs/recipes.md``
    gives the source of every value) — and ``optim_defaults``, the reference's optimisation settings;
    they build their model in ``__init__`` and implement :meth:`step`.
    """

    name: ClassVar[str]
    defaults: ClassVar[dict] = {}  # DistillConfig field -> official default
    dataset_defaults: ClassVar[dict] = {}  # dataset name -> {field: official value for that dataset}
    # OptimConfig field -> official value; a config's own ``optim`` settings are layered over these
    optim_defaults: ClassVar[dict] = {}
    needs_labels: ClassVar[bool] = False  # trains on labelled images (label -1 = unlabelled) as well
    scores_in_teacher_space: ClassVar[bool] = False  # evaluated against the teacher's class vectors

    def __init__(self, context: DistillContext):
        self.context = context
        self.config = context.config
        self.model: nn.Module = context.student

    def trainable(self) -> list[nn.Module]:
        """The modules whose parameters train (the student side; AME's projections are added by distill)."""
        return [self.context.student.visual]

    def score_vectors(self) -> torch.Tensor:
        """All classes' vectors the trained model is scored against (its own text space by default)."""
        return self.context.vectors if self.scores_in_teacher_space else self.context.student_vectors

    def batch_plan(self):
        """The epoch's index batches (see :func:`workbench.train.fit`'s ``batch_plan``); None: a permutation."""
        return None

    def step(self, teacher_features: torch.Tensor, pixels: torch.Tensor, indices: torch.Tensor) -> StepOutput:
        """One batch: ``teacher_features`` (B, Dt) of the same views, ``pixels`` (B, 3, H, W), ``indices`` (B,)."""
        raise NotImplementedError

    def finish(self, validation: tuple | None) -> dict:
        """Choices made after training (DHO's mixing), for ``DistillResult.extras``; default none."""
        return {}

    def modules_to_save(self) -> dict[str, nn.Module]:
        """Modules the recipe added around the student, saved with a run (prompts, projector, heads)."""
        return {}
