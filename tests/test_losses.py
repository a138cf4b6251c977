"""Losses against plain float64 reference formulas, float64 gradcheck, and their properties."""

import math

import numpy as np
import pytest
import torch

from workbench.losses import AMELoss, KDLoss, entropy, manifold_entropy


# ---------------------------------------------------------------- plain references (no torch math)

def ref_log_softmax(row):
    m = max(row)
    log_z = m + math.log(sum(math.exp(x - m) for x in row))
    return [x - log_z for x in row]


def ref_entropy(scores):
    return -sum(math.exp(lp) * lp for lp in ref_log_softmax(scores))


def ref_kd(student, teacher, tau):
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        log_ps = ref_log_softmax([x / tau for x in s_row])
        log_pt = ref_log_softmax([x / tau for x in t_row])
        total += sum(math.exp(lt) * (lt - ls) for lt, ls in zip(log_pt, log_ps))
    return tau**2 * total / len(student)


def ref_linear(x, layer):
    w, b = layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()
    return x @ w.T + b


def ref_gelu(x):
    return np.vectorize(lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))))(x)


def ref_conv1d_pool(x, conv, out_len):
    """Conv1d(1, 1, k, stride, padding) per row, then adaptive average pooling to out_len."""
    k, stride, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    w, b = conv.weight.detach().double().numpy()[0, 0], float(conv.bias.detach()[0])
    rows = []
    for signal in x:
        padded = np.concatenate([np.zeros(pad), signal, np.zeros(pad)])
        n = (len(padded) - k) // stride + 1
        y = [sum(w[j] * padded[i * stride + j] for j in range(k)) + b for i in range(n)]
        pooled = [np.mean(y[(i * n) // out_len: -(-((i + 1) * n) // out_len)])
                  for i in range(out_len)]
        rows.append(pooled)
    return np.array(rows)


def ref_ame(module, image, text):
    """Project with the module's weights in numpy, then score rows by mean and take entropy."""
    img, txt = image.detach().double().numpy(), text.detach().double().numpy()
    t1, _, t2 = module.text_projection
    text_rows = ref_linear(ref_gelu(ref_linear(txt, t1)), t2)
    if isinstance(module.image_projection, torch.nn.Linear):
        image_rows = ref_linear(img, module.image_projection)
    else:
        image_rows = ref_conv1d_pool(img, module.image_projection[1], module.manifold_dim)
    scores = [float(np.mean(r)) for r in np.concatenate([text_rows, image_rows])]
    return module.weight * ref_entropy(scores), ref_entropy(scores)


def zero_parameters(module):
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


# ---------------------------------------------------------------- KDLoss

@pytest.mark.parametrize("tau", [0.5, 1.0, 4.0])
def test_kd_matches_reference(tau):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 10, generator=g, dtype=torch.float64) * 3
    t = torch.randn(6, 10, generator=g, dtype=torch.float64) * 3
    out = KDLoss(tau)(s, t)
    assert set(out) == {"kd_loss"} and out["kd_loss"].dim() == 0
    assert out["kd_loss"].item() == pytest.approx(ref_kd(s, t, tau), rel=1e-10, abs=1e-12)


def test_kd_gradcheck_and_teacher_is_constant():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    loss = KDLoss(2.0)
    assert torch.autograd.gradcheck(lambda x: loss(x, t)["kd_loss"], (s,))
    loss(s, t)["kd_loss"].backward()
    assert t.grad is None and s.grad is not None


def test_kd_nonnegative_and_zero_when_equal():
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        s, t = torch.randn(3, 7, generator=g) * 5, torch.randn(3, 7, generator=g) * 5
        assert KDLoss(1.5)(s, t)["kd_loss"].item() >= 0
    assert KDLoss(3.0)(t, t.clone())["kd_loss"].item() == pytest.approx(0.0, abs=1e-6)
    # softmax is shift-invariant per row, so a per-row constant shift also gives zero
    shifted = t + torch.arange(3.0)[:, None]
    assert KDLoss(3.0)(shifted, t)["kd_loss"].item() == pytest.approx(0.0, abs=1e-5)


def test_kd_temperature_scaling():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(5, 8, generator=g, dtype=torch.float64)
    t = torch.randn(5, 8, generator=g, dtype=torch.float64)
    # definition: tau**2 times the tau=1 loss of the scaled logits
    for tau in [0.3, 2.0, 7.0]:
        assert KDLoss(tau)(s, t)["kd_loss"].item() == pytest.approx(
            tau**2 * KDLoss(1.0)(s / tau, t / tau)["kd_loss"].item(), rel=1e-10)
    # high-temperature limit: tau**2 * KL -> mean_b sum_c (d - mean d)**2 / (2C), d = t - s
    d = (t - s) - (t - s).mean(dim=1, keepdim=True)
    limit = (d**2).sum(dim=1).mean().item() / (2 * s.shape[1])
    assert KDLoss(1e3)(s, t)["kd_loss"].item() == pytest.approx(limit, rel=1e-2)


def test_kd_finite_for_extreme_logits():
    s = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], requires_grad=True)
    t = torch.tensor([[-1e4, 1e4, 0.0], [1e4, -1e4, -1e4]])
    loss = KDLoss(1.0)(s, t)["kd_loss"]
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan"), float("inf")])
def test_kd_rejects_bad_temperature(tau):
    with pytest.raises(ValueError, match="temperature"):
        KDLoss(tau)


def test_kd_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        KDLoss()(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="shape"):
        KDLoss()(torch.zeros(3), torch.zeros(3))


# ---------------------------------------------------------------- entropy helpers

def test_entropy_matches_reference_and_bounds():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 9, generator=g, dtype=torch.float64) * 4
    h = entropy(x, dim=1)
    for row, value in zip(x.tolist(), h.tolist()):
        assert value == pytest.approx(ref_entropy(row), rel=1e-12)
    assert (h >= 0).all() and (h <= math.log(9) + 1e-12).all()
    assert entropy(x.T, dim=0).tolist() == pytest.approx(h.tolist())
    assert entropy(torch.zeros(5)).item() == pytest.approx(math.log(5))
    extreme = entropy(torch.tensor([1e4, -1e4, 0.0]))
    assert torch.isfinite(extreme) and extreme.item() == pytest.approx(0.0, abs=1e-6)


def test_manifold_entropy_scores_rows_by_mean():
    g = torch.Generator().manual_seed(5)
    img = torch.randn(3, 4, generator=g, dtype=torch.float64)
    txt = torch.randn(2, 4, generator=g, dtype=torch.float64)
    scores = torch.cat([txt, img]).mean(dim=1).tolist()
    assert manifold_entropy(img, txt).item() == pytest.approx(ref_entropy(scores), rel=1e-12)
    # rows with equal means -> uniform over C + B rows
    assert manifold_entropy(torch.ones(3, 4), torch.ones(2, 4)).item() == pytest.approx(math.log(5))
    with pytest.raises(ValueError, match="width"):
        manifold_entropy(torch.zeros(3, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="2-D"):
        manifold_entropy(torch.zeros(4), torch.zeros(2, 4))


# ---------------------------------------------------------------- AMELoss

def make_ame(projection, seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"image_dim": 12, "text_dim": 10, "manifold_dim": 4, "hidden_dim": 8, **kw}
    return AMELoss(image_projection=projection, **kw).double()


def make_inputs(seed=0, b=5, c=3, di=12, dt=10):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, di, generator=g, dtype=torch.float64, requires_grad=True),
            torch.randn(c, dt, generator=g, dtype=torch.float64, requires_grad=True))


@pytest.mark.parametrize("projection", ["linear", "conv1d"])
def test_ame_matches_reference(projection):
    ame = make_ame(projection, weight=50.0)
    img, txt = make_inputs()
    out = ame(img, txt)
    ref_loss, ref_h = ref_ame(ame, img, txt)
    assert set(out) == {"ame_loss", "manifold_entropy"}
    assert out["ame_loss"].item() == pytest.approx(ref_loss, rel=1e-10)
    assert out["manifold_entropy"].item() == pytest.approx(ref_h, rel=1e-10)
    assert not out["manifold_entropy"].requires_grad


def test_ame_conv1d_reference_when_pool_upsamples():
    # image_dim=6 -> conv output length 3 < manifold_dim=4: adaptive pooling repeats values
    ame = make_ame("conv1d", image_dim=6, manifold_dim=4)
    img, txt = make_inputs(di=6)
    assert ame(img, txt)["ame_loss"].item() == pytest.approx(ref_ame(ame, img, txt)[0], rel=1e-10)


@pytest.mark.parametrize("projection", ["linear", "conv1d"])
def test_ame_gradcheck_wrt_features(projection):
    ame = make_ame(projection, weight=2.0)
    img, txt = make_inputs(seed=1)
    assert torch.autograd.gradcheck(lambda i, t: ame(i, t)["ame_loss"], (img, txt))


@pytest.mark.parametrize("projection", ["linear", "conv1d"])
def test_ame_entropy_bounds(projection):
    for seed in range(5):
        ame = make_ame(projection, seed=seed)
        img, txt = make_inputs(seed=seed)
        h = ame(img, txt)["manifold_entropy"].item()
        assert 0 <= h <= math.log(3 + 5) + 1e-12
    zero_parameters(ame)  # every row scores 0 -> uniform over the C + B rows
    out = ame(img, txt)
    assert out["manifold_entropy"].item() == pytest.approx(math.log(8), rel=1e-12)
    assert out["ame_loss"].item() == pytest.approx(ame.weight * math.log(8), rel=1e-12)


@pytest.mark.parametrize("projection", ["linear", "conv1d"])
def test_ame_gradient_descent_lowers_entropy(projection):
    ame = make_ame(projection, seed=3)
    img, txt = make_inputs(seed=3)
    img, txt = img.detach(), txt.detach()
    opt = torch.optim.Adam(ame.parameters(), lr=1e-2)
    start = ame(img, txt)["manifold_entropy"].item()
    for _ in range(20):
        opt.zero_grad()
        ame(img, txt)["ame_loss"].backward()
        opt.step()
    assert ame(img, txt)["manifold_entropy"].item() < start - 1e-3


def test_ame_weight_scales_loss_and_gradients_reach_inputs():
    img, txt = make_inputs(seed=4)
    h = make_ame("linear", weight=1.0)(img, txt)["ame_loss"]
    h50 = make_ame("linear", weight=50.0)(img, txt)["ame_loss"]
    assert h50.item() == pytest.approx(50 * h.item())
    assert make_ame("linear", weight=0.0)(img, txt)["ame_loss"].item() == 0.0
    h.backward()
    assert img.grad is not None and txt.grad is not None


def test_ame_default_hyperparameters():
    ame = AMELoss(image_dim=512, text_dim=768)
    assert ame.weight == 50.0 and ame.manifold_dim == 64
    assert ame.text_projection[0].out_features == 256
    conv = AMELoss(512, 768, image_projection="conv1d").image_projection[1]
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3,), (2,), (1,))
    out = ame(torch.randn(4, 512), torch.randn(10, 768))
    assert out["ame_loss"].shape == () and torch.isfinite(out["ame_loss"])


def test_ame_validation_errors():
    with pytest.raises(ValueError, match="linear, conv1d"):
        AMELoss(8, 8, image_projection="mlp")
    for bad in [-1.0, float("nan"), float("inf")]:
        with pytest.raises(ValueError, match="weight"):
            AMELoss(8, 8, weight=bad)
    with pytest.raises(ValueError, match="manifold_dim"):
        AMELoss(8, 8, manifold_dim=0)
    with pytest.raises(ValueError, match="image_dim"):
        AMELoss(8.0, 8)
    ame = AMELoss(8, 6, manifold_dim=4, hidden_dim=4)
    with pytest.raises(ValueError, match=r"image_features must have shape \(rows, 8\)"):
        ame(torch.zeros(2, 7), torch.zeros(3, 6))
    with pytest.raises(ValueError, match="text_features"):
        ame(torch.zeros(2, 8), torch.zeros(6))


# ---------------------------------------------------------------- symmetric KL, feature KD, AME variants

from workbench.losses import FeatureKDLoss, SymmetricKLLoss  # noqa: E402


def ref_symmetric_kl(student, teacher, tau):
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        ls = ref_log_softmax([x / tau for x in s_row])
        lt = ref_log_softmax([x / tau for x in t_row])
        total += 0.5 * sum(math.exp(a) * (a - b) for a, b in zip(lt, ls))
        total += 0.5 * sum(math.exp(b) * (b - a) for a, b in zip(lt, ls))
    return tau**2 * total / len(student)


@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
def test_symmetric_kl_matches_reference_and_is_symmetric(tau):
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64)
    loss = SymmetricKLLoss(tau)
    value = float(loss(s, t)["symmetric_kl_loss"])
    assert value == pytest.approx(ref_symmetric_kl(s, t, tau), rel=1e-10)
    assert value == pytest.approx(float(loss(t, s)["symmetric_kl_loss"]), rel=1e-10)
    assert float(loss(s, s)["symmetric_kl_loss"]) == pytest.approx(0.0, abs=1e-12)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss(x, t)["symmetric_kl_loss"], (s,))


def test_symmetric_kl_finite_for_extreme_logits():
    s = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    t = torch.tensor([[-1e4, 1e4, 0.0]])
    out = SymmetricKLLoss()(s, t)["symmetric_kl_loss"]
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("distance", ["cosine", "mse"])
def test_feature_kd_matches_reference_and_gradcheck(distance):
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    sn, tn = s.numpy() / np.linalg.norm(s.numpy(), axis=1, keepdims=True), t.numpy() / np.linalg.norm(t.numpy(), axis=1, keepdims=True)
    # mse: the element mean of squared differences, as F.mse_loss and CLIP-KD's FD (loss.py) compute it
    expected = np.mean(1 - (sn * tn).sum(1)) if distance == "cosine" else np.mean((sn - tn) ** 2)
    loss = FeatureKDLoss(distance, weight=2.0)
    assert float(loss(s, t)["feature_kd_loss"]) == pytest.approx(2.0 * expected, rel=1e-10)
    assert float(loss(3.0 * t, t)["feature_kd_loss"]) == pytest.approx(0.0, abs=1e-12)  # direction only
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss(x, t)["feature_kd_loss"], (s,))


def test_feature_kd_rejects_width_mismatch_and_unknown_distance():
    with pytest.raises(ValueError, match="project the student to the teacher's width"):
        FeatureKDLoss()(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="unknown distance 'l1'; valid names: cosine, mse"):
        FeatureKDLoss("l1")


def test_ame_per_sample_variant_matches_reference_and_gradcheck():
    torch.manual_seed(0)
    ame = AMELoss(image_dim=6, text_dim=5, manifold_dim=4, hidden_dim=8, weight=3.0, variant="per_sample").double()
    image = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    text = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    t1, _, t2 = ame.text_projection
    txt = ref_linear(ref_gelu(ref_linear(text.detach().numpy(), t1)), t2)
    img = ref_linear(image.detach().numpy(), ame.image_projection)
    scores = img @ txt.T / 2.0  # sqrt(manifold_dim = 4)
    expected = np.mean([ref_entropy(list(row)) for row in scores])
    out = ame(image, text)
    assert float(out["manifold_entropy"]) == pytest.approx(expected, rel=1e-10)
    assert float(out["ame_loss"].detach()) == pytest.approx(3.0 * expected, rel=1e-10)
    assert torch.autograd.gradcheck(lambda i, t: ame(i, t)["ame_loss"], (image, text))


def test_ame_weight_warms_up_in_training_only():
    ame = AMELoss(image_dim=4, text_dim=4, manifold_dim=2, hidden_dim=4, weight=10.0, warmup_steps=4)
    x, t = torch.randn(3, 4), torch.randn(2, 4)
    ratios = []
    for _ in range(6):
        out = ame(x, t)
        ratios.append(float(out["ame_loss"].detach() / out["manifold_entropy"]))
    assert ratios == pytest.approx([2.5, 5.0, 7.5, 10.0, 10.0, 10.0])
    ame.eval()
    assert float(ame(x, t)["ame_loss"].detach() / ame(x, t)["manifold_entropy"]) == pytest.approx(10.0)


def test_ame_rejects_unknown_variant_listing_valid_names():
    with pytest.raises(ValueError, match="unknown AME variant 'rows'; valid names: paper, per_sample"):
        AMELoss(4, 4, variant="rows")
    with pytest.raises(ValueError, match="warmup_steps"):
        AMELoss(4, 4, warmup_steps=-1)
