"""The base-to-new evaluation protocol of the field (CoOp / CoCoOp / PromptKD).

Classes ``0..C-1`` are split into base (the first half, rounded up) and new (the rest); a model
trained on a few shots of the base classes is scored on base and new classes separately, each
time choosing only among that subset's class vectors, and the two accuracies are summarised by
their harmonic mean. Functions accept numpy arrays or torch tensors.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def base_new_split(num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Split labels ``0..num_classes-1`` into base (first ``ceil(C/2)``) and new (the rest).

    Parameters
    ----------
    num_classes : int
        Number of classes C; >= 2 so that both halves are non-empty.

    Returns
    -------
    base, new : np.ndarray of int64
        Sorted class labels.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be an int, got {num_classes!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 to split into base and new, got {num_classes}")
    n_base = math.ceil(num_classes / 2)
    return np.arange(n_base, dtype=np.int64), np.arange(n_base, num_classes, dtype=np.int64)


def few_shot_indices(labels, shots: int, seed: int, classes=None, exclude=None, class_names=None) -> np.ndarray:
    """Pick ``shots`` sample indices per class, without replacement, deterministically.

    Each class draws from its own generator seeded by ``(seed, class)``, so the samples chosen
    for a class do not depend on which other classes are requested: the few-shot set of the
    base classes is exactly the full few-shot set restricted to them.

    Parameters
    ----------
    labels : array-like of int, shape (N,)
        Non-negative class label of every sample.
    shots : int
        Samples per class K; > 0 and at most the size of the smallest requested class.
    seed : int
        Non-negative random seed.
    classes : array-like of int, optional
        Classes to sample from; default all classes present in ``labels``.
    exclude : array-like of int, optional
        Sample indices that may not be drawn (e.g. the training shots, when drawing a validation set).
    class_names : sequence of str, optional
        Names by label, for the message when a class is too small.

    Returns
    -------
    np.ndarray of int64, shape (K * n_classes,)
        Sorted indices into ``labels``.
    """
    labels = _as_numpy(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots <= 0:
        raise ValueError(f"shots must be a positive int, got {shots!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    classes = np.unique(labels) if classes is None else np.unique(_as_numpy(classes))
    allowed = np.ones(len(labels), dtype=bool)
    if exclude is not None:
        allowed[_as_numpy(exclude).astype(np.int64)] = False
    chosen = []
    for c in classes.tolist():
        if c < 0:
            raise ValueError(f"class labels must be non-negative, got {c}")
        members = np.flatnonzero((labels == c) & allowed)
        if len(members) < shots:
            named = f" ({class_names[c]!r})" if class_names is not None and c < len(class_names) else ""
            raise ValueError(
                f"class {c}{named} has only {len(members)} samples{' left' if exclude is not None else ''}, "
                f"fewer than shots={shots}"
            )
        rng = np.random.default_rng([int(seed), int(c)])
        chosen.append(rng.choice(members, size=shots, replace=False))
    if not chosen:
        return np.empty(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def harmonic_mean(base: float, new: float) -> float:
    """Harmonic mean ``2 * B * N / (B + N)`` of base and new accuracy; 0 when both are 0."""
    if base < 0 or new < 0:
        raise ValueError(f"accuracies must be >= 0, got base={base!r}, new={new!r}")
    total = base + new
    return 0.0 if total == 0 else float(2 * base * new / total)


def accuracy(logits, labels) -> float:
    """Fraction of rows of ``logits`` (N, C) whose argmax equals ``labels`` (N,)."""
    logits, labels = _as_numpy(logits), _as_numpy(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(
            f"logits must be (N, C) and labels (N,); got {logits.shape} and {labels.shape}"
        )
    if logits.shape[0] == 0:
        raise ValueError("accuracy of an empty batch is undefined")
    return float(np.mean(logits.argmax(axis=1) == labels))


def subset_accuracy(logits, labels, subset, name: str = "subset") -> float:
    """Accuracy on the samples labelled in ``subset``, predicting among the subset's classes only.

    The base-to-new protocol's base and new accuracies: ``logits`` (N, C) over all classes, ``labels``
    (N,), ``subset`` the class labels of one side; ``name`` names the side in errors.
    """
    logits = torch.as_tensor(logits)
    labels = torch.as_tensor(_as_numpy(labels)).long().to(logits.device)
    subset = torch.as_tensor(np.unique(_as_numpy(subset)), dtype=torch.long, device=logits.device)
    c = logits.shape[1]
    if subset.dim() != 1 or subset.numel() == 0 or int(subset.min()) < 0 or int(subset.max()) >= c:
        raise ValueError(f"{name}_classes must be a non-empty list of labels in 0..{c - 1}; got {subset.tolist()}")
    mask = torch.isin(labels, subset)
    if not bool(mask.any()):
        raise ValueError(f"no samples have a label among the {name} classes")
    predicted = subset[logits[mask][:, subset].argmax(dim=1)]  # the subset's columns only
    return float((predicted == labels[mask]).double().mean())


@torch.no_grad()
def evaluate_base_new(image_features, labels, class_vectors, base_classes,
                      new_classes) -> dict[str, float]:
    """Base and new accuracy, each predicting among that subset's class vectors only.

    Parameters
    ----------
    image_features : tensor or array, shape (N, D)
        Image embeddings; L2-normalized here.
    labels : tensor or array of int, shape (N,)
        True class of every sample, in ``0..C-1``.
    class_vectors : tensor or array, shape (C, D)
        One classifier vector per class (e.g. text embeddings); L2-normalized here.
    base_classes, new_classes : array-like of int
        Class labels of each subset, e.g. from :func:`base_new_split`.

    Returns
    -------
    dict
        ``{"base_acc", "new_acc", "hm"}`` as fractions in [0, 1]. ``base_acc`` is measured on
        samples whose label is a base class, predicting by argmax of cosine similarity over the
        base class vectors only; likewise ``new_acc``; ``hm`` is their harmonic mean.
    """
    features = torch.as_tensor(image_features)
    vectors = torch.as_tensor(class_vectors)
    labels = torch.as_tensor(labels).long().to(features.device)
    if features.dim() != 2 or vectors.dim() != 2 or features.shape[1] != vectors.shape[1]:
        raise ValueError(
            f"image_features must be (N, D) and class_vectors (C, D); got "
            f"{tuple(features.shape)} and {tuple(vectors.shape)}"
        )
    if labels.shape != (features.shape[0],):
        raise ValueError(
            f"labels must have shape ({features.shape[0]},), got {tuple(labels.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(features.dtype, vectors.dtype), torch.float32)
    features = F.normalize(features.to(dtype), dim=1)
    vectors = F.normalize(vectors.to(device=features.device, dtype=dtype), dim=1)
    logits = features @ vectors.T  # cosine similarity to every class vector
    accs = {f"{name}_acc": subset_accuracy(logits, labels, subset, name)
            for name, subset in (("base", base_classes), ("new", new_classes))}
    accs["hm"] = harmonic_mean(accs["base_acc"], accs["new_acc"])
    return accs
