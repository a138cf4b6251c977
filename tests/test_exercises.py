"""Exercise checks: an unattempted stub is a nudge, a wrong answer a hint, the reference solutions pass."""

import pytest
import torch
import torch.nn.functional as F

from workbench import exercises


NOTEBOOK_OF = {"kd_loss": "00_concepts", "harmonic_mean": "00_concepts", "entropy_gradient": "00_concepts",
               "uniform_manifold": "04_tutorial_entropy_minimization", "omega_sweep": "04_tutorial_entropy_minimization",
               "per_sample_runs": "04_tutorial_entropy_minimization",
               "entropy_by_batch": "04_tutorial_entropy_minimization"}


@pytest.fixture(scope="module")
def tutorial_context():
    """What notebook 04's exercises work on, in miniature: a batch's features, class vectors and a probe."""
    from workbench import losses, probe

    generator = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(32, 8, generator=generator, dtype=torch.float64), dim=1)
    text = F.normalize(torch.randn(5, 8, generator=generator, dtype=torch.float64), dim=1)
    targets = torch.arange(32) % 5
    optimise = probe.FeatureProbe(features, text, 10 * features @ text.T, targets, logit_scale=10.0, steps=3,
                                  lr=0.05).run
    torch.manual_seed(0)
    ame = losses.AMELoss(image_dim=8, text_dim=8).double()
    return {"omega_sweep": {"optimise": optimise}, "per_sample_runs": {"optimise": optimise, "ame_weight": 50.0},
            "entropy_by_batch": {"ame": ame, "features": features, "text": text}}


def test_every_exercise_belongs_to_a_notebook_with_a_solutions_file():
    assert set(NOTEBOOK_OF) == set(exercises.CHECKS)


@pytest.mark.parametrize("name", sorted(NOTEBOOK_OF))
def test_reference_solutions_pass_and_stubs_are_not_attempted(name, tutorial_context, capsys):
    context = tutorial_context.get(name, {})
    assert exercises.check(name, exercises.solution(NOTEBOOK_OF[name], name), **context) == "correct"
    assert exercises.check(name, lambda *args, **kwargs: None, **context) == "not attempted"
    assert f"{name}: not attempted yet" in capsys.readouterr().out


def test_the_tutorial_checks_catch_wrong_answers(tutorial_context):
    with pytest.raises(AssertionError, match="two rows are equal"):
        exercises.check("uniform_manifold", lambda: (torch.zeros(3, 4), torch.zeros(2, 4)))
    with pytest.raises(AssertionError, match=r"uniform_manifold: H\(M\).*row's mean"):
        exercises.check("uniform_manifold", lambda: (torch.arange(12.).reshape(3, 4), -torch.arange(8.).reshape(2, 4)))
    context = tutorial_context["entropy_by_batch"]
    with pytest.raises(AssertionError, match=r"entropy_by_batch\[8\]: expected.*first b images"):
        exercises.check("entropy_by_batch", lambda ame, features, text, sizes: {b: float(b) for b in sizes}, **context)
    with pytest.raises(AssertionError, match="omega_sweep: expected one entry per"):
        exercises.check("omega_sweep", lambda optimise, omegas: {1.0: {}}, **tutorial_context["omega_sweep"])


def test_wrong_answers_fail_with_a_hint_not_the_solution():
    def kl_without_tau_squared(student, teacher, tau):
        return F.kl_div(F.log_softmax(student / tau, 1), F.softmax(teacher / tau, 1), reduction="batchmean")

    with pytest.raises(AssertionError, match="kd_loss at tau = 2: .*the tau\\*\\*2 factor is missing"):
        exercises.check("kd_loss", kl_without_tau_squared)
    with pytest.raises(AssertionError, match="arithmetic mean"):
        exercises.check("harmonic_mean", lambda base, new: (base + new) / 2)
    with pytest.raises(AssertionError, match="entropy_gradient on uniform scores"):
        exercises.check("entropy_gradient", lambda scores: torch.ones_like(scores))
    with pytest.raises(KeyError, match="no exercise 'kd'; exercises: kd_loss"):
        exercises.check("kd", None)
