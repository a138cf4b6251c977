"""Calibration and training diagnostics: reliability diagrams, entropy histograms, training curves with
the per-term gradient norms.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from .style import _palette, _require


def _named(data, is_one) -> dict:
    """``{name: item}`` from a single item (named "") or a mapping of names to items."""
    return {"": data} if is_one(data) else dict(data)


def reliability_diagram(diagrams, title: str = "Reliability diagram"):
    """Accuracy against confidence per bin, from :func:`workbench.analysis.reliability_bins`.

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
                                 "workbench.analysis.reliability_bins")
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
    from ..runs import read_log_runs

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
