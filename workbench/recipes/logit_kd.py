"""Logit KD (Hinton et al., 2015, "Distilling the Knowledge in a Neural Network").

``kd_weight · tau² · KL(teacher ‖ student)`` over the training classes; the teacher's logits at its own
logit scale, the student's at its own; the student's whole image tower trains, label-free. The
workbench's baseline: no reference code beyond the paper, whose temperature the defaults leave at 1.
"""

from __future__ import annotations

from ..losses import KDLoss
from .base import Recipe, StepOutput


def weighted(terms: dict, weight: float) -> dict:
    """Every ``*_loss`` term times ``weight``; other entries (diagnostics) unchanged."""
    return {k: weight * v if k.endswith("_loss") else v for k, v in terms.items()}


class LogitKD(Recipe):
    name = "logit_kd"
    defaults = {"temperature": 1.0, "kd_weight": 1.0, "kd_reduction": "batchmean"}
    # No reference code: the workbench's own baseline (AdamW, clipping at 1.0 as OptimConfig has it).
    optim_defaults = {"epochs": 20, "batch_size": 32, "lr": 0.0005, "warmup_fraction": 0.05}

    def __init__(self, context):
        super().__init__(context)
        self.kd = KDLoss(self.config.temperature, reduction=self.config.kd_reduction)
        self.scale = context.student.logit_scale.detach().exp()

    def step(self, teacher_features, pixels, indices) -> StepOutput:
        features = self.model.encode_image(pixels, normalize=True)
        rows = self.context.student_train_vectors
        terms = self.kd(self.scale * features @ rows.T, self.context.teacher_logits(teacher_features))
        return StepOutput(weighted(terms, self.config.kd_weight), features, rows)
