"""PromptKD prompts, DHO heads, class-agnostic KDPL, model selection, teacher cache, data-parallel fit."""

import copy
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbench import recipes
from workbench.cache import cached_image_features, model_fingerprint
from workbench.image_sources import images_to_device, normalize_images
from workbench.losses import KDLoss, SymmetricKLLoss
from workbench.prompts import CoupledPrompts, PromptedStudent, TextContext, TextPromptedStudent, VisualPrompts
from workbench.selection import GaussianAverage, ModelSelector
from workbench.train import OptimConfig, fit

from test_train import _world_like


def _vectors(classes=4, width=384, seed=1):
    return F.normalize(torch.randn(classes, width, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _teacher(labels, vectors):
    return recipes.TeacherTargets(vectors[torch.as_tensor(labels)], logit_scale=20.0)


# ------------------------------------------------------------------ deep visual prompts

def test_prompted_tower_equals_open_clip_forward_with_the_same_tokens_inserted(student_and_tokenizer):
    """The prompt path is checked against open_clip's own forward, with the prompts put in by hooks."""
    visual = student_and_tokenizer[0].visual
    prompts = VisualPrompts(visual.transformer.width, num_tokens=3, depth=2)
    images = torch.randn(5, 3, 32, 32)
    hooks = [visual.ln_pre.register_forward_pre_hook(
        lambda _, args: (torch.cat([args[0], prompts.tokens[0].expand(len(args[0]), -1, -1)], dim=1),))]

    def replace(layer):
        def hook(_, args, kwargs):
            x = args[0]
            return (torch.cat([x[:, :-3], prompts.tokens[layer].expand(len(x), -1, -1)], dim=1),), kwargs
        return hook

    hooks.append(visual.transformer.resblocks[1].register_forward_pre_hook(replace(1), with_kwargs=True))
    hooks.append(visual.ln_post.register_forward_pre_hook(lambda _, args: (args[0][:, :-3],)))
    try:
        reference = visual(images)
    finally:
        for hook in hooks:
            hook.remove()
    torch.testing.assert_close(prompts.encode(visual, images), reference)
    assert not torch.allclose(reference, visual(images))  # the prompts do change the features


def test_prompted_student_trains_prompts_and_projector_only(student_and_tokenizer):
    student = copy.deepcopy(student_and_tokenizer[0])
    model = PromptedStudent(student, teacher_width=128, logit_scale=50.0, num_tokens=4, depth=2, init_std=0.02)
    # PromptKD's projector: Linear, BatchNorm, ReLU, Linear, every part trained.
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"prompts.tokens"} | {
        f"projector.{i}.{kind}" for i in (0, 1, 3) for kind in ("weight", "bias")}
    assert [type(m).__name__ for m in model.projector] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert model.prompts.tokens.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.encode_image(torch.randn(2, 3, 32, 32), normalize=True).shape == (2, 128)
    square = PromptedStudent(copy.deepcopy(student_and_tokenizer[0]), 384, 50.0, projector="linear")
    torch.testing.assert_close(square.projector.weight, torch.eye(384))  # starts at the student's own embedding
    with pytest.raises(ValueError, match="projector 'none' keeps the width 384; the target width is 128"):
        PromptedStudent(copy.deepcopy(student_and_tokenizer[0]), 128, 50.0, projector="none")
    with pytest.raises(ValueError, match="prompt depth 5 exceeds the image tower's 4 layers"):
        VisualPrompts(96, depth=5).encode(student.visual, torch.randn(1, 3, 32, 32))
    with pytest.raises(TypeError, match="need an open_clip VisionTransformer"):
        VisualPrompts(8).encode(torch.nn.Linear(3, 3), torch.randn(1, 3))


# ------------------------------------------------------------------ CoOp text context (KDPL's CoOp variant)

NAMES = ["red square", "blue circle", "green_triangle", "yellow star"]


def _tiny_open_clip():
    """An open_clip CLIP with its own (BPE) text transformer, small enough to build in a test."""
    import open_clip

    torch.manual_seed(3)
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                                           "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 4}}
    return open_clip.CLIP(**cfg).eval(), open_clip.get_tokenizer("ViT-B-32", context_length=16)


@pytest.mark.parametrize("tower", ["hf", "open_clip"])
def test_text_context_starts_as_the_hand_written_prompt_and_only_the_context_trains(student_and_tokenizer, tower):
    model, tokenizer = (copy.deepcopy(student_and_tokenizer[0]), student_and_tokenizer[1]) if tower == "hf" \
        else _tiny_open_clip()
    context = TextContext(model, tokenizer, "a photo of a")
    assert context.kind == tower and context.num_tokens == 4 and list(dict(context.named_parameters())) == ["context"]
    assert context.prompts(NAMES)[2] == "a photo of a green triangle."
    with torch.no_grad():
        hand_written = model.encode_text(tokenizer(context.prompts(NAMES)), normalize=True)
    torch.testing.assert_close(context(NAMES), hand_written, atol=1e-5, rtol=1e-5)
    # the gradient reaches the context through the frozen tower, and nothing else
    for p in model.parameters():
        p.requires_grad_(False)
    context(NAMES[:2]).sum().backward()
    assert context.context.grad is not None and context.context.grad.abs().sum() > 0
    with torch.no_grad():
        context.context.add_(0.1 * torch.randn_like(context.context))
        moved = context(NAMES)
    assert (moved - hand_written).norm(dim=1).min() > 1e-3  # every class, trained on or not, moves with it
    with pytest.raises(ValueError, match="non-empty phrase"):
        TextContext(model, tokenizer, "  ")
    with pytest.raises(TypeError, match="CoOp text context needs an open_clip text transformer"):
        TextContext(torch.nn.Linear(2, 2), tokenizer)


@pytest.mark.parametrize("tower", ["hf", "open_clip"])
def test_deep_text_context_puts_fresh_tokens_before_each_of_the_first_layers(student_and_tokenizer, tower):
    """PromptSRC's deep language prompts: layers 1..depth-1 see their own tokens at the context positions."""
    model, tokenizer = (copy.deepcopy(student_and_tokenizer[0]), student_and_tokenizer[1]) if tower == "hf" \
        else _tiny_open_clip()
    shallow = TextContext(model, tokenizer)
    assert shallow.deep is None and list(shallow.state_dict()) == ["context"]
    layers = shallow._layers()
    depth = min(3, len(layers))
    context = TextContext(model, tokenizer, depth=depth)
    assert context.deep.shape == (depth - 1, 4, context.context.shape[1])
    assert TextContext(model, tokenizer, depth=99).depth == len(layers)  # capped at the tower's layers
    entering = {}

    def record(index):
        def hook(module, args, kwargs, output):
            entering[index] = (args[0] if args else kwargs["hidden_states"]).detach()
        return hook

    recorders = [layer.register_forward_hook(record(i), with_kwargs=True) for i, layer in enumerate(layers)]
    vectors = context(NAMES)
    for handle in recorders:
        handle.remove()
    for i in range(1, depth):  # the hidden states entering layer i carry deep[i - 1] at positions 1..4
        torch.testing.assert_close(entering[i][:, 1:5], context.deep[i - 1].detach().expand(len(NAMES), -1, -1))
    if depth < len(layers):
        assert not torch.allclose(entering[depth][:, 1:5], context.deep[-1].detach().expand(len(NAMES), -1, -1))
    assert all(len(layer._forward_pre_hooks) == 0 for layer in layers)  # the shared tower keeps no hook
    for p in model.parameters():
        p.requires_grad_(False)
    vectors.sum().backward()
    assert context.deep.grad is not None and context.deep.grad[-1].abs().sum() > 0
    with torch.no_grad():  # with the deep tokens in place the vectors differ from the shallow context's
        assert (context(NAMES) - shallow(NAMES)).norm(dim=1).min() > 1e-4


def _initial_prompts(variant, student, tokenizer, seed):
    """The prompts a kdpl run of ``variant`` starts from (distill seeds the recipe's construction)."""
    torch.manual_seed(seed)
    return TextContext(student, tokenizer) if variant == "coop" else CoupledPrompts(student, tokenizer, num_tokens=2,
                                                                                     depth=3)


@pytest.mark.parametrize("variant, trained", [("coop", ["context"]),
                                              ("maple", ["text.context", "text.deep", "couplings.0.weight"])])
def test_kdpl_text_prompt_variants_train_only_their_prompts_and_score_every_class_through_them(
        student_and_tokenizer, variant, trained):
    student, tokenizer = copy.deepcopy(student_and_tokenizer[0]), student_and_tokenizer[1]
    before = {k: v.clone() for k, v in student.state_dict().items()}
    images, labels = _world_like()
    vectors = _vectors()
    shape = {"prompt_tokens": 2, "prompt_depth": 3} if variant == "maple" else {}
    settings = recipes.DistillConfig(recipe="kdpl", kdpl_prompts=variant, ame_weight=10.0, **shape,
                                     optim=OptimConfig(epochs=4, batch_size=16, lr=0.05, warmup_fraction=0.0))
    assert settings.resolved().text_context_init == "a photo of a"
    with torch.no_grad():
        start = _initial_prompts(variant, copy.deepcopy(student), tokenizer, settings.optim.seed)(NAMES)
    result = recipes.distill(student, images, _teacher(labels, vectors), vectors, settings, torch.device("cpu"),
                             train_classes=[0, 1], class_names=NAMES, tokenizer=tokenizer)
    assert isinstance(result.model, TextPromptedStudent) and set(result.added_modules) == {"prompts"}
    saved = list(result.added_modules["prompts"].state_dict())
    assert set(trained) <= set(saved) and not [k for k in saved if k.startswith(("visual", "transformer"))]
    history = result.history
    assert np.mean([h["symmetric_kl_loss"] for h in history[-3:]]) < np.mean(
        [h["symmetric_kl_loss"] for h in history[:3]])
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())  # the student's weights stay
    learned = result.model.class_vectors(NAMES).detach()
    assert (learned - start).norm(dim=1).min() > 1e-3  # new classes 2 and 3 moved too
    if variant == "maple":  # the image side moved with the coupled visual prompts
        plain = student.encode_image(torch.as_tensor(images[:4]).permute(0, 3, 1, 2).float() / 255, normalize=True)
        prompted = result.model.encode_image(torch.as_tensor(images[:4]).permute(0, 3, 1, 2).float() / 255,
                                             normalize=True)
        assert (prompted - plain).norm(dim=1).min() > 1e-3
    with pytest.raises(ValueError, match="needs class_names and the student's tokenizer"):
        recipes.distill(copy.deepcopy(student_and_tokenizer[0]), images, _teacher(labels, vectors), vectors, settings,
                        torch.device("cpu"))
    with pytest.raises(ValueError, match="3 class_names for 4 class vectors"):
        recipes.distill(student, images, _teacher(labels, vectors), vectors, settings, torch.device("cpu"),
                        class_names=NAMES[:3], tokenizer=tokenizer)
    with pytest.raises(ValueError, match=f"kdpl_prompts '{variant}' with kdpl_top_k > 0"):
        recipes.DistillConfig(recipe="kdpl", kdpl_prompts=variant, kdpl_top_k=5)


def test_coupled_prompts_map_each_layers_language_prompts_to_its_visual_prompts(student_and_tokenizer):
    student, tokenizer = copy.deepcopy(student_and_tokenizer[0]), student_and_tokenizer[1]
    prompts = CoupledPrompts(student, tokenizer, "a photo of a", num_tokens=2, depth=9)
    assert prompts.depth == 4  # capped at the embedded student's 4 image layers (its text tower has 6)
    assert prompts.text.num_tokens == 2 and prompts.text.prompts(["red square"]) == ["a photo of a red square."]
    tokens = prompts.visual_tokens()
    assert tokens.shape == (4, 2, student.visual.transformer.width)
    torch.testing.assert_close(tokens[2], prompts.couplings[2](prompts.text.deep[1]))
    # the deeper maps start as copies of one initialisation (the reference's _get_clones)
    assert torch.equal(prompts.couplings[1].weight, prompts.couplings[3].weight)
    assert not torch.equal(prompts.couplings[0].weight, prompts.couplings[1].weight)
    with pytest.raises(ValueError, match=r"num_tokens must be an int in \[1, 4\]"):
        TextContext(student, tokenizer, "a photo of a", num_tokens=5)


# ------------------------------------------------------------------ recipes × AME

def _distill(student_and_tokenizer, recipe, ame_weight, epochs=8, **config):
    student = copy.deepcopy(student_and_tokenizer[0])
    images, labels = _world_like()
    vectors = _vectors()
    settings = recipes.DistillConfig(recipe=recipe, ame_weight=ame_weight, **config,
                                     optim=OptimConfig(epochs=epochs, batch_size=16, lr=2e-3, warmup_fraction=0.0))
    backbone = {k: v.clone() for k, v in student.visual.state_dict().items()}
    result = recipes.distill(student, images, _teacher(labels, vectors), vectors, settings, torch.device("cpu"),
                             labels=labels, validation=(images[:16], labels[:16]))
    return student, backbone, result


@pytest.mark.parametrize("recipe, ame_weight, key", [
    ("promptkd", 0.0, "kd_loss"), ("promptkd", 50.0, "kd_loss"),
    ("dho", 0.0, "kd_loss"), ("dho", 50.0, "kd_loss"), ("dho", 0.0, "ce_loss")])
def test_promptkd_and_dho_lower_their_loss_with_and_without_ame(student_and_tokenizer, recipe, ame_weight, key):
    student, backbone, result = _distill(student_and_tokenizer, recipe, ame_weight)
    history = result.history
    first, last = np.mean([h[key] for h in history[:4]]), np.mean([h[key] for h in history[-4:]])
    assert last < 0.8 * first
    assert ("manifold_entropy" in history[0]) == (ame_weight > 0)
    if ame_weight:
        assert history[-1]["manifold_entropy"] < history[0]["manifold_entropy"]
    frozen = all(torch.equal(v, backbone[k]) for k, v in student.visual.state_dict().items())
    assert frozen == (recipe == "promptkd")  # PromptKD never touches the backbone; DHO trains it


def test_promptkd_defaults_use_per_element_kd_weighted_1000(student_and_tokenizer):
    _, _, result = _distill(student_and_tokenizer, "promptkd", 0.0, epochs=1)
    _, _, plain = _distill(student_and_tokenizer, "promptkd", 0.0, epochs=1, kd_weight=1.0, kd_reduction="batchmean")
    # Same first batch, same initial prompts: 1000 × per-element mean = 1000 / C × batchmean (C = 4).
    assert result.history[0]["kd_loss"] == pytest.approx(250.0 * plain.history[0]["kd_loss"], rel=1e-5)


def test_kd_reductions_match_the_plain_formula():
    s, t = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    p_t = t.softmax(1)
    kl = (p_t * (p_t.log() - s.log_softmax(1))).sum(1)
    assert KDLoss(reduction="mean")(s, t)["kd_loss"].item() == pytest.approx(kl.mean().item() / 5, rel=1e-10)
    reverse = (s.softmax(1) * (s.log_softmax(1) - t.log_softmax(1))).sum(1)
    expected = 0.5 * (kl + reverse).mean().item() / 5
    assert SymmetricKLLoss(reduction="mean")(s, t)["symmetric_kl_loss"].item() == pytest.approx(expected, rel=1e-10)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: KDLoss(2.0, reduction="mean")(x, t)["kd_loss"], (s,))
    with pytest.raises(ValueError, match="unknown KD reduction 'sum'; valid names: batchmean, mean"):
        KDLoss(reduction="sum")


def test_class_agnostic_kdpl_distils_over_the_teachers_top_k(student_and_tokenizer):
    student = copy.deepcopy(student_and_tokenizer[0])
    images, labels = _world_like()
    vocabulary = _vectors(classes=12)
    settings = recipes.DistillConfig(recipe="kdpl", kdpl_top_k=3, ame_weight=10.0,
                                     optim=OptimConfig(epochs=6, batch_size=16, lr=2e-3, warmup_fraction=0.0))
    result = recipes.distill(student, images, _teacher(labels, vocabulary), vocabulary[:4], settings,
                             torch.device("cpu"), vocabulary=vocabulary)
    history = result.history
    assert np.mean([h["symmetric_kl_loss"] for h in history[-4:]]) < np.mean(
        [h["symmetric_kl_loss"] for h in history[:4]])
    with pytest.raises(ValueError, match="kdpl_top_k=20 exceeds the vocabulary's 12 names"):
        recipes.distill(student, images, _teacher(labels, vocabulary), vocabulary[:4],
                        recipes.DistillConfig(recipe="kdpl", kdpl_top_k=20), torch.device("cpu"), vocabulary=vocabulary)


def test_recipes_without_projector_refuse_mismatched_widths(student_and_tokenizer):
    images, labels = _world_like(8)
    wide = _vectors(width=512)
    with pytest.raises(ValueError, match="student embeddings have width 384 but the class vectors it is scored against 512"):
        recipes.distill(student_and_tokenizer[0], images, _teacher(labels, wide), wide, recipes.DistillConfig(),
                        torch.device("cpu"))
    with pytest.raises(ValueError, match="recipe 'dho' needs labels"):
        recipes.distill(student_and_tokenizer[0], images, _teacher(labels, _vectors()), _vectors(),
                        recipes.DistillConfig(recipe="dho"), torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown selection 'best'; valid names: last, best_val, best_base_test"):
        recipes.DistillConfig(selection="best")


def test_live_teacher_gives_the_cached_teachers_losses(student_and_tokenizer):
    teacher = copy.deepcopy(student_and_tokenizer[0]).eval()
    images, _ = _world_like(32)
    vectors = _vectors()
    histories = []
    for mode in ("cached", "live"):
        settings = recipes.DistillConfig(teacher_mode=mode, optim=OptimConfig(epochs=1, batch_size=16))
        targets = recipes.TeacherTargets.from_model(teacher, images, live=mode == "live")
        assert (targets.features is None) == (mode == "live")
        student = copy.deepcopy(student_and_tokenizer[0])
        histories.append(recipes.distill(student, images, targets, vectors, settings, torch.device("cpu")).history)
    for cached, live in zip(*histories):
        assert live["kd_loss"] == pytest.approx(cached["kd_loss"], rel=1e-4, abs=1e-6)


# ------------------------------------------------------------------ DHO inference

def test_dho_heads_and_mixture_follow_the_reference_code(student_and_tokenizer):
    from workbench.recipes.dho import log_mixture

    model = recipes.DualHeadStudent(copy.deepcopy(student_and_tokenizer[0]), _vectors(), alpha=0.3, beta=2.0)
    torch.testing.assert_close(model.ce_head.weight, _vectors())  # zero-shot classifier, zero bias
    assert model.ce_head.bias.abs().max() == 0 and model.kd_head.bias.abs().max() == 0
    with torch.no_grad():
        model.kd_head.weight.add_(0.1 * torch.randn_like(model.kd_head.weight))
        model.ce_head.bias.add_(0.5)
    raw = 7.0 * torch.randn(5, 384)  # raw embeddings: not unit norm
    z_ce, z_kd = model.head_logits(raw)
    torch.testing.assert_close(z_ce, raw @ model.ce_head.weight.T + model.ce_head.bias)  # raw features
    torch.testing.assert_close(z_kd, 100 * (F.normalize(raw, dim=-1) @ model.kd_head.weight.T + model.kd_head.bias))
    images = torch.randn(3, 3, 32, 32)
    features, log_p = model.image_logits(images)
    z_ce, z_kd = model.head_logits(model.student.encode_image(images))
    torch.testing.assert_close(log_p, (0.3 * z_ce.softmax(1) + 0.7 * (z_kd / 2.0).softmax(1)).log())
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(log_mixture(z_ce, z_kd, 1.0, 2.0), z_ce.log_softmax(1))
    torch.testing.assert_close(log_mixture(z_ce, z_kd, 0.0, 0.5), (2 * z_kd).log_softmax(1))
    assert recipes.DHO_ALPHAS == tuple(round(a, 2) for a in np.arange(0, 1.05, 0.05))
    assert recipes.DHO_BETAS == (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 4.0)


def test_dho_mixing_is_chosen_on_validation(student_and_tokenizer):
    model = recipes.DualHeadStudent(copy.deepcopy(student_and_tokenizer[0]), _vectors())
    images, labels = _world_like(32, classes=4)
    pixels = normalize_images(images_to_device(images, torch.device("cpu")))  # as the training batches are
    raw = model.student.encode_image(pixels).detach()
    with torch.no_grad():  # a CE head that is right on validation images, a KD head that is not
        means = torch.stack([raw[torch.as_tensor(labels) == c].mean(0) for c in range(4)])
        model.ce_head.weight.copy_(means - means.mean(0))
        model.kd_head.weight.copy_(_vectors(seed=7))
    choice = recipes.choose_dho_mixing(model, images, labels, torch.arange(4), torch.device("cpu"))
    _, log_p = model.image_logits(pixels, alpha=0.0, beta=1.0)
    kd_only = float((log_p.argmax(1) == torch.as_tensor(labels)).float().mean())
    assert choice["val_acc"] >= kd_only and choice["alpha"] in recipes.DHO_ALPHAS
    assert (model.alpha, model.beta) == (choice["alpha"], choice["beta"])


def test_dho_draws_one_labelled_and_one_unlabelled_batch_per_step():
    from workbench.recipes.dho import paired_plan

    labelled, unlabelled = torch.arange(8), torch.arange(8, 28)
    batches = paired_plan(labelled, unlabelled)(torch.Generator().manual_seed(0), 4)
    assert len(batches) == 2  # one pass over the 8 labelled images, the loaders zipped
    assert all(len(b) == 8 and (b[:4] < 8).all() and (b[4:] >= 8).all() for b in batches)
    assert sorted(torch.cat([b[:4] for b in batches]).tolist()) == list(range(8))
    assert len(set(torch.cat([b[4:] for b in batches]).tolist())) == 8  # distinct unlabelled images
    few = paired_plan(labelled, unlabelled[:3])(torch.Generator().manual_seed(0), 4)
    assert all(len(b) == 8 for b in few)  # three unlabelled images cycle to fill both batches
    only = paired_plan(labelled, unlabelled[:0])(torch.Generator().manual_seed(0), 4)
    assert sorted(torch.cat(only).tolist()) == list(range(8))  # no unlabelled images: the labelled ones once


def test_dho_balances_labelled_and_unlabelled_terms_separately(student_and_tokenizer):
    from workbench.recipes.base import DistillContext
    from workbench.recipes.dho import DHO

    images, labels = _world_like(12, classes=4)
    labels = np.where(np.arange(12) < 3, labels, -1)  # 3 labelled, 9 unlabelled
    vectors = _vectors()
    teacher = _teacher(np.abs(labels), vectors)
    config = recipes.DistillConfig(recipe="dho").resolved()
    context = DistillContext(copy.deepcopy(student_and_tokenizer[0]), teacher, config, torch.device("cpu"), vectors,
                             vectors, torch.arange(4), True, 12, labels=labels)
    recipe = DHO(context)
    pixels = normalize_images(images_to_device(images, torch.device("cpu")))
    out = recipe.step(teacher.features, pixels, torch.arange(12))
    z_ce, z_kd = recipe.model.head_logits(recipe.model.encode_image(pixels))
    t = teacher.logit_scale * teacher.features @ vectors.T

    def kd(rows):  # tau² KL(teacher ‖ student) at tau = 2, averaged over the rows
        return 4 * F.kl_div((z_kd[rows] / 2).log_softmax(1), (t[rows] / 2).log_softmax(1), reduction="batchmean",
                            log_target=True)

    lab = torch.arange(12) < 3
    assert config.temperature == 2.0 and config.dho_label_weight == 0.5
    torch.testing.assert_close(out.terms["kd_loss"], 0.5 * (kd(lab) + kd(~lab)))
    torch.testing.assert_close(out.terms["ce_loss"], 0.5 * F.cross_entropy(z_ce[lab], torch.as_tensor(labels[:3])))


# ------------------------------------------------------------------ model selection

def _selection_run(scores, checkpoint=None, first_epoch=0, die_at_epoch=None):
    torch.manual_seed(0)
    layer = torch.nn.Linear(2, 1)
    inputs, targets = torch.randn(16, 2), torch.randn(16, 1)
    snapshots = {}

    def score():
        epoch = first_epoch + len(snapshots)
        if epoch == die_at_epoch:
            raise KeyboardInterrupt(f"killed while scoring epoch {epoch}")
        snapshots[epoch] = layer.weight.detach().clone()
        return scores[epoch]

    selector = ModelSelector("best_val", score)
    fit([layer], lambda i: {"mse_loss": (layer(inputs[i]) - targets[i]).pow(2).mean()}, 16,
        OptimConfig(epochs=4, batch_size=8, lr=0.1, weight_decay=0.0), torch.device("cpu"),
        checkpoint_path=checkpoint, selector=selector)
    return layer, selector, snapshots


def test_best_epoch_selection_restores_the_best_state_and_survives_resume(tmp_path):
    scores = [0.2, 0.9, 0.5, 0.1]
    layer, selector, snapshots = _selection_run(scores)
    assert selector.summary() == {"policy": "best_val", "epoch": 1, "score": 0.9, "scores": scores}
    torch.testing.assert_close(layer.weight, snapshots[1])  # epoch 1 scored best ...
    assert not torch.equal(snapshots[1], snapshots[3])  # ... and differs from the last epoch

    checkpoint = tmp_path / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        _selection_run(scores, checkpoint, die_at_epoch=2)  # epochs 0 and 1 are checkpointed
    resumed, selector, _ = _selection_run(scores, checkpoint, first_epoch=2)
    assert selector.summary()["epoch"] == 1 and selector.summary()["scores"] == scores
    torch.testing.assert_close(resumed.weight, layer.weight)  # the best state came back from the checkpoint


def test_gaussian_prompt_aggregation_ends_with_the_weighted_average_of_the_epochs(tmp_path):
    """PromptSRC's GPA: epoch a of N weighs N(a; mean, std), normalised; the run ends with the weighted sum."""
    average = GaussianAverage(epochs=4, mean=3, std=1)
    expected = np.exp(-0.5 * (np.arange(1, 5) - 3.0) ** 2)
    np.testing.assert_allclose(average.weights, expected / expected.sum())
    assert GaussianAverage(epochs=1, mean=15, std=1).weights.tolist() == [1.0]  # far from the mean: still a weight
    assert GaussianAverage(epochs=20, mean=15, std=1).weights.argmax() == 14

    def run(checkpoint=None, die_at_epoch=None):
        torch.manual_seed(0)
        layer = torch.nn.Linear(2, 1)
        inputs, targets = torch.randn(16, 2), torch.randn(16, 1)
        ends = []

        def loss(i):
            return {"mse_loss": (layer(inputs[i]) - targets[i]).pow(2).mean()}

        class Recording(GaussianAverage):
            def observe(self, epoch, modules):
                if epoch == die_at_epoch:
                    raise KeyboardInterrupt(f"killed at the end of epoch {epoch}")
                ends.append(layer.weight.detach().clone())
                super().observe(epoch, modules)

        selector = Recording(epochs=4, mean=3, std=1)
        fit([layer], loss, 16, OptimConfig(epochs=4, batch_size=8, lr=0.1, weight_decay=0.0), torch.device("cpu"),
            checkpoint_path=checkpoint, selector=selector)
        return layer, selector, ends

    layer, selector, ends = run()
    torch.testing.assert_close(layer.weight, sum(w * e for w, e in zip(average.weights.tolist(), ends)))
    assert not torch.allclose(layer.weight, ends[-1])  # not simply the last epoch
    assert selector.summary()["policy"] == "gaussian_average" and len(selector.summary()["weights"]) == 4
    checkpoint = tmp_path / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint, die_at_epoch=2)
    resumed, _, _ = run(checkpoint)  # the running sum came back from the checkpoint
    torch.testing.assert_close(resumed.weight, layer.weight)
    with pytest.raises(ValueError, match="std > 0"):
        GaussianAverage(epochs=4, mean=3, std=0)


def test_selection_policy_needs_its_data(student_and_tokenizer):
    images, labels = _world_like(8)
    with pytest.raises(ValueError, match="selection 'best_base_test' needs the base_test images"):
        recipes.distill(student_and_tokenizer[0], images, _teacher(labels, _vectors()), _vectors(),
                        recipes.DistillConfig(selection="best_base_test"), torch.device("cpu"))
    with pytest.raises(ValueError, match="selection policy 'best_val' needs a score function"):
        ModelSelector("best_val")


# ------------------------------------------------------------------ teacher cache

def test_teacher_features_are_cached_on_disk_and_memory_mapped(tmp_path, student_and_tokenizer):
    model = student_and_tokenizer[0]
    images, _ = _world_like(20)
    first, path = cached_image_features(model, images, tmp_path, batch_size=8)
    again, same_path = cached_image_features(model, images, tmp_path)
    assert same_path == path and path.is_file() and len(list(tmp_path.iterdir())) == 1  # no temp file left
    torch.testing.assert_close(again, recipes.encode_images(model, images))
    assert isinstance(np.load(path, mmap_mode="r"), np.memmap)
    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1
    assert cached_image_features(model, changed, tmp_path)[1] != path  # other pixels, other entry
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.visual.proj.add_(1e-3)
    assert model_fingerprint(other) != model_fingerprint(model)
    with pytest.raises(ValueError, match="no images to encode"):
        cached_image_features(model, images[:0], tmp_path)


# ------------------------------------------------------------------ data parallel

def _ddp_worker(rank, world_size, init_file, out_file):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world_size)
    try:
        torch.save(_train_small(), out_file if rank == 0 else out_file + f".{rank}")
        torch.distributed.barrier()  # both ranks are past their last collective
        open(f"{out_file}.done{rank}", "w").close()
    finally:
        torch.distributed.destroy_process_group()


def _train_small():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    generator = torch.Generator().manual_seed(1)
    inputs, targets = torch.randn(48, 6, generator=generator), torch.randn(48, 3, generator=generator)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() == 1:
        torch.manual_seed(99)  # a different start on rank 1: fit must broadcast rank 0's
        for p in net.parameters():
            p.data.normal_()
    fit([net], lambda i: {"mse_loss": (net(inputs[i]) - targets[i]).pow(2).mean()}, 48,
        OptimConfig(epochs=3, batch_size=16, lr=0.01, weight_decay=0.0), torch.device("cpu"))
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_two_process_gloo_run_equals_one_process_on_the_same_global_batch(tmp_path):
    import torch.multiprocessing as mp

    single = _train_small()
    out = str(tmp_path / "rank0.pt")
    try:
        mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    except mp.ProcessExitedException as err:
        # gloo sometimes aborts a process while tearing the group down after the peer has left ("terminate called
        # without an active exception", about 1 run in 20 on 2 cores). That is past the work: accept it only when
        # both ranks had finished training, saved, and passed the final barrier.
        if not all(os.path.exists(f"{out}.done{rank}") for rank in (0, 1)):
            raise
        print(f"ignored a gloo teardown abort after both ranks finished: {err}")
    parallel, other_rank = torch.load(out, weights_only=True), torch.load(out + ".1", weights_only=True)
    for name in single:
        torch.testing.assert_close(parallel[name], single[name], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(other_rank[name], parallel[name])  # ranks stay in lockstep
