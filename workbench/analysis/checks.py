"""Input checks shared by the analysis functions: logits, labels, vectors, features and per-sample tables
are validated with messages that name the argument.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..protocol import _as_numpy




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
