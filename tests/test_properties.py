"""Property-based (hypothesis) tests for the distillation losses and the fit loop's loss guard.

Every loss is driven over random shapes (batch 1..16, classes 2..50, feature widths 1..64), both
float32 and bfloat16 (the loss is computed in that dtype), extreme values (up to +-1e4, rows with one
huge entry) and temperatures in [0.05, 20]. float32 results are compared with a float64 evaluation
of the same inputs under a tolerance derived from float32 rounding of the inputs' magnitude.

Hypothesis' example database is disabled (``database=None``) so running these tests writes nothing
into the checkout.
"""

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from workbench.losses import AMELoss, FeatureKDLoss, KDLoss, SymmetricKLLoss, entropy, manifold_entropy
from workbench.train import OptimConfig, fit

pytestmark = pytest.mark.reliability

PROPERTY = settings(max_examples=40, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

EPS32 = torch.finfo(torch.float32).eps
EPS_BF16 = torch.finfo(torch.bfloat16).eps
HUGE = 1e4
DTYPES = st.sampled_from([torch.float32, torch.bfloat16])
TEMPERATURES = st.floats(0.05, 20.0)
BATCH = st.integers(1, 16)
CLASSES = st.integers(2, 50)
WIDTH = st.integers(1, 64)


# ----------------------------------------------------------------------------------- strategies

@st.composite
def arrays(draw, shape, bound=HUGE):
    """float32 array in [-bound, bound]; optionally some rows get one huge (+-bound) entry."""
    x = draw(hnp.arrays(np.float32, shape, elements=st.floats(-bound, bound, width=32)))
    rows, cols = shape
    spikes = draw(st.lists(st.tuples(st.integers(0, rows - 1), st.integers(0, cols - 1),
                                     st.sampled_from([bound, -bound])), max_size=rows))
    for r, c, v in spikes:
        x[r, c] = v
    return x


@st.composite
def logit_pairs(draw):
    """(student, teacher) float32 arrays of shape (B, C): independent, identical or near-identical."""
    shape = (draw(BATCH), draw(CLASSES))
    teacher = draw(arrays(shape))
    mode = draw(st.sampled_from(["independent", "equal", "near"]))
    if mode == "independent":
        student = draw(arrays(shape))
    elif mode == "equal":
        student = teacher.copy()
    else:
        noise = draw(hnp.arrays(np.float32, shape, elements=st.floats(-2**-7, 2**-7, width=32)))
        student = np.clip(teacher + noise, -HUGE, HUGE).astype(np.float32)
    return student, teacher


def _tensor(array, dtype, grad=False):
    return torch.from_numpy(np.array(array)).to(dtype).requires_grad_(grad)


def _finite(t):
    return bool(torch.isfinite(t).all())


def _grads_finite(*tensors):
    for t in tensors:
        assert t.grad is not None
        assert _finite(t.grad), "non-finite gradient"


# ---------------------------------------------------------------------------- KD / symmetric KL

KL_LOSSES = [(KDLoss, "kd_loss"), (SymmetricKLLoss, "symmetric_kl_loss")]


@pytest.mark.parametrize("loss_cls,key", KL_LOSSES, ids=["kd", "symmetric_kl"])
@PROPERTY
@given(pair=logit_pairs(), tau=TEMPERATURES, dtype=DTYPES)
def test_kl_losses_finite_nonnegative_and_match_float64(loss_cls, key, pair, tau, dtype):
    student_np, teacher_np = pair
    loss = loss_cls(temperature=tau)
    student, teacher = _tensor(student_np, dtype, grad=True), _tensor(teacher_np, dtype, grad=True)

    value = loss(student, teacher)[key]
    assert value.dtype == dtype and value.dim() == 0
    assert _finite(value)
    value.backward()
    _grads_finite(student)
    assert teacher.grad is None, "teacher logits must be treated as constants"

    if np.array_equal(student_np, teacher_np):
        assert value.item() == 0.0

    # Rounding budget (in units of eps) of the evaluation: log-probabilities carry an absolute error
    # of a few eps * (max|x| / tau + log C) and the KL is scaled by tau**2. Rounding alone can push a
    # float32 KL of nearly equal inputs slightly below 0 (e.g. -4.6e-6 at tau = 9.5 for logits
    # [1.0078125, 1, ..., 1] vs all ones), so the -1e-6 floor is exact only for the float64 result.
    c = student_np.shape[1]
    m = float(max(np.abs(student_np).max(), np.abs(teacher_np).max()))
    budget = 16 * tau**2 * (2 * m / tau + math.log(c) + 1)

    reference = loss(_tensor(student_np, torch.float64), _tensor(teacher_np, torch.float64))[key].item()
    assert reference >= -1e-6
    if dtype == torch.float32:
        assert value.item() >= -1e-6 - EPS32 * budget
        assert value.item() == pytest.approx(reference, rel=1e-4, abs=EPS32 * budget)
    else:
        assert value.item() >= -1e-6 - EPS_BF16 * budget


@PROPERTY
@given(pair=logit_pairs(), tau=TEMPERATURES)
def test_symmetric_kl_is_symmetric(pair, tau):
    student, teacher = (torch.from_numpy(a).double() for a in pair)
    loss = SymmetricKLLoss(temperature=tau)
    forward = loss(student, teacher)["symmetric_kl_loss"].item()
    backward = loss(teacher, student)["symmetric_kl_loss"].item()
    assert forward == pytest.approx(backward, rel=1e-9, abs=1e-9 * tau**2 * (1 + HUGE / tau))


# ------------------------------------------------------------------------------------ entropies

@PROPERTY
@given(data=st.data(), dtype=DTYPES, dim=st.sampled_from([0, -1]))
def test_entropy_bounded_by_log_n_and_matches_float64(data, dtype, dim):
    logits_np = data.draw(arrays((data.draw(BATCH), data.draw(CLASSES))))
    n = logits_np.shape[dim]
    logits = _tensor(logits_np, dtype, grad=True)

    h = entropy(logits, dim=dim)
    assert h.dtype == dtype and _finite(h)
    eps = EPS32 if dtype == torch.float32 else EPS_BF16
    tol = 8 * eps * (1 + math.log(n))  # bf16 overshoots log(n) by up to ~1.3 eps * log(n)
    assert (h >= 0).all()
    assert (h <= math.log(n) + tol).all()
    h.sum().backward()
    _grads_finite(logits)

    if dtype == torch.float32:
        reference = entropy(_tensor(logits_np, torch.float64), dim=dim)
        assert ((reference >= 0) & (reference <= math.log(n) + 1e-12)).all()
        torch.testing.assert_close(h.double(), reference, rtol=1e-5, atol=tol)


@PROPERTY
@given(data=st.data(), dtype=DTYPES)
def test_manifold_entropy_bounded_by_log_rows_and_matches_float64(data, dtype):
    b, c, d = data.draw(BATCH), data.draw(CLASSES), data.draw(WIDTH)
    image_np, text_np = data.draw(arrays((b, d))), data.draw(arrays((c, d)))
    image, text = _tensor(image_np, dtype, grad=True), _tensor(text_np, dtype, grad=True)
    n = b + c

    h = manifold_entropy(image, text)
    assert h.dim() == 0 and _finite(h)
    eps = EPS32 if dtype == torch.float32 else EPS_BF16
    assert 0 <= h.item() <= math.log(n) + 8 * eps * (1 + math.log(n))
    h.backward()
    _grads_finite(image, text)

    if dtype == torch.float32:
        reference = manifold_entropy(_tensor(image_np, torch.float64), _tensor(text_np, torch.float64))
        assert 0 <= reference.item() <= math.log(n) + 1e-12
        # the row means carry ~eps * max|x| error; H moves by at most 2 log(n) times that
        m = float(max(np.abs(image_np).max(), np.abs(text_np).max()))
        tol = 8 * EPS32 * (1 + math.log(n)) * (1 + m)
        assert h.item() == pytest.approx(reference.item(), rel=1e-5, abs=tol)


# ------------------------------------------------------------------------------- feature KD

@PROPERTY
@given(data=st.data(), dtype=DTYPES, distance=st.sampled_from(["cosine", "mse"]),
       weight=st.floats(0.0, 100.0))
def test_feature_kd_finite_bounded_and_matches_float64(data, dtype, distance, weight):
    b, d = data.draw(BATCH), data.draw(WIDTH)
    student_np, teacher_np = data.draw(arrays((b, d))), data.draw(arrays((b, d)))
    loss = FeatureKDLoss(distance=distance, weight=weight)
    student, teacher = _tensor(student_np, dtype, grad=True), _tensor(teacher_np, dtype, grad=True)

    value = loss(student, teacher)["feature_kd_loss"]
    assert value.dtype == dtype and _finite(value)
    value.backward()
    _grads_finite(student)
    assert teacher.grad is None, "teacher features must be treated as constants"

    # 1 - cos lies in [0, 2]; |s - t|^2 of (at most) unit vectors lies in [0, 4]
    upper = weight * (2.0 if distance == "cosine" else 4.0)
    eps = EPS32 if dtype == torch.float32 else EPS_BF16
    slack = 16 * eps * max(weight, 1.0)
    assert -slack <= value.item() <= upper + slack

    if dtype == torch.float32:
        reference = loss(_tensor(student_np, torch.float64), _tensor(teacher_np, torch.float64))
        assert value.item() == pytest.approx(reference["feature_kd_loss"].item(), rel=1e-5, abs=slack)


@st.composite
def nonzero_rows(draw, shape):
    """Features whose every row has at least one entry of magnitude >= 2**-7 (norm well above 1e-12)."""
    x = draw(arrays(shape))
    for r in range(shape[0]):
        c = draw(st.integers(0, shape[1] - 1))
        magnitude = draw(st.floats(2**-7, HUGE, width=32))
        x[r, c] = magnitude if draw(st.booleans()) else -magnitude
    return x


@PROPERTY
@given(data=st.data(), distance=st.sampled_from(["cosine", "mse"]),
       scale=st.floats(1e-3, 1e3), rescale_student=st.booleans())
def test_feature_kd_invariant_to_positive_rescaling(data, distance, scale, rescale_student):
    b, d = data.draw(BATCH), data.draw(WIDTH)
    student = torch.from_numpy(data.draw(nonzero_rows((b, d))))
    teacher = torch.from_numpy(data.draw(nonzero_rows((b, d))))
    loss = FeatureKDLoss(distance=distance)

    base = loss(student, teacher)["feature_kd_loss"].item()
    if rescale_student:
        scaled = loss(student * scale, teacher)["feature_kd_loss"].item()
    else:
        scaled = loss(student, teacher * scale)["feature_kd_loss"].item()
    assert scaled == pytest.approx(base, rel=1e-5, abs=16 * EPS32)
    # identical (non-zero) inputs give zero loss, also after rescaling one of them
    same = loss(student, student * scale)["feature_kd_loss"].item()
    assert same == pytest.approx(0.0, abs=16 * EPS32)


# ------------------------------------------------------------------------------------------ AME

@st.composite
def ame_cases(draw, bound=HUGE):
    b, c = draw(BATCH), draw(CLASSES)
    dims = dict(image_dim=draw(WIDTH), text_dim=draw(WIDTH), manifold_dim=draw(WIDTH),
                hidden_dim=draw(st.integers(1, 64)))
    image = draw(arrays((b, dims["image_dim"]), bound=bound))
    text = draw(arrays((c, dims["text_dim"]), bound=bound))
    seed = draw(st.integers(0, 2**16))
    return dims, image, text, seed


@PROPERTY
@given(case=ame_cases(), dtype=DTYPES, projection=st.sampled_from(["linear", "conv1d"]),
       variant=st.sampled_from(["paper", "per_sample"]), weight=st.floats(0.0, 100.0))
def test_ame_entropy_bounded_and_gradients_finite(case, dtype, projection, variant, weight):
    dims, image_np, text_np, seed = case
    torch.manual_seed(seed)
    loss = AMELoss(**dims, weight=weight, image_projection=projection, variant=variant).to(dtype)
    image, text = _tensor(image_np, dtype, grad=True), _tensor(text_np, dtype, grad=True)
    b, c = image.shape[0], text.shape[0]

    out = loss(image, text)
    h, value = out["manifold_entropy"], out["ame_loss"]
    assert _finite(h) and _finite(value)
    assert not h.requires_grad
    # "paper": one softmax over all C + B rows; "per_sample": each image's softmax over C classes
    n = b + c if variant == "paper" else c
    eps = EPS32 if dtype == torch.float32 else EPS_BF16
    assert 0 <= h.item() <= math.log(n) + 8 * eps * (1 + math.log(n))
    assert value.item() == pytest.approx(weight * h.item(), rel=2 * eps, abs=1e-6)

    value.backward()
    _grads_finite(image, text, *[p for p in loss.parameters()])


@PROPERTY
@given(case=ame_cases(bound=10.0), projection=st.sampled_from(["linear", "conv1d"]),
       variant=st.sampled_from(["paper", "per_sample"]))
def test_ame_float32_matches_float64(case, projection, variant):
    dims, image_np, text_np, seed = case
    torch.manual_seed(seed)
    loss = AMELoss(**dims, weight=1.0, image_projection=projection, variant=variant)
    reference_loss = copy.deepcopy(loss).double()  # same parameters, exactly widened
    h = loss(_tensor(image_np, torch.float32), _tensor(text_np, torch.float32))["manifold_entropy"]
    reference = reference_loss(_tensor(image_np, torch.float64), _tensor(text_np, torch.float64))
    n = image_np.shape[0] + text_np.shape[0]
    assert h.item() == pytest.approx(reference["manifold_entropy"].item(), rel=1e-4, abs=1e-4 * math.log(n))


# --------------------------------------------------------------------------- invalid scalars

BAD_POSITIVE = st.floats(max_value=0.0) | st.sampled_from([math.nan, math.inf, -math.inf])
BAD_NONNEGATIVE = (st.floats(max_value=0.0, exclude_max=True).filter(lambda v: v < 0)
                   | st.sampled_from([math.nan, math.inf, -math.inf]))


@PROPERTY
@given(temperature=BAD_POSITIVE, cls=st.sampled_from([KDLoss, SymmetricKLLoss]))
def test_invalid_temperature_raises_naming_it(temperature, cls):
    with pytest.raises(ValueError, match="temperature"):
        cls(temperature=temperature)


@PROPERTY
@given(weight=BAD_NONNEGATIVE, which=st.sampled_from(["feature_kd", "ame"]))
def test_invalid_weight_raises_naming_it(weight, which):
    with pytest.raises(ValueError, match="weight"):
        if which == "feature_kd":
            FeatureKDLoss(weight=weight)
        else:
            AMELoss(image_dim=4, text_dim=4, manifold_dim=4, hidden_dim=4, weight=weight)


@PROPERTY
@given(temperature=TEMPERATURES, weight=st.floats(0.0, 1e6))
def test_valid_scalars_are_accepted(temperature, weight):
    assert KDLoss(temperature=temperature).temperature == temperature
    assert SymmetricKLLoss(temperature=temperature).temperature == temperature
    assert FeatureKDLoss(weight=weight).weight == weight
    assert AMELoss(image_dim=4, text_dim=4, manifold_dim=4, hidden_dim=4, weight=weight).weight == weight


# ------------------------------------------------------------------------------------- train.fit

@settings(max_examples=10, deadline=None, database=None)
@given(bad_step=st.integers(0, 7), bad=st.sampled_from([math.inf, -math.inf, math.nan]))
def test_fit_raises_floating_point_error_naming_the_step(bad_step, bad):
    torch.manual_seed(0)
    layer = torch.nn.Linear(2, 1)
    inputs = torch.randn(16, 2)
    calls = []

    def step_loss(indices):
        step = len(calls)
        calls.append(step)
        good = layer(inputs[indices]).pow(2).mean()
        return {"fit_loss": good + bad if step == bad_step else good, "monitor": good.detach()}

    config = OptimConfig(epochs=2, batch_size=4, lr=1e-2)  # 4 steps per epoch
    with pytest.raises(FloatingPointError, match=rf"epoch {bad_step // 4}, step {bad_step}\b") as info:
        fit([layer], step_loss, 16, config, torch.device("cpu"))
    assert "fit_loss=" in str(info.value)
    assert len(calls) == bad_step + 1, "fit must stop at the first non-finite loss"
    assert not layer.training, "modules go back to eval mode even when fit raises"
