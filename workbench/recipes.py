"""Distillation recipes: what trains, how the student's logits are formed, which losses apply.

Each recipe builds a ``step_loss`` for :func:`workbench.train.fit`; none has a loop of its own.
AME plugs into any recipe through :class:`DistillConfig.ame_weight` (0 turns it off): the recipe
hands AME the student's image features and the class text features it classifies against.

``logit_kd``
    ``tau² · KL(teacher ‖ student)`` over the shared class vectors, teacher logits at the teacher's
    own logit scale; the student's image tower trains. Label-free.
``promptkd``
    PromptKD-style: the teacher's class text vectors are computed once and shared; the student is
    its frozen image tower with deep visual prompts and a projector to the teacher's width
    (:class:`workbench.prompts.PromptedStudent`); only prompts and projector train, label-free.
    The field's settings are in ``configs/promptkd.yaml`` (tau 1, KD weight 1000 with per-element
    mean reduction, SGD 0.005, cosine, 20 epochs, batch 8).
``kdpl``
    KDPL-style symmetric KL ``0.5 KL(pt‖ps) + 0.5 KL(ps‖pt)``; the teacher's cosine similarities are
    scaled by the *student's* logit scale, so both distributions have the same sharpness. With
    ``kdpl_top_k > 0`` it is class-agnostic: both models score a vocabulary of class names and each
    batch is distilled over the K classes the teacher finds most probable for it.
``dho``
    Dual-head optimisation: CE and KD heads on the student's image features, both initialised from
    the zero-shot text classifier; CE on labelled images (label -1 = unlabelled), KD on all; at
    inference ``p = α softmax(z_ce) + (1 − α) softmax(z_kd / β)`` with α, β chosen on validation
    (:class:`DualHeadStudent`).
``feature_kd``
    CLIP-KD-style feature matching (cosine or MSE on normalised embeddings) through a linear
    projector from the student's to the teacher's embedding width when they differ, plus
    ``logit_kd_weight`` times logit KD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .losses import AMELoss, FeatureKDLoss, KDLoss, SymmetricKLLoss
from .prompts import PromptedStudent
from .image_sources import ViewAdapter, as_source
from .train import ModelSelector, OptimConfig, encode_images, fit

RECIPES = ("logit_kd", "promptkd", "kdpl", "dho", "feature_kd")
# Recipes whose student is scored against the teacher's class text vectors (through a projector);
# the others score the student with its own text tower's class vectors.
TEACHER_SPACE_RECIPES = ("promptkd",)
TEACHER_MODES = ("cached", "live")
LABEL_FREE_RECIPES = ("logit_kd", "promptkd", "kdpl", "feature_kd")


@dataclass
class DistillConfig:
    """Settings of a distillation run."""

    recipe: str = "logit_kd"  # one of RECIPES
    temperature: float = 1.0  # KD softmax temperature tau
    kd_weight: float = 1.0  # multiplier of the KD term (PromptKD: 1000 with kd_reduction "mean")
    kd_reduction: str = "batchmean"  # "batchmean" (KL per sample) or "mean" (per element, PromptKD)
    feature_distance: str = "cosine"  # feature_kd: "cosine" or "mse"
    logit_kd_weight: float = 1.0  # feature_kd: weight of the logit-KD term added to feature matching
    kdpl_top_k: int = 0  # kdpl: >0 distils each batch over the teacher's top-K vocabulary classes
    prompt_tokens: int = 4  # promptkd: learnable visual prompt tokens per layer
    prompt_depth: int | None = None  # promptkd: layers receiving prompts; None = min(9, tower depth)
    dho_label_weight: float = 0.5  # dho: weight of the CE head's loss; the KD head gets 1 - this
    ame_weight: float = 0.0  # AME weight omega; 0 disables AME (paper default when on: 50)
    ame_manifold_dim: int = 64  # width of AME's shared manifold
    ame_hidden_dim: int = 256  # hidden width of AME's text projection MLP
    ame_variant: str = "paper"  # "paper" (softmax over all rows) or "per_sample" (per-image entropy)
    ame_warmup_steps: int = 0  # steps over which omega ramps up linearly; 0 = full weight at once
    selection: str = "last"  # checkpoint kept: "last", "best_val" or "best_base_test" (see ModelSelector)
    teacher_mode: str = "cached"  # "cached": teacher outputs computed once; "live": teacher runs every step
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimisation settings

    def __post_init__(self):
        from .losses import KD_REDUCTIONS
        from .train import SELECTION_POLICIES

        for name, value, valid in (("recipe", self.recipe, RECIPES), ("kd_reduction", self.kd_reduction, KD_REDUCTIONS),
                                   ("selection", self.selection, SELECTION_POLICIES),
                                   ("teacher_mode", self.teacher_mode, TEACHER_MODES)):
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; valid names: {', '.join(valid)}")
        for name in ("temperature", "ame_weight", "logit_kd_weight", "kd_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (name == "temperature" and value == 0):
                raise ValueError(f"{name} must be finite and {'> 0' if name == 'temperature' else '>= 0'}, "
                                 f"got {value!r}")
        if not 0 <= self.dho_label_weight <= 1:
            raise ValueError(f"dho_label_weight must lie in [0, 1], got {self.dho_label_weight!r}")
        for name in ("kdpl_top_k", "prompt_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if self.prompt_depth is not None and (not isinstance(self.prompt_depth, int) or self.prompt_depth < 1):
            raise ValueError(f"prompt_depth must be a positive int or null, got {self.prompt_depth!r}")
        from .losses import AME_VARIANTS
        if self.ame_variant not in AME_VARIANTS:
            raise ValueError(f"unknown ame_variant {self.ame_variant!r}; valid names: {', '.join(AME_VARIANTS)}")
        for name, least in (("ame_manifold_dim", 1), ("ame_hidden_dim", 1), ("ame_warmup_steps", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")

    @classmethod
    def from_dict(cls, data: dict, origin: str = "distill") -> "DistillConfig":
        from .config import from_mapping
        return from_mapping(cls, data, origin)

    @property
    def uses_ame(self) -> bool:
        return self.ame_weight > 0


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


class DualHeadStudent(nn.Module):
    """DHO's student: an image tower with a CE head and a KD head over the same classes.

    Both heads are linear maps of the unit-norm image features, initialised to the zero-shot text
    classifier (``class_vectors``) and scaled by the student's logit scale. Inference mixes
    ``p = α softmax(z_ce) + (1 − α) softmax(z_kd / β)``; :meth:`class_logits` returns ``log p`` so that
    every probability-based metric sees the mixture.
    """

    def __init__(self, student: nn.Module, class_vectors: torch.Tensor, alpha: float = 0.5, beta: float = 1.0):
        super().__init__()
        self.student = student
        width, classes = class_vectors.shape[1], class_vectors.shape[0]
        self.ce_head = nn.Linear(width, classes, bias=False)
        self.kd_head = nn.Linear(width, classes, bias=False)
        with torch.no_grad():
            self.ce_head.weight.copy_(class_vectors)
            self.kd_head.weight.copy_(class_vectors)
        self.register_buffer("logit_scale", student.logit_scale.detach().clone())
        self.set_mixing(alpha, beta)

    def set_mixing(self, alpha: float, beta: float) -> None:
        if not 0 <= alpha <= 1 or not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"DHO mixing needs alpha in [0, 1] and beta > 0, got alpha={alpha!r}, beta={beta!r}")
        self.alpha, self.beta = float(alpha), float(beta)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.student.encode_image(images, normalize=normalize)

    def head_logits(self, features: torch.Tensor, classes: torch.Tensor | None = None):
        """``(z_ce, z_kd)`` of unit-norm ``features``, over ``classes`` (indices) or all classes."""
        scale = self.logit_scale.exp()
        w_ce, w_kd = self.ce_head.weight, self.kd_head.weight
        if classes is not None:
            w_ce, w_kd = w_ce[classes], w_kd[classes]
        return scale * features @ w_ce.T, scale * features @ w_kd.T

    def class_logits(self, features: torch.Tensor, class_vectors: torch.Tensor | None = None,
                     alpha: float | None = None, beta: float | None = None) -> torch.Tensor:
        """``log p`` of the mixed heads; ``class_vectors`` must be the classes the heads were built for."""
        if class_vectors is not None and class_vectors.shape[0] != self.ce_head.weight.shape[0]:
            raise ValueError(f"DHO heads score {self.ce_head.weight.shape[0]} classes, "
                             f"asked for {class_vectors.shape[0]}")
        alpha = self.alpha if alpha is None else alpha
        beta = self.beta if beta is None else beta
        z_ce, z_kd = self.head_logits(features.to(self.ce_head.weight.dtype))
        return _log_mixture(z_ce, z_kd, alpha, beta)


def _log_mixture(z_ce: torch.Tensor, z_kd: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    # log(α p_ce + (1-α) p_kd) in log space, so that a zero weight or underflow never gives NaN.
    parts = [F.log_softmax(z_ce, dim=1) + math.log(alpha) if alpha > 0 else None,
             F.log_softmax(z_kd / beta, dim=1) + math.log(1 - alpha) if alpha < 1 else None]
    parts = [p for p in parts if p is not None]
    return torch.logsumexp(torch.stack(parts), dim=0)


DHO_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))
DHO_BETAS = (0.5, 1.0, 2.0, 4.0)


@torch.no_grad()
def choose_dho_mixing(model: DualHeadStudent, images, labels, classes: torch.Tensor,
                      device: torch.device) -> dict[str, float]:
    """Pick DHO's (α, β) by accuracy on labelled validation images (ties: the first in grid order).

    Accuracy is among ``classes`` (the classes training saw). Sets the model's mixing and returns
    ``{"alpha", "beta", "val_acc"}``.
    """
    features = encode_images(model, images, device=device).to(device)
    z_ce, z_kd = model.head_logits(features.to(model.ce_head.weight.dtype), classes.to(device))
    position = {int(c): i for i, c in enumerate(classes.tolist())}
    targets = torch.tensor([position[int(y)] for y in np.asarray(labels)], device=device)
    best = None
    for alpha in DHO_ALPHAS:
        for beta in DHO_BETAS:
            accuracy = float((_log_mixture(z_ce, z_kd, alpha, beta).argmax(1) == targets).float().mean())
            if best is None or accuracy > best["val_acc"]:
                best = {"alpha": alpha, "beta": beta, "val_acc": accuracy}
    model.set_mixing(best["alpha"], best["beta"])
    return best


def make_ame(config: DistillConfig, width: int, device: torch.device) -> AMELoss:
    """The AME regularizer of ``config`` for features of ``width``, seeded by the run's seed."""
    torch.manual_seed(config.optim.seed)  # AME's projections start the same for the same seed
    return AMELoss(image_dim=width, text_dim=width, manifold_dim=config.ame_manifold_dim,
                   hidden_dim=config.ame_hidden_dim, weight=config.ame_weight,
                   variant=config.ame_variant, warmup_steps=config.ame_warmup_steps).to(device)


@dataclass
class DistillResult:
    """What :func:`distill` leaves: the model to evaluate, the per-step log and the selection made."""

    model: nn.Module  # encode_image + logit_scale (+ class_logits for DHO), like an open_clip model
    history: list[dict]  # per-step records, as in the JSONL log
    selection: dict  # policy, chosen epoch, its score, per-epoch scores
    extras: dict = field(default_factory=dict)  # recipe-specific choices (DHO's alpha and beta)
    scores_in_teacher_space: bool = False  # True: evaluate against the teacher's class vectors (PromptKD)


@torch.no_grad()
def accuracy_among(model: nn.Module, images, labels, class_vectors: torch.Tensor, classes: torch.Tensor,
                   device: torch.device) -> float:
    """Top-1 accuracy of ``model`` on labelled ``images``, predicting among ``classes`` only."""
    from .evaluation import predict

    _, logits = predict(model, images, class_vectors, device=device)
    classes = torch.as_tensor(classes).cpu()
    predicted = classes[logits[:, classes].argmax(1)]
    return float((predicted == torch.as_tensor(np.asarray(labels))).float().mean())


def distill(student, images, teacher: TeacherTargets, class_vectors: torch.Tensor, config: DistillConfig,
            device: torch.device, log_path: str | Path | None = None, progress: bool = False,
            checkpoint_path: str | Path | None = None, *, train_classes=None, labels=None,
            validation: tuple | None = None, base_test: tuple | None = None,
            vocabulary: torch.Tensor | None = None, student_class_vectors: torch.Tensor | None = None,
            student_vocabulary: torch.Tensor | None = None) -> DistillResult:
    """Distil ``teacher`` into ``student`` with ``config.recipe``, optionally with AME.

    Parameters
    ----------
    student : open_clip model
        Its image tower (or, for ``promptkd``, prompts and projector added to it) trains; its text
        tower and logit scale stay as they are.
    images : uint8 array (N, H, W, 3) or image source
        Training images: an array (the embedded world) or a source from :mod:`workbench.image_sources`
        (a manifest split through the student's eval or train transform).
    teacher : TeacherTargets
        Teacher embeddings of the same N images (or the live teacher, which then sees the student's
        view of each image adapted to its own input size and normalisation).
    class_vectors : tensor (C, D)
        Unit-norm class text vectors in the teacher's embedding space — all classes of the task.
        Teacher logits are formed against them; so are the student's in ``promptkd``.
    student_class_vectors : tensor (C, Ds), optional
        The same classes' vectors from the student's own text tower, which the student is scored
        against in every recipe but ``promptkd``. Default ``class_vectors`` (a shared text tower, as
        in the embedded pair).
    config : DistillConfig
    device : torch.device
    log_path, progress, checkpoint_path
        Passed to :func:`workbench.train.fit` (JSONL log, progress bar, per-epoch checkpoint and resume;
        AME's projections are part of the checkpoint, so a resumed run continues them too).
    train_classes : array of int, optional
        Classes training sees (e.g. the base classes); default all. Logits during training range over
        these only; evaluation can use every class.
    labels : array of int (N,), optional
        Class of each training image in ``0..C-1`` or -1 for unlabelled; required by ``dho`` only.
    validation : (images, labels), optional
        Labelled held-out images of training classes: DHO's (α, β) choice and ``selection="best_val"``.
    base_test : (images, labels), optional
        Base-class test images for ``selection="best_base_test"`` (the field's protocol).
    vocabulary : tensor (V, D), optional
        Class-agnostic KDPL's vocabulary; default ``class_vectors``.
    student_vocabulary : tensor (V, Ds), optional
        The vocabulary from the student's text tower; needed when ``student_class_vectors`` is given.
    """
    source = as_source(images)
    num_images = len(source)
    if teacher.features is not None and num_images != len(teacher.features):
        raise ValueError(f"{num_images} images but {len(teacher.features)} rows of teacher features")
    if teacher.features is None and teacher.model is None:
        raise ValueError("teacher targets have neither cached features nor a teacher model")
    if config.teacher_mode == "live" and teacher.model is None:
        raise ValueError("teacher_mode 'live' needs TeacherTargets with the teacher model")
    if source.augmented and config.teacher_mode != "live":
        raise ValueError("the training images are augmented, so the teacher must see each augmented view: "
                         "set teacher_mode 'live' (cached features are of un-augmented images)")
    recipe = config.recipe
    if recipe == "dho" and labels is None:
        raise ValueError("recipe 'dho' needs labels (-1 for unlabelled images)")
    student.to(device)
    vectors = class_vectors.to(device).float()
    classes = torch.arange(len(vectors)) if train_classes is None else torch.as_tensor(np.asarray(train_classes))
    classes = classes.long().to(device)
    train_vectors = vectors[classes]
    in_teacher_space = recipe in TEACHER_SPACE_RECIPES
    shared_text = student_class_vectors is None
    student_vectors = vectors if shared_text else student_class_vectors.to(device).float()
    if student_vectors.shape[0] != vectors.shape[0]:
        raise ValueError(f"student_class_vectors has {student_vectors.shape[0]} classes, class_vectors "
                         f"{vectors.shape[0]}")
    student_train_vectors = student_vectors[classes]
    student_width = int(student.visual.output_dim)
    if not in_teacher_space and student_width != student_vectors.shape[1]:
        raise ValueError(
            f"student embeddings have width {student_width} but the class vectors it is scored against "
            f"{student_vectors.shape[1]}; pass student_class_vectors from the student's own text tower "
            f"(recipe {recipe!r} scores the student in its own space)")
    live = config.teacher_mode == "live"
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

    torch.manual_seed(config.optim.seed)  # recipe heads, prompts and projectors start the same per seed
    student_scale = student.logit_scale.detach().exp()
    if recipe == "promptkd":
        depth = config.prompt_depth or min(9, len(student.visual.transformer.resblocks))
        model = PromptedStudent(student, vectors.shape[1], teacher.logit_scale, config.prompt_tokens, depth).to(device)
        modules: list[nn.Module] = model.trainable()
        scale = torch.tensor(teacher.logit_scale, device=device)
    elif recipe == "dho":
        model = DualHeadStudent(student, student_vectors).to(device)
        modules = [student.visual, model.ce_head, model.kd_head]
        scale = student_scale
    else:
        model, modules, scale = student, [student.visual], student_scale

    kd_class = SymmetricKLLoss if recipe == "kdpl" else KDLoss
    kd = kd_class(config.temperature, reduction=config.kd_reduction)
    teacher_scale = student_scale if recipe == "kdpl" else teacher.logit_scale

    projector = feature_kd = None
    if recipe == "feature_kd":
        teacher_width = vectors.shape[1]
        # Shared text space (the embedded pair): the student is scored through the projector, as before;
        # own text tower: the projector only serves the feature term and logits use the student's own space.
        projector = nn.Identity() if student_width == teacher_width else nn.Linear(student_width, teacher_width)
        projector.to(device)
        modules.append(projector)
        feature_kd = FeatureKDLoss(config.feature_distance)

    vocab = student_vocab = None
    if recipe == "kdpl" and config.kdpl_top_k:
        vocab = (vocabulary if vocabulary is not None else class_vectors).to(device).float()
        if config.kdpl_top_k > len(vocab):
            raise ValueError(f"kdpl_top_k={config.kdpl_top_k} exceeds the vocabulary's {len(vocab)} classes")
        if not shared_text and student_vocabulary is None:
            raise ValueError("class-agnostic kdpl with the student's own text tower needs student_vocabulary")
        student_vocab = vocab if shared_text else student_vocabulary.to(device).float()

    scored_rows = train_vectors if in_teacher_space else student_train_vectors
    ame = make_ame(config, scored_rows.shape[1], device) if config.uses_ame else None
    if ame is not None:
        modules.append(ame)

    if recipe == "dho":
        position = torch.full((len(vectors),), -1, dtype=torch.long)
        position[classes.cpu()] = torch.arange(len(classes))
        label_tensor = torch.as_tensor(np.asarray(labels)).long()
        if label_tensor.shape != (num_images,):
            raise ValueError(f"labels must have shape ({num_images},), got {tuple(label_tensor.shape)}")
        bad = label_tensor[(label_tensor >= 0) & (position[label_tensor.clamp(min=0)] < 0)]
        if len(bad):
            raise ValueError(f"labelled images of classes outside train_classes: {sorted(set(bad.tolist()))[:10]}")
        targets = torch.where(label_tensor >= 0, position[label_tensor.clamp(min=0)], -1).to(device)

    def step_loss(indices, pixels):
        t_features = teacher_batch(indices, pixels)
        features = model.encode_image(pixels, normalize=True)
        student_features = features
        projected = None
        if projector is not None:
            projected = F.normalize(projector(student_features), dim=-1)
            if shared_text:
                features = projected
        if recipe == "dho":
            z_ce, z_kd = model.head_logits(features, classes)
            kd_terms = kd(z_kd, teacher_scale * t_features @ train_vectors.T)
            labelled = targets[indices] >= 0
            ce = (F.cross_entropy(z_ce[labelled], targets[indices][labelled]) if bool(labelled.any())
                  else z_ce.sum() * 0)
            terms = {"kd_loss": (1 - config.dho_label_weight) * config.kd_weight * kd_terms["kd_loss"],
                     "ce_loss": config.dho_label_weight * ce}
            text_rows = student_train_vectors
        elif vocab is not None:
            teacher_vocab = teacher_scale * t_features @ vocab.T
            top = teacher_vocab.softmax(dim=1).mean(dim=0).topk(config.kdpl_top_k).indices
            text_rows = student_vocab[top]
            terms = kd(scale * features @ text_rows.T, teacher_vocab[:, top])
        else:
            text_rows = scored_rows
            terms = kd(scale * features @ text_rows.T, teacher_scale * t_features @ train_vectors.T)
        if recipe != "dho":
            terms = {k: config.kd_weight * v for k, v in terms.items()}
        if feature_kd is not None:
            terms = {k: config.logit_kd_weight * v for k, v in terms.items()}
            terms.update(feature_kd(projected, t_features))
        if ame is not None:
            terms.update(ame(features, text_rows))
        return terms

    selector = ModelSelector("last")
    if config.selection != "last":
        held_out = validation if config.selection == "best_val" else base_test
        if held_out is None:
            raise ValueError(f"selection {config.selection!r} needs the "
                             f"{'validation' if config.selection == 'best_val' else 'base_test'} images and labels")
        selector = ModelSelector(config.selection, lambda: accuracy_among(
            model, held_out[0], held_out[1], vectors if in_teacher_space else student_vectors, classes, device))

    history = fit(modules, step_loss, num_images, config.optim, device, log_path=log_path, progress=progress,
                  checkpoint_path=checkpoint_path, selector=selector, images=source)
    extras = {}
    if recipe == "dho" and validation is not None:
        extras["dho_mixing"] = choose_dho_mixing(model, validation[0], validation[1], classes, device)
    model.eval()
    return DistillResult(model=model, history=history, selection=selector.summary(), extras=extras,
                         scores_in_teacher_space=in_teacher_space)
