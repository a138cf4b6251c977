"""Distillation recipes: one module per recipe, a registry, and :func:`distill`, which runs any of them with AME.

Each recipe is a :class:`Recipe` subclass listed by name in :mod:`.registry`: it owns its settings' official
defaults (``defaults``), the modules that train and the loss terms of a batch; ``docs/recipes.md``
holds the fidelity table (each setting, the reference code's value and where it is, the default
here). :func:`distill` checks the inputs, builds the recipe, attaches AME to the image features and
class rows the recipe hands it, and calls :func:`workbench.train.fit`. Adding a recipe is one new
module in this package and one line in the table of :mod:`.registry`.

``logit_kd``    Hinton et al.'s logit KD; the student's image tower trains (:mod:`.logit_kd`).
``promptkd``    PromptKD: visual prompts and an MLP projector into the teacher's space (:mod:`.promptkd`).
``kdpl``        KDPL: visual prompts, symmetric KL, optional class-agnostic vocabulary (:mod:`.kdpl`).
``dho``         DHO: CE and KD heads, mixed at inference (:mod:`.dho`).
``feature_kd``  CLIP-KD's feature distillation (:mod:`.feature_kd`).
"""

from __future__ import annotations

from ..train import encode_images
from .base import DistillContext, Recipe, StepOutput, TeacherTargets
from .config import RECIPE_FIELDS, TEACHER_MODES, DistillConfig
from .dho import DHO_ALPHAS, DHO_BETAS, DualHeadStudent, choose_dho_mixing
from .distill import DistillResult, accuracy_among, distill, make_ame
from .registry import RECIPES, REGISTRY, recipe_class
from .teacher_tuning import TeacherTuningConfig, load_or_tune_teacher, tune_teacher

LABEL_FREE_RECIPES = tuple(name for name in RECIPES if not REGISTRY[name].needs_labels)
TEACHER_SPACE_RECIPES = tuple(name for name in RECIPES if REGISTRY[name].scores_in_teacher_space)

__all__ = ["DHO_ALPHAS", "DHO_BETAS", "LABEL_FREE_RECIPES", "RECIPES", "RECIPE_FIELDS", "REGISTRY",
           "TEACHER_MODES", "TEACHER_SPACE_RECIPES", "DistillConfig", "TeacherTuningConfig", "DistillContext", "DistillResult",
           "DualHeadStudent", "Recipe", "StepOutput", "TeacherTargets", "accuracy_among", "choose_dho_mixing",
           "distill", "encode_images", "load_or_tune_teacher", "make_ame", "recipe_class", "tune_teacher"]
