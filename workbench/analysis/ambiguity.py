"""Ambiguity: a model's score per image, the top-k ranking, and how well a score finds the truly ambiguous
images (AUROC, Spearman with the true mixing weight).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn.metrics import roc_auc_score

from ..losses import entropy
from .checks import _check_table, _column, _logits, _vector


# What each ambiguity column of a per-sample table means; figures that rank or colour by one say it.
SCORE_DEFINITIONS = {
    "ambiguity_score": "(H/log C + 1 - margin)/2, student and teacher averaged",
    "ambiguity_student": "(H/log C + 1 - margin)/2 of the student alone",
    "entropy": "entropy H of the student's softmax (nats)",
    "kl_teacher_student": "KL(teacher || student) per image (nats)",
}


def _distribution_stats(logits: torch.Tensor) -> dict[str, np.ndarray]:
    """Entropy, top-1/top-2 classes, max probability and margin of ``softmax(logits)``."""
    probs = F.softmax(logits, dim=1)
    top = probs.topk(2, dim=1)
    return {
        "entropy": entropy(logits, dim=1).numpy(),
        "max_prob": top.values[:, 0].numpy(),
        "margin": (top.values[:, 0] - top.values[:, 1]).numpy(),
        "top1": top.indices[:, 0].numpy().astype(np.int64),
        "top2": top.indices[:, 1].numpy().astype(np.int64),
    }


def ambiguity_score(logits, teacher_logits=None) -> np.ndarray:
    """How torn a model is between classes, per sample, in [0, 1].

    ``score = (H / log C + (1 - margin)) / 2`` where ``H`` is the Shannon entropy of
    ``softmax(logits)`` (so ``H / log C`` is in [0, 1]) and ``margin`` is the top-1 minus top-2
    probability. Normalized entropy sees spread over all classes; ``1 - margin`` sees a tie
    between the two leading classes even when the rest of the mass is negligible (the typical
    "between two classes" sample). A one-hot prediction scores 0, a uniform one 1.

    Parameters
    ----------
    logits : tensor or array, shape (N, C)
        Logits over C >= 2 classes; finite.
    teacher_logits : tensor or array, shape (N, C), optional
        When given, the result is the mean of the two models' scores, so the highest-ranked
        samples are those both models find ambiguous.

    Returns
    -------
    np.ndarray of float64, shape (N,)
    """
    x = _logits(logits)
    st = _distribution_stats(x)
    score = 0.5 * (st["entropy"] / math.log(x.shape[1]) + (1.0 - st["margin"]))
    if teacher_logits is not None:
        t = _logits(teacher_logits, "teacher_logits")
        if t.shape != x.shape:
            raise ValueError(f"teacher_logits must have shape {tuple(x.shape)}; got {tuple(t.shape)}")
        score = 0.5 * (score + ambiguity_score(t))
    return np.clip(score, 0.0, 1.0)


def rank_ambiguous(table: dict, k: int, column: str = "ambiguity_score") -> dict[str, np.ndarray]:
    """The ``k`` rows of ``table`` with the highest ``column``, most ambiguous first.

    Parameters
    ----------
    table : dict of str to 1-D array
        Columnar table, e.g. from :func:`per_sample_table` (which has ``ambiguity_score``).
    k : int
        Rows to keep; >= 1. Larger than the table returns every row, sorted.
    column : str, default "ambiguity_score"
        Column to rank by (e.g. ``"entropy"``, ``"kl_teacher_student"``). Ties keep table order.

    Returns
    -------
    dict of str to np.ndarray
        The same columns, restricted to the chosen rows.
    """
    _check_table(table)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    values = np.asarray(_column(table, column), dtype=np.float64)
    order = np.argsort(-values, kind="stable")[:k]
    return {key: np.asarray(col)[order] for key, col in table.items()}


def ambiguity_agreement(score, true_ambiguity, threshold: float = 0.0) -> dict[str, float]:
    """How well a predicted ambiguity score recovers the ground-truth ambiguity.

    Parameters
    ----------
    score : array-like, shape (N,)
        Predicted ambiguity (e.g. :func:`ambiguity_score`); higher means more ambiguous.
    true_ambiguity : array-like, shape (N,)
        Ground truth, e.g. ``WorldSplit.ambiguity`` (partner weight; 0 for clean samples).
    threshold : float, default 0.0
        A sample counts as ambiguous when ``true_ambiguity > threshold``.

    Returns
    -------
    dict
        ``spearman``: Spearman rank correlation (ties get average ranks), in [-1, 1];
        ``auroc_ambiguous``: area under the ROC curve of ``score`` separating ambiguous from
        clean samples (0.5 = chance). Either is NaN when undefined (a constant input, or only
        one of the two groups present).
    """
    s = _vector(score, "score", min_len=2)
    a = _vector(true_ambiguity, "true_ambiguity", min_len=2)
    if s.shape != a.shape:
        raise ValueError(f"score and true_ambiguity must have the same length; "
                         f"got {len(s)} and {len(a)}")
    if np.ptp(s) == 0 or np.ptp(a) == 0:
        rho = float("nan")
    else:
        rho = float(stats.spearmanr(s, a).statistic)
    ambiguous = a > threshold
    auroc = float(roc_auc_score(ambiguous, s)) if 0 < ambiguous.sum() < len(a) else float("nan")
    return {"spearman": rho, "auroc_ambiguous": auroc}


def ambiguity_confounds(score, true_ambiguity, factors: dict, weight_thresholds=(0.1, 0.2)) -> dict:
    """What holds an ambiguity score's AUROC down: nuisance that makes clean images look torn, or faint blends.

    An AUROC below 1 has two sources: clean samples that score high and ambiguous ones that score low.
    This splits both by the world's recorded factors so each source can be named and sized.

    Parameters
    ----------
    score, true_ambiguity : array-like, shape (N,)
        As in :func:`ambiguity_agreement` (``true_ambiguity`` 0 for clean samples).
    factors : dict of str to array-like, shape (N,)
        Per-sample nuisance factors, e.g. ``WorldSplit.factors``. Boolean and string factors are discrete
        (one row per value); numeric ones are continuous.
    weight_thresholds : sequence of float
        Mixing weights below which ambiguous samples are left out, one row each.

    Returns
    -------
    dict
        ``auroc``: over all samples. ``by_value``: one row per value of each discrete factor with
        ``factor``, ``value``, ``n_clean``, ``n_ambiguous``, ``clean_score_mean`` (mean score of the clean
        samples with that value), ``auroc_within`` (clean vs ambiguous among the samples with that value)
        and ``auroc_without_clean`` (all ambiguous samples against the clean samples *without* that value:
        how far the AUROC rises when these clean samples are taken away). ``clean_spearman``: per continuous
        factor, Spearman between it and the score among clean samples. ``by_weight``: per threshold, the
        AUROC counting only ambiguous samples whose weight exceeds it, and how many those are.
    """
    s = _vector(score, "score", min_len=2)
    a = _vector(true_ambiguity, "true_ambiguity", min_len=2)
    if s.shape != a.shape:
        raise ValueError(f"score and true_ambiguity must have the same length; got {len(s)} and {len(a)}")
    if not isinstance(factors, dict):
        raise ValueError(f"factors must be a dict of per-sample arrays, got {type(factors).__name__}")
    ambiguous = a > 0
    if ambiguous.all() or not ambiguous.any():
        raise ValueError("true_ambiguity must mark both clean (0) and ambiguous (> 0) samples")

    def auroc(keep: np.ndarray) -> float:
        positive = ambiguous[keep]
        return float(roc_auc_score(positive, s[keep])) if 0 < positive.sum() < keep.sum() else float("nan")

    by_value, clean_spearman = [], {}
    for name, column in factors.items():
        values = np.asarray(column)
        if values.shape != s.shape:
            raise ValueError(f"factors[{name!r}] has {len(values)} entries for {len(s)} samples")
        if values.dtype.kind in "fiu":
            clean_values = values[~ambiguous].astype(np.float64)
            clean_spearman[name] = (float(stats.spearmanr(clean_values, s[~ambiguous]).statistic)
                                    if np.ptp(clean_values) > 0 and np.ptp(s[~ambiguous]) > 0 else float("nan"))
            continue
        for value in np.unique(values):
            has = values == value
            by_value.append({
                "factor": name, "value": value.item() if hasattr(value, "item") else value,
                "n_clean": int((has & ~ambiguous).sum()), "n_ambiguous": int((has & ambiguous).sum()),
                "clean_score_mean": float(s[has & ~ambiguous].mean()) if (has & ~ambiguous).any() else float("nan"),
                "auroc_within": auroc(has), "auroc_without_clean": auroc(ambiguous | ~has)})
    by_weight = []
    for threshold in weight_thresholds:
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 <= threshold < 1:
            raise ValueError(f"weight_thresholds must hold numbers in [0, 1), got {threshold!r}")
        kept = ~ambiguous | (a > threshold)
        by_weight.append({"min_weight": float(threshold), "n_ambiguous": int((a > threshold).sum()),
                          "auroc": auroc(kept)})
    return {"auroc": auroc(np.ones_like(ambiguous)), "by_value": by_value, "clean_spearman": clean_spearman,
            "by_weight": by_weight}
