"""``distill``: check the inputs, build the recipe, attach AME in one place, train with :func:`workbench.train.fit`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..image_sources import ViewAdapter, as_source
from ..losses import AMELoss
from ..selection import ModelSelector
from ..train import fit
from .base import DistillContext, TeacherTargets
from .registry import recipe_class
from .config import DistillConfig


@dataclass
class DistillResult:
    """What :func:`distill` leaves: the model to evaluate, the per-step log and the selection made."""

    model: nn.Module  # encode_image + logit_scale (+ class_logits for DHO), like an open_clip model
    history: list[dict]  # per-step records, as in the JSONL log
    selection: dict  # policy, chosen epoch, its score, per-epoch scores
    extras: dict = field(default_factory=dict)  # recipe-specific choices (DHO's alpha and beta)
    scores_in_teacher_space: bool = False  # True: evaluate against the teacher's class vectors (PromptKD)
    added_modules: dict = field(default_factory=dict)  # name -> module the recipe added (prompts, heads)


def make_ame(config: DistillConfig, width: int, device: torch.device) -> AMELoss:
    """The AME regularizer of ``config`` for features of ``width``, seeded by the run's seed."""
    torch.manual_seed(config.optim.seed)  # AME's projections start the same for the same seed
    return AMELoss(image_dim=width, text_dim=width, manifold_dim=config.ame_manifold_dim,
                   hidden_dim=config.ame_hidden_dim, weight=config.ame_weight,
                   image_projection=config.ame_image_projection, variant=config.ame_variant,
                   warmup_steps=config.ame_warmup_steps).to(device)


@torch.no_grad()
def accuracy_among(model: nn.Module, images, labels, class_vectors: torch.Tensor, classes: torch.Tensor,
                   device: torch.device) -> float:
    """Top-1 accuracy of ``model`` on labelled ``images``, predicting among ``classes`` only."""
    from ..evaluation import predict

    _, logits = predict(model, images, class_vectors, device=device)
    classes = torch.as_tensor(classes).cpu()
    predicted = classes[logits[:, classes].argmax(1)]
    return float((predicted == torch.as_tensor(np.asarray(labels))).float().mean())


def distill(student, images, teacher: TeacherTargets, class_vectors: torch.Tensor, config: DistillConfig,
            device: torch.device, log_path: str | Path | None = None, progress: bool = False,
            checkpoint_path: str | Path | None = None, *, train_classes=None, labels=None,
            validation: tuple | None = None, base_test: tuple | None = None,
            vocabulary: torch.Tensor | None = None, student_class_vectors: torch.Tensor | None = None,
            student_vocabulary: torch.Tensor | None = None, class_names=None, tokenizer=None) -> DistillResult:
    """Distil ``teacher`` into ``student`` with ``config.recipe``, optionally with AME.

    Parameters
    ----------
    student : open_clip model
        What trains is the recipe's choice (the image tower, or prompts and a projector added to it);
        its text tower and logit scale stay as they are.
    images : uint8 array (N, H, W, 3) or image source
        Training images: an array (the embedded world) or a source from :mod:`workbench.image_sources`
        (a manifest split through the student's eval or train transform).
    teacher : TeacherTargets
        Teacher embeddings of the same N images (or the live teacher, which then sees the student's
        view of each image adapted to its own input size and normalisation).
    class_vectors : tensor (C, D)
        Unit-norm class text vectors in the teacher's embedding space — all classes of the task.
    config : DistillConfig
        Unset recipe fields take the recipe's official defaults (:meth:`DistillConfig.resolved`).
    device : torch.device
    log_path, progress, checkpoint_path
        Passed to :func:`workbench.train.fit` (JSONL log with the per-term gradient diagnostics, progress
        bar, per-epoch checkpoint and resume; AME's projections are part of the checkpoint).
    train_classes : array of int, optional
        Classes training sees (the base classes inductively, every class transductively); default all.
    labels : array of int (N,), optional
        Class of each training image in ``0..C-1`` or -1 for unlabelled; required by recipes that use
        labels (``dho``).
    validation : (images, labels), optional
        Labelled held-out images of training classes: DHO's (α, β) choice and ``selection="best_val"``.
    base_test : (images, labels), optional
        Base-class test images for ``selection="best_base_test"`` (PromptKD's official selection).
    vocabulary, student_vocabulary : tensor (V, D) and (V, Ds), optional
        Class-agnostic KDPL's vocabulary in the teacher's and the student's text space.
    student_class_vectors : tensor (C, Ds), optional
        The classes' vectors from the student's own text tower; default ``class_vectors`` (shared tower).
    class_names, tokenizer : list of C str and the student's tokenizer, optional
        Needed by recipes that encode class names during training (``kdpl`` with ``kdpl_prompts: coop``).
    """
    config = config.resolved()
    recipe_cls = recipe_class(config.recipe)
    source = as_source(images)
    num_images = len(source)
    if teacher.features is not None and num_images != len(teacher.features):
        raise ValueError(f"{num_images} images but {len(teacher.features)} rows of teacher features")
    if teacher.features is None and teacher.model is None:
        raise ValueError("teacher targets have neither cached features nor a teacher model")
    live = config.teacher_mode == "live"
    if live and teacher.model is None:
        raise ValueError("teacher_mode 'live' needs TeacherTargets with the teacher model")
    if source.augmented and not live:
        raise ValueError("the training images are augmented, so the teacher must see each augmented view: "
                         "set teacher_mode 'live' (cached features are of un-augmented images)")
    if recipe_cls.needs_labels and labels is None:
        raise ValueError(f"recipe {config.recipe!r} needs labels (-1 for unlabelled images)")
    student.to(device)
    vectors = class_vectors.to(device).float()
    classes = torch.arange(len(vectors)) if train_classes is None else torch.as_tensor(np.asarray(train_classes))
    shared_text = student_class_vectors is None
    student_vectors = vectors if shared_text else student_class_vectors.to(device).float()
    if student_vectors.shape[0] != vectors.shape[0]:
        raise ValueError(f"student_class_vectors has {student_vectors.shape[0]} classes, class_vectors "
                         f"{vectors.shape[0]}")
    if class_names is not None and len(class_names) != len(vectors):
        raise ValueError(f"{len(class_names)} class_names for {len(vectors)} class vectors")
    context = DistillContext(student, teacher, config, device, vectors, student_vectors, classes.long().to(device),
                             shared_text, num_images, labels=labels, vocabulary=vocabulary,
                             student_vocabulary=student_vocabulary,
                             class_names=None if class_names is None else list(class_names), tokenizer=tokenizer)
    if not recipe_cls.scores_in_teacher_space and context.student_width != student_vectors.shape[1]:
        raise ValueError(
            f"student embeddings have width {context.student_width} but the class vectors it is scored against "
            f"{student_vectors.shape[1]}; pass student_class_vectors from the student's own text tower "
            f"(recipe {config.recipe!r} scores the student in its own space)")

    torch.manual_seed(config.optim.seed)  # recipe heads, prompts and projectors start the same per seed
    recipe = recipe_cls(context)
    watched = recipe.trainable()
    ame = None
    if config.uses_ame:
        width = recipe.score_vectors().shape[1]
        ame = make_ame(config, width, device)

    teacher_model = teacher.model.to(device).eval() if live else None
    teacher_features = None if live else teacher.features.to(device).float()
    teacher_view = ViewAdapter(source.preprocess_cfg(), teacher.preprocess_cfg) \
        if live and teacher.preprocess_cfg else None

    def teacher_batch(indices, pixels):
        if not live:
            return teacher_features[indices]
        with torch.no_grad():
            view = pixels if teacher_view is None else teacher_view(pixels)
            return teacher_model.encode_image(view, normalize=True).float()

    def step_loss(indices, pixels):
        out = recipe.step(teacher_batch(indices, pixels), pixels, indices)
        if ame is None:
            return out.terms
        return {**out.terms, **ame(out.image_rows, out.class_rows)}

    selector = ModelSelector("last")
    if config.selection != "last":
        held_out = validation if config.selection == "best_val" else base_test
        if held_out is None:
            raise ValueError(f"selection {config.selection!r} needs the "
                             f"{'validation' if config.selection == 'best_val' else 'base_test'} images and labels")
        selector = ModelSelector(config.selection, lambda: accuracy_among(
            recipe.model, held_out[0], held_out[1], recipe.score_vectors(), context.classes, device))

    modules = watched + ([ame] if ame is not None else [])
    history = fit(modules, step_loss, num_images, config.optim, device, log_path=log_path, progress=progress,
                  checkpoint_path=checkpoint_path, selector=selector, images=source, watched=watched,
                  batch_plan=recipe.batch_plan())
    extras = recipe.finish(validation)
    recipe.model.eval()
    return DistillResult(model=recipe.model, history=history, selection=selector.summary(), extras=extras,
                         scores_in_teacher_space=recipe_cls.scores_in_teacher_space,
                         added_modules=recipe.modules_to_save())
