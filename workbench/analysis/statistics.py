"""Statistics over seeds: bootstrap intervals, paired comparisons, Holm's correction for many comparisons."""

from __future__ import annotations

import numpy as np
from scipy import stats

from .checks import _vector


BOOTSTRAP_RESAMPLES = 10_000  # bootstrap resamples for seed confidence intervals
BOOTSTRAP_SEED = 0  # fixed RNG seed, so the same values always give the same interval
BOOTSTRAP_METHODS = ("percentile", "basic", "bca")  # scipy.stats.bootstrap's intervals; percentile is the default


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
