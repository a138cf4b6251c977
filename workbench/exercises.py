"""Checks for the teaching notebooks' exercises: a learner's answer against the library's own computation.

An exercise cell holds a stub (``# your code here`` … ``return None``) and ends with
``exercises.check("kd_loss", kd_loss)``. A stub still returning None is *not attempted* (a nudge is
printed, nothing fails, so *Run All* works); a wrong answer raises ``AssertionError`` with a hint, never
the solution; a right one prints so. Reference solutions live in ``notebooks/solutions/<notebook>.py``,
outside the notebooks: a notebook run with ``solutions=True`` (instructors, the test suite) loads them
with :func:`solution`.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Callable

import torch

from .notebook import REPO_ROOT

SOLUTIONS_DIR = REPO_ROOT / "notebooks" / "solutions"
NOT_ATTEMPTED, CORRECT = "not attempted", "correct"


def solution(notebook: str, name: str) -> Callable:
    """The reference solution ``name`` of ``notebooks/solutions/<notebook>.py``."""
    path = SOLUTIONS_DIR / f"{notebook}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no solutions file {path}")
    spec = importlib.util.spec_from_file_location(f"solutions_{notebook}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, name):
        raise AttributeError(f"{path} has no solution {name!r}")
    return getattr(module, name)


def _close(got, expected, what: str, hint: str, rtol: float = 1e-5, atol: float = 1e-7) -> None:
    got = torch.as_tensor(got, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    if got.shape != expected.shape:
        raise AssertionError(f"{what}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}. {hint}")
    if not torch.allclose(got, expected, rtol=rtol, atol=atol):
        raise AssertionError(f"{what}: expected {expected.tolist()}, got {got.tolist()}. {hint}")


def _check_kd_loss(kd_loss: Callable):
    from .losses import KDLoss

    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 5, generator=generator), 3 * torch.randn(8, 5, generator=generator)
    for tau in (1.0, 2.0, 4.0):
        got = kd_loss(student, teacher, tau)
        if got is None:
            return None
        expected = KDLoss(temperature=tau)(student, teacher)["kd_loss"]
        hint = ("Soften both logits by tau, take KL(teacher || student) summed over classes and averaged over "
                "the batch, then multiply by tau**2.")
        if tau != 1.0 and torch.allclose(torch.as_tensor(got, dtype=torch.float64) * tau**2, expected.double()):
            hint = "Almost: the tau**2 factor is missing (it keeps the gradient's size independent of tau)."
        _close(got, expected, f"kd_loss at tau = {tau:g}", hint)
    return CORRECT


def _check_harmonic_mean(harmonic_mean: Callable):
    from .protocol import harmonic_mean as reference

    for base, new in ((0.9, 0.3), (0.8, 0.8), (0.5, 0.0), (0.0, 0.0)):
        got = harmonic_mean(base, new)
        if got is None:
            return None
        hint = "HM = 2 * base * new / (base + new); define it as 0 when both are 0."
        if math.isclose(float(got), (base + new) / 2) and base != new:
            hint = "That is the arithmetic mean; the harmonic mean punishes the weaker side more."
        _close(got, reference(base, new), f"harmonic_mean({base}, {new})", hint)
    return CORRECT


def _check_entropy_gradient(entropy_gradient: Callable):
    from .losses import entropy

    generator = torch.Generator().manual_seed(1)
    cases = {"uniform scores": torch.full((6,), 0.7), "random scores": torch.randn(6, generator=generator)}
    for what, scores in cases.items():
        got = entropy_gradient(scores.clone())
        if got is None:
            return None
        leaf = scores.clone().double().requires_grad_(True)
        (expected,) = torch.autograd.grad(entropy(leaf), leaf)
        _close(got, expected, f"entropy_gradient on {what}",
               "Make the scores a leaf tensor with requires_grad=True, compute H = -sum(p * log p) of "
               "p = softmax(scores), and return torch.autograd.grad(H, scores)[0].", atol=1e-6)
    return CORRECT


def _check_uniform_manifold(uniform_manifold: Callable):
    from .losses import manifold_entropy

    answer = uniform_manifold()
    if answer is None:
        return None
    image_rows, text_rows = (torch.as_tensor(x, dtype=torch.float64) for x in answer)
    rows = torch.cat([text_rows, image_rows])
    if len(rows) != 5:
        raise AssertionError(f"uniform_manifold: expected 5 rows in all, got {len(rows)}.")
    if len(torch.unique(rows, dim=0)) != 5:
        raise AssertionError("uniform_manifold: two rows are equal; make every row different.")
    _close(manifold_entropy(image_rows, text_rows), math.log(5), "uniform_manifold: H(M)",
           "The softmax sees one score per row, the row's mean: what makes p uniform?")
    return CORRECT


def _records(result, keys, what: str, fields=("manifold_entropy", "accuracy", "effective_rank")):
    if sorted(result) != sorted(keys):
        raise AssertionError(f"{what}: expected one entry per {sorted(keys)}, got {sorted(result)}.")
    for key, record in result.items():
        record = record[-1] if isinstance(record, list) else record
        if not all(field in record and math.isfinite(record[field]) for field in fields):
            raise AssertionError(f"{what}[{key!r}]: expected the run's last record with {', '.join(fields)}.")


def _check_omega_sweep(omega_sweep: Callable, optimise: Callable):
    omegas = (1.0, 10.0, 50.0, 500.0)
    result = omega_sweep(optimise, omegas)
    if result is None:
        return None
    _records(result, omegas, "omega_sweep")
    return CORRECT


def _check_per_sample_runs(per_sample_runs: Callable, optimise: Callable, ame_weight: float):
    result = per_sample_runs(optimise, ame_weight)
    if result is None:
        return None
    _records(result, ("KD + AME (per-sample)", "AME only (per-sample)"), "per_sample_runs")
    return CORRECT


def _check_entropy_by_batch(entropy_by_batch: Callable, ame, features, text):
    from .losses import manifold_entropy

    sizes = (8, 16, 32)
    result = entropy_by_batch(ame, features, text, sizes)
    if result is None:
        return None
    if sorted(result) != list(sizes):
        raise AssertionError(f"entropy_by_batch: expected one entry per batch size {list(sizes)}, got {sorted(result)}.")
    with torch.no_grad():
        for b in sizes:
            expected = manifold_entropy(ame.image_projection(features[:b]), ame.text_projection(text))
            _close(result[b], expected, f"entropy_by_batch[{b}]",
                   "Project the first b images and the class vectors with AME's projections, then take "
                   "losses.manifold_entropy of the two.")
    return CORRECT


CHECKS = {"kd_loss": _check_kd_loss, "harmonic_mean": _check_harmonic_mean,
          "entropy_gradient": _check_entropy_gradient, "uniform_manifold": _check_uniform_manifold,
          "omega_sweep": _check_omega_sweep, "per_sample_runs": _check_per_sample_runs,
          "entropy_by_batch": _check_entropy_by_batch}


def check(name: str, answer: Callable, **context) -> str:
    """Check the learner's ``answer`` to exercise ``name``; returns ``"correct"`` or ``"not attempted"``.

    ``context`` passes what the exercise works on (the notebook's ``optimise``, AME module, features …). A
    wrong answer raises ``AssertionError`` whose message says what differed and gives a hint.
    """
    if name not in CHECKS:
        raise KeyError(f"no exercise {name!r}; exercises: {', '.join(CHECKS)}")
    status = CHECKS[name](answer, **context) or NOT_ATTEMPTED
    print(f"{name}: {'correct' if status == CORRECT else 'not attempted yet: replace the stub and rerun this cell'}")
    return status
