"""Tests for workbench.regime: per-factor accuracy, the per-model description, the regime object, domains."""

import numpy as np
import pytest
import torch

from workbench import regime
from workbench.world import WorldSplit


def split_of(labels, ambiguity, partner=None):
    labels = np.asarray(labels)
    n = len(labels)
    partner = np.full(n, -1) if partner is None else np.asarray(partner)
    return WorldSplit(np.zeros((n, 32, 32, 3), np.uint8), labels, [""] * n, np.asarray(ambiguity, np.float32),
                      partner, ["none"] * n, {}, [f"c{i}" for i in range(4)])


def test_factor_accuracy_counts_a_factor_right_whatever_the_other():
    # classes: 0 = (red, circle), 1 = (red, square), 2 = (blue, circle), 3 = (blue, square)
    factors = {"colour": np.array([0, 0, 1, 1]), "shape": np.array([0, 1, 0, 1])}
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.2, 0.1],    # label 0: colour right (red 0.7), shape wrong
                                     [0.05, 0.05, 0.1, 0.8],  # label 3: both right
                                     [0.5, 0.2, 0.3, 0.0]]) + 1e-9)  # label 2: colour wrong (red 0.7), shape right
    acc = regime.factor_accuracy(logits, [0, 3, 2], factors)
    assert acc == {"colour_acc": pytest.approx(2 / 3), "shape_acc": pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="class_factors\\['colour'\\] has 3 entries for 4 classes"):
        regime.factor_accuracy(logits, [0, 3, 2], {"colour": np.array([0, 0, 1])})


def test_describe_measures_accuracy_per_subset_and_ambiguity_detection():
    vectors = torch.eye(4)
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    ambiguity = np.array([0, 0, 0, 0, 0.2, 0.3, 0.4, 0.1])
    features = torch.nn.functional.one_hot(torch.as_tensor(labels), 4).float()
    # ambiguous samples get less confident logits, in the order of their true mixing weight
    confidence = torch.tensor([9.0, 9, 9, 9, 3, 2, 1, 4])
    logits = features * confidence[:, None]
    logits[5, 3] = 1.0  # sample 5 still correct
    out = regime.describe(features, logits, vectors, split_of(labels, ambiguity), [0, 1], [2, 3],
                          {"colour": np.array([0, 0, 1, 1]), "shape": np.array([0, 1, 0, 1])})
    assert out["base_acc"] == out["new_acc"] == out["hm"] == 1.0
    assert out["acc_clean"] == out["acc_ambiguous"] == 1.0
    assert out["ambiguity_auroc"] == 1.0  # every ambiguous sample scores above every clean one
    assert out["ambiguity_spearman"] == pytest.approx(1.0)
    assert out["colour_acc"] == out["shape_acc"] == 1.0


def rows(teacher_hm=0.95, student_hm=0.45, trans_hm=0.85, base_gain=0.12):
    student = {"hm": student_hm, "base_acc": 0.5, "colour_acc": 0.9, "shape_acc": 0.4}
    return {"teacher": {"hm": teacher_hm, "acc_clean": 0.97, "ambiguity_auroc": 0.8, "ambiguity_spearman": 0.6},
            "student_zs": student, "kd_transductive": {"hm": trans_hm},
            "kd_inductive": {"hm": 0.5, "base_acc": 0.5 + base_gain}}


def test_regime_computes_every_target_and_judges_it():
    out = regime.regime(rows())
    assert out["gap_closed_transductive"] == pytest.approx((0.85 - 0.45) / (0.95 - 0.45))
    assert out["kd_inductive_base_gain"] == pytest.approx(0.12)
    assert out["student_zs_shape_acc"] == 0.4
    assert set(out["met"]) == set(regime.TARGETS) and all(out["met"].values())
    failing = regime.regime(rows(student_hm=0.6, base_gain=0.02))
    assert failing["met"]["student_zs_hm"] is False and failing["met"]["kd_inductive_base_gain"] is False
    assert failing["met"]["teacher_hm"] is True
    partial = regime.regime({k: v for k, v in rows().items() if k in ("teacher", "student_zs")})
    assert "gap_closed_transductive" not in partial and "gap_closed_transductive" not in partial["met"]
    no_gap = regime.regime(rows(teacher_hm=0.4))
    assert no_gap["gap_closed_transductive"] is None and "gap_closed_transductive" not in no_gap["met"]


def test_targets_read_as_bounds():
    assert regime.meets("student_zs_hm", 0.30) and regime.meets("student_zs_hm", 0.55)
    assert not regime.meets("student_zs_hm", 0.551) and not regime.meets("teacher_hm", 0.919)
    assert regime.describe_target("student_zs_hm") == "0.30-0.55"
    assert regime.describe_target("teacher_hm") == ">= 0.92"
    table = regime.regime_table(regime.regime(rows()))
    assert "| teacher_hm | 0.950 | >= 0.92 | yes |" in table


def test_domain_accuracy_scores_every_model_on_every_domain():
    class Oracle(torch.nn.Module):
        """Encodes the i-th image of a batch as class vector i mod 4."""

        def __init__(self):
            super().__init__()
            self.logit_scale = torch.nn.Parameter(torch.tensor(3.0))

        def encode_image(self, pixels, normalize=True):
            return torch.nn.functional.one_hot(torch.arange(len(pixels)) % 4, 4).float()

    labels = np.arange(8) % 4
    right, wrong = split_of(labels, np.zeros(8)), split_of((labels + 1) % 4, np.zeros(8))
    table = regime.domain_accuracy({"oracle": Oracle()}, {"same": right, "shifted": wrong}, torch.eye(4),
                                   reference=right)
    assert table == {"oracle": {"in_distribution": 1.0, "same": 1.0, "shifted": 0.0, "domain_average": 0.5}}
