"""Feature distillation as in CLIP-KD (Yang et al., CVPR 2024, "CLIP-KD: An Empirical Study of CLIP Model
Distillation"), its FD method.

Matched to winycg/CLIP-KD ``src/open_clip/loss.py`` (``KDClipLoss``) and ``script/methods/FD.sh``: the
student's raw image embedding goes through a Linear projector (with bias, default initialisation;
none when the widths agree), is L2-normalised and matched to the teacher's unit-norm embedding by
``2000 · mean((s − t)²)`` over every element. The student's image tower trains; label-free.
CLIP-KD adds the student's own contrastive loss on image–caption pairs, and the same term on text
embeddings; distillation here has class names, not captions, and a frozen text tower, so neither
exists (``docs/recipes.md``). ``logit_kd_weight > 0`` adds logit KD (not part of FD).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..losses import FeatureKDLoss, KDLoss
from .base import Recipe, StepOutput
from .logit_kd import weighted


class FeatureKD(Recipe):
    name = "feature_kd"
    defaults = {"feature_distance": "mse", "feature_weight": 2000.0, "logit_kd_weight": 0.0,
                "temperature": 1.0, "kd_weight": 1.0, "kd_reduction": "batchmean"}
    optim_defaults = {"epochs": 20, "batch_size": 32, "lr": 0.001, "weight_decay": 0.1, "warmup_fraction": 0.05,
                      "grad_clip": 0.0}

    def __init__(self, context):
        super().__init__(context)
        teacher_width, student_width = context.vectors.shape[1], context.student_width
        self.projector = (nn.Identity() if student_width == teacher_width
                          else nn.Linear(student_width, teacher_width)).to(context.device)
        self.feature_kd = FeatureKDLoss(self.config.feature_distance)
        self.kd = KDLoss(self.config.temperature, reduction=self.config.kd_reduction)
        self.scale = context.student.logit_scale.detach().exp()

    def trainable(self):
        return [self.context.student.visual, self.projector]

    def step(self, teacher_features, pixels, indices) -> StepOutput:
        raw = self.model.encode_image(pixels)
        features = F.normalize(raw, dim=-1)
        projected = F.normalize(self.projector(raw), dim=-1)
        terms = weighted(self.feature_kd(projected, teacher_features), self.config.feature_weight)
        if self.config.logit_kd_weight:
            rows = self.context.student_train_vectors
            kd = self.kd(self.scale * features @ rows.T, self.context.teacher_logits(teacher_features))
            terms.update(weighted(kd, self.config.logit_kd_weight * self.config.kd_weight))
        return StepOutput(terms, features, self.context.student_train_vectors)

    def modules_to_save(self):
        return {"projector": self.projector} if isinstance(self.projector, nn.Linear) else {}
