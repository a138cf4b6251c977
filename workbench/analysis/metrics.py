"""Metrics of one model on one split: base/new/HM accuracy, cross-dataset summaries, calibration, and the
shared space (effective rank, image-text alignment, teacher-student neighbourhood agreement).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..protocol import accuracy, harmonic_mean, subset_accuracy
from .checks import _features, _labels, _logits


DEFAULT_BINS = 15  # equal-width confidence bins for ECE and reliability diagrams


def classification_metrics(logits, labels, base_classes=None, new_classes=None) -> dict[str, float]:
    """Accuracy, top-5 accuracy and mean per-class recall; base / new / HM when splits are given.

    Parameters
    ----------
    logits : tensor or array, shape (N, C)
        Logits over all C >= 1 classes; finite.
    labels : tensor or array of int, shape (N,)
        True classes in ``0..C-1``.
    base_classes, new_classes : array-like of int, optional
        Give both or neither (e.g. from :func:`workbench.protocol.base_new_split`).

    Returns
    -------
    dict
        ``accuracy``; ``top5_accuracy`` (label among the ``min(5, C)`` highest logits);
        ``mean_per_class_recall`` (accuracy per class, averaged over the classes present in
        ``labels``). With splits, as in :func:`workbench.protocol.evaluate_base_new`:
        ``base_acc`` on samples of base classes predicting among the base columns of ``logits``
        only, likewise ``new_acc``, and ``hm`` their harmonic mean.
    """
    x = _logits(logits, min_classes=1)
    y = _labels(labels, *x.shape)
    if (base_classes is None) != (new_classes is None):
        raise ValueError("give both base_classes and new_classes, or neither")
    predicted = x.argmax(dim=1).numpy()
    k = min(5, x.shape[1])
    top_k = x.topk(k, dim=1).indices.numpy()
    present = np.unique(y)
    out = {"accuracy": accuracy(x, y),
           "top5_accuracy": float(np.mean((top_k == y[:, None]).any(axis=1))),
           "mean_per_class_recall": float(np.mean([np.mean(predicted[y == c] == c) for c in present]))}
    if base_classes is not None:
        out["base_acc"] = subset_accuracy(x, y, base_classes, "base")
        out["new_acc"] = subset_accuracy(x, y, new_classes, "new")
        out["hm"] = harmonic_mean(out["base_acc"], out["new_acc"])
    return out


def cross_dataset_summary(accuracies: dict[str, float], source: str | None = None) -> dict[str, float]:
    """The field's cross-dataset figure: accuracy on each target dataset and their average.

    ``accuracies`` maps dataset name → accuracy (e.g. ``accuracy`` of :func:`classification_metrics`
    per dataset); ``source`` (the dataset trained on) is reported but left out of the average.
    Returns ``{"source/<name>", "target/<name>" …, "target_average", "n_targets"}``.
    """
    if not accuracies:
        raise ValueError("cross_dataset_summary needs at least one dataset's accuracy")
    if source is not None and source not in accuracies:
        raise ValueError(f"source dataset {source!r} is not among the results {sorted(accuracies)}")
    targets = {name: float(acc) for name, acc in accuracies.items() if name != source}
    if not targets:
        raise ValueError("no target dataset besides the source")
    bad = {name: acc for name, acc in targets.items() if not 0 <= acc <= 1}
    if bad:
        raise ValueError(f"accuracies must lie in [0, 1]; got {bad}")
    out = {f"target/{name}": acc for name, acc in targets.items()}
    if source is not None:
        out[f"source/{source}"] = float(accuracies[source])
    out["target_average"] = float(np.mean(list(targets.values())))
    out["n_targets"] = float(len(targets))
    return out


def _check_bins(n_bins) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    return int(n_bins)


def reliability_bins(logits, labels, n_bins: int = DEFAULT_BINS) -> dict[str, np.ndarray]:
    """Per-bin confidence and accuracy of the top-1 prediction (equal-width bins on [0, 1]).

    Parameters
    ----------
    logits : tensor or array, shape (N, C)
        Logits; finite. Confidence is the top-1 softmax probability.
    labels : tensor or array of int, shape (N,)
        True classes in ``0..C-1``.
    n_bins : int, default 15
        Number of bins; >= 1. Bin ``b`` holds confidences in ``(b / n_bins, (b + 1) / n_bins]``
        (the first bin also holds 0).

    Returns
    -------
    dict of str to np.ndarray, each of length ``n_bins``
        ``bin_lower``, ``bin_upper``; ``confidence`` (mean confidence) and ``accuracy`` (fraction
        correct) of the samples in the bin, NaN for empty bins; ``count``.
    """
    n_bins = _check_bins(n_bins)
    x = _logits(logits, min_classes=1)
    y = _labels(labels, *x.shape)
    probs = F.softmax(x, dim=1)
    conf, predicted = probs.max(dim=1)
    conf, correct = conf.numpy(), (predicted.numpy() == y).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, weights=conf, minlength=n_bins) / count
        mean_acc = np.bincount(bins, weights=correct, minlength=n_bins) / count
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {"bin_lower": edges[:-1], "bin_upper": edges[1:], "confidence": mean_conf,
            "accuracy": mean_acc, "count": count.astype(np.int64)}


def calibration_metrics(logits, labels, n_bins: int = DEFAULT_BINS) -> dict[str, float]:
    """Expected calibration error, negative log-likelihood and Brier score.

    Parameters
    ----------
    logits : tensor or array, shape (N, C)
        Logits; finite.
    labels : tensor or array of int, shape (N,)
        True classes in ``0..C-1``.
    n_bins : int, default 15
        Equal-width confidence bins for the ECE (see :func:`reliability_bins`).

    Returns
    -------
    dict
        ``ece`` = sum over bins of ``count / N * |accuracy - confidence|``, in [0, 1];
        ``nll`` = mean of ``-log p_label`` (nats, from ``log_softmax``);
        ``brier`` = mean over samples of ``sum_c (p_c - [c == label])**2``, in [0, 2].
    """
    x = _logits(logits, min_classes=1)
    y = _labels(labels, *x.shape)
    diagram = reliability_bins(x, y, n_bins)
    filled = diagram["count"] > 0
    weights = diagram["count"][filled] / x.shape[0]
    ece = float(np.sum(weights * np.abs(diagram["accuracy"][filled] - diagram["confidence"][filled])))
    log_p = F.log_softmax(x, dim=1)
    yt = torch.as_tensor(y)
    nll = float(-log_p.gather(1, yt[:, None]).mean())
    brier = float(((log_p.exp() - F.one_hot(yt, x.shape[1]).double()) ** 2).sum(dim=1).mean())
    return {"ece": ece, "nll": nll, "brier": brier}


# ----------------------------------------------------------------------------- shared space
def effective_rank(features) -> float:
    """Effective rank (Roy & Vetterli, 2007) of the L2-normalized rows of ``features``.

    With singular values ``s`` of the (N, D) matrix of normalized rows (not centred) and
    ``p = s / sum(s)``, the effective rank is ``exp(-sum p log p)`` (terms with ``p = 0`` are
    0). It lies in ``[1, min(N, D)]``: d orthogonal rows give d, rows along one direction give 1.
    """
    z = _features(features, "features")
    s = torch.linalg.svdvals(z).numpy()
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


def alignment_metrics(image_features, labels, class_vectors) -> dict[str, float]:
    """How images and class text vectors sit in the shared embedding space.

    Parameters
    ----------
    image_features : tensor or array, shape (N, D)
        Image embeddings; L2-normalized here.
    labels : tensor or array of int, shape (N,)
        True classes in ``0..C-1``; at least two distinct classes.
    class_vectors : tensor or array, shape (C, D)
        One text embedding per class; L2-normalized here.

    Returns
    -------
    dict
        ``modality_gap``: L2 distance between the centroid of the images and the centroid of
        their paired text vectors ``class_vectors[labels]`` (Liang et al., 2022), in [0, 2];
        ``mean_cosine_to_class``: mean cosine of each image to its class text vector;
        ``intra_inter_ratio``: mean intra-class distance (mean pairwise Euclidean distance
        between normalized images of one class, averaged over classes with >= 2 samples)
        divided by the mean pairwise distance between class centroids of the images (lower is
        better separated; inf when all centroids coincide, NaN when no class has two samples);
        ``effective_rank``: :func:`effective_rank` of the image embeddings.
    """
    img = _features(image_features, "image_features")
    txt = _features(class_vectors, "class_vectors")
    if img.shape[1] != txt.shape[1]:
        raise ValueError(f"image_features (N, D) and class_vectors (C, D) must share D; "
                         f"got {tuple(img.shape)} and {tuple(txt.shape)}")
    y = _labels(labels, img.shape[0], txt.shape[0])
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError("alignment_metrics needs samples of at least two classes")
    paired = txt[torch.as_tensor(y)]
    gap = float((img.mean(dim=0) - paired.mean(dim=0)).norm())
    cosine = float((img * paired).sum(dim=1).mean())
    intra, centroids = [], []
    for c in classes:
        members = img[torch.as_tensor(y == c)]
        centroids.append(members.mean(dim=0))
        if len(members) >= 2:
            d = torch.cdist(members, members)
            m = len(members)
            intra.append(float(d.sum() / (m * (m - 1))))  # diagonal is 0
    centroids = torch.stack(centroids)
    k = len(centroids)
    inter = float(torch.cdist(centroids, centroids).sum() / (k * (k - 1)))
    mean_intra = float(np.mean(intra)) if intra else float("nan")
    if not intra or (inter == 0 and mean_intra == 0):
        ratio = float("nan")
    else:
        ratio = mean_intra / inter if inter > 0 else float("inf")
    return {"modality_gap": gap, "mean_cosine_to_class": cosine, "intra_inter_ratio": ratio,
            "effective_rank": effective_rank(img)}


def _knn(z: torch.Tensor, k: int, chunk: int = 1024) -> np.ndarray:
    """Indices (N, k) of each row's k most cosine-similar other rows (``z`` is normalized)."""
    out = []
    for start in range(0, z.shape[0], chunk):
        sim = z[start:start + chunk] @ z.T
        rows = torch.arange(sim.shape[0])
        sim[rows, rows + start] = -math.inf  # a point is not its own neighbour
        out.append(sim.topk(k, dim=1).indices.numpy())
    return np.concatenate(out)


def knn_agreement(teacher_features, student_features, k: int = 10) -> float:
    """Mean fraction of shared k-nearest neighbours between the teacher's and student's spaces.

    For every sample, its ``k`` nearest other samples by cosine similarity are found among the
    teacher's embeddings and among the student's; the score is ``|A ∩ B| / k`` averaged over
    samples: 1 when both spaces have the same neighbourhoods, about ``k / (N - 1)`` for
    unrelated ones. The two embeddings may have different widths.

    Parameters
    ----------
    teacher_features : tensor or array, shape (N, Dt)
    student_features : tensor or array, shape (N, Ds)
        Embeddings of the same N samples, in the same order.
    k : int, default 10
        Neighbourhood size; 1 <= k <= N - 1.

    Returns
    -------
    float
        In [0, 1].
    """
    t = _features(teacher_features, "teacher_features")
    s = _features(student_features, "student_features")
    if t.shape[0] != s.shape[0]:
        raise ValueError(f"teacher_features and student_features must have the same rows; "
                         f"got {t.shape[0]} and {s.shape[0]}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= t.shape[0] - 1:
        raise ValueError(f"k must be an int in 1..{t.shape[0] - 1} (N - 1), got {k!r}")
    nt, ns = _knn(t, int(k)), _knn(s, int(k))
    overlap = [len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(nt, ns)]
    return float(np.mean(overlap) / k)
