"""Reference solutions to the exercises of notebooks/00_concepts.ipynb (kept out of the notebook, so that
*Run All* never shows them; run the notebook with ``solutions=True`` to check them)."""

import torch
import torch.nn.functional as F


def kd_loss(student_logits, teacher_logits, tau):
    # Both distributions softened by tau, KL(teacher || student) per sample, then the tau**2 factor.
    log_p_student = F.log_softmax(student_logits / tau, dim=1)
    p_teacher = F.softmax(teacher_logits / tau, dim=1)
    kl = (p_teacher * (p_teacher.log() - log_p_student)).sum(dim=1).mean()
    return tau**2 * kl


def harmonic_mean(base, new):
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)


def entropy_gradient(scores):
    scores = scores.detach().double().requires_grad_(True)
    p = torch.softmax(scores, dim=0)
    entropy = -(p * p.log()).sum()
    return torch.autograd.grad(entropy, scores)[0]
