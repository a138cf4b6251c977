"""Figures of the shared image-text space, of calibration and of training.

Plot functions take the data first and return a Plotly figure; nothing is shown or written unless
asked. :func:`save_html` writes a figure as one self-contained file with plotly.js inlined, because
the workbench is used offline; :func:`save_png` writes a PNG when kaleido (>= 1) and a Chromium are
installed. Plotly, UMAP and Pillow are imported when a function needs them, with a readable
``ImportError`` otherwise (the style of ``umap.plot``).

Groups of functions:

- projection: :func:`joint_projection` (UMAP, PCA or t-SNE) returning a :class:`Projection` that
  places new points (a second checkpoint) in the same map, :func:`project_more`,
  :func:`project_runs`, :func:`stratified_subsample`;
- the map: :func:`projection_figure` (colour by class, split, correctness, entropy, margin,
  ambiguity, teacher-student KL …; see :data:`COLOUR_BY`), :func:`drawn_indices`,
  :func:`comparison_figure` (two or more runs side by side or animated), and the simpler
  :func:`manifold_figure`;
- samples: :func:`thumbnail_uri`, :func:`ambiguity_gallery`;
- calibration and training: :func:`reliability_diagram`, :func:`entropy_histograms`,
  :func:`training_curves`;
- files: :func:`save_html`, :func:`save_png`.

Tables are the columnar per-sample tables of :func:`workbench.analysis.per_sample_table` (row ``i``
describes image ``i``).
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import math
import os
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

PROJECTION_METHODS = ("umap", "pca", "tsne")
TSNE_EXACT_MAX_POINTS = 1_000  # up to this many points t-SNE runs exactly (Barnes-Hut is slower on small, tight sets)
DEFAULT_MAX_POINTS = 20_000  # images drawn in one map; above it a stratified subsample (per class) is drawn

# colour-by name -> (table column, colour scale or "categorical"); "split" is derived from labels
COLOUR_BY = {
    "class": ("label", "categorical"),
    "prediction": ("predicted", "categorical"),
    "split": ("label", "categorical"),
    "correctness": ("correct", "categorical"),
    "entropy": ("entropy", "Viridis"),
    "margin": ("margin", "Viridis"),
    "ambiguity": ("ambiguity_score", "Inferno"),
    "teacher_kl": ("kl_teacher_student", "Plasma"),
    "true_ambiguity": ("true_ambiguity", "Inferno"),
}
SPLIT_COLOURS = {"base": "#1f77b4", "new": "#ff7f0e"}
CORRECTNESS_COLOURS = {"correct": "#2ca02c", "wrong": "#d62728"}


def _require(module: str, purpose: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{purpose} needs the package {module!r}; install the workbench with its "
                          "dependencies (pip install -e .)") from err


def _palette() -> list[str]:
    px = _require("plotly.express", "plotting")
    return px.colors.qualitative.Dark24 + px.colors.qualitative.Light24


# ----------------------------------------------------------------------------- projection
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


def project_runs(features: Mapping[str, tuple], reference: str | None = None, **kwargs):
    """Put several runs (checkpoints) in one map: fit on ``reference``, place the others in it.

    Parameters
    ----------
    features : mapping of run name to ``(image_features, text_features)``
        Embeddings of the same samples by each run, in the same embedding width.
    reference : str, optional
        Run the map is fitted on; default the first.
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


# ----------------------------------------------------------------------------- the map
def colour_options(table: Mapping, base_classes=None) -> list[str]:
    """The :data:`COLOUR_BY` names that ``table`` (and ``base_classes``) can colour a map by."""
    names = []
    for name, (column, _) in COLOUR_BY.items():
        if column in table and (name != "split" or base_classes is not None):
            names.append(name)
    return names


def _class_colours(class_names: Sequence[str], class_colours: Sequence[str] | None) -> list[str]:
    if class_colours is None:
        palette = _palette()
        return [palette[i % len(palette)] for i in range(len(class_names))]
    colours = list(class_colours)
    if len(colours) != len(class_names):
        raise ValueError(f"class_colours has {len(colours)} entries for {len(class_names)} classes")
    return colours


def colouring(table: Mapping, colour_by: str, class_names: Sequence[str], base_classes=None,
              class_colours: Sequence[str] | None = None, crange: tuple[float, float] | None = None) -> dict:
    """How to colour every row of ``table`` by ``colour_by`` (a :data:`COLOUR_BY` name or a numeric column).

    Returns
    -------
    dict
        ``kind`` ("categorical" or "numeric"); ``values`` (np.ndarray, one entry per row: a CSS colour,
        or the number); ``title``; for categorical ``legend`` (list of (label, colour)); for numeric
        ``colorscale``, ``cmin``, ``cmax`` (``crange`` or a natural range: entropy ``[0, log C]``,
        margin and ambiguity ``[0, 1]``, otherwise the data's).
    """
    column, scale = COLOUR_BY.get(colour_by, (colour_by, "Viridis"))
    if column not in table:
        valid = ", ".join(colour_options(table, base_classes))
        raise ValueError(f"cannot colour by {colour_by!r}: the table has no column {column!r}; "
                         f"valid choices for this table: {valid}")
    values = np.asarray(table[column])
    if colour_by == "split":
        if base_classes is None:
            raise ValueError("colouring by split needs base_classes")
        is_base = np.isin(values, np.asarray(base_classes))
        return {"kind": "categorical", "title": "split", "legend": list(SPLIT_COLOURS.items()),
                "values": np.where(is_base, SPLIT_COLOURS["base"], SPLIT_COLOURS["new"]).astype(object)}
    if colour_by == "correctness":
        correct = values.astype(bool)
        return {"kind": "categorical", "title": "correctness", "legend": list(CORRECTNESS_COLOURS.items()),
                "values": np.where(correct, CORRECTNESS_COLOURS["correct"], CORRECTNESS_COLOURS["wrong"]).astype(object)}
    if scale == "categorical":
        colours = np.asarray(_class_colours(class_names, class_colours), dtype=object)
        return {"kind": "categorical", "title": colour_by, "values": colours[values.astype(np.int64)],
                "legend": list(zip(class_names, colours.tolist()))}
    if values.dtype.kind not in "biuf":
        raise ValueError(f"cannot colour by {colour_by!r}: column {column!r} is not numeric")
    values = values.astype(np.float64)
    if crange is None:
        natural = {"entropy": (0.0, math.log(max(len(class_names), 2))), "margin": (0.0, 1.0),
                   "ambiguity": (0.0, 1.0)}
        crange = natural.get(colour_by, (float(np.nanmin(values)), float(np.nanmax(values))))
    return {"kind": "numeric", "title": colour_by.replace("_", " "), "values": values, "colorscale": scale,
            "cmin": float(crange[0]), "cmax": float(crange[1])}


def _marker(colours: dict, rows: np.ndarray, size: int = 5, symbols=None, show_scale: bool = True) -> dict:
    marker = {"size": size, "opacity": 0.75, "color": colours["values"][rows].tolist()
              if colours["kind"] == "categorical" else colours["values"][rows]}
    if colours["kind"] == "numeric":
        marker.update(colorscale=colours["colorscale"], cmin=colours["cmin"], cmax=colours["cmax"],
                      showscale=show_scale, colorbar={"title": {"text": colours["title"]}, "thickness": 12})
    else:
        marker.update(showscale=False)
    if symbols is not None:
        marker["symbol"] = symbols
    return marker


def hover_texts(table: Mapping, rows, class_names: Sequence[str]) -> list[str]:
    """Hover text of each row: sample id, class, prediction (probability), entropy, margin."""
    names = np.asarray(list(class_names), dtype=object)
    ids = np.asarray(table.get("sample_id", np.arange(len(table["label"]))))
    texts = []
    for i in rows:
        parts = [f"#{ids[i]} class: {names[table['label'][i]]}"]
        if "predicted" in table:
            p = f" (p={table['max_prob'][i]:.2f})" if "max_prob" in table else ""
            parts.append(f"predicted: {names[table['predicted'][i]]}{p}")
        for key, title in (("entropy", "entropy"), ("margin", "margin"), ("ambiguity_score", "ambiguity"),
                           ("kl_teacher_student", "KL(teacher‖student)")):
            if key in table:
                parts.append(f"{title}: {float(table[key][i]):.3f}")
        texts.append("<br>".join(parts))
    return texts


def _point_symbols(labels, base_classes=None, class_symbols=None) -> list[str] | None:
    """Marker symbol per point: its class's own symbol (open for new classes), or circle/diamond for base/new."""
    labels = np.asarray(labels)
    is_base = np.ones(len(labels), bool) if base_classes is None else np.isin(labels, np.asarray(base_classes))
    if class_symbols is not None:
        return [class_symbols[label] + ("" if base else "-open") for label, base in zip(labels, is_base)]
    return None if base_classes is None else np.where(is_base, "circle", "diamond").tolist()


def image_trace(image_coords, table: Mapping, class_names: Sequence[str], colour_by: str = "class", rows=None,
                base_classes=None, class_colours=None, crange=None, show_scale: bool = True, name: str = "images",
                class_symbols: Sequence[str] | None = None):
    """The WebGL scatter of the images ``rows`` (default all), coloured by ``colour_by``.

    ``customdata`` holds each point's row in ``table``, so a click or :func:`drawn_indices` maps
    points back to samples. Images of new classes are diamonds when ``base_classes`` is given; with
    ``class_symbols`` (one Plotly symbol per class) each image has its class's symbol, open for new
    classes (2-D maps only: a 3-D scatter knows few symbols).
    """
    go = _require("plotly.graph_objects", "plotting")
    coords = np.asarray(image_coords)
    rows = np.arange(len(coords)) if rows is None else np.asarray(rows, dtype=np.int64)
    colours = colouring(table, colour_by, class_names, base_classes, class_colours, crange)
    if class_symbols is not None and len(class_symbols) != len(class_names):
        raise ValueError(f"class_symbols has {len(class_symbols)} entries for {len(class_names)} classes")
    symbols = _point_symbols(np.asarray(table["label"])[rows], base_classes,
                             class_symbols if coords.shape[1] == 2 else None)
    props = dict(mode="markers", name=name, customdata=rows, text=hover_texts(table, rows, class_names),
                 hoverinfo="text", marker=_marker(colours, rows, symbols=symbols, show_scale=show_scale),
                 showlegend=False)
    if coords.shape[1] == 3:
        props["marker"]["size"] = 3
        return go.Scatter3d(x=coords[rows, 0], y=coords[rows, 1], z=coords[rows, 2], **props)
    return go.Scattergl(x=coords[rows, 0], y=coords[rows, 1], **props)


def text_trace(text_coords, class_names: Sequence[str], class_colours=None, name: str = "class text vectors",
               class_symbols: Sequence[str] | None = None):
    """Class text vectors as labelled stars, or each as its class's symbol (``class_symbols``)."""
    go = _require("plotly.graph_objects", "plotting")
    coords = np.asarray(text_coords)
    props = dict(mode="markers+text", name=name, text=list(class_names), textposition="top center",
                 textfont={"size": 9}, hoverinfo="text",
                 marker={"size": 14, "symbol": "star" if class_symbols is None else list(class_symbols),
                         "color": _class_colours(class_names, class_colours), "line": {"width": 1, "color": "black"}})
    if coords.shape[1] == 3:
        props["marker"].update(size=6, symbol="diamond")
        return go.Scatter3d(x=coords[:, 0], y=coords[:, 1], z=coords[:, 2], **props)
    return go.Scatter(x=coords[:, 0], y=coords[:, 1], **props)


def _legend_traces(colours: dict, max_entries: int = 30) -> list:
    """Empty traces that only label the categorical colours in the legend."""
    go = _require("plotly.graph_objects", "plotting")
    if colours["kind"] != "categorical" or len(colours["legend"]) > max_entries:
        return []
    return [go.Scatter(x=[None], y=[None], mode="markers", name=str(label), legendgroup="colour",
                       legendgrouptitle={"text": colours["title"]}, marker={"size": 8, "color": colour})
            for label, colour in colours["legend"]]


def _visible_rows(table: Mapping, mask, max_points, seed) -> np.ndarray:
    labels = np.asarray(table["label"])
    rows = np.arange(len(labels)) if mask is None else np.flatnonzero(np.asarray(mask, dtype=bool))
    return rows[stratified_subsample(labels[rows], max_points, seed)]


def _check_rows(coords, table: Mapping, what: str = "image_coords") -> None:
    if "label" not in table:
        raise ValueError("table needs a 'label' column (see workbench.analysis.per_sample_table)")
    if len(np.asarray(coords)) != len(np.asarray(table["label"])):
        raise ValueError(f"{what} has {len(coords)} rows but the table has {len(table['label'])}; "
                         "row i of the table must describe image i")


_LEGEND_BELOW = {"orientation": "h", "yanchor": "top", "y": -0.02, "xanchor": "left", "x": 0}


def _hide_axes(fig) -> None:
    fig.update_xaxes(showticklabels=False, title="", zeroline=False)
    fig.update_yaxes(showticklabels=False, title="", zeroline=False)


def projection_figure(image_coords, text_coords, table: Mapping, class_names: Sequence[str],
                      colour_by: str = "class", base_classes=None, class_colours=None, mask=None,
                      max_points: int | None = DEFAULT_MAX_POINTS, seed: int = 0,
                      title: str = "Shared image-text space", class_symbols: Sequence[str] | None = None):
    """Map of images and class text vectors, the images coloured by a per-sample quantity.

    Parameters
    ----------
    image_coords : array (N, 2 or 3)
        From :func:`joint_projection`; row ``i`` is the sample of table row ``i``.
    text_coords : array (C, 2 or 3)
    table : dict of str to array (N,)
        Per-sample table (:func:`workbench.analysis.per_sample_table`), at least ``label``.
    class_names : sequence of str (C,)
    colour_by : str, default "class"
        A :data:`COLOUR_BY` name (class, prediction, split, correctness, entropy, margin, ambiguity,
        teacher_kl, true_ambiguity) or any numeric column; numeric ones get a continuous colour scale.
    base_classes : array-like of int, optional
        Marks new-class images as diamonds; needed for ``colour_by="split"``.
    class_colours : sequence of CSS colours (C,), optional
    mask : bool array (N,), optional
        Only these rows are drawn.
    max_points : int or None, default 20,000
        Above it a per-class stratified subsample (:func:`stratified_subsample`) is drawn;
        :func:`drawn_indices` gives the rows that were.
    seed : int, default 0
        Seed of the subsample.

    Returns
    -------
    plotly.graph_objects.Figure
        Traces: ``images`` (``Scattergl``, or ``Scatter3d`` for 3-D coordinates), ``class text
        vectors``, then legend entries of a categorical colouring.
    """
    go = _require("plotly.graph_objects", "plotting")
    _check_rows(image_coords, table)
    rows = _visible_rows(table, mask, max_points, seed)
    trace = image_trace(image_coords, table, class_names, colour_by, rows, base_classes, class_colours,
                        class_symbols=class_symbols)
    fig = go.Figure([trace, text_trace(text_coords, class_names, class_colours, class_symbols=class_symbols)])
    if np.asarray(image_coords).shape[1] == 2:
        fig.add_traces(_legend_traces(colouring(table, colour_by, class_names, base_classes, class_colours)))
        _hide_axes(fig)
    fig.update_layout(title=title, template="plotly_white", width=900, height=700, legend=_LEGEND_BELOW)
    return fig


def drawn_indices(fig, trace: str = "images") -> np.ndarray:
    """Table rows drawn by the image trace(s) named ``trace`` of a map figure (first one found)."""
    for t in fig.data:
        if t.name == trace:
            return np.asarray(t.customdata, dtype=np.int64)
    raise ValueError(f"the figure has no trace named {trace!r}")


def manifold_figure(image_coords, text_coords, labels, class_names: Sequence[str], base_classes=None,
                    hover: Sequence[str] | None = None, title: str = "Shared image-text space",
                    class_colours: Sequence[str] | None = None, class_symbols: Sequence[str] | None = None):
    """Scatter of images (coloured by class) with class text vectors as labelled stars.

    Images of base classes are circles and of new classes diamonds when ``base_classes`` is given.
    ``class_colours`` (CSS colours, one per class) replaces the default categorical palette, e.g.
    the embedded world's own colours (:meth:`workbench.world.WorldSpec.class_colours`).
    ``class_symbols`` (Plotly marker symbols, one per class, e.g.
    :meth:`workbench.world.WorldSpec.class_symbols`) draws each image and class vector with its class's
    own symbol instead; base-class images are then filled and new-class images open.
    Uses WebGL (``Scattergl``) so that tens of thousands of points stay interactive. For colouring
    by other quantities, subsampling and click-to-sample, see :func:`projection_figure`.
    """
    go = _require("plotly.graph_objects", "plotting")

    labels = np.asarray(labels)
    colours = _class_colours(class_names, class_colours)
    base = set(np.asarray(base_classes).tolist()) if base_classes is not None else set(range(len(class_names)))
    fig = go.Figure()
    if class_symbols is not None and len(class_symbols) != len(class_names):
        raise ValueError(f"class_symbols has {len(class_symbols)} entries for {len(class_names)} classes")
    for group, symbol in (("base", "circle"), ("new", "diamond")):
        chosen = np.array([(label in base) == (group == "base") for label in labels], dtype=bool)
        if not chosen.any():
            continue
        if class_symbols is not None:
            symbol = [class_symbols[label] + ("" if group == "base" else "-open") for label in labels[chosen]]
        text = [f"{class_names[label]} ({group})" + (f"<br>{hover[i]}" if hover is not None else "")
                for i, label in zip(np.flatnonzero(chosen), labels[chosen])]
        fig.add_trace(go.Scattergl(
            x=image_coords[chosen, 0], y=image_coords[chosen, 1], mode="markers", name=f"images: {group} classes",
            marker=dict(size=5, symbol=symbol, color=[colours[label] for label in labels[chosen]], opacity=0.7),
            text=text, hoverinfo="text"))
    fig.add_trace(go.Scatter(
        x=text_coords[:, 0], y=text_coords[:, 1], mode="markers+text", name="class text vectors",
        marker=dict(size=14, symbol="star" if class_symbols is None else list(class_symbols), color=colours,
                    line=dict(width=1, color="black")),
        text=list(class_names), textposition="top center", textfont=dict(size=9), hoverinfo="text"))
    fig.update_layout(title=title, template="plotly_white", width=900, height=700,
                      xaxis=dict(showticklabels=False, title=""), yaxis=dict(showticklabels=False, title=""))
    return fig


def comparison_figure(runs: Mapping[str, tuple], class_names: Sequence[str], colour_by: str = "class",
                      animate: bool = False, base_classes=None, class_colours=None,
                      max_points: int | None = DEFAULT_MAX_POINTS, seed: int = 0,
                      title: str = "Runs in the same coordinates", class_symbols: Sequence[str] | None = None):
    """Two or more runs (KD vs KD + AME, or epochs of one run) drawn in the same coordinates.

    Parameters
    ----------
    runs : mapping of run name to ``(image_coords, text_coords, table)``
        2-D coordinates in one map (from :func:`project_runs`) and the per-sample table of each run,
        all describing the same samples in the same order (their ``label`` columns must agree).
    class_names, colour_by, base_classes, class_colours, max_points, seed, class_symbols
        As in :func:`projection_figure`; the subsample is drawn once, so every panel or frame
        shows the same samples, and numeric colour scales share one range.
    animate : bool, default False
        False: one panel per run side by side, axes linked. True: one frame per run with a slider
        and a play button (axes fixed to the union of the runs' extents).

    Returns
    -------
    plotly.graph_objects.Figure
    """
    go = _require("plotly.graph_objects", "plotting")
    if len(runs) < 1:
        raise ValueError("runs must name at least one run")
    names = list(runs)
    first = runs[names[0]][2]
    for name in names:
        image_xy, text_xy, table = runs[name]
        _check_rows(image_xy, table)
        if np.asarray(image_xy).shape[1] != 2 or np.asarray(text_xy).shape[1] != 2:
            raise ValueError(f"comparison_figure draws 2-D maps; run {name!r} has {np.asarray(image_xy).shape[1]}-D coordinates")
        if not np.array_equal(np.asarray(table["label"]), np.asarray(first["label"])):
            raise ValueError(f"run {name!r} describes other samples than {names[0]!r} (labels differ); "
                             "compare runs on the same samples in the same order")
    rows = _visible_rows(first, None, max_points, seed)
    crange = None
    probe = colouring(first, colour_by, class_names, base_classes, class_colours)
    if probe["kind"] == "numeric" and colour_by not in ("entropy", "margin", "ambiguity"):
        allv = np.concatenate([colouring(t, colour_by, class_names)["values"] for _, _, t in runs.values()])
        crange = (float(np.nanmin(allv)), float(np.nanmax(allv)))

    def traces(name, show_scale=True):
        image_xy, text_xy, table = runs[name]
        return [image_trace(image_xy, table, class_names, colour_by, rows, base_classes, class_colours, crange,
                            show_scale=show_scale, name="images", class_symbols=class_symbols),
                text_trace(text_xy, class_names, class_colours, class_symbols=class_symbols)]

    if not animate:
        from plotly.subplots import make_subplots
        fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, shared_xaxes="all",
                            shared_yaxes="all", horizontal_spacing=0.02)
        for col, name in enumerate(names, start=1):
            for i, trace in enumerate(traces(name, show_scale=col == len(names))):
                trace.update(legendgroup=trace.name, showlegend=col == 1 and i == 1)
                fig.add_trace(trace, row=1, col=col)
        fig.add_traces(_legend_traces(probe))
        _hide_axes(fig)
        fig.update_layout(title=title, template="plotly_white", width=min(1800, 520 * len(names) + 80), height=650,
                          legend=_LEGEND_BELOW)
        return fig
    xy = np.concatenate([np.concatenate([np.asarray(a)[rows], np.asarray(b)]) for a, b, _ in runs.values()])
    pad = 0.05 * (xy.max(0) - xy.min(0) + 1e-9)
    lo, hi = xy.min(0) - pad, xy.max(0) + pad
    frames = [go.Frame(data=traces(name), name=name, layout={"title": {"text": f"{title}: {name}"}}) for name in names]
    legend = _legend_traces(probe)
    for trace in legend:  # with frames, plotly.js draws a [None] point in a corner: park it off the fixed axes
        trace.update(x=[hi[0] + 10 * (hi[0] - lo[0])], y=[hi[1] + 10 * (hi[1] - lo[1])], hoverinfo="skip")
    fig = go.Figure(data=list(frames[0].data) + legend, frames=frames)
    step = lambda name: {"label": name, "method": "animate",  # noqa: E731
                         "args": [[name], {"mode": "immediate", "frame": {"duration": 0, "redraw": True},
                                           "transition": {"duration": 0}}]}
    fig.update_layout(
        title=f"{title}: {names[0]}", template="plotly_white", width=900, height=800, legend={**_LEGEND_BELOW, "y": -0.2},
        xaxis={"range": [lo[0], hi[0]], "autorange": False}, yaxis={"range": [lo[1], hi[1]], "autorange": False},
        sliders=[{"active": 0, "currentvalue": {"prefix": "run: "}, "steps": [step(n) for n in names]}],
        updatemenus=[{"type": "buttons", "showactive": False, "x": 1, "y": 1.08, "xanchor": "right",
                      "buttons": [{"label": "▶ play", "method": "animate",
                                   "args": [None, {"frame": {"duration": 1200, "redraw": True},
                                                   "transition": {"duration": 0}, "fromcurrent": True}]}]}])
    _hide_axes(fig)
    return fig


# ----------------------------------------------------------------------------- samples
def _as_uint8_image(image) -> np.ndarray:
    """An (H, W, 3) or (H, W) uint8 array from a PIL image, an HWC/CHW array or tensor (uint8 or [0, 1] float)."""
    if hasattr(image, "detach"):  # torch tensor
        image = image.detach().cpu().numpy()
    x = np.asarray(image)
    if x.ndim == 3 and x.shape[0] in (1, 3) and x.shape[-1] not in (1, 3):  # CHW
        x = np.moveaxis(x, 0, -1)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[-1] not in (3, 4)):
        raise ValueError(f"image must be (H, W), (H, W, 3) or (3, H, W); got shape {x.shape}")
    if x.dtype != np.uint8:
        x = np.clip(np.nan_to_num(x.astype(np.float64)) * (255.0 if x.max() <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
    return x


def thumbnail_uri(image, size: int = 64) -> str:
    """A small PNG of ``image`` as a ``data:image/png;base64,…`` URI (for HTML ``<img>`` and layout images).

    The longer side is scaled to ``size`` pixels (nearest neighbour, so tiny images stay crisp).
    """
    Image = _require("PIL.Image", "thumbnails")
    picture = Image.fromarray(_as_uint8_image(image))
    scale = size / max(picture.size)
    picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                             Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def ambiguity_gallery(images, table: Mapping, top: int = 12, column: str = "ambiguity_score",
                      class_names: Sequence[str] | None = None, columns: int = 6, thumb_size: int = 96,
                      title: str | None = None):
    """A grid of the ``top`` most ambiguous samples with their two competing classes and scores.

    Parameters
    ----------
    images : array (N, H, W, 3) or sequence of images
        Image ``i`` is the sample of table row ``i``.
    table : dict of str to array (N,)
        Per-sample table with ``column``, ``predicted``, ``runner_up``, ``max_prob``, ``margin``
        and ``label`` (:func:`workbench.analysis.per_sample_table`).
    top : int, default 12
        Samples shown, most ambiguous first (ties keep table order).
    column : str, default "ambiguity_score"
        Column ranked by, e.g. ``"entropy"`` or ``"kl_teacher_student"``.
    class_names : sequence of str, optional
        Default: the table's ``*_name`` columns, else class numbers.
    columns : int, default 6
        Thumbnails per row.
    thumb_size : int, default 96
        Thumbnail size in pixels.

    Returns
    -------
    plotly.graph_objects.Figure
        Thumbnails as layout images (self-contained data URIs) with captions ``predicted p1 vs
        runner-up p2`` and the true class, with the world's mixing weight ``a`` and partner class when
        the table has ``true_ambiguity`` (and ``true_partner``); hovering a thumbnail shows the same. The ``samples``
        trace's ``customdata`` holds the rows shown.
    """
    go = _require("plotly.graph_objects", "plotting")
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"top must be a positive int, got {top!r}")
    for key in (column, "label", "predicted", "runner_up", "max_prob", "margin"):
        if key not in table:
            raise ValueError(f"table has no column {key!r}; columns: {', '.join(table)}")
    n = len(np.asarray(table["label"]))
    if len(images) != n:
        raise ValueError(f"images has {len(images)} entries but the table has {n} rows")
    rows = np.argsort(-np.asarray(table[column], dtype=np.float64), kind="stable")[:top]
    if class_names is None:
        width = int(max(np.max(table["label"]), np.max(table["predicted"]), np.max(table["runner_up"]))) + 1
        names = np.array([str(c) for c in range(width)], dtype=object)
        for key, name_key in (("label", "label_name"), ("predicted", "predicted_name"), ("runner_up", "runner_up_name")):
            if name_key in table:
                names[np.asarray(table[key])] = np.asarray(table[name_key])
    else:
        names = np.asarray(list(class_names), dtype=object)
    ncols = min(columns, len(rows))
    nrows = math.ceil(len(rows) / ncols)
    # Axis units are thumbnails (0.8 wide): a column is wide enough for a caption line naming two
    # classes and a row tall enough for the caption's three lines, so neighbours never overlap.
    unit = thumb_size / 0.8  # pixels per axis unit
    pitch_x, pitch_y = max(1.0, 260 / unit), 1.0 + 50 / unit
    fig = go.Figure()
    hover, xs, ys = [], [], []
    for k, i in enumerate(rows):
        x, y = pitch_x * (k % ncols), -pitch_y * (k // ncols)
        p1 = float(table["max_prob"][i])
        p2 = p1 - float(table["margin"][i])
        a, b, true = names[table["predicted"][i]], names[table["runner_up"][i]], names[table["label"][i]]
        if "true_ambiguity" in table:  # the world's ground truth: how far the sample was blended, and toward what
            weight = float(table["true_ambiguity"][i])
            partner = int(table["true_partner"][i]) if "true_partner" in table else -1
            true = (f"{true}, a = {weight:.2f} toward {names[partner]}" if weight > 0 and partner >= 0 else
                    f"{true}, a = {weight:.2f}" if weight > 0 else f"{true} (clean)")
        fig.add_layout_image(source=thumbnail_uri(images[i], thumb_size), xref="x", yref="y", x=x, y=y,
                             sizex=0.8, sizey=0.8, xanchor="center", yanchor="middle", sizing="contain", layer="above")
        fig.add_annotation(x=x, y=y - 0.43, yanchor="top", showarrow=False, font={"size": 10},
                           text=f"<b>{a}</b> {p1:.2f} vs <b>{b}</b> {p2:.2f}<br>true: {true}<br>"
                                f"{column.replace('_', ' ')} {float(table[column][i]):.2f}")
        xs.append(x)
        ys.append(y)
        sid = table["sample_id"][i] if "sample_id" in table else i
        hover.append(f"#{sid} true: {true}<br>{a}: {p1:.3f}<br>{b}: {p2:.3f}<br>{column}: {float(table[column][i]):.3f}")
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name="samples", customdata=rows, text=hover,
                             hoverinfo="text", marker={"size": thumb_size * 0.6, "opacity": 0}, showlegend=False))
    x_range = [-pitch_x / 2, pitch_x * (ncols - 0.5)]
    y_range = [-pitch_y * (nrows - 1) - 0.43 - 45 / unit, 0.45]
    fig.update_xaxes(visible=False, range=x_range)
    fig.update_yaxes(visible=False, range=y_range, scaleanchor="x")
    fig.update_layout(title=title or f"The {len(rows)} most ambiguous samples (by {column.replace('_', ' ')})",
                      template="plotly_white", width=max(round((x_range[1] - x_range[0]) * unit) + 40, 500),
                      height=round((y_range[1] - y_range[0]) * unit) + 80,
                      margin={"l": 20, "r": 20, "t": 60, "b": 20})
    return fig


# ----------------------------------------------------------------------------- calibration and training
def _named(data, is_one) -> dict:
    """``{name: item}`` from a single item (named "") or a mapping of names to items."""
    return {"": data} if is_one(data) else dict(data)


def reliability_diagram(diagrams, title: str = "Reliability diagram"):
    """Accuracy against confidence per bin, from :func:`workbench.analysis.reliability_diagram`.

    Parameters
    ----------
    diagrams : dict of bins, or mapping of run name to such a dict
        Each with ``bin_lower``, ``bin_upper``, ``confidence``, ``accuracy`` (NaN for empty bins)
        and ``count`` arrays.

    Returns
    -------
    plotly.graph_objects.Figure
        Top: per run, bars of accuracy per bin and markers of mean confidence, the diagonal of
        perfect calibration, and the ECE in the legend (``sum count/N |accuracy - confidence|``,
        as :func:`workbench.analysis.calibration_metrics`). Bottom: samples per bin.
    """
    from plotly.subplots import make_subplots
    go = _require("plotly.graph_objects", "plotting")
    runs = _named(diagrams, lambda d: isinstance(d, Mapping) and "bin_lower" in d)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.75, 0.25], vertical_spacing=0.05)
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line={"dash": "dash", "color": "grey"}), row=1, col=1)
    palette = _palette()
    for k, (name, d) in enumerate(runs.items()):
        for key in ("bin_lower", "bin_upper", "confidence", "accuracy", "count"):
            if key not in d:
                raise ValueError(f"reliability data {name!r} has no {key!r}; pass the output of "
                                 "workbench.analysis.reliability_diagram")
        lower, upper = np.asarray(d["bin_lower"], float), np.asarray(d["bin_upper"], float)
        acc, conf, count = (np.asarray(d[key], float) for key in ("accuracy", "confidence", "count"))
        filled = count > 0
        ece = float(np.sum(count[filled] / count.sum() * np.abs(acc[filled] - conf[filled])))
        label = f"{name + ': ' if name else ''}accuracy (ECE {ece:.3f})"
        colour = palette[k % len(palette)]
        centres = (lower + upper) / 2
        fig.add_trace(go.Bar(x=centres[filled], y=acc[filled], width=(upper - lower)[filled] * (0.9 / len(runs)),
                             name=label, marker={"color": colour, "opacity": 0.6}, legendgroup=name or "run",
                             customdata=np.stack([conf[filled], count[filled]], axis=1),
                             hovertemplate="accuracy %{y:.3f}<br>confidence %{customdata[0]:.3f}<br>"
                                           "%{customdata[1]} samples<extra></extra>"), row=1, col=1)
        fig.add_trace(go.Scatter(x=conf[filled], y=acc[filled], mode="markers+lines", legendgroup=name or "run",
                                 name=f"{name + ': ' if name else ''}accuracy at mean confidence",
                                 marker={"color": colour, "size": 7}, line={"width": 1}), row=1, col=1)
        fig.add_trace(go.Bar(x=centres, y=count, width=(upper - lower) * (0.9 / len(runs)), showlegend=False,
                             legendgroup=name or "run", marker={"color": colour, "opacity": 0.6},
                             name=f"{name + ': ' if name else ''}samples"), row=2, col=1)
    fig.update_xaxes(range=[0, 1], row=1, col=1)
    fig.update_xaxes(range=[0, 1], title="confidence (top-1 probability)", row=2, col=1)
    fig.update_yaxes(range=[0, 1], title="accuracy", row=1, col=1)
    fig.update_yaxes(title="samples", row=2, col=1)
    fig.update_layout(title=title, template="plotly_white", width=700, height=650, barmode="group")
    return fig


def entropy_histograms(tables, base_classes=None, column: str = "entropy", nbins: int = 30,
                       title: str | None = None):
    """Histograms of per-sample entropy, one panel per split (base / new), one colour per run.

    Parameters
    ----------
    tables : per-sample table, or mapping of run name to table
        Each with ``label`` and ``column``.
    base_classes : array-like of int, optional
        Splits samples into base and new classes; without it one panel holds all samples.
    column : str, default "entropy"
        Any numeric column (e.g. ``"teacher_entropy"``, ``"manifold_entropy"``).
    nbins : int, default 30
        Bins over the range of all values (shared by every run and panel).
    """
    from plotly.subplots import make_subplots
    go = _require("plotly.graph_objects", "plotting")
    runs = _named(tables, lambda t: isinstance(t, Mapping) and "label" in t)
    for name, table in runs.items():
        for key in ("label", column):
            if key not in table:
                raise ValueError(f"table {name!r} has no column {key!r}")
    splits = ["all"] if base_classes is None else ["base", "new"]
    values = np.concatenate([np.asarray(t[column], dtype=np.float64) for t in runs.values()])
    lo, hi = float(np.min(values)), float(np.max(values))
    size = (hi - lo) / nbins if hi > lo else 1.0
    fig = make_subplots(rows=1, cols=len(splits), subplot_titles=[f"{s} classes" if s != "all" else "all samples"
                                                                  for s in splits], shared_yaxes=True)
    palette = _palette()
    for k, (name, table) in enumerate(runs.items()):
        labels, v = np.asarray(table["label"]), np.asarray(table[column], dtype=np.float64)
        for col, split in enumerate(splits, start=1):
            chosen = np.ones(len(v), bool) if split == "all" else np.isin(labels, base_classes) == (split == "base")
            fig.add_trace(go.Histogram(x=v[chosen], name=name or column, legendgroup=name or column,
                                       showlegend=col == 1 and bool(name), opacity=0.6,
                                       marker={"color": palette[k % len(palette)]},
                                       xbins={"start": lo, "end": hi + size * 1e-6, "size": size}), row=1, col=col)
    fig.update_xaxes(title=column.replace("_", " ") + (" (nats)" if "entropy" in column else ""),
                     range=[lo, hi + size * 1e-6])
    fig.update_yaxes(title="samples", col=1)
    fig.update_layout(title=title or f"{column.replace('_', ' ').capitalize()} per split", barmode="overlay",
                      template="plotly_white", width=450 * len(splits) + 150, height=420)
    return fig


def read_records(path: str | os.PathLike) -> list[dict]:
    """Records of a JSONL training log (:func:`workbench.train.fit`); the last run of an appended file
    (see :func:`workbench.runs.read_log_runs`)."""
    from .runs import read_log_runs

    runs = read_log_runs(path)
    return runs[-1] if runs else []


def _curve_panels(records: list[dict], keys) -> dict[str, list[str]]:
    present = {k for r in records for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if keys is not None:
        missing = [k for k in keys if k not in present]
        if missing:
            raise ValueError(f"no record has {', '.join(map(repr, missing))}; fields: {', '.join(sorted(present))}")
        return {k: [k] for k in keys}
    panels = {}
    if "manifold_entropy" in present:
        panels["H(M) (nats)"] = ["manifold_entropy"]
    gradients = [k for k in sorted(present) if k.startswith("grad_norm/")]
    if gradients:  # next to H(M): whether AME pushes the student at all, against the other terms
        panels["gradient norm of each term"] = gradients
    losses = [k for k in sorted(present) if k == "loss" or k.endswith("_loss")]
    if losses:
        panels["loss"] = sorted(losses, key=lambda k: k != "loss")
    accuracy = [k for k in sorted(present) if "acc" in k or k == "hm"]
    if accuracy:
        panels["accuracy"] = accuracy
    return panels


def training_curves(records, keys: Sequence[str] | None = None, title: str = "Training curves"):
    """H(M), losses and accuracies over steps, one panel each, from training log records.

    Parameters
    ----------
    records : list of dict, path of a JSONL log, or mapping of run name to either
        Records with a ``step`` field, as :func:`workbench.train.fit` writes them (a path is read
        with :func:`read_records`).
    keys : sequence of str, optional
        Fields to plot, one panel each. Default: ``manifold_entropy`` (H(M)); the gradient norm each
        loss term sends to the student (``grad_norm/*``, logged every few steps by :func:`workbench.train.fit`);
        ``loss`` with every ``*_loss`` term; every field with ``acc`` in its name (and ``hm``): each panel
        only when some record has it. Records without a field are skipped in its curve.

    Returns
    -------
    plotly.graph_objects.Figure
        Panels share the step axis; runs share a colour, terms of one panel differ in dash. A
        panel of positive terms spanning more than a factor of 20 gets a log axis.
    """
    from plotly.subplots import make_subplots
    go = _require("plotly.graph_objects", "plotting")
    runs = _named(records, lambda r: isinstance(r, (list, tuple, str, os.PathLike)))
    runs = {name: read_records(r) if isinstance(r, (str, os.PathLike)) else list(r) for name, r in runs.items()}
    panels = _curve_panels([r for rs in runs.values() for r in rs], keys)
    if not panels:
        raise ValueError("the records have no manifold_entropy, loss or accuracy fields to plot")
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, subplot_titles=list(panels),
                        vertical_spacing=0.08)
    palette, dashes = _palette(), ["solid", "dot", "dash", "dashdot", "longdash"]
    for k, (name, rs) in enumerate(runs.items()):
        for row, fields in enumerate(panels.values(), start=1):
            for j, field in enumerate(fields):
                points = [(r["step"], r[field]) for r in rs if field in r]
                if not points:
                    continue
                steps, values = zip(*points)
                fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=f"{name + ': ' if name else ''}{field}",
                                         line={"color": palette[k % len(palette)], "dash": dashes[j % len(dashes)]}),
                              row=row, col=1)
    for row, fields in enumerate(panels.values(), start=1):  # terms of very different sizes: log scale
        values = np.array([r[f] for rs in runs.values() for r in rs for f in fields if f in r], dtype=np.float64)
        if len(fields) > 1 and (values > 0).all() and values.max() > 20 * values.min():
            fig.update_yaxes(type="log", row=row, col=1)
    fig.update_xaxes(title="step", row=len(panels), col=1)
    fig.update_layout(title=title, template="plotly_white", width=900, height=260 * len(panels) + 120)
    return fig


# ----------------------------------------------------------------------------- files
def save_html(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a standalone HTML page with plotly.js inlined (works without a network)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.write_html(str(tmp), include_plotlyjs=True, full_html=True)
    os.replace(tmp, path)
    return path


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome for PNG export: ``$BROWSER_PATH``, else the first on ``PATH``."""
    if os.environ.get("BROWSER_PATH"):
        return os.environ["BROWSER_PATH"]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def save_png(fig, path: str | os.PathLike, scale: float = 2.0) -> Path:
    """Write ``fig`` as a PNG with kaleido (>= 1), which renders it in a headless Chromium.

    The browser is ``$BROWSER_PATH`` or the first ``chromium`` / ``google-chrome`` on ``PATH``
    (on Debian: ``apt-get install chromium``). Raises ``ImportError`` without kaleido >= 1 and
    ``RuntimeError`` without a browser; :func:`save_html` needs neither.
    """
    try:
        import kaleido  # noqa: F401
        major = int(metadata.version("kaleido").split(".")[0])
    except ImportError as err:
        raise ImportError("save_png needs the package 'kaleido' (>= 1) and a Chromium: pip install 'kaleido>=1' "
                          "and install Debian's chromium (save_html works without either)") from err
    if major < 1:
        raise ImportError(f"save_png needs kaleido >= 1 (which uses a system Chromium); found "
                          f"{metadata.version('kaleido')}: pip install -U 'kaleido>=1'")
    browser = find_chromium()
    if browser is None:
        raise RuntimeError("save_png found no Chromium: install Debian's chromium (apt-get install chromium) "
                           "or set BROWSER_PATH to a Chrome/Chromium executable")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    previous = os.environ.get("BROWSER_PATH")
    os.environ["BROWSER_PATH"] = browser
    try:
        for attempt in range(2):
            try:
                fig.write_image(str(tmp), format="png", scale=scale)
                break
            except Exception:  # noqa: BLE001
                # Seen once (a CI run while another Chromium was busy on the machine): kaleido evaluated its
                # script before its page had loaded ("kaleido_scopes is not defined"); so one more try.
                if attempt:
                    raise
    finally:
        if previous is None:
            os.environ.pop("BROWSER_PATH", None)
    os.replace(tmp, path)
    return path
