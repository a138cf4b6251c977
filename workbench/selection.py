"""Which state a training run ends with: the last epoch's, the best-scoring epoch's, or a weighted average of epochs.

:func:`workbench.train.fit` calls ``observe(epoch, modules)`` after every epoch and ``restore(modules)`` at the
end; the state lives in the run's checkpoint (``state_dict``), so a resumed run ends as an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from torch import nn

SELECTION_POLICIES = ("last", "best_val", "best_base_test")


class ModelSelector:
    """Keeps the trained modules' state of the epoch with the best score (model selection).

    ``policy`` is one of ``SELECTION_POLICIES``: ``"last"`` keeps the final epoch (``score`` unused);
    the others call ``score()`` after every epoch (higher is better) and restore the best epoch's
    state when training ends. The name says what ``score`` measures — ``"best_val"``: accuracy on a
    held-out validation set; ``"best_base_test"``: accuracy on the base classes' test images, which is
    what the prompt-learning field reports, although it selects on test data. The choice and the
    chosen epoch are recorded by the caller (see :meth:`summary`).
    """

    def __init__(self, policy: str = "last", score: Callable[[], float] | None = None):
        if policy not in SELECTION_POLICIES:
            raise ValueError(f"unknown selection policy {policy!r}; valid names: {', '.join(SELECTION_POLICIES)}")
        if policy != "last" and score is None:
            raise ValueError(f"selection policy {policy!r} needs a score function")
        self.policy, self.score = policy, score
        self.best_epoch, self.best_score, self.best_state = None, -math.inf, None
        self.scores: list[float] = []

    def observe(self, epoch: int, modules: list[nn.Module]) -> None:
        if self.policy == "last":
            self.best_epoch = epoch
            return
        states = [m.training for m in modules]
        for module in modules:
            module.eval()
        value = float(self.score())
        for module, training in zip(modules, states):
            module.train(training)
        self.scores.append(value)
        if value > self.best_score:
            self.best_epoch, self.best_score = epoch, value
            self.best_state = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]

    def restore(self, modules: list[nn.Module]) -> None:
        if self.best_state is not None:
            for module, state in zip(modules, self.best_state):
                module.load_state_dict(state)

    def summary(self) -> dict:
        return {"policy": self.policy, "epoch": self.best_epoch,
                "score": None if self.policy == "last" else self.best_score, "scores": list(self.scores)}

    def state_dict(self) -> dict:
        return {"best_epoch": self.best_epoch, "best_score": self.best_score, "best_state": self.best_state,
                "scores": self.scores}

    def load_state_dict(self, state: dict) -> None:
        self.best_epoch, self.best_score = state["best_epoch"], state["best_score"]
        self.best_state, self.scores = state["best_state"], list(state["scores"])


class GaussianAverage:
    """PromptSRC's Gaussian prompt aggregation: training ends with a Gaussian-weighted average of the epochs' states.

    Matched to zhengli97/PromptKD ``trainers/promptsrc.py`` (``get_gauss``, ``state_dict_weighting``): epoch
    ``a`` (1-based) of ``epochs`` weighs ``N(a; mean, std)``, normalised over the epochs, and the modules end
    with the weighted sum of their end-of-epoch states. Used in place of a :class:`ModelSelector` by
    :func:`fit` (same interface); tensors that are not floating point (counters) keep their last value.
    """

    policy = "gaussian_average"

    def __init__(self, epochs: int, mean: float, std: float):
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {epochs!r}")
        if not (isinstance(std, (int, float)) and std > 0) or not isinstance(mean, (int, float)):
            raise ValueError(f"the Gaussian needs a number mean and a std > 0, got mean={mean!r}, std={std!r}")
        log_density = -0.5 * ((np.arange(1, epochs + 1) - mean) / std) ** 2
        weights = np.exp(log_density - log_density.max())  # stable where every epoch lies far from the mean
        self.weights = weights / weights.sum()
        self.scores: list[float] = []
        self.total: list[dict] | None = None
        self.best_epoch = None

    def observe(self, epoch: int, modules: list[nn.Module]) -> None:
        weight = float(self.weights[epoch])
        states = [m.state_dict() for m in modules]
        if self.total is None:
            self.total = [{k: v.detach().clone() * weight if v.is_floating_point() else v.detach().clone()
                           for k, v in state.items()} for state in states]
        else:
            for total, state in zip(self.total, states):
                for key, value in state.items():
                    total[key] = total[key] + weight * value.detach() if value.is_floating_point() \
                        else value.detach().clone()
        self.best_epoch = epoch

    def restore(self, modules: list[nn.Module]) -> None:
        if self.total is not None:
            for module, state in zip(modules, self.total):
                module.load_state_dict(state)

    def summary(self) -> dict:
        return {"policy": self.policy, "epoch": self.best_epoch, "score": None, "scores": [],
                "weights": [round(float(w), 6) for w in self.weights]}

    def state_dict(self) -> dict:
        return {"total": self.total, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.best_epoch = state["total"], state["best_epoch"]
