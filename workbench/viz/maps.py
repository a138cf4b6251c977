"""Maps of the shared space: image points and class text vectors in one projection, coloured by a column of
the per-sample table, one run or several side by side.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from .projection import DEFAULT_MAX_POINTS, stratified_subsample
from .style import COLOUR_BY, CORRECTNESS_COLOURS, SPLIT_COLOURS, _palette, _require


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
                   "ambiguity": (0.0, 1.0), "ambiguity_student": (0.0, 1.0)}
        crange = natural.get(colour_by, (float(np.nanmin(values)), float(np.nanmax(values))))
    title = colour_by.replace("_", " ")
    if colour_by == "ambiguity":  # say whether the teacher's score is averaged in
        title = "ambiguity (student + teacher)" if "teacher_predicted" in table else "ambiguity (student)"
    elif colour_by == "ambiguity_student":
        title = "ambiguity (student)"
    return {"kind": "numeric", "title": title, "values": values, "colorscale": scale,
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


def visible_rows(table: Mapping, mask, max_points, seed) -> np.ndarray:
    labels = np.asarray(table["label"])
    rows = np.arange(len(labels)) if mask is None else np.flatnonzero(np.asarray(mask, dtype=bool))
    return rows[stratified_subsample(labels[rows], max_points, seed)]


def _check_rows(coords, table: Mapping, what: str = "image_coords") -> None:
    if "label" not in table:
        raise ValueError("table needs a 'label' column (see workbench.analysis.per_sample_table)")
    if len(np.asarray(coords)) != len(np.asarray(table["label"])):
        raise ValueError(f"{what} has {len(coords)} rows but the table has {len(table['label'])}; "
                         "row i of the table must describe image i")


LEGEND_BELOW = {"orientation": "h", "yanchor": "top", "y": -0.02, "xanchor": "left", "x": 0}


def hide_axes(fig) -> None:
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
    rows = visible_rows(table, mask, max_points, seed)
    trace = image_trace(image_coords, table, class_names, colour_by, rows, base_classes, class_colours,
                        class_symbols=class_symbols)
    fig = go.Figure([trace, text_trace(text_coords, class_names, class_colours, class_symbols=class_symbols)])
    if np.asarray(image_coords).shape[1] == 2:
        fig.add_traces(_legend_traces(colouring(table, colour_by, class_names, base_classes, class_colours)))
        hide_axes(fig)
    fig.update_layout(title=title, template="plotly_white", width=900, height=700, legend=LEGEND_BELOW)
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
    rows = visible_rows(first, None, max_points, seed)
    crange = None
    probe = colouring(first, colour_by, class_names, base_classes, class_colours)
    if probe["kind"] == "numeric" and colour_by not in ("entropy", "margin", "ambiguity", "ambiguity_student"):
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
        hide_axes(fig)
        fig.update_layout(title=title, template="plotly_white", width=min(1800, 520 * len(names) + 80), height=650,
                          legend=LEGEND_BELOW)
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
        title=f"{title}: {names[0]}", template="plotly_white", width=900, height=800, legend={**LEGEND_BELOW, "y": -0.2},
        xaxis={"range": [lo[0], hi[0]], "autorange": False}, yaxis={"range": [lo[1], hi[1]], "autorange": False},
        sliders=[{"active": 0, "currentvalue": {"prefix": "run: "}, "steps": [step(n) for n in names]}],
        updatemenus=[{"type": "buttons", "showactive": False, "x": 1, "y": 1.08, "xanchor": "right",
                      "buttons": [{"label": "▶ play", "method": "animate",
                                   "args": [None, {"frame": {"duration": 1200, "redraw": True},
                                                   "transition": {"duration": 0}, "fromcurrent": True}]}]}])
    hide_axes(fig)
    return fig
