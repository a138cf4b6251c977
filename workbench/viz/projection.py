"""One joint projection of image and class-text features (UMAP, PCA or t-SNE), fitted once and reused for
more points or more runs, and a stratified subsample for very large sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .style import _require


PROJECTION_METHODS = ("umap", "pca", "tsne")
TSNE_EXACT_MAX_POINTS = 1_000  # up to this many points t-SNE runs exactly (Barnes-Hut is slower on small, tight sets)
DEFAULT_MAX_POINTS = 20_000  # images drawn in one map; above it a stratified subsample (per class) is drawn


@dataclass
class Projection:
    """A fitted joint projection; :meth:`transform` places new points in the same map.

    Attributes
    ----------
    method : str
        ``"umap"``, ``"pca"`` or ``"tsne"``.
    reducer : estimator
        The fitted scikit-learn / UMAP estimator.
    image_mean, text_mean : np.ndarray (D,) or None
        Means of the L2-normalised image and text features the map was fitted on, used to centre
        new points the same way when the modality gap was closed (None otherwise).
    width : int
        Embedding width D the map was fitted on.
    fit_coords : np.ndarray (N + C, n_components)
        Coordinates of the fitted images, then class vectors.
    fit_points : np.ndarray or None
        For t-SNE only (which has no ``transform``): the prepared fitted points, from whose
        nearest neighbours new points are placed.
    """

    method: str
    reducer: object
    image_mean: np.ndarray | None
    text_mean: np.ndarray | None
    width: int
    fit_coords: np.ndarray
    fit_points: np.ndarray | None = None

    @property
    def n_components(self) -> int:
        return self.fit_coords.shape[1]

    def prepare(self, features, modality: str = "image") -> np.ndarray:
        """``features`` as the reducer sees them: float32, centred like the fitted modality."""
        if modality not in ("image", "text"):
            raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.width:
            raise ValueError(f"features must have shape (N, {self.width}); got {x.shape}")
        mean = self.image_mean if modality == "image" else self.text_mean
        return x if mean is None else _centre_on_sphere(x, mean)

    def transform(self, features, modality: str = "image", k: int = 10) -> np.ndarray:
        """Coordinates (N, n_components) of new image (or text) features in this map.

        PCA and UMAP use the reducer's own ``transform``; t-SNE places each point at the
        inverse-distance weighted mean of its ``k`` nearest fitted points (an identical point
        lands on its original coordinates).
        """
        x = self.prepare(features, modality)
        if self.method != "tsne":
            return np.asarray(self.reducer.transform(x))
        k = min(k, len(self.fit_points))
        d = np.sqrt(np.maximum(((x ** 2).sum(1)[:, None] + (self.fit_points ** 2).sum(1)[None]
                                - 2 * x @ self.fit_points.T), 0))
        near = np.argsort(d, axis=1)[:, :k]
        w = 1.0 / (np.take_along_axis(d, near, axis=1) + 1e-6)
        w /= w.sum(1, keepdims=True)
        return (w[..., None] * self.fit_coords[near]).sum(1)


def joint_projection(image_features, text_features, method: str = "umap", n_components: int = 2,
                     seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1, close_modality_gap: bool = True,
                     perplexity: float = 30.0):
    """Project image embeddings and class text vectors into one low-dimensional map.

    Both sets are fitted together (cosine metric for UMAP and t-SNE) so that distances between an
    image and a class vector are comparable in the map.

    Parameters
    ----------
    image_features : array (N, D)
    text_features : array (C, D)
    method : {"umap", "pca", "tsne"}, default "umap"
        t-SNE (scikit-learn; exact up to 1,000 points, Barnes-Hut above) is slow beyond ~10,000
        points and has no ``transform``; new points are then placed from their nearest
        neighbours (see :meth:`Projection.transform`).
    n_components : int, default 2
        2 or 3.
    seed : int, default 0
        Random state of the reducer (UMAP and t-SNE results depend on it).
    n_neighbors : int, default 15
        UMAP neighbourhood size; 5 to 50 is sensible. Clipped to the number of points - 1.
    min_dist : float, default 0.1
        UMAP minimum distance between embedded points, in [0, 1].
    close_modality_gap : bool, default True
        CLIP image and text embeddings occupy two separate cones (the modality gap), so a joint map
        otherwise draws all class vectors as one far-away clump. When true, each modality is centred
        on its own mean and renormalised before projection, which keeps the within-modality geometry
        and places each class vector among its images. The means are kept in the returned
        :class:`Projection`, so new points get the same treatment. The gap itself is reported by
        :func:`workbench.analysis.alignment_metrics`.
    perplexity : float, default 30
        t-SNE perplexity; 5 to 50 is sensible. Clipped below the number of points.

    Returns
    -------
    image_coords : array (N, n_components)
    text_coords : array (C, n_components)
    projection : Projection
        ``projection.transform(features)`` places new image features (e.g. a second checkpoint's)
        in the same map; ``projection.reducer`` is the fitted estimator.
    """
    if method not in PROJECTION_METHODS:
        raise ValueError(f"unknown projection method {method!r}; valid names: {', '.join(PROJECTION_METHODS)}")
    if n_components not in (2, 3):
        raise ValueError(f"n_components must be 2 or 3, got {n_components!r}")
    images = np.asarray(image_features, dtype=np.float32)
    texts = np.asarray(text_features, dtype=np.float32)
    if images.ndim != 2 or texts.ndim != 2 or images.shape[1] != texts.shape[1]:
        raise ValueError(f"image and text features must be 2-D with the same width; got {images.shape} and {texts.shape}")
    image_mean = text_mean = None
    if close_modality_gap:
        image_mean, text_mean = (_unit(x).mean(axis=0) for x in (images, texts))
        images, texts = _centre_on_sphere(images, image_mean), _centre_on_sphere(texts, text_mean)
    points = np.concatenate([images, texts])
    if method == "umap":
        umap = _require("umap", "UMAP projection")
        reducer = umap.UMAP(n_components=n_components, metric="cosine", random_state=seed,
                            n_neighbors=min(n_neighbors, len(points) - 1), min_dist=min_dist)
    elif method == "pca":
        from sklearn.decomposition import PCA
        reducer = PCA(n_components=n_components, random_state=seed)
    else:
        from sklearn.manifold import TSNE
        reducer = TSNE(n_components=n_components, metric="cosine", init="pca", random_state=seed,
                       perplexity=float(min(perplexity, max(1.0, (len(points) - 1) / 3))),
                       method="exact" if len(points) <= TSNE_EXACT_MAX_POINTS else "barnes_hut")
    coords = np.asarray(reducer.fit_transform(points))
    projection = Projection(method, reducer, image_mean, text_mean, points.shape[1], coords,
                            points if method == "tsne" else None)
    return coords[:len(images)], coords[len(images):], projection


def project_more(projection: Projection, image_features, text_features=None):
    """Place another checkpoint's image (and optionally text) features in an existing map.

    Returns ``image_coords`` or, with ``text_features``, ``(image_coords, text_coords)``.
    """
    images = projection.transform(image_features, "image")
    return images if text_features is None else (images, projection.transform(text_features, "text"))


FIT_ON = ("reference", "all")  # project_runs: fit the map on one run and place the others, or on every run at once


def project_runs(features: Mapping[str, tuple], reference: str | None = None, fit_on: str = "reference", **kwargs):
    """Put several runs (checkpoints) in one map.

    ``fit_on="reference"`` fits the map on ``reference`` and places the other runs in it, so the reference's
    map does not move when runs are added; ``fit_on="all"`` fits one map on every run's points together,
    so that no run is seen through a projection fitted on another (differences between the runs are then
    not an artefact of whose points the projection was fitted on).

    Parameters
    ----------
    features : mapping of run name to ``(image_features, text_features)``
        Embeddings of the same samples by each run, in the same embedding width.
    reference : str, optional
        Run the map is fitted on with ``fit_on="reference"``; default the first.
    fit_on : {"reference", "all"}, default "reference"
        Fit on the reference run alone, or on all runs together.
    **kwargs
        Passed to :func:`joint_projection` (``method``, ``seed`` …).

    Returns
    -------
    coords : dict of run name to ``(image_coords, text_coords)``
    projection : Projection
    """
    if not features:
        raise ValueError("features must name at least one run")
    reference = next(iter(features)) if reference is None else reference
    if reference not in features:
        raise ValueError(f"reference {reference!r} is not one of the runs: {', '.join(features)}")
    if fit_on not in FIT_ON:
        raise ValueError(f"fit_on must be one of {', '.join(FIT_ON)}; got {fit_on!r}")
    if fit_on == "all":
        images = [np.asarray(f[0]) for f in features.values()]
        texts = [np.asarray(f[1]) for f in features.values()]
        image_xy, text_xy, projection = joint_projection(np.concatenate(images), np.concatenate(texts), **kwargs)
        image_ends, text_ends = np.cumsum([len(x) for x in images]), np.cumsum([len(t) for t in texts])
        return {name: (image_xy[image_end - len(x):image_end], text_xy[text_end - len(t):text_end])
                for name, x, t, image_end, text_end in zip(features, images, texts, image_ends, text_ends)}, projection
    image_xy, text_xy, projection = joint_projection(*features[reference], **kwargs)
    coords = {}
    for name, (images, texts) in features.items():
        coords[name] = (image_xy, text_xy) if name == reference else project_more(projection, images, texts)
    return coords, projection


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _centre_on_sphere(x: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
    x = _unit(x)
    x = x - (x.mean(axis=0, keepdims=True) if mean is None else mean[None])
    return _unit(x).astype(np.float32)


def stratified_subsample(labels, max_points: int | None = DEFAULT_MAX_POINTS, seed: int = 0) -> np.ndarray:
    """Sorted row indices of at most ``max_points`` rows, drawn per class in proportion to its size.

    Every class keeps at least one row, and the result is deterministic for a seed. With
    ``max_points`` None or at least ``len(labels)``, every index is returned.

    Parameters
    ----------
    labels : array-like (N,)
        Class (or any stratum) of every row.
    max_points : int or None, default 20,000 (:data:`DEFAULT_MAX_POINTS`)
        At least the number of distinct labels.
    seed : int, default 0
    """
    labels = np.asarray(labels)
    n = len(labels)
    if max_points is None or n <= max_points:
        return np.arange(n)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if max_points < len(classes):
        raise ValueError(f"max_points ({max_points}) must be at least the number of classes ({len(classes)}) "
                         "so that every class keeps a point")
    share = max_points * counts / n
    quota = np.maximum(1, np.floor(share)).astype(np.int64)
    while quota.sum() > max_points:  # classes raised to 1 pushed the total over: take from the largest
        quota[np.argmax(quota)] -= 1
    for k in np.argsort(-(share - np.floor(share)), kind="stable"):  # hand out what rounding left
        if quota.sum() >= max_points:
            break
        quota[k] += quota[k] < counts[k]
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(inverse == k), q, replace=False) for k, q in enumerate(quota)]
    return np.sort(np.concatenate(chosen))
