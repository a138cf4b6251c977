"""Analysis of distilled students: per-sample tables, ambiguity, calibration, alignment, seeds.

Every function takes embeddings, logits or labels as numpy arrays or torch tensors (any float
dtype; computed in float64 on the CPU) and returns either a flat ``dict[str, float]`` or a
columnar table, ``dict[str, np.ndarray]`` whose columns all have one row per sample. Bad shapes
or values raise ``ValueError`` with a message naming the argument.

Groups of functions:

- per sample: :func:`per_sample_table`, :func:`write_table`, :func:`read_table`;
- ambiguity: :func:`ambiguity_score`, :func:`rank_ambiguous`, :func:`ambiguity_agreement`;
- two runs on the same samples: :func:`compare_runs`;
- one run: :func:`classification_metrics`, :func:`calibration_metrics`,
  :func:`reliability_diagram`;
- the shared image-text space: :func:`alignment_metrics`, :func:`effective_rank`,
  :func:`knn_agreement`;
- several seeds: :func:`seed_summary`, :func:`paired_comparison`, :func:`bootstrap_interval`;
- training logs: :func:`entropy_trajectory`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn.metrics import roc_auc_score

from .losses import entropy
from .protocol import _as_numpy, accuracy, harmonic_mean
from .runs import umask_mode

DEFAULT_BINS = 15  # equal-width confidence bins for ECE and reliability diagrams
BOOTSTRAP_RESAMPLES = 10_000  # bootstrap resamples for seed confidence intervals
BOOTSTRAP_SEED = 0  # fixed RNG seed, so the same values always give the same interval
BOOTSTRAP_METHODS = ("percentile", "basic", "bca")  # scipy.stats.bootstrap's intervals; percentile is the default


# ----------------------------------------------------------------------------- validation
def _logits(x, name: str = "logits", min_classes: int = 2) -> torch.Tensor:
    """``x`` as a finite float64 CPU tensor of shape (N, C) with N >= 1 and C >= min_classes."""
    t = torch.as_tensor(_as_numpy(x), dtype=torch.float64)
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] < min_classes:
        raise ValueError(f"{name} must have shape (N, C) with N >= 1 and C >= {min_classes}; "
                         f"got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite; found NaN or inf")
    return t


def _labels(labels, n: int, num_classes: int, name: str = "labels") -> np.ndarray:
    """``labels`` as int64 (n,) with every value in ``0..num_classes-1``."""
    y = _as_numpy(labels)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the rows; got {y.shape}")
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"{name} must be integer class labels; got dtype {y.dtype}")
    y = y.astype(np.int64)
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name} must lie in 0..{num_classes - 1}; got values in "
                         f"{int(y.min())}..{int(y.max())}")
    return y


def _vector(x, name: str, min_len: int = 1) -> np.ndarray:
    """``x`` as a finite float64 1-D array with at least ``min_len`` entries."""
    v = np.asarray(_as_numpy(x), dtype=np.float64)
    if v.ndim != 1 or len(v) < min_len:
        raise ValueError(f"{name} must be 1-D with at least {min_len} value(s); got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be finite; found NaN or inf")
    return v


def _features(x, name: str) -> torch.Tensor:
    """``x`` as finite, L2-normalized float64 rows of shape (N, D) with N >= 1."""
    t = torch.as_tensor(_as_numpy(x), dtype=torch.float64)
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must have shape (N, D) with N, D >= 1; got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite; found NaN or inf")
    if bool((t.norm(dim=1) == 0).any()):
        raise ValueError(f"{name} has an all-zero row, which has no direction to normalize")
    return F.normalize(t, dim=1)


def _check_table(table: dict, name: str = "table") -> int:
    """Validate a columnar table and return its number of rows."""
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{name} must be a non-empty dict of columns")
    lengths = {}
    for key, column in table.items():
        if not isinstance(key, str):
            raise ValueError(f"{name} column names must be strings; got {key!r}")
        column = np.asarray(column)
        if column.ndim != 1:
            raise ValueError(f"{name} column {key!r} must be 1-D; got shape {column.shape}")
        lengths[key] = len(column)
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{name} columns must all have the same length; got {lengths}")
    return next(iter(lengths.values()))


def _column(table: dict, key: str, name: str = "table") -> np.ndarray:
    if key not in table:
        raise ValueError(f"{name} has no column {key!r}; columns: {', '.join(table)}")
    return np.asarray(table[key])


# ----------------------------------------------------------------------------- per sample
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


def per_sample_table(student_logits, labels, teacher_logits=None, manifold_entropy=None,
                     class_names=None, sample_ids=None) -> dict[str, np.ndarray]:
    """One row per sample describing the student's (and optionally the teacher's) prediction.

    Parameters
    ----------
    student_logits : tensor or array, shape (N, C)
        Student logits over C >= 2 classes; finite.
    labels : tensor or array of int, shape (N,)
        True class of every sample, in ``0..C-1``.
    teacher_logits : tensor or array, shape (N, C), optional
        Teacher logits over the same classes; adds the teacher columns below.
    manifold_entropy : float or array of shape (N,), optional
        AME manifold entropy H(M) to attach to each row (a scalar is repeated, e.g. the value of
        the batch a sample was scored in).
    class_names : sequence of str, length C, optional
        Adds ``label_name``, ``predicted_name`` and ``runner_up_name`` columns.
    sample_ids : array-like, shape (N,), optional
        Identifier of every row; default ``0..N-1``.

    Returns
    -------
    dict of str to np.ndarray
        Columns, each of length N:

        - ``sample_id``, ``label``;
        - ``predicted`` (top-1 class), ``runner_up`` (top-2 class): the two competing classes;
        - ``correct`` (bool): ``predicted == label``;
        - ``entropy``: Shannon entropy (nats) of the student's softmax, in ``[0, log C]``;
        - ``max_prob``: top-1 probability; ``margin``: top-1 minus top-2 probability, in [0, 1];
        - ``ambiguity_score``: :func:`ambiguity_score` of the student (and teacher, if given);
        - with a teacher: ``teacher_predicted``, ``teacher_entropy``, ``teacher_margin`` and
          ``kl_teacher_student`` = KL(teacher || student) per sample in nats, from
          ``log_softmax`` of both (finite even when probabilities underflow);
        - ``manifold_entropy`` when given; the ``*_name`` columns when ``class_names`` is given.
    """
    s = _logits(student_logits, "student_logits")
    n, c = s.shape
    y = _labels(labels, n, c)
    st = _distribution_stats(s)
    ids = np.arange(n) if sample_ids is None else np.asarray(_as_numpy(sample_ids))
    if ids.shape != (n,):
        raise ValueError(f"sample_ids must have shape ({n},); got {ids.shape}")
    table = {"sample_id": ids, "label": y, "predicted": st["top1"], "runner_up": st["top2"],
             "correct": st["top1"] == y, "entropy": st["entropy"], "max_prob": st["max_prob"],
             "margin": st["margin"]}
    if teacher_logits is not None:
        t = _logits(teacher_logits, "teacher_logits")
        if t.shape != s.shape:
            raise ValueError(f"teacher_logits must have the student's shape {tuple(s.shape)}; "
                             f"got {tuple(t.shape)}")
        tt = _distribution_stats(t)
        log_t, log_s = F.log_softmax(t, dim=1), F.log_softmax(s, dim=1)
        kl = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(dim=1).clamp_min(0)
        table.update({"teacher_predicted": tt["top1"], "teacher_entropy": tt["entropy"],
                      "teacher_margin": tt["margin"], "kl_teacher_student": kl.numpy()})
        table["ambiguity_score"] = ambiguity_score(s, t)
    else:
        table["ambiguity_score"] = ambiguity_score(s)
    if manifold_entropy is not None:
        h = np.asarray(_as_numpy(manifold_entropy), dtype=np.float64)
        if h.ndim == 0:
            h = np.full(n, float(h))
        if h.shape != (n,):
            raise ValueError(f"manifold_entropy must be a scalar or have shape ({n},); got {h.shape}")
        table["manifold_entropy"] = h
    if class_names is not None:
        names = np.asarray(list(class_names), dtype=object)
        if names.shape != (c,):
            raise ValueError(f"class_names must have one name per class ({c}); got {len(names)}")
        table["label_name"] = names[y].astype(str)
        table["predicted_name"] = names[st["top1"]].astype(str)
        table["runner_up_name"] = names[st["top2"]].astype(str)
    return table


def _format_cell(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "True" if value else "False"
    if isinstance(value, (float, np.floating)):
        return repr(float(value))  # shortest string that round-trips exactly
    return str(value)


def write_table(table: dict, path: str | os.PathLike) -> Path:
    """Write a columnar table as CSV (header row, one row per sample), atomically.

    The file is written to a temporary file in the same directory and renamed over ``path``, so a
    reader never sees half a table. Floats are written with ``repr`` and read back exactly.

    Parameters
    ----------
    table : dict of str to 1-D array
        Columns of equal length, e.g. from :func:`per_sample_table`.
    path : str or path-like
        Destination ``.csv``; parent directories are created.

    Returns
    -------
    Path
        ``path``.
    """
    n = _check_table(table)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {k: np.asarray(_as_numpy(v)) for k, v in table.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.chmod(tmp, umask_mode())  # mkstemp's 0600 would outlive the rename
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(list(columns))
            for i in range(n):
                writer.writerow([_format_cell(col[i]) for col in columns.values()])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _parse_column(cells: list[str]) -> np.ndarray:
    """The narrowest of bool, int64, float64 or str that reads every cell."""
    if cells and all(c in ("True", "False") for c in cells):
        return np.array([c == "True" for c in cells], dtype=bool)
    for kind in (np.int64, np.float64):
        try:
            return np.array([kind(c) for c in cells], dtype=kind)
        except ValueError:
            pass
    return np.array(cells, dtype=str)


def read_table(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a CSV written by :func:`write_table` back into columns.

    Each column gets the narrowest type that reads all its cells: bool (``True``/``False``),
    int64, float64, else str. (A string column whose every value looks like a number therefore
    comes back numeric.)
    """
    path = Path(path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path}: empty file, expected a header row")
    header, body = rows[0], rows[1:]
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise ValueError(f"{path}, line {i}: {len(row)} cells, header has {len(header)}")
    return {name: _parse_column([row[j] for row in body]) for j, name in enumerate(header)}


# ----------------------------------------------------------------------------- ambiguity
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


# ----------------------------------------------------------------------------- two runs
def compare_runs(table_a: dict, table_b: dict) -> dict:
    """Before/after comparison of two per-sample tables of the same samples.

    Parameters
    ----------
    table_a, table_b : dict of str to 1-D array
        Tables from :func:`per_sample_table` (run A, e.g. KD; run B, e.g. KD + AME) with the same
        rows in the same order: their ``sample_id`` and ``label`` columns must match.

    Returns
    -------
    dict
        ``n``; ``accuracy_a``, ``accuracy_b``; ``wrong_to_right`` and ``right_to_wrong``
        (counts of samples whose correctness flipped from A to B) and ``net_gain`` (their
        difference); ``mean_entropy_change`` (mean of B's minus A's entropy, nats);
        ``wrong_to_right_indices``, ``right_to_wrong_indices`` (np.ndarray of int64 row
        positions; ``table_a["sample_id"][idx]`` gives the ids).
    """
    n = _check_table(table_a, "table_a")
    if _check_table(table_b, "table_b") != n:
        raise ValueError(f"table_a and table_b must describe the same samples; "
                         f"got {n} and {len(next(iter(table_b.values())))} rows")
    for key in ("sample_id", "label"):
        if key in table_a and key in table_b and not np.array_equal(
                np.asarray(table_a[key]), np.asarray(table_b[key])):
            raise ValueError(f"table_a and table_b differ in column {key!r}; "
                             "compare runs on the same samples in the same order")
    ca = _column(table_a, "correct", "table_a").astype(bool)
    cb = _column(table_b, "correct", "table_b").astype(bool)
    ha = _column(table_a, "entropy", "table_a").astype(np.float64)
    hb = _column(table_b, "entropy", "table_b").astype(np.float64)
    fixed, broken = np.flatnonzero(~ca & cb), np.flatnonzero(ca & ~cb)
    return {"n": n, "accuracy_a": float(ca.mean()), "accuracy_b": float(cb.mean()),
            "wrong_to_right": int(len(fixed)), "right_to_wrong": int(len(broken)),
            "net_gain": int(len(fixed) - len(broken)),
            "mean_entropy_change": float(np.mean(hb - ha)),
            "wrong_to_right_indices": fixed.astype(np.int64),
            "right_to_wrong_indices": broken.astype(np.int64)}


# ----------------------------------------------------------------------------- one run
def _subset_accuracy(logits: torch.Tensor, y: np.ndarray, subset, name: str) -> float:
    subset = np.unique(_as_numpy(subset)).astype(np.int64)
    c = logits.shape[1]
    if subset.size == 0 or subset.min() < 0 or subset.max() >= c:
        raise ValueError(f"{name}_classes must be a non-empty list of labels in 0..{c - 1}; "
                         f"got {subset.tolist()}")
    mask = np.isin(y, subset)
    if not mask.any():
        raise ValueError(f"no samples have a label among the {name} classes")
    restricted = logits[torch.as_tensor(mask)][:, torch.as_tensor(subset)]  # subset columns only
    return float(np.mean(subset[restricted.argmax(dim=1).numpy()] == y[mask]))


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
        out["base_acc"] = _subset_accuracy(x, y, base_classes, "base")
        out["new_acc"] = _subset_accuracy(x, y, new_classes, "new")
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


def reliability_diagram(logits, labels, n_bins: int = DEFAULT_BINS) -> dict[str, np.ndarray]:
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
        Equal-width confidence bins for the ECE (see :func:`reliability_diagram`).

    Returns
    -------
    dict
        ``ece`` = sum over bins of ``count / N * |accuracy - confidence|``, in [0, 1];
        ``nll`` = mean of ``-log p_label`` (nats, from ``log_softmax``);
        ``brier`` = mean over samples of ``sum_c (p_c - [c == label])**2``, in [0, 2].
    """
    x = _logits(logits, min_classes=1)
    y = _labels(labels, *x.shape)
    diagram = reliability_diagram(x, y, n_bins)
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


# ----------------------------------------------------------------------------- seeds
def _check_resamples(n_resamples) -> int:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive int, got {n_resamples!r}")
    return int(n_resamples)


def _check_confidence(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(confidence)


def _check_method(method: str) -> str:
    if method not in BOOTSTRAP_METHODS:
        raise ValueError(f"unknown bootstrap method {method!r}; valid names: {', '.join(BOOTSTRAP_METHODS)}")
    return method


def bootstrap_interval(values: np.ndarray, confidence: float, n_resamples: int, seed: int,
                       method: str = "percentile") -> tuple[float, float]:
    """Bootstrap confidence interval of the mean of ``values`` (n >= 2), by ``scipy.stats.bootstrap``.

    The resamples come from ``np.random.default_rng(seed)`` in one batch, so the percentile interval
    is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles (linear interpolation) of
    the means of the resamples ``values[rng.integers(0, n, (n_resamples, n))]`` — what this module
    computed by hand before scipy did it. Identical values give the degenerate interval ``(v, v)``
    for every method (BCa's acceleration is 0/0 there and scipy would return NaN).
    """
    values = np.asarray(values, dtype=np.float64)
    if np.ptp(values) == 0:
        return float(values[0]), float(values[0])
    result = stats.bootstrap((values,), np.mean, n_resamples=n_resamples, batch=None, vectorized=True,
                             confidence_level=confidence, method=method, rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def seed_summary(values, confidence: float = 0.95, n_resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED, method: str = "percentile") -> dict[str, float]:
    """Mean, standard deviation and bootstrap confidence interval of one metric over seeds.

    Parameters
    ----------
    values : array-like, shape (n,)
        One value per seed; finite, n >= 1.
    confidence : float, default 0.95
        Coverage of the interval, in (0, 1).
    n_resamples : int, default 10_000
        Bootstrap resamples (with replacement, over seeds) of the mean.
    seed : int, default 0
        Seed of the bootstrap RNG: the same values always give the same interval.
    method : {"percentile", "basic", "bca"}, default "percentile"
        ``scipy.stats.bootstrap``'s interval; ``"bca"`` corrects the percentile interval for bias and
        skew (it needs a few seeds to be worth it).

    Returns
    -------
    dict
        ``mean``; ``std`` (sample standard deviation, ddof=1); ``ci_low``, ``ci_high`` (for the
        percentile method the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of
        the bootstrapped means; see :func:`bootstrap_interval`); ``n``. With a single value, ``std``
        and the interval are NaN.
    """
    v = _vector(values, "values")
    confidence = _check_confidence(confidence)
    n_resamples, method = _check_resamples(n_resamples), _check_method(method)
    n = len(v)
    if n < 2:
        return {"mean": float(v[0]), "std": float("nan"), "ci_low": float("nan"),
                "ci_high": float("nan"), "n": 1}
    lo, hi = bootstrap_interval(v, confidence, n_resamples, seed, method)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)), "ci_low": lo, "ci_high": hi, "n": n}


def paired_comparison(a, b, confidence: float = 0.95, n_resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED, method: str = "percentile") -> dict[str, float]:
    """Compare two methods run on the same seeds: is ``a - b`` larger than seed noise?

    Parameters
    ----------
    a, b : array-like, shape (n,)
        Metric of each method, ``a[i]`` and ``b[i]`` from the same seed; finite, n >= 2.
    confidence, n_resamples, seed, method
        As in :func:`seed_summary`; the bootstrap resamples seeds (pairs stay together).

    Returns
    -------
    dict
        ``mean_diff`` = mean of ``a - b``; ``ci_low``, ``ci_high``: its bootstrap interval;
        ``exceeds_noise`` (bool): the interval excludes 0; ``p_value``: two-sided
        paired t-test (``scipy.stats.ttest_rel``; 1.0 when all differences are 0, 0.0 when
        they are all the same non-zero value); ``n``.
    """
    x, z = _vector(a, "a", min_len=2), _vector(b, "b", min_len=2)
    if x.shape != z.shape:
        raise ValueError(f"a and b must be paired (same length); got {len(x)} and {len(z)}")
    summary = seed_summary(x - z, confidence, n_resamples, seed, method)
    diff = x - z
    if np.ptp(diff) == 0:  # the t statistic is 0/0 or c/0
        p_value = 1.0 if diff[0] == 0 else 0.0
    else:
        p_value = float(stats.ttest_rel(x, z).pvalue)
    exceeds = bool(summary["ci_low"] > 0 or summary["ci_high"] < 0)
    return {"mean_diff": summary["mean"], "ci_low": summary["ci_low"], "ci_high": summary["ci_high"],
            "exceeds_noise": exceeds, "p_value": p_value, "n": len(x)}


def holm_adjust(p_values) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values of a family of comparisons (NaN entries stay NaN and are not counted).

    The i-th smallest of the m finite p-values is multiplied by ``m - i`` (i from 0), the results made
    non-decreasing in that order and capped at 1; a comparison whose adjusted p-value is below α holds
    with family-wise error rate at most α.
    """
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if not len(finite):
        return adjusted
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    scaled = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    adjusted[order] = scaled
    return adjusted


# ----------------------------------------------------------------------------- training logs
def entropy_trajectory(log_path: str | os.PathLike, key: str = "manifold_entropy") -> dict:
    """The manifold entropy H(M) over training, from a JSONL log of :func:`workbench.train.fit`.

    Parameters
    ----------
    log_path : str or path-like
        JSONL file, one JSON object per line with an integer ``"step"``; blank lines are skipped.
    key : str, default "manifold_entropy"
        Field to follow; records without it (e.g. plain KD) are skipped.

    Returns
    -------
    dict
        ``steps`` (np.ndarray of int64), ``values`` (np.ndarray of float64), ``final`` (last
        value, NaN if none), ``n`` and ``runs``. ``fit`` appends to its log, so a file can hold
        several runs; a step smaller than the one before starts a new run, and only the last run
        is returned (``runs`` counts them).
    """
    from .runs import read_log_runs

    runs = read_log_runs(log_path)
    last = runs[-1] if runs else []
    steps = [int(r["step"]) for r in last if key in r]
    values = [float(r[key]) for r in last if key in r]
    steps, values = np.array(steps, dtype=np.int64), np.array(values, dtype=np.float64)
    return {"steps": steps, "values": values, "final": float(values[-1]) if len(values) else float("nan"),
            "n": len(values), "runs": len(runs)}


# ---------------------------------------------------------------- one call for one model on one split

def analyze_predictions(student_logits, labels, image_features, class_vectors, teacher_logits=None,
                        teacher_features=None, base_classes=None, new_classes=None, true_ambiguity=None,
                        class_names=None, true_partner=None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per-sample table and flat per-run metrics for one model's predictions on one labelled set.

    Combines :func:`per_sample_table`, :func:`classification_metrics`, :func:`calibration_metrics`,
    :func:`alignment_metrics` and, when given, :func:`knn_agreement` (teacher features) and
    :func:`ambiguity_agreement` (ground-truth ambiguity, e.g. the embedded world's). Metric names
    are prefixed by their family (``calibration/ece``, ``alignment/effective_rank`` …).
    ``true_partner`` (the class each sample was blended toward, -1 for clean ones) becomes the
    ``true_partner`` column (and ``true_partner_name`` with ``class_names``).
    """
    table = per_sample_table(student_logits, labels, teacher_logits=teacher_logits, class_names=class_names)
    metrics = dict(classification_metrics(student_logits, labels, base_classes, new_classes))
    metrics.update({f"calibration/{k}": v for k, v in calibration_metrics(student_logits, labels).items()})
    metrics.update({f"alignment/{k}": v for k, v in alignment_metrics(image_features, labels, class_vectors).items()})
    metrics["entropy/mean"] = float(np.mean(table["entropy"]))
    if teacher_features is not None and len(table["entropy"]) > 1:
        # k = 10 neighbours, or every other sample of a smaller set (a tiny transfer target)
        metrics["alignment/knn_agreement_teacher"] = knn_agreement(teacher_features, image_features,
                                                                   k=min(10, len(table["entropy"]) - 1))
    if true_ambiguity is not None:
        table["true_ambiguity"] = np.asarray(true_ambiguity, dtype=np.float64)
        agreement = ambiguity_agreement(table["ambiguity_score"], true_ambiguity)
        metrics.update({f"ambiguity/{k}": v for k, v in agreement.items()})
    if true_partner is not None:
        table["true_partner"] = np.asarray(true_partner, dtype=np.int64)
        if class_names is not None:
            names = np.asarray(list(class_names) + [""], dtype=object)  # -1 (clean) -> ""
            table["true_partner_name"] = names[table["true_partner"]]
    return table, metrics


# ---------------------------------------------------------------- run directories
EMBEDDINGS_FILE = "embeddings.npz"


def _run_files(run_dir: str | os.PathLike) -> Path:
    """The directory holding a run's ``embeddings.npz``: the run dir itself or its ``experiment/``
    (a pipeline step)."""
    run_dir = Path(run_dir)
    for candidate in (run_dir, run_dir / "experiment"):
        if (candidate / EMBEDDINGS_FILE).is_file():
            return candidate
    raise FileNotFoundError(
        f"{run_dir} holds no {EMBEDDINGS_FILE} (nor does {run_dir / 'experiment'}); analyze_run reads the test-set "
        "embeddings and logits that workbench.experiment.run_experiment writes there")


def ame_sample_entropy(checkpoint_path: str | os.PathLike, image_features, class_vectors) -> np.ndarray | None:
    """Each image's entropy over the class vectors on the run's AME shared manifold, or None without AME.

    The AME projections are read from the training checkpoint (they are never part of the exported
    student); each image's projected row scores the projected class rows by scaled dot product and
    the entropy of their softmax is returned (nats, shape (N,)), as in AME's per-sample variant.
    """
    from .losses import AMELoss

    path = Path(checkpoint_path)
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    ame_state = next((m for m in state["modules"] if "text_projection.0.weight" in m and "steps_done" in m), None)
    if ame_state is None:
        return None
    ame = AMELoss.from_state_dict(ame_state)
    with torch.no_grad():
        return ame.sample_entropy(_features(image_features, "image_features").float(),
                                  _features(class_vectors, "class_vectors").float()).numpy().astype(np.float64)


def analyze_run(run_dir: str | os.PathLike, write: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """Per-sample table and per-run metrics of a finished run, rebuilt from its directory alone.

    Reads ``embeddings.npz`` (test-set student and teacher embeddings and logits, class vectors,
    labels, base/new classes, ground-truth ambiguity when known), ``train.jsonl`` (the H(M)
    trajectory) and, when the run trained with AME, the AME projections in ``checkpoint.pt`` (each
    sample's entropy on the shared manifold). Works on the run directory of ``python -m workbench
    train`` and on a pipeline step's directory. With ``write``, the table goes to
    ``analysis_samples.csv`` and the metrics to ``analysis.json`` next to the embeddings.

    Returns ``(table, metrics)``: metrics as in :func:`analyze_predictions` plus
    ``manifold_entropy/final`` and ``manifold_entropy/steps`` when the log has H(M), and
    ``ame/sample_entropy_mean`` when the checkpoint has AME.
    """
    from .runs import write_json

    files = _run_files(run_dir)
    with np.load(files / EMBEDDINGS_FILE, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    for key in ("image_features", "text_features", "logits", "labels"):
        if key not in arrays:
            raise ValueError(f"{files / EMBEDDINGS_FILE} lacks {key!r}; expected image_features, text_features, "
                             f"logits and labels")
    class_names = [str(c) for c in arrays["class_names"]] if "class_names" in arrays else None
    table, metrics = analyze_predictions(
        arrays["logits"], arrays["labels"], arrays["image_features"], arrays["text_features"],
        teacher_logits=arrays.get("teacher_logits"), teacher_features=arrays.get("teacher_features"),
        base_classes=arrays.get("base_classes"), new_classes=arrays.get("new_classes"),
        true_ambiguity=arrays.get("true_ambiguity"), class_names=class_names, true_partner=arrays.get("true_partner"))
    sample_entropy = ame_sample_entropy(files / "checkpoint.pt", arrays["image_features"], arrays["text_features"])
    if sample_entropy is not None:
        table["ame_sample_entropy"] = sample_entropy
        metrics["ame/sample_entropy_mean"] = float(sample_entropy.mean())
    if (files / "train.jsonl").is_file():
        trajectory = entropy_trajectory(files / "train.jsonl")
        if trajectory["n"]:
            metrics["manifold_entropy/first"] = float(trajectory["values"][0])
            metrics["manifold_entropy/final"] = trajectory["final"]
            metrics["manifold_entropy/steps"] = float(trajectory["n"])
    if write:
        write_table(table, files / "analysis_samples.csv")  # never replaces the run's own samples.csv
        write_json(files / "analysis.json", metrics)
    return table, metrics


def compare_run_dirs(run_a: str | os.PathLike, run_b: str | os.PathLike) -> dict:
    """:func:`compare_runs` of two run directories' test samples, plus each run's headline metrics.

    The samples that flipped are given by row (test image index) with their labels and both
    predictions, so a notebook can show them.
    """
    table_a, metrics_a = analyze_run(run_a, write=False)
    table_b, metrics_b = analyze_run(run_b, write=False)
    comparison = compare_runs(table_a, table_b)
    for name, metrics in (("a", metrics_a), ("b", metrics_b)):
        for key in ("base_acc", "new_acc", "hm", "calibration/ece", "alignment/effective_rank"):
            if key in metrics:
                comparison[f"{key}_{name}"] = metrics[key]
    comparison["flipped"] = {
        direction: {"row": rows, "label": np.asarray(table_a["label"])[rows],
                    "predicted_a": np.asarray(table_a["predicted"])[rows],
                    "predicted_b": np.asarray(table_b["predicted"])[rows]}
        for direction, rows in (("wrong_to_right", comparison["wrong_to_right_indices"]),
                                ("right_to_wrong", comparison["right_to_wrong_indices"]))}
    return comparison
