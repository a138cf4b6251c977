"""The settings of a distillation run, and how a recipe's own defaults fill the ones left unset."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..losses import AME_VARIANTS, FEATURE_DISTANCES, IMAGE_PROJECTIONS, KD_REDUCTIONS
from ..selection import SELECTION_POLICIES
from ..train import OptimConfig
from .registry import RECIPES, REGISTRY, recipe_class

TEACHER_MODES = ("cached", "live")
PROJECTORS = ("mlp", "linear")  # PromptKD's projector: two-layer MLP with BatchNorm (official) or one Linear
STUDENT_SCALES = ("own", "teacher")  # logit scale of the student's logits in PromptKD
# what KDPL trains: deep visual prompts (VPT variant), CoOp's text context, MaPLe's coupled prompts, or the tower
KDPL_PROMPTS = ("vpt", "coop", "maple", "image_tower")


@dataclass
class DistillConfig:
    """Settings of a distillation run.

    Fields marked *recipe* default to ``None``: "the recipe's own default", the value of the method's
    official code (``docs/recipes.md`` names the source of each). :meth:`resolved` fills them in; a
    run directory's ``config.json`` records the filled-in values. Setting a field the chosen recipe
    does not read is an error, so a setting never silently does nothing.
    """

    recipe: str = "logit_kd"  # a recipe of workbench.recipes.RECIPES
    # recipe: knowledge distillation
    temperature: float | None = None  # KD softmax temperature tau
    kd_weight: float | None = None  # multiplier of the KD term (PromptKD: 1000, 200 on three datasets)
    kd_reduction: str | None = None  # "batchmean" (KL per sample) or "mean" (per element: PromptKD)
    # recipe: feature_kd (CLIP-KD's FD)
    feature_distance: str | None = None  # "mse" (element mean of squared differences) or "cosine"
    feature_weight: float | None = None  # multiplier of the feature term (CLIP-KD: 2000)
    logit_kd_weight: float | None = None  # logit KD added to feature matching (CLIP-KD's FD: none)
    # recipe: kdpl
    kdpl_prompts: str | None = None  # "vpt" visual prompts; "coop" text context; "maple" both, coupled; "image_tower"
    kdpl_top_k: int | None = None  # >0: class-agnostic, each batch distilled over the teacher's top-K names
    kdpl_vocabulary: str | None = None  # class-agnostic: file of generic class names, one per line
    text_context_init: str | None = None  # kdpl_prompts "coop"/"maple": the words the shared context starts as
    # recipe: promptkd and kdpl (visual prompts)
    prompt_tokens: int | None = None  # learnable prompt tokens per layer (MaPLe: of the text context)
    prompt_depth: int | None = None  # layers receiving prompts (capped at the tower's depth)
    prompt_init_std: float | None = None  # prompts start as N(0, std²)
    # recipe: promptkd
    projector: str | None = None  # student -> teacher width: "mlp" (Linear, BatchNorm, ReLU, Linear) or "linear"
    student_scale: str | None = None  # the student's logits at its "own" logit scale or the "teacher"'s
    # recipe: dho
    dho_label_weight: float | None = None  # CE weight; the KD terms get 1 - this
    # AME: any recipe
    ame_weight: float = 0.0  # AME weight omega; 0 disables AME (paper default when on: 50)
    ame_manifold_dim: int = 64  # width of AME's shared manifold
    ame_hidden_dim: int = 256  # hidden width of AME's text projection MLP
    ame_image_projection: str = "linear"  # "linear" or "conv1d" (our reading of the paper's convolution)
    ame_variant: str = "paper"  # "paper" (softmax over all rows) or "per_sample" (per-image entropy)
    ame_warmup_steps: int = 0  # steps over which omega ramps up linearly; 0 = full weight at once
    selection: str = "last"  # checkpoint kept: "last", "best_val" or "best_base_test" (see ModelSelector)
    teacher_mode: str = "cached"  # "cached": teacher outputs computed once; "live": teacher runs every step
    optim: OptimConfig | None = None  # optimisation settings; None: the recipe's official ones (optim_defaults)

    def __post_init__(self):
        cls = recipe_class(self.recipe)
        if self.optim is None:
            self.optim = OptimConfig(**cls.optim_defaults)
        for name in RECIPE_FIELDS:
            if getattr(self, name) is not None and name not in cls.defaults:
                owners = [r for r in RECIPES if name in REGISTRY[r].defaults]
                raise ValueError(f"{name} is a setting of recipe {' and '.join(owners)}; recipe {self.recipe!r} "
                                 f"does not read it (remove it, or choose one of those recipes)")
        for name, value, valid in (("kd_reduction", self.kd_reduction, KD_REDUCTIONS),
                                   ("feature_distance", self.feature_distance, FEATURE_DISTANCES),
                                   ("kdpl_prompts", self.kdpl_prompts, KDPL_PROMPTS),
                                   ("projector", self.projector, PROJECTORS),
                                   ("student_scale", self.student_scale, STUDENT_SCALES),
                                   ("selection", self.selection, SELECTION_POLICIES),
                                   ("teacher_mode", self.teacher_mode, TEACHER_MODES),
                                   ("ame_variant", self.ame_variant, AME_VARIANTS),
                                   ("ame_image_projection", self.ame_image_projection, IMAGE_PROJECTIONS)):
            if value is not None and value not in valid:
                raise ValueError(f"unknown {name} {value!r}; valid names: {', '.join(valid)}")
        for name in ("temperature", "prompt_init_std"):
            value = getattr(self, name)
            if value is not None and not (_number(value) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("kd_weight", "feature_weight", "logit_kd_weight", "ame_weight"):
            value = getattr(self, name)
            if value is not None and not (_number(value) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.dho_label_weight is not None and not (_number(self.dho_label_weight)
                                                      and 0 <= self.dho_label_weight <= 1):
            raise ValueError(f"dho_label_weight must lie in [0, 1], got {self.dho_label_weight!r}")
        for name, least in (("kdpl_top_k", 0), ("prompt_tokens", 1), ("prompt_depth", 1), ("ame_manifold_dim", 1),
                            ("ame_hidden_dim", 1), ("ame_warmup_steps", 0)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if self.kdpl_vocabulary is not None and not (isinstance(self.kdpl_vocabulary, str) and self.kdpl_vocabulary):
            raise ValueError(f"kdpl_vocabulary must be a file path, got {self.kdpl_vocabulary!r}")
        if self.text_context_init is not None and not (isinstance(self.text_context_init, str)
                                                       and self.text_context_init.strip()):
            raise ValueError(f"text_context_init must be a non-empty phrase (e.g. 'a photo of a'), "
                             f"got {self.text_context_init!r}")
        if self.kdpl_prompts in ("coop", "maple") and self.kdpl_top_k:
            raise ValueError(f"kdpl_prompts {self.kdpl_prompts!r} with kdpl_top_k > 0 (class-agnostic KDPL over a "
                             "generic vocabulary) is not built: the text context would have to encode the "
                             "vocabulary's names every step; use kdpl_prompts 'vpt' for class-agnostic KDPL")

    @staticmethod
    def layer_defaults(data: dict) -> dict:
        """``data`` with the chosen recipe's official optimiser settings under the ``optim`` keys it sets
        (:func:`workbench.config.from_mapping` calls it), so that ``optim: {epochs: 2}`` changes the epochs
        of PromptKD's SGD schedule instead of falling back to the generic defaults."""
        recipe, optim = data.get("recipe", "logit_kd"), data.get("optim")
        if not isinstance(recipe, str) or recipe not in REGISTRY or not isinstance(optim, dict):
            return data
        return {**data, "optim": {**REGISTRY[recipe].optim_defaults, **optim}}

    @classmethod
    def from_dict(cls, data: dict, origin: str = "distill") -> "DistillConfig":
        from ..config import from_mapping
        return from_mapping(cls, data, origin)

    def resolved(self, dataset: str | None = None) -> "DistillConfig":
        """A copy with every unset recipe field at the recipe's official default (for ``dataset`` where
        the official code uses another value for it, e.g. PromptKD's KD weight 200 on FGVC-Aircraft)."""
        cls = recipe_class(self.recipe)
        defaults = {**cls.defaults, **cls.dataset_defaults.get(dataset, {})}
        unset = {name: value for name, value in defaults.items() if getattr(self, name) is None}
        return dataclasses.replace(self, **unset) if unset else self

    @property
    def uses_ame(self) -> bool:
        return self.ame_weight > 0


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(DistillConfig) if f.default is None and f.name != "optim")
