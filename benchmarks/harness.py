"""What the benchmark scripts share: their command line and the timing of a distillation step.

A benchmark module defines ``run(args) -> dict`` (the figures, also returned to tests) and
``report(results) -> str`` (the Markdown printed for RESULTS.md); :func:`main` ties them to a parser
whose help shows the module docstring.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Callable

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from workbench import recipes


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """A parser whose description is the docstring's first line and whose epilog is the rest."""
    lines = doc.strip().splitlines()
    return argparse.ArgumentParser(description=lines[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog="\n".join(lines[2:]))


def int_list(text: str) -> list[int]:
    """``"64,128"`` -> ``[64, 128]`` (argparse type for comma-separated sizes)."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def main(parse_args: Callable, run: Callable[..., dict], report: Callable[[dict], str], argv=None) -> dict:
    results = run(parse_args(argv))
    print(report(results))
    return results


def first_targets(targets: recipes.TeacherTargets, n: int) -> recipes.TeacherTargets:
    """The teacher targets of the first ``n`` images (a warm-up on a prefix of the data)."""
    features = None if targets.features is None else targets.features[:n]
    return recipes.TeacherTargets(features, targets.logit_scale, targets.model)


def distill_step_seconds(student, images, targets, vectors, config: recipes.DistillConfig, device,
                         **distill_kwargs) -> float:
    """Median time between consecutive optimiser steps of one ``distill`` run on a copy of ``student``.

    ``distill_kwargs`` go to ``recipes.distill`` (e.g. ``student_class_vectors`` for a pair of widths).

    Timestamps come from a global optimiser step hook, so ``distill``'s setup (optimiser, AME
    projections, prompts) and the first step's one-off costs do not count, and the median ignores
    the epoch boundaries.
    """
    stamps = []

    def stamp(*_):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    handle = register_optimizer_step_post_hook(stamp)
    try:
        recipes.distill(copy.deepcopy(student), images, targets, vectors, config, device, **distill_kwargs)
    finally:
        handle.remove()
    if len(stamps) < 3:
        raise ValueError(f"need at least 3 steps per measurement, got {len(stamps)}: raise --images, --epochs "
                         "or --steps")
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:]))
