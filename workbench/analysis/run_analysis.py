"""Analysis of a run directory: entropy trajectories from its log, all metrics for one model on one split,
and the tables and summaries written next to the run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .ambiguity import ambiguity_agreement
from .checks import _features
from .metrics import alignment_metrics, calibration_metrics, classification_metrics, knn_agreement
from .tables import compare_runs, per_sample_table, write_table


def entropy_trajectory(log_path: str | os.PathLike, key: str = "manifold_entropy") -> dict:
    """The manifold entropy H(M) over training, from a JSONL log of :func:`workbench.train.fit`.

    Parameters
    ----------
    log_path : str or path-like
        JSONL file, one JSON object per line with an integer ``"step"``; blank lines are skipped.
    key : str, default "manifold_entropy"
        Field to follow; records without it (e.g. plain KD) are skipped.

    Returns
    -------
    dict
        ``steps`` (np.ndarray of int64), ``values`` (np.ndarray of float64), ``final`` (last
        value, NaN if none), ``n`` and ``runs``. ``fit`` appends to its log, so a file can hold
        several runs; a step smaller than the one before starts a new run, and only the last run
        is returned (``runs`` counts them).
    """
    from ..runs import read_log_runs

    runs = read_log_runs(log_path)
    last = runs[-1] if runs else []
    steps = [int(r["step"]) for r in last if key in r]
    values = [float(r[key]) for r in last if key in r]
    steps, values = np.array(steps, dtype=np.int64), np.array(values, dtype=np.float64)
    return {"steps": steps, "values": values, "final": float(values[-1]) if len(values) else float("nan"),
            "n": len(values), "runs": len(runs)}



def term_push(log_path: str | os.PathLike, term: str = "ame") -> dict:
    """How hard one loss term pushed the student over a run, from the gradient diagnostics of its log.

    :func:`workbench.train.fit` logs, every few steps, the norm of the gradient each loss term alone sends
    to the student's trained parameters (``grad_norm/<term>``). At each such step the term's *share* is its
    norm divided by the sum of the other terms' norms (the sum bounds the norm of their combined gradient
    from above, so the share is, if anything, generous to ``term``).

    Returns
    -------
    dict
        ``steps`` and ``share`` (np.ndarray, one entry per diagnosed step where the others push at all);
        ``share_median``, ``share_max`` (NaN without diagnostics); ``entropy_first``, ``entropy_last``: H(M)
        at the first and last logged step (NaN when the run had no AME).
    """
    from ..runs import read_log_runs
    from ..train import GRAD_NORM_PREFIX

    runs = read_log_runs(log_path)
    last = runs[-1] if runs else []
    steps, shares = [], []
    own = GRAD_NORM_PREFIX + term
    summed = {GRAD_NORM_PREFIX + "total", GRAD_NORM_PREFIX + "clipped", own}
    for record in last:
        if own not in record:
            continue
        others = sum(float(v) for k, v in record.items() if k.startswith(GRAD_NORM_PREFIX) and k not in summed)
        if others > 0:
            steps.append(int(record["step"]))
            shares.append(float(record[own]) / others)
    share = np.array(shares, dtype=np.float64)
    entropy = [float(r["manifold_entropy"]) for r in last if "manifold_entropy" in r]  # as entropy_trajectory, one read
    nan = float("nan")
    return {"steps": np.array(steps, dtype=np.int64), "share": share,
            "share_median": float(np.median(share)) if len(share) else nan,
            "share_max": float(share.max()) if len(share) else nan,
            "entropy_first": float(entropy[0]) if len(entropy) else nan,
            "entropy_last": float(entropy[-1]) if len(entropy) else nan}

# ---------------------------------------------------------------- one call for one model on one split

def analyze_predictions(student_logits, labels, image_features, class_vectors, teacher_logits=None,
                        teacher_features=None, base_classes=None, new_classes=None, true_ambiguity=None,
                        class_names=None, true_partner=None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per-sample table and flat per-run metrics for one model's predictions on one labelled set.

    Combines :func:`per_sample_table`, :func:`classification_metrics`, :func:`calibration_metrics`,
    :func:`alignment_metrics` and, when given, :func:`knn_agreement` (teacher features) and
    :func:`ambiguity_agreement` (ground-truth ambiguity, e.g. the embedded world's). Metric names
    are prefixed by their family (``calibration/ece``, ``alignment/effective_rank`` …).
    ``true_partner`` (the class each sample was blended toward, -1 for clean ones) becomes the
    ``true_partner`` column (and ``true_partner_name`` with ``class_names``).
    """
    table = per_sample_table(student_logits, labels, teacher_logits=teacher_logits, class_names=class_names)
    metrics = dict(classification_metrics(student_logits, labels, base_classes, new_classes))
    metrics.update({f"calibration/{k}": v for k, v in calibration_metrics(student_logits, labels).items()})
    metrics.update({f"alignment/{k}": v for k, v in alignment_metrics(image_features, labels, class_vectors).items()})
    metrics["entropy/mean"] = float(np.mean(table["entropy"]))
    if teacher_features is not None and len(table["entropy"]) > 1:
        # k = 10 neighbours, or every other sample of a smaller set (a tiny transfer target)
        metrics["alignment/knn_agreement_teacher"] = knn_agreement(teacher_features, image_features,
                                                                   k=min(10, len(table["entropy"]) - 1))
    if true_ambiguity is not None:
        table["true_ambiguity"] = np.asarray(true_ambiguity, dtype=np.float64)
        agreement = ambiguity_agreement(table["ambiguity_score"], true_ambiguity)
        metrics.update({f"ambiguity/{k}": v for k, v in agreement.items()})
    if true_partner is not None:
        table["true_partner"] = np.asarray(true_partner, dtype=np.int64)
        if class_names is not None:
            names = np.asarray(list(class_names) + [""], dtype=object)  # -1 (clean) -> ""
            table["true_partner_name"] = names[table["true_partner"]]
    return table, metrics


# ---------------------------------------------------------------- run directories
def ame_sample_entropy(checkpoint_path: str | os.PathLike, image_features, class_vectors) -> np.ndarray | None:
    """Each image's entropy over the class vectors on the run's AME shared manifold, or None without AME.

    The AME projections are read from the training checkpoint (they are never part of the exported
    student); each image's projected row scores the projected class rows by scaled dot product and
    the entropy of their softmax is returned (nats, shape (N,)), as in AME's per-sample variant.
    """
    from ..losses import AMELoss

    path = Path(checkpoint_path)
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    ame_state = next((m for m in state["modules"] if "text_projection.0.weight" in m and "steps_done" in m), None)
    if ame_state is None:
        return None
    ame = AMELoss.from_state_dict(ame_state)
    with torch.no_grad():
        return ame.sample_entropy(_features(image_features, "image_features").float(),
                                  _features(class_vectors, "class_vectors").float()).numpy().astype(np.float64)


def analyze_run(run_dir: str | os.PathLike, write: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """Per-sample table and per-run metrics of a finished run, rebuilt from its directory alone.

    Reads ``embeddings.npz`` (test-set student and teacher embeddings and logits, class vectors,
    labels, base/new classes, ground-truth ambiguity when known), ``train.jsonl`` (the H(M)
    trajectory) and, when the run trained with AME, the AME projections in ``checkpoint.pt`` (each
    sample's entropy on the shared manifold). Works on the run directory of ``python -m workbench
    train`` and on a pipeline step's directory. With ``write``, the table goes to
    ``analysis_samples.csv`` and the metrics to ``analysis.json`` next to the embeddings.

    Returns ``(table, metrics)``: metrics as in :func:`analyze_predictions` plus
    ``manifold_entropy/final`` and ``manifold_entropy/steps`` when the log has H(M), and
    ``ame/sample_entropy_mean`` when the checkpoint has AME.
    """
    from ..runs import RunDir

    run = RunDir.find(run_dir, needs="embeddings")
    with np.load(run.embeddings, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    for key in ("image_features", "text_features", "logits", "labels"):
        if key not in arrays:
            raise ValueError(f"{run.embeddings} lacks {key!r}; expected image_features, text_features, "
                             f"logits and labels")
    class_names = [str(c) for c in arrays["class_names"]] if "class_names" in arrays else None
    table, metrics = analyze_predictions(
        arrays["logits"], arrays["labels"], arrays["image_features"], arrays["text_features"],
        teacher_logits=arrays.get("teacher_logits"), teacher_features=arrays.get("teacher_features"),
        base_classes=arrays.get("base_classes"), new_classes=arrays.get("new_classes"),
        true_ambiguity=arrays.get("true_ambiguity"), class_names=class_names, true_partner=arrays.get("true_partner"))
    sample_entropy = ame_sample_entropy(run.checkpoint, arrays["image_features"], arrays["text_features"])
    if sample_entropy is not None:
        table["ame_sample_entropy"] = sample_entropy
        metrics["ame/sample_entropy_mean"] = float(sample_entropy.mean())
    if run.has("log"):
        trajectory = entropy_trajectory(run.log)
        if trajectory["n"]:
            metrics["manifold_entropy/first"] = float(trajectory["values"][0])
            metrics["manifold_entropy/final"] = trajectory["final"]
            metrics["manifold_entropy/steps"] = float(trajectory["n"])
    if write:
        write_table(table, run.analysis_samples)  # never replaces the run's own samples.csv
        run.write("analysis", metrics)
    return table, metrics


def compare_run_dirs(run_a: str | os.PathLike, run_b: str | os.PathLike) -> dict:
    """:func:`compare_runs` of two run directories' test samples, plus each run's headline metrics.

    The samples that flipped are given by row (test image index) with their labels and both
    predictions, so a notebook can show them.
    """
    table_a, metrics_a = analyze_run(run_a, write=False)
    table_b, metrics_b = analyze_run(run_b, write=False)
    comparison = compare_runs(table_a, table_b)
    for name, metrics in (("a", metrics_a), ("b", metrics_b)):
        for key in ("base_acc", "new_acc", "hm", "calibration/ece", "alignment/effective_rank"):
            if key in metrics:
                comparison[f"{key}_{name}"] = metrics[key]
    comparison["flipped"] = {
        direction: {"row": rows, "label": np.asarray(table_a["label"])[rows],
                    "predicted_a": np.asarray(table_a["predicted"])[rows],
                    "predicted_b": np.asarray(table_b["predicted"])[rows]}
        for direction, rows in (("wrong_to_right", comparison["wrong_to_right_indices"]),
                                ("right_to_wrong", comparison["right_to_wrong_indices"]))}
    return comparison
