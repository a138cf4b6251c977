"""Analysis library: hand-computable cases, reference formulas, and the embedded world's ground truth."""

import json
import math

import numpy as np
import pytest
import torch

from workbench.analysis import (alignment_metrics, ambiguity_agreement, ambiguity_confounds, ambiguity_score,
                                calibration_metrics, classification_metrics, compare_runs,
                                effective_rank, entropy_trajectory, knn_agreement,
                                paired_comparison, per_sample_table, rank_ambiguous, read_table,
                                reliability_bins, seed_summary, write_table)


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _logits_with_confidence(conf, predicted, num_classes):
    """Logits whose softmax puts ``conf`` on ``predicted`` and spreads the rest evenly."""
    p = np.repeat(((1 - conf) / (num_classes - 1))[:, None], num_classes, axis=1)
    p[np.arange(len(conf)), predicted] = conf
    return np.log(p)


# ----------------------------------------------------------------------------- per sample
def test_uniform_distribution_has_max_entropy_zero_margin():
    c = 7
    table = per_sample_table(np.zeros((3, c)), [0, 1, 2])
    assert np.allclose(table["entropy"], math.log(c))
    assert np.allclose(table["max_prob"], 1 / c)
    assert np.allclose(table["margin"], 0)
    assert np.allclose(ambiguity_score(np.zeros((3, c))), 1)


def test_per_sample_columns_match_reference():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(20, 5)) * 3, rng.normal(size=(20, 5)) * 3
    y = rng.integers(0, 5, 20)
    names = ["a", "b", "c", "d", "e"]
    table = per_sample_table(torch.as_tensor(s, dtype=torch.float32), y, teacher_logits=t,
                             manifold_entropy=0.5, class_names=names)
    ps, pt = _softmax(s), _softmax(t)
    order = np.argsort(-ps, axis=1)
    assert np.array_equal(table["predicted"], order[:, 0])
    assert np.array_equal(table["runner_up"], order[:, 1])
    assert np.array_equal(table["correct"], order[:, 0] == y)
    assert np.allclose(table["entropy"], -(ps * np.log(ps)).sum(1), atol=1e-5)
    assert np.allclose(table["margin"], np.sort(ps, 1)[:, -1] - np.sort(ps, 1)[:, -2], atol=1e-6)
    assert np.allclose(table["kl_teacher_student"], (pt * (np.log(pt) - np.log(ps))).sum(1), atol=1e-5)
    assert np.allclose(table["teacher_entropy"], -(pt * np.log(pt)).sum(1))
    assert table["predicted_name"].tolist() == [names[i] for i in order[:, 0]]
    assert np.all(table["manifold_entropy"] == 0.5)
    assert len({len(v) for v in table.values()}) == 1


def test_kl_zero_when_teacher_equals_student():
    logits = np.random.default_rng(1).normal(size=(10, 4)) * 50  # some probabilities underflow
    table = per_sample_table(logits, np.zeros(10, dtype=int), teacher_logits=logits.copy())
    assert np.all(table["kl_teacher_student"] == 0)


@pytest.mark.parametrize("kwargs, match", [
    ({"student_logits": np.zeros(5), "labels": [0] * 5}, "student_logits"),
    ({"student_logits": np.zeros((5, 3)), "labels": [0] * 4}, "labels"),
    ({"student_logits": np.zeros((2, 3)), "labels": [0, 3]}, "0..2"),
    ({"student_logits": np.full((2, 3), np.nan), "labels": [0, 1]}, "finite"),
    ({"student_logits": np.zeros((2, 3)), "labels": [0, 1], "teacher_logits": np.zeros((2, 4))},
     "teacher_logits"),
    ({"student_logits": np.zeros((2, 3)), "labels": [0, 1], "class_names": ["x"]}, "class_names"),
])
def test_per_sample_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        per_sample_table(**kwargs)


def test_table_csv_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    table = per_sample_table(rng.normal(size=(6, 3)), [0, 1, 2, 0, 1, 2],
                             teacher_logits=rng.normal(size=(6, 3)),
                             class_names=["red, circle", "blue star", 'say "hi"'])
    path = write_table(table, tmp_path / "sub" / "samples.csv")
    assert [p.name for p in path.parent.iterdir()] == ["samples.csv"]  # no temp file left
    back = read_table(path)
    assert list(back) == list(table)
    for key, column in table.items():
        assert np.array_equal(back[key], column), key  # floats round-trip exactly
    assert back["correct"].dtype == bool and back["label"].dtype == np.int64


def test_write_table_rejects_ragged_columns(tmp_path):
    with pytest.raises(ValueError, match="same length"):
        write_table({"a": [1, 2], "b": [1]}, tmp_path / "t.csv")


# ----------------------------------------------------------------------------- ambiguity
def test_rank_ambiguous_orders_by_score():
    logits = np.array([[5.0, 0, 0], [0, 0, 0], [1, 0.9, 0], [3, 0, 0]])
    top = rank_ambiguous(per_sample_table(logits, [0, 0, 0, 0]), k=2)
    assert top["sample_id"].tolist() == [1, 2]
    assert len(rank_ambiguous(per_sample_table(logits, [0] * 4), k=10)["sample_id"]) == 4
    with pytest.raises(ValueError, match="k"):
        rank_ambiguous(per_sample_table(logits, [0] * 4), k=0)


def test_spearman_one_for_monotone_transform():
    a = np.random.default_rng(3).uniform(0, 1, 50)
    a[:20] = 0  # clean samples, tied at 0
    out = ambiguity_agreement(np.where(a > 0, np.exp(3 * a), 0.5), a)
    assert out["spearman"] == pytest.approx(1.0)
    assert out["auroc_ambiguous"] == pytest.approx(1.0)
    assert ambiguity_agreement(-a, a)["spearman"] == pytest.approx(-1.0)


def test_embedded_world_oracle_ambiguity_correlates():
    from workbench.world import WorldSpec, generate_split

    split = generate_split(WorldSpec(), "test", 600, seed=0)
    n, c = len(split), len(split.class_names)
    a = split.ambiguity.astype(np.float64)
    weights = np.zeros((n, c))
    weights[np.arange(n), split.labels] = 1 - a
    amb = split.partner >= 0
    weights[np.flatnonzero(amb), split.partner[amb]] += a[amb]
    rng = np.random.default_rng(0)
    oracle = 8 * weights + rng.normal(scale=0.5, size=(n, c))
    agreement = ambiguity_agreement(ambiguity_score(oracle), split.ambiguity)
    print(f"oracle ambiguity agreement on the embedded world: {agreement}")
    assert agreement["spearman"] > 0.3
    assert agreement["auroc_ambiguous"] > 0.8


def _confounded_scores():
    """Ambiguous samples score their mixing weight (0.05-0.45); clean ones about 0.02, occluded clean ones 0.27."""
    rng = np.random.default_rng(1)
    a = np.zeros(40)
    a[20:] = np.linspace(0.05, 0.45, 20)
    occluded = np.zeros(40, bool)
    occluded[:5] = True
    noise = rng.uniform(0, 8, 40)
    score = np.where(a > 0, a, 0.02) + np.where(occluded & (a == 0), 0.25, 0.0) + 1e-3 * noise * (a == 0)
    return score, a, {"occluded": occluded, "noise": noise, "background": np.array(["dark", "light"] * 20)}


def test_ambiguity_confounds_names_what_holds_auroc_down():
    score, a, factors = _confounded_scores()
    out = ambiguity_confounds(score, a, factors, weight_thresholds=(0.0, 0.3))
    assert out["auroc"] == pytest.approx(ambiguity_agreement(score, a)["auroc_ambiguous"])
    assert out["auroc"] < 0.9
    occluded = {r["value"]: r for r in out["by_value"] if r["factor"] == "occluded"}
    assert occluded[True]["n_clean"] == 5 and occluded[True]["n_ambiguous"] == 0
    assert occluded[False]["n_clean"] == 15 and occluded[False]["n_ambiguous"] == 20
    assert occluded[True]["clean_score_mean"] > occluded[False]["clean_score_mean"] + 0.2
    # without the occluded clean samples every ambiguous sample (weight >= 0.05) outranks every clean one
    assert occluded[True]["auroc_without_clean"] == pytest.approx(1.0)
    assert occluded[False]["auroc_within"] == pytest.approx(1.0)
    assert math.isnan(occluded[True]["auroc_within"])  # no ambiguous sample is occluded
    assert {r["value"] for r in out["by_value"] if r["factor"] == "background"} == {"dark", "light"}
    assert out["clean_spearman"]["noise"] > 0.3  # clean scores rise with noise by construction
    assert [r["n_ambiguous"] for r in out["by_weight"]] == [20, int((a > 0.3).sum())]
    assert out["by_weight"][0]["auroc"] == pytest.approx(out["auroc"])
    assert out["by_weight"][1]["auroc"] == pytest.approx(1.0)  # weights > 0.3 outscore even occluded clean ones


def test_ambiguity_confounds_rejects_bad_input():
    score, a, factors = _confounded_scores()
    with pytest.raises(ValueError, match="factors\\['noise'\\] has 39 entries for 40"):
        ambiguity_confounds(score, a, factors | {"noise": factors["noise"][:-1]})
    with pytest.raises(ValueError, match="both clean"):
        ambiguity_confounds(score, np.zeros(40), factors)
    with pytest.raises(ValueError, match="weight_thresholds"):
        ambiguity_confounds(score, a, factors, weight_thresholds=(1.5,))
    with pytest.raises(ValueError, match="dict"):
        ambiguity_confounds(score, a, [factors["noise"]])


# ----------------------------------------------------------------------------- two runs
def test_compare_runs_hand_made_flip():
    y = [0, 1, 2, 0]
    a = per_sample_table(np.eye(3)[[0, 0, 2, 1]] * 4, y)  # correct: T F T F
    b = per_sample_table(np.eye(3)[[0, 1, 0, 1]] * 2, y)  # correct: T T F F
    out = compare_runs(a, b)
    assert (out["wrong_to_right"], out["right_to_wrong"], out["net_gain"]) == (1, 1, 0)
    assert out["wrong_to_right_indices"].tolist() == [1]
    assert out["right_to_wrong_indices"].tolist() == [2]
    assert out["mean_entropy_change"] == pytest.approx(np.mean(b["entropy"] - a["entropy"]))
    assert out["mean_entropy_change"] > 0  # smaller logits, flatter softmax
    with pytest.raises(ValueError, match="label"):
        compare_runs(a, per_sample_table(np.eye(3)[[0, 1, 0, 1]], [1, 1, 2, 0]))


# ----------------------------------------------------------------------------- one run
def test_classification_metrics_and_base_new_restriction():
    logits = np.array([[0, 5, 4, 0], [3, 0, 0, 0], [0, 0, 1, 2], [0, 0, 2, 3], [9, 0, 0, 8.0]])
    y = np.array([0, 0, 2, 3, 3])
    out = classification_metrics(logits, y, base_classes=[0, 1], new_classes=[2, 3])
    assert out["accuracy"] == pytest.approx(2 / 5)
    assert out["top5_accuracy"] == 1.0  # C < 5: every label is in the top C
    assert out["mean_per_class_recall"] == pytest.approx((1 / 2 + 0 + 1 / 2) / 3)
    assert out["base_acc"] == pytest.approx(1 / 2)  # among columns {0, 1}: sample 0 predicts 1
    assert out["new_acc"] == pytest.approx(2 / 3)  # among {2, 3}: 3, 3, 3 (sample 4 now right)
    assert out["hm"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    with pytest.raises(ValueError, match="both"):
        classification_metrics(logits, y, base_classes=[0, 1])


def test_perfectly_calibrated_predictor_has_zero_ece():
    # 10 samples at confidence 0.7 (7 right) and 10 at 0.9 (9 right), 4 classes.
    conf = np.repeat([0.7, 0.9], 10)
    correct = np.array([1] * 7 + [0] * 3 + [1] * 9 + [0])
    y = np.zeros(20, dtype=int)
    predicted = np.where(correct == 1, 0, 1)
    logits = _logits_with_confidence(conf, predicted, 4)
    assert calibration_metrics(logits, y)["ece"] == pytest.approx(0, abs=1e-12)
    diagram = reliability_bins(logits, y)
    assert diagram["count"].sum() == 20 and np.count_nonzero(diagram["count"]) == 2
    assert np.nanmax(np.abs(diagram["confidence"] - diagram["accuracy"])) < 1e-12


def test_confidently_wrong_predictor_has_ece_near_one():
    logits = np.tile([0.0, 30.0], (8, 1))
    out = calibration_metrics(logits, np.zeros(8, dtype=int))
    assert out["ece"] == pytest.approx(1, abs=1e-9)
    assert out["nll"] == pytest.approx(30, abs=1e-9)
    assert out["brier"] == pytest.approx(2, abs=1e-9)


def test_nll_and_brier_match_formulas():
    rng = np.random.default_rng(4)
    logits, y = rng.normal(size=(40, 6)) * 2, rng.integers(0, 6, 40)
    p = _softmax(logits)
    out = calibration_metrics(torch.as_tensor(logits), torch.as_tensor(y))
    assert out["nll"] == pytest.approx(np.mean(-np.log(p[np.arange(40), y])))
    assert out["brier"] == pytest.approx(np.mean(((p - np.eye(6)[y]) ** 2).sum(1)))
    # ECE against a loop over equal-width bins
    conf, hit = p.max(1), p.argmax(1) == y
    ece = sum(np.sum(m) / 40 * abs(hit[m].mean() - conf[m].mean())
              for b in range(15) if (m := (conf > b / 15) & (conf <= (b + 1) / 15)).any())
    assert out["ece"] == pytest.approx(ece)
    with pytest.raises(ValueError, match="n_bins"):
        calibration_metrics(logits, y, n_bins=0)


# ----------------------------------------------------------------------------- shared space
def test_effective_rank_of_orthogonal_and_rank_one():
    d = 6
    assert effective_rank(3 * np.eye(d)) == pytest.approx(d)
    assert effective_rank(np.linalg.qr(np.random.default_rng(5).normal(size=(d, d)))[0].T * 2) \
        == pytest.approx(d)
    v = np.random.default_rng(6).normal(size=8)
    assert effective_rank(np.outer([1, 2, 3, -1, 0.5], v)) == pytest.approx(1)


def test_alignment_when_images_equal_their_text_vectors():
    rng = np.random.default_rng(7)
    text = rng.normal(size=(4, 16))
    y = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3])  # unbalanced on purpose
    out = alignment_metrics(2 * text[y], y, text)
    assert out["modality_gap"] == pytest.approx(0, abs=1e-12)
    assert out["mean_cosine_to_class"] == pytest.approx(1)
    assert out["intra_inter_ratio"] == pytest.approx(0, abs=1e-7)
    assert out["effective_rank"] <= 4 + 1e-9
    # images = e_0 and e_1, text = -e_0 and -e_1: centroids (1/2, 1/2) and (-1/2, -1/2) apart by sqrt 2
    out = alignment_metrics(np.eye(2), [0, 1], -np.eye(2))
    assert out["modality_gap"] == pytest.approx(math.sqrt(2))
    assert out["mean_cosine_to_class"] == pytest.approx(-1)
    assert math.isnan(out["intra_inter_ratio"])  # one sample per class: no intra-class distance
    with pytest.raises(ValueError, match="share D"):
        alignment_metrics(np.eye(2), [0, 1], np.eye(3))


def test_intra_inter_ratio_by_hand():
    # class 0 at e_0 and e_1 (distance sqrt 2); class 1 at -e_0 and -e_1; centroids +-(1/2, 1/2)
    img = np.array([[1, 0], [0, 1], [-1, 0], [0, -1.0]])
    out = alignment_metrics(img, [0, 0, 1, 1], np.eye(2))
    assert out["intra_inter_ratio"] == pytest.approx(math.sqrt(2) / math.sqrt(2))


def test_knn_agreement():
    rng = np.random.default_rng(8)
    t = rng.normal(size=(60, 12))
    rotation = np.linalg.qr(rng.normal(size=(12, 12)))[0]
    assert knn_agreement(t, 3 * t @ rotation, k=5) == pytest.approx(1)  # cosine is rotation-invariant
    unrelated = knn_agreement(t, rng.normal(size=(60, 7)), k=5)
    assert unrelated < 0.3
    with pytest.raises(ValueError, match="k must"):
        knn_agreement(t, t, k=60)


# ----------------------------------------------------------------------------- seeds
def test_seed_summary():
    out = seed_summary([0.3] * 5)
    assert out["std"] == 0 and out["n"] == 5
    assert out["ci_low"] == pytest.approx(0.3) and out["ci_high"] == pytest.approx(0.3)
    values = [0.61, 0.64, 0.58, 0.66, 0.60]
    out = seed_summary(values)
    assert out["std"] == pytest.approx(np.std(values, ddof=1))
    assert out["ci_low"] < out["mean"] < out["ci_high"]
    assert seed_summary(values) == out  # fixed bootstrap seed
    assert math.isnan(seed_summary([1.0])["std"])
    with pytest.raises(ValueError, match="values"):
        seed_summary([])


def test_paired_comparison():
    base = np.array([0.60, 0.62, 0.58, 0.65, 0.61])
    clear = paired_comparison(base + np.array([0.05, 0.06, 0.04, 0.05, 0.055]), base)
    assert clear["exceeds_noise"] and clear["ci_low"] > 0 and clear["p_value"] < 0.01
    assert clear["mean_diff"] == pytest.approx(0.051)
    zero = paired_comparison(base + np.array([0.01, -0.01, 0.005, -0.005, 0.0]), base)
    assert not zero["exceeds_noise"] and zero["ci_low"] < 0 < zero["ci_high"]
    assert zero["p_value"] > 0.5
    assert paired_comparison(base, base)["p_value"] == 1.0
    with pytest.raises(ValueError, match="paired"):
        paired_comparison([1, 2, 3], [1, 2])


def _hand_written_percentile_interval(values, confidence=0.95, n_resamples=10_000, seed=0):
    """The interval seed_summary computed by hand before it called scipy.stats.bootstrap."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_resamples, len(values)))
    means = values[idx].mean(axis=1)
    return tuple(np.percentile(means, [50 * (1 - confidence), 50 * (1 + confidence)]))


@pytest.mark.parametrize("values, confidence, n_resamples, seed", [
    ([0.61, 0.64, 0.58, 0.66, 0.60], 0.95, 10_000, 0),
    ([0.61, 0.64, 0.58, 0.66, 0.60], 0.90, 2_000, 7),
    ([1.0, 2.0], 0.95, 10_000, 0),
    (list(np.random.default_rng(3).lognormal(size=9)), 0.99, 5_000, 1),
])
def test_seed_summary_percentile_interval_is_the_hand_written_one(values, confidence, n_resamples, seed):
    # Same generator, same draws in one batch, same linear-interpolation percentiles: the same numbers.
    out = seed_summary(values, confidence=confidence, n_resamples=n_resamples, seed=seed)
    assert (out["ci_low"], out["ci_high"]) == _hand_written_percentile_interval(values, confidence, n_resamples, seed)


def test_bca_interval_is_available_and_corrects_for_skew():
    skewed = [0.1, 0.12, 0.11, 0.13, 0.1, 0.9, 0.12, 0.11]
    percentile, bca = seed_summary(skewed), seed_summary(skewed, method="bca")
    assert bca["mean"] == percentile["mean"] and bca["std"] == percentile["std"]
    assert bca["ci_low"] < bca["mean"] < bca["ci_high"]
    # One large value: BCa moves the interval up, towards the long tail, relative to the percentile one.
    assert bca["ci_low"] > percentile["ci_low"] and bca["ci_high"] > percentile["ci_high"]
    basic = seed_summary(skewed, method="basic")  # the percentile interval reflected around the mean
    assert basic["ci_low"] == pytest.approx(2 * basic["mean"] - percentile["ci_high"])
    for method in ("percentile", "basic", "bca"):  # a constant has the degenerate interval, not NaN
        out = seed_summary([0.3] * 4, method=method)
        assert (out["ci_low"], out["ci_high"]) == (0.3, 0.3)
    base = np.array([0.60, 0.62, 0.58, 0.65, 0.61])
    assert paired_comparison(base + np.array([0.05, 0.06, 0.04, 0.05, 0.055]), base, method="bca")["exceeds_noise"]
    with pytest.raises(ValueError, match="unknown bootstrap method 'bootstrap'"):
        seed_summary(skewed, method="bootstrap")
    with pytest.raises(ValueError, match="n_resamples must be a positive int"):
        seed_summary(skewed, n_resamples=0)


# ----------------------------------------------------------------------------- training logs
def test_entropy_trajectory(tmp_path):
    log = tmp_path / "kd_ame.jsonl"
    old = [{"step": s, "loss": 1.0, "manifold_entropy": 9.0} for s in range(3)]
    new = [{"step": s, "loss": 1.0, "manifold_entropy": 4.0 / (s + 1)} for s in range(4)]
    new[2].pop("manifold_entropy")
    log.write_text("\n".join(json.dumps(r) for r in old + new) + "\n\n")
    out = entropy_trajectory(log)
    assert out["steps"].tolist() == [0, 1, 3] and out["runs"] == 2
    assert out["values"].tolist() == [4.0, 2.0, 1.0] and out["final"] == 1.0
    kd = tmp_path / "kd.jsonl"
    kd.write_text(json.dumps({"step": 0, "kd_loss": 1.0}) + "\n")
    assert math.isnan(entropy_trajectory(kd)["final"])
    kd.write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1"):
        entropy_trajectory(kd)



def test_term_push_reads_each_terms_share_and_the_entropy_ends(tmp_path):
    from workbench.analysis import term_push

    log = tmp_path / "train.jsonl"
    records = [{"step": 0, "manifold_entropy": 3.0, "grad_norm/kd": 4.0, "grad_norm/ce": 1.0, "grad_norm/ame": 0.5,
                "grad_norm/total": 5.2, "grad_norm/clipped": 1.0},
               {"step": 1, "manifold_entropy": 2.0},
               {"step": 2, "manifold_entropy": 1.0, "grad_norm/kd": 0.0, "grad_norm/ame": 2.0},  # nothing to divide by
               {"step": 3, "manifold_entropy": 0.5, "grad_norm/kd": 2.0, "grad_norm/ame": 4.0}]
    log.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    push = term_push(log)
    assert push["steps"].tolist() == [0, 3] and push["share"].tolist() == [0.1, 2.0]  # total, clipped not counted
    assert push["share_median"] == pytest.approx(1.05) and push["share_max"] == 2.0
    assert (push["entropy_first"], push["entropy_last"]) == (3.0, 0.5)
    assert term_push(log, term="kd")["share"].tolist() == [4.0 / 1.5, 0.0, 0.5]
    log.write_text(json.dumps({"step": 0, "kd_loss": 1.0}) + "\n")  # plain KD: no diagnostics, no H(M)
    push = term_push(log)
    assert len(push["share"]) == 0 and math.isnan(push["share_median"]) and math.isnan(push["entropy_first"])

def test_analyze_predictions_combines_every_family():
    from workbench.analysis import analyze_predictions

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    class_vectors = np.eye(4, 8)
    features = class_vectors[labels] + 0.1 * rng.standard_normal((40, 8))
    logits = 10 * features @ class_vectors.T
    ambiguity = rng.uniform(0, 0.4, 40)
    table, metrics = analyze_predictions(logits, labels, features, class_vectors, teacher_logits=logits,
                                         teacher_features=features, base_classes=[0, 1], new_classes=[2, 3],
                                         true_ambiguity=ambiguity)
    assert len(table["entropy"]) == 40 and np.allclose(table["true_ambiguity"], ambiguity)
    assert metrics["accuracy"] == 1.0 and metrics["hm"] == 1.0
    assert metrics["alignment/knn_agreement_teacher"] == 1.0
    assert 0 <= metrics["calibration/ece"] <= 1
    assert {"ambiguity/spearman", "ambiguity/auroc_ambiguous", "alignment/effective_rank", "entropy/mean"} <= set(metrics)


def test_cross_dataset_average_leaves_the_source_out():
    from workbench.analysis import cross_dataset_summary

    out = cross_dataset_summary({"imagenet": 0.7, "caltech101": 0.9, "dtd": 0.4}, source="imagenet")
    assert out["target_average"] == pytest.approx(0.65) and out["n_targets"] == 2
    assert out["source/imagenet"] == 0.7 and out["target/dtd"] == 0.4
    with pytest.raises(ValueError, match="source dataset 'eurosat' is not among the results"):
        cross_dataset_summary({"dtd": 0.4}, source="eurosat")
    with pytest.raises(ValueError, match=r"accuracies must lie in \[0, 1\]"):
        cross_dataset_summary({"a": 0.5, "b": 53.0})


def test_holm_adjusts_a_family_of_p_values_by_rank():
    from workbench.analysis import holm_adjust

    # Sorted: 0.005 x 4, 0.01 x 3, 0.03 x 2, 0.04 x 1 -> 0.02, 0.03, 0.06, 0.04, made non-decreasing.
    np.testing.assert_allclose(holm_adjust([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm_adjust([np.nan, 0.02, 0.5]), [np.nan, 0.04, 0.5])  # NaN: not a comparison
    assert holm_adjust([0.6, 0.7]).max() == 1.0  # capped at 1
    assert np.isnan(holm_adjust([np.nan])).all()


def test_the_table_offers_the_ambiguity_score_of_the_student_alone_and_with_the_teacher():
    rng = np.random.default_rng(5)
    student, teacher = rng.normal(size=(40, 6)), 3 * rng.normal(size=(40, 6))
    labels = rng.integers(0, 6, size=40)
    with_teacher = per_sample_table(student, labels, teacher_logits=teacher)
    np.testing.assert_allclose(with_teacher["ambiguity_student"], ambiguity_score(student))
    np.testing.assert_allclose(with_teacher["ambiguity_score"], (ambiguity_score(student) + ambiguity_score(teacher)) / 2)
    alone = per_sample_table(student, labels)
    np.testing.assert_allclose(alone["ambiguity_score"], alone["ambiguity_student"])
