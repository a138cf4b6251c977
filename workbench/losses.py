"""Distillation losses: logit KD and AME (Aligned Manifold Entropy).

Each loss is a small ``nn.Module`` whose ``__init__`` takes scalars only and whose ``forward``
takes tensors and returns a dict of named terms, so a training loop can sum and log any mix.
Teacher outputs are passed in; no loss owns a model.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGE_PROJECTIONS = ("linear", "conv1d")
AME_VARIANTS = ("paper", "per_sample")
FEATURE_DISTANCES = ("cosine", "mse")
KD_REDUCTIONS = ("batchmean", "mean")


def entropy(logits: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy (nats) of ``softmax(logits)`` along ``dim``, computed from ``log_softmax``.

    Using ``p * log_softmax`` instead of ``p * log(p)`` keeps every term finite for finite
    logits: a probability that underflows to 0 multiplies a finite log-probability, never -inf.
    """
    log_p = F.log_softmax(logits, dim=dim)
    return -(log_p.exp() * log_p).sum(dim=dim)


def manifold_entropy(image_rows: Tensor, text_rows: Tensor) -> Tensor:
    """Entropy of the shared manifold ``M = [text_rows; image_rows]`` of shape (C + B, D).

    Each row is scored by its feature-wise mean and ``p = softmax`` over the C + B rows, so the
    result is a scalar in ``[0, log(C + B)]``; it reaches ``log(C + B)`` when all scores are equal.
    """
    if image_rows.dim() != 2 or text_rows.dim() != 2:
        raise ValueError(
            f"image_rows and text_rows must be 2-D (rows, width); got shapes "
            f"{tuple(image_rows.shape)} and {tuple(text_rows.shape)}"
        )
    if image_rows.shape[1] != text_rows.shape[1]:
        raise ValueError(
            f"image_rows and text_rows must share the manifold width; got "
            f"{image_rows.shape[1]} and {text_rows.shape[1]}"
        )
    manifold = torch.cat([text_rows, image_rows], dim=0)
    return entropy(manifold.mean(dim=1), dim=0)


class KDLoss(nn.Module):
    """Soft-label knowledge distillation (Hinton et al., 2015).

    ``kd_loss = tau**2 * KL(softmax(t / tau) || softmax(s / tau))`` with ``batchmean`` reduction:
    the KL is summed over classes and averaged over samples, which is the true KL divergence per
    sample (``reduction="mean"`` would also divide by the number of classes). The ``tau**2``
    factor keeps gradient magnitudes roughly independent of the temperature.

    Parameters
    ----------
    temperature : float, default 1.0
        Softmax temperature ``tau``; finite and > 0. Typical range 1 to 8.
    reduction : {"batchmean", "mean"}, default "batchmean"
        ``"batchmean"``: KL per sample, averaged over samples. ``"mean"``: averaged over every
        (sample, class) element, i.e. ``batchmean / C`` — PromptKD's reduction, which it pairs with
        a loss weight of 1000.
    """

    def __init__(self, temperature: float = 1.0, reduction: str = "batchmean"):
        super().__init__()
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
        if reduction not in KD_REDUCTIONS:
            raise ValueError(f"unknown KD reduction {reduction!r}; valid names: {', '.join(KD_REDUCTIONS)}")
        self.temperature = float(temperature)
        self.reduction = reduction

    def _reduce(self, kl_batchmean: Tensor, num_classes: int) -> Tensor:
        return kl_batchmean / num_classes if self.reduction == "mean" else kl_batchmean

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> dict[str, Tensor]:
        """Return ``{"kd_loss": scalar}``; teacher logits are detached (treated as constants).

        Both inputs have shape (B, C). Both distributions are taken in log space, so the loss
        is finite even when probabilities underflow to zero (e.g. logits of +-1e4).
        """
        log_p_student, log_p_teacher = self.log_probs(student_logits, teacher_logits)
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
        return {"kd_loss": self.temperature**2 * self._reduce(kl, student_logits.shape[1])}

    def log_probs(self, student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
        """Validated ``log_softmax`` of both logit sets at the temperature (teacher detached)."""
        if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
            raise ValueError(
                f"student_logits and teacher_logits must both have shape (B, C); got "
                f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
            )
        tau = self.temperature
        return F.log_softmax(student_logits / tau, dim=1), F.log_softmax(teacher_logits.detach() / tau, dim=1)


class AMELoss(nn.Module):
    """Aligned Manifold Entropy: an entropy regularizer on a small shared manifold.

    Student image features (B, Di) and class text features (C, Dt) are projected into a shared
    space of width ``manifold_dim`` (the reconfigured shared manifold, RSM). The projected rows
    are concatenated into ``M`` of shape (C + B, manifold_dim); each row is scored by its
    feature-wise mean, ``p = softmax`` over the C + B rows and ``H(M) = -sum p log p``. The
    loss is ``weight * H``: one scalar per batch (no per-sample reduction, because the softmax
    couples all rows). Inputs are used as given and gradients flow to them.

    Parameters
    ----------
    image_dim : int
        Width Di of the image features; > 0.
    text_dim : int
        Width Dt of the text features; > 0.
    manifold_dim : int, default 64
        Width of the shared manifold; > 0. Typical range 16 to 256.
    hidden_dim : int, default 256
        Hidden width of the text projection MLP; > 0.
    weight : float, default 50.0
        Multiplier omega of the entropy; finite and >= 0. The paper default is 50.
    image_projection : {"linear", "conv1d"}, default "linear"
        ``"linear"``: ``Linear(image_dim, manifold_dim)``. ``"conv1d"``: the feature vector is
        read as a 1-channel signal, passed through ``Conv1d(1, 1, kernel_size=3, stride=2,
        padding=1)`` and average-pooled to ``manifold_dim`` (fewer parameters).
    variant : {"paper", "per_sample"}, default "paper"
        ``"paper"``: the entropy of the softmax over all C + B rows, as above. ``"per_sample"``:
        each projected image scores the projected class vectors by scaled dot product
        (``/ sqrt(manifold_dim)``, as in attention); the entropy of each image's softmax over the C
        classes is averaged over the batch (mean reduction: one entropy per image).
    warmup_steps : int, default 0
        The weight ramps linearly from ``weight / warmup_steps`` to ``weight`` over the first
        ``warmup_steps`` training-mode calls; 0 applies the full weight from the start.
    """

    def __init__(self, image_dim: int, text_dim: int, manifold_dim: int = 64,
                 hidden_dim: int = 256, weight: float = 50.0, image_projection: str = "linear",
                 variant: str = "paper", warmup_steps: int = 0):
        super().__init__()
        for name, value in [("image_dim", image_dim), ("text_dim", text_dim),
                            ("manifold_dim", manifold_dim), ("hidden_dim", hidden_dim)]:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight must be finite and >= 0, got {weight!r}")
        if image_projection not in IMAGE_PROJECTIONS:
            raise ValueError(
                f"unknown image_projection {image_projection!r}; valid names: "
                f"{', '.join(IMAGE_PROJECTIONS)}"
            )
        if variant not in AME_VARIANTS:
            raise ValueError(f"unknown AME variant {variant!r}; valid names: {', '.join(AME_VARIANTS)}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
        self.image_dim, self.text_dim, self.manifold_dim = image_dim, text_dim, manifold_dim
        self.weight = float(weight)
        self.variant = variant
        self.warmup_steps = warmup_steps
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long), persistent=True)
        self.text_projection = nn.Sequential(
            nn.Linear(text_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, manifold_dim)
        )
        if image_projection == "linear":
            self.image_projection = nn.Linear(image_dim, manifold_dim)
        else:
            self.image_projection = nn.Sequential(
                nn.Unflatten(1, (1, image_dim)),  # (B, Di) -> (B, 1, Di)
                nn.Conv1d(1, 1, kernel_size=3, stride=2, padding=1),
                nn.AdaptiveAvgPool1d(manifold_dim),
                nn.Flatten(1),  # (B, 1, manifold_dim) -> (B, manifold_dim)
            )

    def forward(self, image_features: Tensor, text_features: Tensor) -> dict[str, Tensor]:
        """Return ``{"ame_loss": weight * H, "manifold_entropy": H.detach()}``.

        ``image_features`` has shape (B, image_dim) and ``text_features`` (C, text_dim).
        """
        for name, x, width in [("image_features", image_features, self.image_dim),
                               ("text_features", text_features, self.text_dim)]:
            if x.dim() != 2 or x.shape[1] != width:
                raise ValueError(
                    f"{name} must have shape (rows, {width}); got {tuple(x.shape)}"
                )
        image_rows = self.image_projection(image_features)
        text_rows = self.text_projection(text_features)
        if self.variant == "paper":
            h = manifold_entropy(image_rows, text_rows)
        else:
            h = self._row_entropy(image_rows, text_rows).mean()
        return {"ame_loss": self.current_weight() * h, "manifold_entropy": h.detach()}

    def _row_entropy(self, image_rows: Tensor, text_rows: Tensor) -> Tensor:
        return entropy(image_rows @ text_rows.T / math.sqrt(self.manifold_dim), dim=1)

    def sample_entropy(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """Each image's entropy (nats, shape (B,)) over the class rows on the shared manifold.

        Each projected image scores the projected class rows by scaled dot product, as in the
        ``per_sample`` variant; what a trained AME says about one image, whichever variant trained it.
        """
        return self._row_entropy(self.image_projection(image_features), self.text_projection(text_features))

    @classmethod
    def from_state_dict(cls, state: dict) -> "AMELoss":
        """The AME module whose parameters ``state`` holds (widths and image projection read from it)."""
        hidden, text_dim = state["text_projection.0.weight"].shape
        manifold_dim = state["text_projection.2.weight"].shape[0]
        if "image_projection.weight" in state:
            projection, image_dim = "linear", state["image_projection.weight"].shape[1]
        else:  # the convolution keeps no trace of its input width; recipes project images and text of one width
            projection, image_dim = "conv1d", text_dim
        ame = cls(image_dim=int(image_dim), text_dim=int(text_dim), manifold_dim=int(manifold_dim),
                  hidden_dim=int(hidden), image_projection=projection)
        ame.load_state_dict(state)
        return ame

    def current_weight(self) -> float:
        """The weight in force now, advancing the warm-up by one step per training-mode call."""
        if not self.warmup_steps:
            return self.weight
        step = int(self.steps_done)
        if self.training:
            self.steps_done += 1
        return self.weight * min(1.0, (step + 1) / self.warmup_steps)


class SymmetricKLLoss(KDLoss):
    """Symmetric KL divergence used by KDPL: ``0.5 KL(pt || ps) + 0.5 KL(ps || pt)``.

    Reduction as in :class:`KDLoss` (default ``batchmean``: per-sample KL averaged over the batch), and
    both directions are taken at temperature ``tau`` with the ``tau**2`` factor. Unlike KD, the
    reverse term makes the student avoid mass where the teacher has none (mode seeking).

    Parameters
    ----------
    temperature : float, default 1.0
        Softmax temperature; finite and > 0.
    reduction : {"batchmean", "mean"}, default "batchmean"
    """

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> dict[str, Tensor]:
        """Return ``{"symmetric_kl_loss": scalar}``; teacher logits are treated as constants."""
        log_ps, log_pt = self.log_probs(student_logits, teacher_logits)
        forward_kl = F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True)
        reverse_kl = F.kl_div(log_pt, log_ps, reduction="batchmean", log_target=True)
        symmetric = self._reduce(0.5 * (forward_kl + reverse_kl), student_logits.shape[1])
        return {"symmetric_kl_loss": self.temperature**2 * symmetric}


class FeatureKDLoss(nn.Module):
    """Feature distillation (CLIP-KD style) between student and teacher embeddings.

    Both embeddings are L2-normalised first, so only directions are matched. ``"cosine"``:
    ``mean(1 - cos)`` over the batch; ``"mse"``: the squared difference averaged over every element
    (batch and features), as ``F.mse_loss`` and CLIP-KD's FD compute it — for unit vectors of width D
    this is ``2 (1 - cos) / D`` per sample, which is why CLIP-KD weights it by 2000.
    The student must already be projected to the teacher's width (a recipe owns that projector).

    Parameters
    ----------
    distance : {"cosine", "mse"}, default "cosine"
    weight : float, default 1.0
        Multiplier; finite and >= 0.
    """

    def __init__(self, distance: str = "cosine", weight: float = 1.0):
        super().__init__()
        if distance not in FEATURE_DISTANCES:
            raise ValueError(f"unknown distance {distance!r}; valid names: {', '.join(FEATURE_DISTANCES)}")
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight must be finite and >= 0, got {weight!r}")
        self.distance, self.weight = distance, float(weight)

    def forward(self, student_features: Tensor, teacher_features: Tensor) -> dict[str, Tensor]:
        """Return ``{"feature_kd_loss": scalar}``; teacher features are treated as constants."""
        if student_features.dim() != 2 or student_features.shape != teacher_features.shape:
            raise ValueError(
                f"student and teacher features must have the same shape (B, D) — project the student "
                f"to the teacher's width first; got {tuple(student_features.shape)} and "
                f"{tuple(teacher_features.shape)}"
            )
        s = F.normalize(student_features, dim=1)
        t = F.normalize(teacher_features.detach(), dim=1)
        if self.distance == "cosine":
            loss = (1 - (s * t).sum(dim=1)).mean()
        else:
            loss = F.mse_loss(s, t)
        return {"feature_kd_loss": self.weight * loss}
