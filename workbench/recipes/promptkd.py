"""PromptKD (Li et al., CVPR 2024, "PromptKD: Unsupervised Prompt Distillation for Vision-Language Models").

Matched to zhengli97/PromptKD ``trainers/promptkd.py`` and ``scripts/promptkd/base2new_train.sh``: the
student is its frozen image tower with deep visual prompts (4 tokens, 9 layers, N(0, 0.02²)) and a
projector to the teacher's width (Linear, BatchNorm, ReLU, Linear; random initialisation); its
logits use its own logit scale against the teacher's class text vectors of *every* class, and the
loss is ``1000 · tau² · KL(teacher ‖ student)`` averaged over samples and classes (200 on
FGVC-Aircraft, Flowers102 and DTD). Label-free; PromptKD trains on every unlabelled training image
(``setting: transductive`` in ``configs/promptkd.yaml``). The last incomplete batch is dropped, as the
reference's data loader does (BatchNorm needs more than one sample). ``docs/recipes.md`` lists the rest.
"""

from __future__ import annotations

import torch

from ..losses import KDLoss
from ..prompts import PromptedStudent
from .base import Recipe, StepOutput
from .logit_kd import weighted


def drop_last_plan(num_samples: int):
    """A permutation cut into full batches only (``drop_last=True``), the reference loaders' behaviour."""
    def plan(generator: torch.Generator, batch_size: int) -> list[torch.Tensor]:
        if num_samples < batch_size:
            raise ValueError(f"{num_samples} training images make no full batch of {batch_size}")
        permutation = torch.randperm(num_samples, generator=generator)
        return [permutation[start:start + batch_size]
                for start in range(0, num_samples - batch_size + 1, batch_size)]
    return plan


class PromptKD(Recipe):
    name = "promptkd"
    scores_in_teacher_space = True
    defaults = {"temperature": 1.0, "kd_weight": 1000.0, "kd_reduction": "mean", "prompt_tokens": 4,
                "prompt_depth": 9, "prompt_init_std": 0.02, "projector": "mlp", "student_scale": "own"}
    dataset_defaults = {name: {"kd_weight": 200.0} for name in ("fgvc_aircraft", "flowers102", "dtd")}
    optim_defaults = {"epochs": 20, "batch_size": 8, "lr": 0.005, "optimizer": "sgd", "momentum": 0.9,
                      "weight_decay": 0.0005, "warmup_fraction": 0.05, "grad_clip": 0.0}

    def __init__(self, context):
        super().__init__(context)
        config, student = self.config, context.student
        scale = float(student.logit_scale.detach().exp()) if config.student_scale == "own" \
            else context.teacher.logit_scale
        depth = min(config.prompt_depth, len(student.visual.transformer.resblocks))
        self.model = PromptedStudent(student, context.vectors.shape[1], scale, config.prompt_tokens, depth,
                                     config.prompt_init_std, config.projector).to(context.device)
        self.kd = KDLoss(config.temperature, reduction=config.kd_reduction)

    def trainable(self):
        return self.model.trainable()

    def batch_plan(self):
        return drop_last_plan(self.context.num_images) if self.config.projector == "mlp" else None

    def step(self, teacher_features, pixels, indices) -> StepOutput:
        features = self.model.encode_image(pixels, normalize=True)
        rows = self.context.train_vectors
        student_logits = self.model.logit_scale.exp() * features @ rows.T
        terms = self.kd(student_logits, self.context.teacher_logits(teacher_features))
        return StepOutput(weighted(terms, self.config.kd_weight), features, rows)

    def modules_to_save(self):
        return {"prompts": self.model.prompts, "projector": self.model.projector}
