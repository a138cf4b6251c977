"""Is the embedded world in the field's regime? Per-model measurements and the quickstart's regime object.

The workbench's findings mean something only where distillation can work: a strong teacher that also
knows which samples are ambiguous, a weaker student that still sees every factor of a class, and a
protocol under which distillation closes much of the gap. :func:`describe` measures one model on a
labelled split with ground-truth ambiguity; :func:`regime` turns the quickstart's rows into the
``"regime"`` object of ``metrics.json``; :data:`TARGETS` holds the bounds it is judged against (issue 15).
"""

from __future__ import annotations

import numpy as np
import torch

# name -> (lowest, highest) acceptable value; None = unbounded on that side
TARGETS = {
    "teacher_hm": (0.92, None),
    "teacher_clean_acc": (0.95, None),
    "student_zs_hm": (0.30, 0.55),
    "teacher_ambiguity_auroc": (0.75, None),
    "teacher_ambiguity_spearman": (0.50, None),
    "gap_closed_transductive": (0.70, None),
    "kd_inductive_base_gain": (0.10, None),
}


def factor_accuracy(logits, labels, class_factors: dict[str, np.ndarray]) -> dict[str, float]:
    """Accuracy of each factor of a class (e.g. colour, shape) among that factor's values.

    A factor's prediction is the value whose classes hold the most probability mass (softmax of
    ``logits`` summed over the classes sharing the value), so a model that knows the colour but not the
    shape scores 1 on colour whichever shape it picks.
    """
    probs = torch.as_tensor(logits).float().softmax(1).numpy()
    labels = np.asarray(labels)
    out = {}
    for factor, value_of_class in class_factors.items():
        value_of_class = np.asarray(value_of_class)
        if len(value_of_class) != probs.shape[1]:
            raise ValueError(f"class_factors[{factor!r}] has {len(value_of_class)} entries for {probs.shape[1]} classes")
        values = np.unique(value_of_class)
        mass = np.stack([probs[:, value_of_class == v].sum(1) for v in values], axis=1)
        out[f"{factor}_acc"] = float((values[mass.argmax(1)] == value_of_class[labels]).mean())
    return out


def describe(features, logits, class_vectors, split, base_classes, new_classes,
             class_factors: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Everything the regime asks of one model, on a split with ground-truth ambiguity.

    Returns base / new accuracy and HM (each among its own classes), accuracy over all classes on clean
    and on ambiguous samples, per-factor accuracy, and how well the model's own ambiguity score
    (:func:`workbench.analysis.ambiguity_score` of its logits over all classes) separates ambiguous from
    clean samples (AUROC) and ranks the true mixing weight among the ambiguous ones (Spearman).
    """
    from . import analysis, protocol

    features = torch.as_tensor(features).float().cpu()
    vectors = torch.as_tensor(class_vectors).float().cpu()
    out = protocol.evaluate_base_new(features, split.labels, vectors, base_classes, new_classes)
    logits = torch.as_tensor(logits).float().cpu()  # (N, C) over all classes, at the model's own scale
    correct = (logits.argmax(1).numpy() == np.asarray(split.labels))
    ambiguity = np.asarray(split.ambiguity)
    clean = ambiguity == 0
    out.update(acc_all=float(correct.mean()), acc_clean=float(correct[clean].mean()),
               acc_ambiguous=float(correct[~clean].mean()) if (~clean).any() else float("nan"))
    if class_factors is not None:
        out.update(factor_accuracy(logits, split.labels, class_factors))
    score = analysis.ambiguity_score(logits)
    if clean.any() and (~clean).any():
        out["ambiguity_auroc"] = analysis.ambiguity_agreement(score, ambiguity)["auroc_ambiguous"]
        out["ambiguity_spearman"] = analysis.ambiguity_agreement(score[~clean], ambiguity[~clean])["spearman"]
    return out


def regime(rows: dict[str, dict]) -> dict:
    """The ``"regime"`` object from described models.

    ``rows`` needs ``teacher`` and ``student_zs`` and may hold ``kd_transductive`` and ``kd_inductive``
    (each a :func:`describe` result). Every target of :data:`TARGETS` that can be computed gets its
    value, and ``met`` says which hold.
    """
    teacher, student = rows["teacher"], rows["student_zs"]
    out = {"teacher_hm": teacher["hm"], "teacher_clean_acc": teacher["acc_clean"], "student_zs_hm": student["hm"],
           "teacher_ambiguity_auroc": teacher.get("ambiguity_auroc"),
           "teacher_ambiguity_spearman": teacher.get("ambiguity_spearman")}
    for factor in ("colour", "shape"):
        if f"{factor}_acc" in student:
            out[f"student_zs_{factor}_acc"] = student[f"{factor}_acc"]
    if "kd_transductive" in rows:
        gap = teacher["hm"] - student["hm"]
        out["kd_transductive_hm"] = rows["kd_transductive"]["hm"]
        out["gap_closed_transductive"] = (rows["kd_transductive"]["hm"] - student["hm"]) / gap if gap > 0 else None
    if "kd_inductive" in rows:
        out["kd_inductive_hm"] = rows["kd_inductive"]["hm"]
        out["kd_inductive_base_gain"] = rows["kd_inductive"]["base_acc"] - student["base_acc"]
    out["met"] = {name: meets(name, out[name]) for name in TARGETS if out.get(name) is not None}
    return out


def meets(name: str, value: float) -> bool:
    """Whether ``value`` lies within the bounds of target ``name``."""
    low, high = TARGETS[name]
    return (low is None or value >= low) and (high is None or value <= high)


def describe_target(name: str) -> str:
    """``">= 0.92"`` or ``"0.30-0.55"``: target ``name`` in words."""
    low, high = TARGETS[name]
    if low is not None and high is not None:
        return f"{low:.2f}-{high:.2f}"
    return f">= {low:.2f}" if low is not None else f"<= {high:.2f}"


def domain_accuracy(models: dict, domains: dict, class_vectors, device=None, reference=None) -> dict[str, dict]:
    """Accuracy over all classes of each model on each test domain, and the mean over the domains.

    ``models`` maps a name to a CLIP model, ``domains`` a domain name to a split
    (:func:`workbench.world.build_domains`); ``reference`` (a split, e.g. the in-distribution test
    split) adds an ``in_distribution`` column that the average leaves out.
    """
    from .evaluation import predict

    table = {}
    for name, model in models.items():
        row = {}
        sets = ({"in_distribution": reference} if reference is not None else {}) | dict(domains)
        for domain, split in sets.items():
            _, logits = predict(model, split.images, class_vectors, device=device)
            row[domain] = float((logits.argmax(1).cpu().numpy() == np.asarray(split.labels)).mean())
        row["domain_average"] = float(np.mean([row[d] for d in domains])) if domains else float("nan")
        table[name] = row
    return table


def regime_table(summary: dict) -> str:
    """Markdown table of a regime object: value, target and whether it is met."""
    lines = ["| regime | value | target | met |", "|---|---:|---|---|"]
    for name, value in summary.items():
        if name == "met" or value is None:
            continue
        target = describe_target(name) if name in TARGETS else ""
        met = ("yes" if summary["met"][name] else "no") if name in summary.get("met", {}) else ""
        lines.append(f"| {name} | {value:.3f} | {target} | {met} |")
    return "\n".join(lines)


def vocabulary_accuracy(models: dict, spec, root, seed: int, num_samples: int, text_model, tokenizer,
                        device=None) -> dict[str, dict]:
    """Accuracy of each model on each other class vocabulary of ``spec`` (cross-dataset transfer).

    For every vocabulary (``spec.vocabularies``) the world renders ``num_samples`` test images of its classes
    (cached under ``root`` like any split) and every model is scored among that vocabulary's own class
    vectors, built with ``text_model``'s text tower (the locked tower every embedded model shares).
    Returns ``{model: {"vocabulary_<name>": accuracy}}``.
    """
    from . import world
    from .models import build_class_vectors

    table = {name: {} for name in models}
    for vocabulary in sorted(spec.vocabularies):
        other = spec.vocabulary(vocabulary)
        split = world.build_world(other, root, seed, {"test": num_samples})["test"]
        vectors = build_class_vectors(text_model, tokenizer, other.class_names, other.prompt_templates, device=device)
        column = f"vocabulary_{vocabulary}"
        for name, row in domain_accuracy(models, {column: split}, vectors, device=device).items():
            table[name][column] = row[column]
    return table
