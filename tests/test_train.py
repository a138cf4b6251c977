import dataclasses
import copy
import json
import math

import numpy as np
import pytest
import torch

from workbench import recipes, zoo
from workbench.device import select_device
from workbench.train import OptimConfig, cosine_schedule, encode_images, fit


def _world_like(n=64, classes=4, seed=0):
    """Images whose class is their dominant colour channel pattern: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 60, (n, 32, 32, 3)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, :, :, label % 3] += 150
        if label >= 3:
            images[i, :16] = 255 - images[i, :16]
    return images, labels


def test_optim_config_rejects_bad_values():
    with pytest.raises(ValueError, match="lr must be finite"):
        OptimConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="lr must be > 0"):
        OptimConfig(lr=0.0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        OptimConfig(batch_size=0)
    with pytest.raises(ValueError, match="warmup_fraction"):
        OptimConfig(warmup_fraction=1.0)


def test_cosine_schedule_warms_up_then_decays_to_zero():
    f = cosine_schedule(total_steps=100, warmup_steps=10)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5)
    assert f(100) == pytest.approx(0.0, abs=1e-12)


def test_fit_minimises_summed_loss_terms_and_logs_every_step(tmp_path):
    torch.manual_seed(0)
    target = torch.randn(32, 3)
    layer = torch.nn.Linear(3, 3)
    inputs = torch.randn(32, 3)

    def step_loss(idx):
        out = layer(inputs[idx])
        return {"mse_loss": (out - target[idx]).pow(2).mean(), "monitor": out.detach().abs().mean()}

    log = tmp_path / "log.jsonl"
    history = fit([layer], step_loss, 32, OptimConfig(epochs=30, batch_size=8, lr=0.05, weight_decay=0.0),
                  torch.device("cpu"), log_path=log)
    assert len(history) == 30 * 4
    assert history[-1]["mse_loss"] < 0.5 * history[0]["mse_loss"]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(120))
    assert {"epoch", "lr", "loss", "mse_loss", "monitor"} <= set(records[0])
    # Only "*_loss" terms enter the objective.
    assert records[0]["loss"] == pytest.approx(records[0]["mse_loss"])
    assert not layer.training


def test_term_gradient_norms_are_each_terms_own_gradient():
    from workbench.train import term_gradient_norms

    torch.manual_seed(0)
    layer, other = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    x = torch.randn(5, 3)
    terms = {"a_loss": layer(x).pow(2).mean(), "b_loss": 3 * layer(x).sum() + other(x).sum(),
             "c_loss": other(x).sum(), "monitor": layer(x).detach().mean()}
    norms = term_gradient_norms(terms, list(layer.parameters()))
    assert set(norms) == {"grad_norm/a", "grad_norm/b", "grad_norm/c"}  # *_loss terms only
    for name in ("a", "b"):
        grads = torch.autograd.grad(terms[f"{name}_loss"], list(layer.parameters()), retain_graph=True)
        expected = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        assert float(norms[f"grad_norm/{name}"]) == pytest.approx(float(expected), rel=1e-6)
    assert float(norms["grad_norm/c"]) == 0.0  # reaches only parameters that are not watched


@pytest.mark.parametrize("grad_clip", [0.0, 0.05])
def test_fit_logs_gradient_diagnostics_without_changing_training(grad_clip):
    def run(every):
        torch.manual_seed(0)
        layer = torch.nn.Linear(3, 3)
        inputs, target = torch.randn(32, 3), torch.randn(32, 3)

        def step_loss(idx):
            out = layer(inputs[idx])
            return {"mse_loss": (out - target[idx]).pow(2).mean(), "l1_loss": 0.1 * out.abs().mean()}

        config = OptimConfig(epochs=2, batch_size=8, lr=0.05, grad_clip=grad_clip, grad_diagnostics_every=every)
        return layer, fit([layer], step_loss, 32, config, torch.device("cpu"))

    plain, quiet = run(0)
    watched, history = run(3)
    for a, b in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(a, b)  # the extra backward passes change nothing
    assert not any(k.startswith("grad_norm/") for r in quiet for k in r)
    diagnosed = [r["step"] for r in history if "grad_norm/mse" in r]
    assert diagnosed == [0, 3, 6]
    first = history[0]
    assert first["grad_norm/total"] > 0 and first["grad_norm/mse"] > 0 and first["grad_norm/l1"] > 0
    # The whole gradient is the sum of the terms', so its norm is at most the sum of their norms.
    assert first["grad_norm/total"] <= first["grad_norm/mse"] + first["grad_norm/l1"] + 1e-6
    assert ("grad_norm/clipped" in first) == bool(grad_clip)
    if grad_clip:
        assert first["grad_norm/clipped"] == pytest.approx(min(first["grad_norm/total"], grad_clip))
    with pytest.raises(ValueError, match="grad_diagnostics_every must be a non-negative integer"):
        OptimConfig(grad_diagnostics_every=-1)


def test_fit_stops_on_non_finite_loss_naming_the_step():
    p = torch.nn.Parameter(torch.ones(1))
    holder = torch.nn.ParameterList([p])

    def step_loss(idx):
        return {"bad_loss": p.sum() * (float("inf") if len(idx) else 1.0)}

    with pytest.raises(FloatingPointError, match="non-finite loss at epoch 0, step 0"):
        fit([holder], step_loss, 4, OptimConfig(epochs=1, batch_size=4), torch.device("cpu"))


def test_select_device_auto_is_cpu_here():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected
    assert select_device("cpu").type == "cpu"


def _teacher(labels, class_vectors, width=384):
    """A teacher whose embedding of each image is its class vector: confident and correct."""
    return recipes.TeacherTargets(class_vectors[torch.as_tensor(labels)], logit_scale=20.0)


@pytest.mark.parametrize("recipe, ame_weight, variant", [
    ("logit_kd", 0.0, "paper"), ("logit_kd", 50.0, "paper"), ("logit_kd", 5.0, "per_sample"),
    ("kdpl", 0.0, "paper"), ("kdpl", 50.0, "paper"), ("feature_kd", 0.0, "paper"), ("feature_kd", 50.0, "paper")])
def test_every_recipe_lowers_its_loss_with_and_without_ame(tmp_path, student_and_tokenizer, recipe, ame_weight, variant):
    import copy

    base_model, _ = student_and_tokenizer
    student = copy.deepcopy(base_model)
    images, labels = _world_like()
    class_vectors = torch.nn.functional.normalize(torch.randn(4, 384, generator=torch.Generator().manual_seed(1)), dim=-1)
    teacher = _teacher(labels, class_vectors)
    settings = recipes.DistillConfig(recipe=recipe, ame_weight=ame_weight, ame_variant=variant,
                                     optim=OptimConfig(epochs=8, batch_size=16, lr=2e-3, warmup_fraction=0.0))
    text_before = {k: v.clone() for k, v in student.text.state_dict().items()}
    history = recipes.distill(student, images, teacher, class_vectors, settings, torch.device("cpu"),
                              log_path=tmp_path / "kd.jsonl").history
    key = {"logit_kd": "kd_loss", "kdpl": "symmetric_kl_loss", "feature_kd": "feature_kd_loss"}[recipe]
    first, last = np.mean([h[key] for h in history[:4]]), np.mean([h[key] for h in history[-4:]])
    assert last < 0.8 * first
    assert ("manifold_entropy" in history[0]) == (ame_weight > 0)
    diagnosed = history[0]  # step 0 carries each term's gradient norm on the student's trained parameters
    assert diagnosed[f"grad_norm/{key[:-5]}"] > 0
    assert ("grad_norm/ame" in diagnosed) == (ame_weight > 0)
    if ame_weight:
        assert history[0]["ame_loss"] == pytest.approx(ame_weight * history[0]["manifold_entropy"], rel=1e-5)
        distill_terms = sum(v for k, v in history[0].items() if k.endswith("_loss") and k != "ame_loss")
        assert history[0]["loss"] == pytest.approx(distill_terms + history[0]["ame_loss"], rel=1e-5)
        assert history[-1]["manifold_entropy"] < history[0]["manifold_entropy"]
    # The backbone's text tower is untouched: AME changes training, not the architecture.
    for k, v in student.text.state_dict().items():
        assert torch.equal(v, text_before[k])


def test_distill_checks_shapes_and_names(student_and_tokenizer):
    model, _ = student_and_tokenizer
    images, labels = _world_like(8)
    with pytest.raises(ValueError, match="8 images but 7 rows"):
        recipes.distill(model, images, recipes.TeacherTargets(torch.zeros(7, 384), 10.0), torch.zeros(4, 384),
                        recipes.DistillConfig(), torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown recipe 'dho2'; valid names: logit_kd, promptkd, kdpl, dho, feature_kd"):
        recipes.DistillConfig(recipe="dho2")
    with pytest.raises(ValueError, match="ame_weight must be a finite number >= 0, got -1.0"):
        recipes.DistillConfig(ame_weight=-1.0)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        recipes.DistillConfig(temperature=0.0)
    with pytest.raises(ValueError, match="kd_weight must be a finite number >= 0, got -2.0"):
        recipes.DistillConfig(recipe="promptkd", kd_weight=-2.0)
    with pytest.raises(ValueError, match="kdpl_top_k is a setting of recipe kdpl; recipe 'dho' does not read it"):
        recipes.DistillConfig(recipe="dho", kdpl_top_k=5)
    with pytest.raises(ValueError, match="prompt_tokens is a setting of recipe promptkd and kdpl; recipe 'logit_kd'"):
        recipes.DistillConfig(prompt_tokens=4)


def test_kdpl_rescales_teacher_to_the_student_logit_scale():
    targets = recipes.TeacherTargets(torch.nn.functional.normalize(torch.randn(3, 8), dim=-1), logit_scale=100.0)
    vectors = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    torch.testing.assert_close(targets.logits(vectors, scale=10.0), targets.logits(vectors) / 10.0)


def test_zoo_pretrains_once_then_loads_from_cache(tmp_path):
    from workbench.world import WorldSpec, generate_split

    split = generate_split(WorldSpec(), "pretrain", 96, seed=0)
    config = zoo.PretrainConfig(model="embedded-vit-student", num_images=96,
                                optim=OptimConfig(epochs=2, batch_size=32, lr=2e-3))
    model, _, info = zoo.load_or_pretrain(config, split, "test-world", tmp_path, torch.device("cpu"))
    assert not info["from_cache"] and info["steps"] == 6
    again, _, info2 = zoo.load_or_pretrain(config, split, "test-world", tmp_path, torch.device("cpu"))
    assert info2["from_cache"] and info2["key"] == info["key"]
    x = split.images[:4]
    torch.testing.assert_close(encode_images(again, x), encode_images(model, x))
    # Any change to what shapes the weights changes the key.
    other = zoo.PretrainConfig(model="embedded-vit-student", num_images=96,
                               optim=OptimConfig(epochs=3, batch_size=32, lr=2e-3))
    assert zoo.cache_key(other, "test-world") != info["key"]
    assert zoo.cache_key(config, "other-world") != info["key"]
    # Whatever the process drew from the RNG before, pretraining starts from the same weights.
    torch.manual_seed(12345)
    torch.randn(100)
    fresh, _, info3 = zoo.load_or_pretrain(config, split, "test-world", tmp_path / "elsewhere", torch.device("cpu"))
    assert not info3["from_cache"]
    torch.testing.assert_close(encode_images(fresh, x), encode_images(model, x))


def test_soft_label_targets_put_the_mixing_weight_on_the_partner():
    from workbench.world import WorldSpec, generate_split

    split = generate_split(WorldSpec(), "pretrain", 200, seed=0)
    targets = zoo.soft_label_targets(split, 200)
    torch.testing.assert_close(targets.sum(1), torch.ones(200))
    for i in range(200):
        assert targets[i, split.labels[i]] == pytest.approx(1 - split.ambiguity[i])
        if split.partner[i] >= 0:
            assert targets[i, split.partner[i]] == pytest.approx(split.ambiguity[i])
    assert (targets > 0).sum(1).max() == 2 and (split.partner >= 0).any()


def test_soft_label_pretraining_lowers_its_loss_and_needs_prompts(tmp_path, student_and_tokenizer):
    from workbench.world import WorldSpec, generate_split

    model, tokenizer = student_and_tokenizer
    spec = WorldSpec()
    split = generate_split(spec, "pretrain", 128, seed=0)
    config = zoo.PretrainConfig("embedded-vit-student", 128, OptimConfig(epochs=3, batch_size=32, lr=2e-3),
                                objective="soft_labels")
    with pytest.raises(ValueError, match="soft_labels objective .* pass prompt_templates"):
        zoo.pretrain(copy.deepcopy(model), tokenizer, split, config, torch.device("cpu"))
    history = zoo.pretrain(copy.deepcopy(model), tokenizer, split, config, torch.device("cpu"),
                           prompt_templates=spec.prompt_templates)
    first, last = (sum(h["soft_label_loss"] for h in history[i:i + 4]) / 4 for i in (0, len(history) - 4))
    assert last < first and "contrastive_loss" not in history[0]
    with pytest.raises(ValueError, match="unknown pretraining objective 'mse'; known: contrastive, soft_labels"):
        zoo.PretrainConfig("embedded-vit-student", 10, objective="mse")


def test_pretrain_rejects_more_images_than_the_split_has(tmp_path, student_and_tokenizer):
    from workbench.world import WorldSpec, generate_split

    model, tokenizer = student_and_tokenizer
    split = generate_split(WorldSpec(), "pretrain", 10, seed=0)
    with pytest.raises(ValueError, match="num_images=20 exceeds the 10 samples"):
        zoo.pretrain(model, tokenizer, split, zoo.PretrainConfig("embedded-vit-student", 20), torch.device("cpu"))


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path):
    inputs, target = torch.randn(32, 3, generator=torch.Generator().manual_seed(1)), torch.randn(32, 3)
    config = OptimConfig(epochs=4, batch_size=8, lr=0.05)

    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 3))

    def loss_for(model, fail_at=None):
        calls = {"n": 0}

        def step_loss(idx):
            calls["n"] += 1
            if calls["n"] == fail_at:
                raise KeyboardInterrupt("simulated kill")
            return {"mse_loss": (model(inputs[idx]) - target[idx]).pow(2).mean()}
        return step_loss

    straight = make()
    fit([straight], loss_for(straight), 32, config, torch.device("cpu"), log_path=tmp_path / "a.jsonl",
        checkpoint_path=tmp_path / "a.pt")

    interrupted = make()
    with pytest.raises(KeyboardInterrupt):
        fit([interrupted], loss_for(interrupted, fail_at=11), 32, config, torch.device("cpu"),
            log_path=tmp_path / "b.jsonl", checkpoint_path=tmp_path / "b.pt")
    assert len((tmp_path / "b.jsonl").read_text().splitlines()) == 10  # 2 epochs + 2 steps were logged
    torch.manual_seed(123)  # a new process: different global RNG until the checkpoint restores it
    resumed = make()
    history = fit([resumed], loss_for(resumed), 32, config, torch.device("cpu"), log_path=tmp_path / "b.jsonl",
                  checkpoint_path=tmp_path / "b.pt")
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)
    log_a = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_b] == list(range(16)) and len(history) == 16
    assert [r["loss"] for r in log_a] == pytest.approx([r["loss"] for r in log_b])


def test_non_finite_loss_keeps_the_last_good_checkpoint(tmp_path):
    layer = torch.nn.Linear(2, 1)
    calls = {"n": 0}

    def step_loss(idx):
        calls["n"] += 1
        out = layer(torch.ones(len(idx), 2)).mean()
        return {"x_loss": out * (float("nan") if calls["n"] == 6 else 1.0)}

    with pytest.raises(FloatingPointError, match="epoch 2, step 5"):
        fit([layer], step_loss, 4, OptimConfig(epochs=4, batch_size=2), torch.device("cpu"),
            checkpoint_path=tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert state["epochs_done"] == 2 and state["step"] == 4


def test_resume_drops_a_log_line_cut_short_by_a_crash(tmp_path):
    torch.manual_seed(0)
    layer = torch.nn.Linear(2, 1)
    inputs = torch.randn(8, 2)

    def run():
        return fit([layer], lambda i: {"mse_loss": layer(inputs[i]).pow(2).mean()}, 8,
                   OptimConfig(epochs=3, batch_size=4), torch.device("cpu"), log_path=tmp_path / "log.jsonl",
                   checkpoint_path=tmp_path / "ckpt.pt")

    run()
    log = tmp_path / "log.jsonl"
    lines = log.read_text().splitlines()
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    checkpoint["epochs_done"], checkpoint["step"] = 2, 4  # as if killed while writing epoch 3's log
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    log.write_text("\n".join(lines[:5]) + "\n" + lines[5][:12])  # half a JSON line at the end
    history = run()
    assert [r["step"] for r in history] == list(range(6))
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == list(range(6))


def test_a_model_with_world_overrides_pretrains_on_its_narrower_split(tmp_path):
    from workbench.world import WorldSpec, generate_split

    spec = WorldSpec()
    default = generate_split(spec, "pretrain", 64, seed=3)
    config = zoo.PretrainConfig("embedded-vit-student", 32, world_overrides={"textures": ["plain"]})
    split = zoo.pretraining_split(spec, config, tmp_path, seed=3, size=64, default=default)
    np.testing.assert_array_equal(split.labels, default.labels)
    assert set(split.factors["texture"]) == {"plain"} != set(default.factors["texture"])
    assert zoo.pretraining_split(spec, zoo.PretrainConfig("embedded-vit-student", 32), tmp_path, 3, 64,
                                 default) is default
    plain = zoo.PretrainConfig("embedded-vit-student", 32)
    assert zoo.cache_key(config, "w") != zoo.cache_key(plain, "w")
    with pytest.raises(ValueError, match="world override 'colours'"):
        zoo.PretrainConfig("embedded-vit-student", 32, world_overrides={"colours": {"red": [1, 2, 3]}})
    with pytest.raises(ValueError, match="unknown pretraining settings \\['views'\\]"):
        zoo.PretrainConfig.from_dict({"model": "embedded-vit-student", "num_images": 3, "views": 2})


def test_load_or_distill_repeats_nothing_and_gives_the_same_student(tmp_path, student_and_tokenizer):
    from workbench.world import WorldSpec, generate_split

    student, _ = student_and_tokenizer
    split = generate_split(WorldSpec(), "train", 48, seed=0)
    vectors = torch.nn.functional.normalize(torch.randn(30, 384, generator=torch.Generator().manual_seed(0)), dim=-1)
    targets = recipes.TeacherTargets(torch.nn.functional.normalize(torch.randn(48, 384), dim=-1), 20.0)
    settings = recipes.DistillConfig(optim=OptimConfig(epochs=1, batch_size=16, lr=1e-3))
    runs = []
    for run in range(2):
        model = copy.deepcopy(student)
        done = zoo.load_or_distill(model, split.images, targets, vectors, settings, torch.device("cpu"),
                                   tmp_path / "cache", {"teacher": "t", "student": "s"}, tmp_path / f"log{run}.jsonl")
        runs.append((model, done))
    (first, a), (second, b) = runs
    assert not a["from_cache"] and b["from_cache"] and a["key"] == b["key"]
    torch.testing.assert_close(encode_images(second, split.images[:4]), encode_images(first, split.images[:4]))
    assert (tmp_path / "log0.jsonl").read_text() == (tmp_path / "log1.jsonl").read_text() != ""
    other = zoo.load_or_distill(copy.deepcopy(student), split.images, targets, vectors,
                                dataclasses.replace(settings, ame_weight=5.0), torch.device("cpu"), tmp_path / "cache",
                                {"teacher": "t", "student": "s"}, tmp_path / "log2.jsonl")
    assert not other["from_cache"] and other["key"] != a["key"]
    with pytest.raises(ValueError, match="live teacher"):
        zoo.load_or_distill(copy.deepcopy(student), split.images, recipes.TeacherTargets(None, 20.0), vectors,
                            settings, torch.device("cpu"), tmp_path / "cache", {}, tmp_path / "log3.jsonl")


def test_cache_keys_ignore_settings_that_only_observe_training():
    config = zoo.PretrainConfig(model="embedded-vit-student", num_images=100)
    quiet = dataclasses.replace(config, optim=dataclasses.replace(config.optim, grad_diagnostics_every=0))
    faster = dataclasses.replace(config, optim=dataclasses.replace(config.optim, lr=0.5))
    assert zoo.cache_key(quiet, "world") == zoo.cache_key(config, "world")  # the same weights: reuse them
    assert zoo.cache_key(faster, "world") != zoo.cache_key(config, "world")
