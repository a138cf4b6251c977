"""Samples as pictures: thumbnails and the gallery of the most ambiguous images."""

from __future__ import annotations

import base64
import io
import math
from typing import Mapping, Sequence

import numpy as np

from .style import _require


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
        Column ranked by, e.g. ``"ambiguity_student"``, ``"entropy"`` or ``"kl_teacher_student"``; the
        figure's subtitle names it and, for the table's own scores, its definition.
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
    from ..analysis.ambiguity import SCORE_DEFINITIONS

    title = title or f"The {len(rows)} most ambiguous samples"
    ranked_by = f"ranked by {column}" + (f": {SCORE_DEFINITIONS[column]}" if column in SCORE_DEFINITIONS else "")
    fig.update_layout(title={"text": f"{title}<br><sup>{ranked_by}</sup>"},
                      template="plotly_white", width=max(round((x_range[1] - x_range[0]) * unit) + 40, 500),
                      height=round((y_range[1] - y_range[0]) * unit) + 80,
                      margin={"l": 20, "r": 20, "t": 60, "b": 20})
    return fig
