"""workbench.probe: the feature-space experiment behind the tutorial notebook."""

import pytest
import torch
import torch.nn.functional as F

from workbench import probe


def _batch(batch=24, classes=6, width=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(classes, width, generator=g, dtype=torch.float64), dim=1)
    targets = torch.arange(batch) % classes
    features = F.normalize(text[targets] + 0.8 * torch.randn(batch, width, generator=g, dtype=torch.float64), dim=1)
    teacher_logits = 50.0 * F.normalize(text[targets] + 0.1 * torch.randn(batch, width, generator=g,
                                                                            dtype=torch.float64), dim=1) @ text.T
    return features, text, teacher_logits, targets


def _probe(steps=60, **kw):
    features, text, teacher_logits, targets = _batch(**kw)
    return probe.FeatureProbe(features, text, teacher_logits, targets, logit_scale=20.0, steps=steps, lr=0.05)


def test_records_every_step_and_leaves_the_start_untouched():
    p = _probe(steps=5)
    start = p.student_features.clone()
    records = p.run(use_kd=True, ame_weight=50.0)
    assert [r["step"] for r in records] == list(range(6))
    assert set(records[0]) == {"step", *probe.RECORD_KEYS}
    assert records[0]["moved"] == pytest.approx(0.0, abs=1e-12)
    assert torch.equal(p.student_features, start)


def test_kd_pulls_the_features_to_the_teachers_answers():
    records = _probe().run(use_kd=True, ame_weight=0.0)
    assert records[-1]["accuracy"] > records[0]["accuracy"]
    assert records[-1]["accuracy"] == pytest.approx(1.0)


def test_ame_alone_lowers_the_entropy_and_frozen_projections_collapse_the_features():
    p = _probe()
    free = p.run(use_kd=False, ame_weight=50.0)
    frozen = p.run(use_kd=False, ame_weight=50.0, train_projections=False)
    for records in (free, frozen):
        assert records[-1]["manifold_entropy"] < records[0]["manifold_entropy"]
    assert frozen[-1]["effective_rank"] < 0.5 * frozen[0]["effective_rank"]


def test_runs_are_repeatable():
    p = _probe(steps=10)
    assert p.run(True, 50.0) == p.run(True, 50.0)


def test_summary_has_one_line_per_run():
    p = _probe(steps=3)
    text = probe.summary({"KD": p.run(True, 0.0), "AME only": p.run(False, 50.0)})
    assert text.splitlines()[0].startswith("KD ") and text.splitlines()[1].startswith("AME only")
    assert "effective rank" in text and len(text.splitlines()) == 2


def test_mismatched_shapes_name_the_argument():
    features, text, teacher_logits, targets = _batch()
    with pytest.raises(ValueError, match="class_vectors must have shape"):
        probe.FeatureProbe(features, text[:, :8], teacher_logits, targets, 20.0, 5, 0.05)
    with pytest.raises(ValueError, match="teacher_logits must have shape"):
        probe.FeatureProbe(features, text, teacher_logits[:, :3], targets, 20.0, 5, 0.05)
    with pytest.raises(ValueError, match="targets must have shape"):
        probe.FeatureProbe(features, text, teacher_logits, targets[:3], 20.0, 5, 0.05)
    with pytest.raises(ValueError, match="steps must be an int >= 0"):
        probe.FeatureProbe(features, text, teacher_logits, targets, 20.0, -1, 0.05)
