"""Per-sample tables (one row per image: prediction, entropy, margin, teacher agreement, AME's sample
entropy ...), written to and read from TSV, and two runs' tables compared.
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import numpy as np
import torch.nn.functional as F

from ..protocol import _as_numpy
from ..runs import umask_mode
from .ambiguity import _distribution_stats, ambiguity_score
from .checks import _check_table, _column, _labels, _logits


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
        - ``ambiguity_student``: :func:`ambiguity_score` of the student alone; ``ambiguity_score``: the
          same averaged with the teacher's when teacher logits are given (the student's alone otherwise);
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
             "margin": st["margin"], "ambiguity_student": ambiguity_score(s)}
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
        table["ambiguity_score"] = table["ambiguity_student"]
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
