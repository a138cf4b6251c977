"""Reference solutions to the exercises of notebooks/04_tutorial_entropy_minimization.ipynb (kept out of the
notebook, so that *Run All* never shows them; run the notebook with ``solutions=True`` to check them)."""

import torch

from workbench import losses, probe


def uniform_manifold():
    # Equal row means give equal scores, hence a uniform p and the maximum entropy log 5, however different
    # the rows are. (Multiplying every entry of a manifold by 10 multiplies the scores by 10: a sharper softmax
    # and a lower entropy - what counts is the spread of the row means.)
    rows = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rows = rows - rows.mean(dim=1, keepdim=True)  # every row mean is now 0
    return rows[2:], rows[:2]  # (image rows, text rows)


def omega_sweep(optimise, omegas=(1.0, 10.0, 50.0, 500.0)):
    # A small omega changes little; a large one trades effective rank (and eventually accuracy) for a lower
    # H(M) - which is why omega is swept over seeds (03_ame_ablation.ipynb).
    return {omega: optimise(True, omega)[-1] for omega in omegas}


def per_sample_runs(optimise, ame_weight):
    # Each image becomes confident about *its* favourite class, so the features keep more rank than under the
    # paper variant's single direction; without KD nothing makes that class the right one.
    runs = {f"{name} (per-sample)": optimise(use_kd, ame_weight, variant="per_sample")
            for name, use_kd in (("KD + AME", True), ("AME only", False))}
    print(probe.summary(runs))
    return runs


def entropy_by_batch(ame, features, text, sizes=(8, 16, 32, 48)):
    # The softmax runs over C + B rows, so both H and its ceiling log(C + B) grow with B: omega multiplies a
    # quantity whose size depends on the batch, so the same omega is a different regulariser at another B.
    with torch.no_grad():
        return {b: float(losses.manifold_entropy(ame.image_projection(features[:b]), ame.text_projection(text)))
                for b in sizes}
