"""Figures of the shared image-text space.

Plot functions take the data first and return a Plotly figure; :func:`save_html` writes it as one
self-contained file with plotly.js inlined, because the workbench is used offline.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

PROJECTION_METHODS = ("umap", "pca")


def _require(module: str, purpose: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{purpose} needs the package {module!r}; install the workbench with its "
                          "dependencies (pip install -e .)") from err


def joint_projection(image_features, text_features, method: str = "umap", n_components: int = 2,
                     seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1, close_modality_gap: bool = True):
    """Project image embeddings and class text vectors into one low-dimensional map.

    Both sets are fitted together (cosine metric for UMAP) so that distances between an image and a
    class vector are comparable in the map.

    Parameters
    ----------
    image_features : array (N, D)
    text_features : array (C, D)
    method : {"umap", "pca"}, default "umap"
    n_components : int, default 2
        2 or 3.
    seed : int, default 0
        Random state of the reducer (UMAP results depend on it).
    n_neighbors : int, default 15
        UMAP neighbourhood size; 5 to 50 is sensible. Clipped to the number of points - 1.
    min_dist : float, default 0.1
        UMAP minimum distance between embedded points, in [0, 1].
    close_modality_gap : bool, default True
        CLIP image and text embeddings occupy two separate cones (the modality gap), so a joint map
        otherwise draws all class vectors as one far-away clump. When true, each modality is centred
        on its own mean and renormalised before projection, which keeps the within-modality geometry
        and places each class vector among its images. The gap itself is reported by
        :func:`workbench.analysis.alignment_metrics`.

    Returns
    -------
    image_coords : array (N, n_components)
    text_coords : array (C, n_components)
    reducer : fitted estimator, reusable with ``reducer.transform`` to place new points.
    """
    if method not in PROJECTION_METHODS:
        raise ValueError(f"unknown projection method {method!r}; valid names: {', '.join(PROJECTION_METHODS)}")
    if n_components not in (2, 3):
        raise ValueError(f"n_components must be 2 or 3, got {n_components!r}")
    images = np.asarray(image_features, dtype=np.float32)
    texts = np.asarray(text_features, dtype=np.float32)
    if images.ndim != 2 or texts.ndim != 2 or images.shape[1] != texts.shape[1]:
        raise ValueError(f"image and text features must be 2-D with the same width; got {images.shape} and {texts.shape}")
    if close_modality_gap:
        images, texts = (_centre_on_sphere(x) for x in (images, texts))
    points = np.concatenate([images, texts])
    if method == "umap":
        umap = _require("umap", "UMAP projection")
        reducer = umap.UMAP(n_components=n_components, metric="cosine", random_state=seed,
                            n_neighbors=min(n_neighbors, len(points) - 1), min_dist=min_dist)
    else:
        from sklearn.decomposition import PCA
        reducer = PCA(n_components=n_components, random_state=seed)
    coords = reducer.fit_transform(points)
    return coords[:len(images)], coords[len(images):], reducer


def _centre_on_sphere(x: np.ndarray) -> np.ndarray:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    x = x - x.mean(axis=0, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def manifold_figure(image_coords, text_coords, labels, class_names: Sequence[str], base_classes=None,
                    hover: Sequence[str] | None = None, title: str = "Shared image-text space",
                    class_colours: Sequence[str] | None = None):
    """Scatter of images (coloured by class) with class text vectors as labelled stars.

    Images of base classes are circles and of new classes diamonds when ``base_classes`` is given.
    ``class_colours`` (CSS colours, one per class) replaces the default categorical palette, e.g.
    the embedded world's own colours (:meth:`workbench.world.WorldSpec.class_colours`).
    Uses WebGL (``Scattergl``) so that tens of thousands of points stay interactive.
    """
    go = _require("plotly.graph_objects", "plotting")
    import plotly.express as px

    labels = np.asarray(labels)
    palette = px.colors.qualitative.Dark24 + px.colors.qualitative.Light24
    colours = list(class_colours) if class_colours is not None else [palette[i % len(palette)]
                                                                      for i in range(len(class_names))]
    if len(colours) != len(class_names):
        raise ValueError(f"class_colours has {len(colours)} entries for {len(class_names)} classes")
    base = set(np.asarray(base_classes).tolist()) if base_classes is not None else set(range(len(class_names)))
    fig = go.Figure()
    for group, symbol in (("base", "circle"), ("new", "diamond")):
        chosen = np.array([(label in base) == (group == "base") for label in labels], dtype=bool)
        if not chosen.any():
            continue
        text = [f"{class_names[label]} ({group})" + (f"<br>{hover[i]}" if hover is not None else "")
                for i, label in zip(np.flatnonzero(chosen), labels[chosen])]
        fig.add_trace(go.Scattergl(
            x=image_coords[chosen, 0], y=image_coords[chosen, 1], mode="markers", name=f"images: {group} classes",
            marker=dict(size=5, symbol=symbol, color=[colours[label] for label in labels[chosen]], opacity=0.7),
            text=text, hoverinfo="text"))
    fig.add_trace(go.Scatter(
        x=text_coords[:, 0], y=text_coords[:, 1], mode="markers+text", name="class text vectors",
        marker=dict(size=14, symbol="star", color=colours, line=dict(width=1, color="black")),
        text=list(class_names), textposition="top center", textfont=dict(size=9), hoverinfo="text"))
    fig.update_layout(title=title, template="plotly_white", width=900, height=700,
                      xaxis=dict(showticklabels=False, title=""), yaxis=dict(showticklabels=False, title=""))
    return fig


def save_html(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a standalone HTML page with plotly.js inlined (works without a network)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.write_html(str(tmp), include_plotlyjs=True, full_html=True)
    os.replace(tmp, path)
    return path
