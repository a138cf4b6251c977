"""Base-to-new protocol: splits, few-shot sampling, harmonic mean and subset-restricted accuracy."""

import numpy as np
import pytest
import torch

from workbench.protocol import (accuracy, base_new_split, evaluate_base_new, few_shot_indices,
                                harmonic_mean)


@pytest.mark.parametrize("c, base, new", [
    (2, [0], [1]),
    (4, [0, 1], [2, 3]),
    (5, [0, 1, 2], [3, 4]),
    (100, list(range(50)), list(range(50, 100))),
    (101, list(range(51)), list(range(51, 101))),
])
def test_base_new_split(c, base, new):
    b, n = base_new_split(c)
    assert b.tolist() == base and n.tolist() == new
    assert sorted(np.concatenate([b, n]).tolist()) == list(range(c))


@pytest.mark.parametrize("c", [0, 1, -3])
def test_base_new_split_rejects_fewer_than_two(c):
    with pytest.raises(ValueError, match="num_classes"):
        base_new_split(c)


LABELS = np.repeat(np.arange(4), [30, 20, 3, 40])  # class 2 has only 3 samples


def test_few_shot_counts_and_determinism():
    idx = few_shot_indices(LABELS, shots=3, seed=0)
    assert idx.tolist() == sorted(set(idx.tolist()))  # sorted, no repeats
    assert np.bincount(LABELS[idx]).tolist() == [3, 3, 3, 3]
    assert np.array_equal(idx, few_shot_indices(LABELS, shots=3, seed=0))
    assert np.array_equal(idx, few_shot_indices(torch.as_tensor(LABELS), shots=3, seed=0))
    assert not np.array_equal(few_shot_indices(LABELS, 3, seed=0, classes=[0, 1, 3]),
                              few_shot_indices(LABELS, 3, seed=1, classes=[0, 1, 3]))


def test_few_shot_restricted_to_classes_is_consistent():
    sub = few_shot_indices(LABELS, shots=2, seed=7, classes=[3, 0])
    assert sorted(set(LABELS[sub].tolist())) == [0, 3] and len(sub) == 4
    full = few_shot_indices(LABELS, shots=2, seed=7)
    assert np.array_equal(sub, full[np.isin(LABELS[full], [0, 3])])


def test_few_shot_errors():
    with pytest.raises(ValueError, match="class 2 has only 3 samples"):
        few_shot_indices(LABELS, shots=4, seed=0)
    assert len(few_shot_indices(LABELS, shots=16, seed=0, classes=[0, 1, 3])) == 48
    for bad in [0, -1]:
        with pytest.raises(ValueError, match="shots"):
            few_shot_indices(LABELS, shots=bad, seed=0)
    with pytest.raises(ValueError, match="class 9 has only 0 samples"):
        few_shot_indices(LABELS, shots=1, seed=0, classes=[9])


def test_harmonic_mean():
    assert harmonic_mean(0.8, 0.6) == pytest.approx(2 * 0.8 * 0.6 / 1.4)
    assert harmonic_mean(0.6, 0.8) == harmonic_mean(0.8, 0.6)
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(1.0, 0.0) == 0.0
    assert harmonic_mean(0.7, 0.7) == pytest.approx(0.7)
    assert harmonic_mean(0.9, 0.1) <= (0.9 + 0.1) / 2
    with pytest.raises(ValueError):
        harmonic_mean(-0.1, 0.5)


def test_accuracy():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, 4.0], [1.0, 2.0]])
    labels = np.array([0, 1, 1, 0])
    assert accuracy(logits, labels) == 0.5
    assert accuracy(torch.as_tensor(logits), torch.as_tensor(labels)) == 0.5
    with pytest.raises(ValueError):
        accuracy(logits, labels[:3])


# Classes 0, 1 are base and 2, 3 new. Class vector 0 is long (norm 100), so a plain dot product
# would also assign the class-1 sample to class 0; cosine similarity must ignore norms.
CLASS_VECTORS = torch.tensor([[100.0, 0.0, 0.0],
                              [0.0, 1.0, 0.0],
                              [1.0, 0.0, 1.0],
                              [0.0, 0.0, 1.0]])
FEATURES = torch.tensor([[0.9, 0.1, 0.0],   # class 0: correct
                         [0.2, 1.0, 0.0],   # class 1: correct
                         [1.0, 0.0, 0.3],   # class 2: nearest overall is class 0, among new is 2
                         [1.0, 0.0, 0.5]])  # class 3: predicted 2 among new -> wrong
LABELS_4 = torch.tensor([0, 1, 2, 3])


def test_evaluate_base_new_restricts_prediction_to_subset():
    normalize = torch.nn.functional.normalize
    cos = normalize(FEATURES, dim=1) @ normalize(CLASS_VECTORS, dim=1).T
    assert cos[2].argmax().item() == 0  # unrestricted prediction for the class-2 sample is wrong
    base, new = base_new_split(4)
    out = evaluate_base_new(FEATURES, LABELS_4, CLASS_VECTORS, base, new)
    assert set(out) == {"base_acc", "new_acc", "hm"}
    assert out["base_acc"] == 1.0  # only possible if class vectors are normalized
    assert out["new_acc"] == 0.5  # only possible if the class-2 sample is judged among new vectors
    assert out["hm"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    as_numpy = evaluate_base_new(FEATURES.numpy(), LABELS_4.numpy(), CLASS_VECTORS.numpy(),
                                 base.tolist(), new.tolist())
    assert as_numpy == out


def test_evaluate_base_new_is_invariant_to_feature_scale():
    base, new = base_new_split(4)
    out = evaluate_base_new(FEATURES * torch.tensor([[3.0], [0.1], [50.0], [7.0]]), LABELS_4,
                            CLASS_VECTORS.double() * 2, base, new)
    assert out == evaluate_base_new(FEATURES, LABELS_4, CLASS_VECTORS, base, new)


def test_evaluate_base_new_errors():
    base, new = base_new_split(4)
    with pytest.raises(ValueError, match="class_vectors"):
        evaluate_base_new(FEATURES, LABELS_4, CLASS_VECTORS[:, :2], base, new)
    with pytest.raises(ValueError, match="labels"):
        evaluate_base_new(FEATURES, LABELS_4[:3], CLASS_VECTORS, base, new)
    with pytest.raises(ValueError, match="new_classes"):
        evaluate_base_new(FEATURES, LABELS_4, CLASS_VECTORS, base, [2, 4])
    with pytest.raises(ValueError, match="no samples"):
        evaluate_base_new(FEATURES[:2], LABELS_4[:2], CLASS_VECTORS, base, new)


def test_one_subset_accuracy_serves_the_protocol_and_the_analysis():
    from workbench.analysis import classification_metrics
    from workbench.protocol import subset_accuracy

    rng = np.random.default_rng(3)
    features, vectors = rng.normal(size=(200, 16)), rng.normal(size=(10, 16))
    labels = rng.integers(0, 10, size=200)
    base, new = base_new_split(10)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    logits = unit(features) @ unit(vectors).T
    by_protocol = evaluate_base_new(features, labels, vectors, base, new)
    by_analysis = classification_metrics(logits, labels, base, new)
    assert {k: by_analysis[k] for k in by_protocol} == pytest.approx(by_protocol)
    # by hand: among the base samples, the argmax over the base columns only
    mask = np.isin(labels, base)
    expected = np.mean(base[logits[mask][:, base].argmax(1)] == labels[mask])
    assert subset_accuracy(logits, labels, base, "base") == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"new_classes must be a non-empty list of labels in 0..9; got \[12\]"):
        subset_accuracy(logits, labels, [12], "new")
