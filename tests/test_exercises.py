"""Exercise checks: an unattempted stub is a nudge, a wrong answer a hint, the reference solutions pass."""

import pytest
import torch
import torch.nn.functional as F

from workbench import exercises


@pytest.mark.parametrize("name", sorted(exercises.CHECKS))
def test_reference_solutions_pass_and_stubs_are_not_attempted(name, capsys):
    assert exercises.check(name, exercises.solution("00_concepts", name)) == "correct"
    assert exercises.check(name, lambda *args: None) == "not attempted"
    assert f"{name}: not attempted yet" in capsys.readouterr().out


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
