"""An ipywidgets explorer of the shared image-text space of one or more runs.

:class:`ManifoldExplorer` draws the map of :func:`workbench.viz.projection_figure` and lets the
user pick a run, a colouring, a minimum entropy and the classes shown; clicking a point shows the
sample (thumbnail, true class, top-k classes). Every run is placed in the map fitted on the first
one, so switching runs shows the same samples moving. The plot is updated in place: a Plotly
``FigureWidget`` when ``anywidget`` is installed (which plotly >= 6 needs for it; clicks work only
then), otherwise a ``go.Figure`` redrawn in an ``Output`` widget, where the ``sample`` box selects
a sample instead of a click.

Everything is driven through plain attributes, so the explorer runs headless in tests: set
``explorer.colour_by.value = "entropy"`` and read ``explorer.figure.data[0].marker.color``, or
call :meth:`ManifoldExplorer.on_click` as Plotly would.

Run directories hold ``embeddings.npz`` (written by :func:`save_run_embeddings`) and the
per-sample table ``samples.csv`` (:func:`workbench.analysis.write_table`); :func:`load_run` reads
them.
"""

from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from . import viz
from .runs import RunDir


@dataclass
class RunData:
    """What the explorer needs of one run: embeddings of the shown samples and their table.

    Attributes
    ----------
    image_features : np.ndarray (N, D)
    text_features : np.ndarray (C, D)
        One class text vector per class.
    table : dict of str to np.ndarray (N,)
        Per-sample table (:func:`workbench.analysis.per_sample_table`); row ``i`` is image ``i``.
    logits : np.ndarray (N, C), optional
        The sample detail shows softmax probabilities from these; without them, the cosine
        similarity of the image to each class text vector.
    """

    image_features: np.ndarray
    text_features: np.ndarray
    table: dict
    logits: np.ndarray | None = None

    def __post_init__(self):
        self.image_features = np.asarray(self.image_features, dtype=np.float32)
        self.text_features = np.asarray(self.text_features, dtype=np.float32)
        self.table = {k: np.asarray(v) for k, v in self.table.items()}
        n = len(self.image_features)
        if "label" not in self.table:
            raise ValueError("the run's table needs a 'label' column (see workbench.analysis.per_sample_table)")
        if any(len(v) != n for v in self.table.values()):
            raise ValueError(f"the run's table must have one row per image ({n}); got columns of lengths "
                             f"{sorted({len(v) for v in self.table.values()})}")
        if self.logits is not None:
            self.logits = np.asarray(self.logits, dtype=np.float64)
            if self.logits.shape != (n, len(self.text_features)):
                raise ValueError(f"logits must have shape ({n}, {len(self.text_features)}); got {self.logits.shape}")


def save_run_embeddings(run_dir: str | os.PathLike, image_features, text_features, logits=None) -> Path:
    """Write the embeddings (and optionally logits) the explorer reads into the run directory."""
    from .runs import write_arrays

    path = RunDir(run_dir).embeddings
    write_arrays(path, image_features=np.asarray(image_features, dtype=np.float32),
                 text_features=np.asarray(text_features, dtype=np.float32),
                 logits=None if logits is None else np.asarray(logits, dtype=np.float32))
    return path


def load_run(run_dir: str | os.PathLike) -> RunData:
    """A run's embeddings (:func:`save_run_embeddings`) and per-sample table as a :class:`RunData`.

    ``run_dir`` is a run directory or a pipeline step holding one (its ``experiment/``).
    """
    from .analysis import read_table

    run = RunDir.find(run_dir, needs="embeddings")
    if not run.has("samples"):
        raise FileNotFoundError(f"{run.path} has no {run.samples.name}; the explorer needs {run.embeddings.name} "
                                f"(workbench.explorer.save_run_embeddings) and {run.samples.name} "
                                "(workbench.analysis.write_table)")
    with np.load(run.embeddings, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return RunData(arrays["image_features"], arrays["text_features"], read_table(run.samples), arrays.get("logits"))


def _as_runs(runs) -> dict[str, RunData]:
    if isinstance(runs, (str, os.PathLike)):
        runs = [runs]
    if not isinstance(runs, Mapping):
        runs = {Path(p).name: Path(p) for p in runs}
    out = {}
    for name, run in runs.items():
        if isinstance(run, RunData):
            out[str(name)] = run
        elif isinstance(run, (str, os.PathLike)):
            out[str(name)] = load_run(run)
        else:
            out[str(name)] = RunData(*run)
    if not out:
        raise ValueError("runs must name at least one run")
    first = next(iter(out.values()))
    for name, run in out.items():
        if not np.array_equal(run.table["label"], first.table["label"]):
            raise ValueError(f"run {name!r} describes other samples than the first run (labels differ); "
                             "every run must hold the same samples in the same order")
    return out


def _figure_widget(fig, wanted: bool | None):
    """``go.FigureWidget(fig)``, or None where it is not wanted or anywidget is missing."""
    if wanted is False:
        return None
    import plotly.graph_objects as go
    try:
        return go.FigureWidget(fig)
    except ImportError:
        if wanted:
            raise ImportError("the interactive explorer needs the package 'anywidget' for plotly's FigureWidget; "
                              "pip install anywidget") from None
        return None


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


class ManifoldExplorer:
    """Explore one or more runs' maps with a run picker, colour-by, entropy and class filters.

    Parameters
    ----------
    runs : mapping of name to :class:`RunData`, ``(image_features, text_features, table[, logits])`` or
        a run directory; or a sequence of run directories (named by their folder)
        Every run must describe the same samples in the same order.
    class_names : sequence of str (C,)
    images : array (N, H, W, 3), optional
        The samples' images, for the thumbnail of the sample detail.
    base_classes : array-like of int, optional
        Enables colouring by split; new-class images are drawn as diamonds.
    class_colours : sequence of CSS colours (C,), optional
    class_symbols : sequence of Plotly marker symbols (C,), optional
        Each image and class vector drawn with its class's symbol (new-class images open), e.g. the embedded
        world's shapes (:meth:`workbench.world.WorldSpec.class_symbols`).
    method : {"umap", "pca", "tsne"}, default "umap"
        Projection of the map (:func:`workbench.viz.joint_projection`); ignored when ``projection`` is given.
    fit_on : {"reference", "all"}, default "reference"
        Fit the map on the first run and place the others in it, or fit one map on every run's points
        together (:func:`workbench.viz.project_runs`), so that no run is drawn through a projection fitted
        on another.
    projection : workbench.viz.Projection, optional
        A map fitted elsewhere to place every run in.
    seed : int, default 0
        Seed of the projection and of the subsample.
    max_points : int or None, default 20,000
        Images drawn at once; above it a per-class stratified subsample of the filtered samples.
    top_k : int, default 5
        Classes listed in the sample detail.
    figure_widget : bool or None, default None
        None: a ``FigureWidget`` when anywidget is installed, else a redrawn ``go.Figure``;
        True: require the ``FigureWidget``; False: never use it.

    Attributes
    ----------
    widget : ipywidgets.VBox
        The whole explorer (displaying the explorer displays it).
    figure : plotly FigureWidget or Figure
        Trace 0 is the images (``customdata`` = table rows), trace 1 the class text vectors.
    run, colour_by, entropy_threshold, class_filter, sample : ipywidgets controls
    detail, status : ipywidgets.HTML
        The selected sample; what is drawn and the colour key.
    """

    def __init__(self, runs, class_names: Sequence[str], images=None, base_classes=None, class_colours=None,
                 method: str = "umap", projection: viz.Projection | None = None, seed: int = 0,
                 max_points: int | None = viz.DEFAULT_MAX_POINTS, top_k: int = 5, figure_widget: bool | None = None,
                 class_symbols: Sequence[str] | None = None, fit_on: str = "reference"):
        import ipywidgets as widgets

        self.runs = _as_runs(runs)
        self.class_names = list(class_names)
        first = next(iter(self.runs.values()))
        if len(first.text_features) != len(self.class_names):
            raise ValueError(f"class_names has {len(self.class_names)} names for {len(first.text_features)} class vectors")
        self.n = len(first.image_features)
        if images is not None and len(images) != self.n:
            raise ValueError(f"images has {len(images)} entries for {self.n} samples")
        self.images = images
        self.base_classes = None if base_classes is None else np.asarray(base_classes)
        self.class_colours = class_colours
        self.class_symbols = class_symbols
        self.method, self.seed, self.max_points, self.top_k = method, seed, max_points, top_k
        if fit_on not in viz.FIT_ON:
            raise ValueError(f"fit_on must be one of {', '.join(viz.FIT_ON)}; got {fit_on!r}")
        self.fit_on = fit_on
        self.projection = projection
        self._coords: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._quiet = False  # set while the explorer changes its own controls

        style = {"description_width": "initial"}
        self.run = widgets.Dropdown(options=list(self.runs), description="run", style=style)
        self.colour_by = widgets.Dropdown(options=viz.colour_options(first.table, self.base_classes), value="class",
                                          description="colour by", style=style)
        max_entropy = round(math.log(max(len(self.class_names), 2)), 2) + 0.01  # entropy is at most log C
        self.entropy_threshold = widgets.FloatSlider(value=0.0, min=0.0, max=max_entropy, step=0.01,
                                                     description="min entropy", style=style,
                                                     continuous_update=False, readout_format=".2f")
        self.class_filter = widgets.SelectMultiple(options=[(name, i) for i, name in enumerate(self.class_names)],
                                                   rows=min(8, len(self.class_names)),
                                                   description="classes (none = all)", style=style)
        self.sample = widgets.BoundedIntText(value=-1, min=-1, max=self.n - 1, description="sample", style=style)
        self.detail = widgets.HTML("<i>click a point (or type a sample row) to see the sample</i>")
        self.status = widgets.HTML()

        fig = self._build_figure()
        widget = _figure_widget(fig, figure_widget)
        self.interactive = widget is not None
        self.figure = widget if widget is not None else fig
        self._output = None if self.interactive else widgets.Output()
        if self.interactive:
            self.figure.data[0].on_click(self.on_click)
        plot = self.figure if self.interactive else self._output
        controls = widgets.VBox([self.run, self.colour_by, self.entropy_threshold, self.class_filter, self.sample],
                                layout={"min_width": "320px"})
        self.widget = widgets.VBox([widgets.HBox([controls, widgets.VBox([self.status, self.detail])]), plot])

        for control in (self.run, self.colour_by, self.entropy_threshold, self.class_filter):
            control.observe(self._on_change, names="value")
        self.sample.observe(lambda change: self._show_detail(change["new"]), names="value")
        self.update()

    # ------------------------------------------------------------------ data
    @property
    def current(self) -> RunData:
        """The run picked."""
        return self.runs[self.run.value]

    def coordinates(self, name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(image_coords, text_coords)`` of a run (default: the picked one) in the shared map."""
        name = self.run.value if name is None else name
        if name not in self._coords:
            run = self.runs[name]
            if self.projection is None and self.fit_on == "all":
                self._coords, self.projection = viz.project_runs(
                    {key: (r.image_features, r.text_features) for key, r in self.runs.items()}, fit_on="all",
                    method=self.method, seed=self.seed)
            if self.projection is None:
                reference = next(iter(self.runs.values()))
                image_xy, text_xy, self.projection = viz.joint_projection(
                    reference.image_features, reference.text_features, method=self.method, seed=self.seed)
                self._coords[next(iter(self.runs))] = (image_xy, text_xy)
            if name not in self._coords:
                self._coords[name] = viz.project_more(self.projection, run.image_features, run.text_features)
        return self._coords[name]


    def visible_mask(self) -> np.ndarray:
        """Samples passing the entropy threshold and the class filter (before subsampling)."""
        table = self.current.table
        mask = np.ones(self.n, dtype=bool)
        if "entropy" in table and self.entropy_threshold.value > 0:
            mask &= np.asarray(table["entropy"], dtype=np.float64) >= self.entropy_threshold.value
        if self.class_filter.value:
            mask &= np.isin(table["label"], list(self.class_filter.value))
        return mask

    # ------------------------------------------------------------------ drawing
    def _traces(self):
        image_xy, text_xy = self.coordinates()
        table = self.current.table
        mask = self.visible_mask()
        rows = viz.visible_rows(table, mask, self.max_points, self.seed)
        images = viz.image_trace(image_xy, table, self.class_names, self.colour_by.value, rows,
                                 self.base_classes, self.class_colours, class_symbols=self.class_symbols)
        texts = viz.text_trace(text_xy, self.class_names, self.class_colours, class_symbols=self.class_symbols)
        return images, texts, rows, mask

    def _build_figure(self):
        import plotly.graph_objects as go

        images, texts, _, _ = self._traces()
        fig = go.Figure([images, texts])
        viz.hide_axes(fig)
        fig.update_layout(template="plotly_white", width=850, height=650, uirevision="explorer",
                          margin={"l": 10, "r": 10, "t": 30, "b": 10}, legend=viz.LEGEND_BELOW,
                          clickmode="event")
        return fig

    def update(self) -> None:
        """Redraw the map for the current controls (called by every control change)."""
        images, texts, rows, mask = self._traces()
        with self.figure.batch_update():
            target = self.figure.data[0]
            for key in ("x", "y", "customdata", "text", "marker"):
                setattr(target, key, getattr(images, key))
            self.figure.data[1].x, self.figure.data[1].y = texts.x, texts.y
            self.figure.layout.title = f"{self.run.value}: coloured by {self.colour_by.value.replace('_', ' ')}"
        colours = viz.colouring(self.current.table, self.colour_by.value, self.class_names, self.base_classes,
                                self.class_colours)
        key = ""
        if colours["kind"] == "categorical" and len(colours["legend"]) <= 30:
            key = " ".join(f'<span style="color:{c}">●</span>&nbsp;{html.escape(str(label))}'
                           for label, c in colours["legend"])
        drawn = f"{len(rows)} of {int(mask.sum())} selected samples drawn ({self.n} in total)"
        if len(rows) < mask.sum():
            drawn += f"; a per-class subsample above {self.max_points} points"
        self.status.value = f"<div>{drawn}</div><div style='max-width:560px'>{key}</div>"
        self._render()

    def _render(self) -> None:
        if self._output is None or not _in_ipython():
            return
        from IPython.display import display

        self._output.clear_output(wait=True)
        with self._output:
            display(self.figure)

    def _on_change(self, change) -> None:
        if self._quiet:
            return
        if change["owner"] is self.run:
            options = viz.colour_options(self.current.table, self.base_classes)
            value = self.colour_by.value if self.colour_by.value in options else "class"
            self._quiet = True
            try:
                self.colour_by.options = options
                self.colour_by.value = value
            finally:
                self._quiet = False
            if self.sample.value >= 0:
                self._show_detail(self.sample.value)
        self.update()

    # ------------------------------------------------------------------ samples
    def on_click(self, trace, points, state=None) -> None:
        """Plotly click callback: show the first clicked point's sample."""
        indices = list(getattr(points, "point_inds", []) or [])
        if indices:
            self.select(int(np.asarray(trace.customdata)[indices[0]]))

    def select(self, row: int) -> None:
        """Show sample ``row`` (a table row) in the detail panel."""
        if not 0 <= row < self.n:
            raise ValueError(f"row must be in 0..{self.n - 1}, got {row}")
        if self.sample.value == row:
            self._show_detail(row)
        else:
            self.sample.value = row

    def top_classes(self, row: int) -> tuple[str, list[tuple[int, float]]]:
        """``(score name, [(class, score), …])`` of the ``top_k`` classes of a sample in the picked run."""
        run = self.current
        if run.logits is not None:
            z = run.logits[row] - run.logits[row].max()
            scores, kind = np.exp(z) / np.exp(z).sum(), "probability"
        else:
            image = run.image_features[row] / max(np.linalg.norm(run.image_features[row]), 1e-12)
            texts = run.text_features / np.maximum(np.linalg.norm(run.text_features, axis=1, keepdims=True), 1e-12)
            scores, kind = texts @ image, "cosine"
        order = np.argsort(-scores, kind="stable")[:self.top_k]
        return kind, [(int(c), float(scores[c])) for c in order]

    def _show_detail(self, row: int) -> None:
        if row < 0:
            self.detail.value = "<i>click a point (or type a sample row) to see the sample</i>"
            return
        table, names = self.current.table, self.class_names
        label = int(table["label"][row])
        sid = table["sample_id"][row] if "sample_id" in table else row
        picture = ""
        if self.images is not None:
            picture = (f'<img src="{viz.thumbnail_uri(self.images[row], 128)}" width="128" height="128" '
                       'style="image-rendering: pixelated; border: 1px solid #ccc">')
        facts = [f"<b>sample #{html.escape(str(sid))}</b> (row {row})", f"true class: <b>{html.escape(names[label])}</b>"]
        if "predicted" in table:
            verdict = "correct" if int(table["predicted"][row]) == label else "wrong"
            facts.append(f"predicted: {html.escape(names[int(table['predicted'][row])])} ({verdict})")
        for key in ("entropy", "margin", "ambiguity_score", "kl_teacher_student"):
            if key in table:
                facts.append(f"{key.replace('_', ' ')}: {float(table[key][row]):.3f}")
        kind, top = self.top_classes(row)
        lines = "".join(f"<tr><td>{'<b>' if c == label else ''}{html.escape(names[c])}{'</b>' if c == label else ''}"
                        f"</td><td style='text-align:right'>{s:.3f}</td></tr>" for c, s in top)
        self.detail.value = (f"<div style='display:flex; gap:12px'>{picture}<div>{'<br>'.join(facts)}"
                             f"<table><tr><th>top {len(top)} classes</th><th>{kind}</th></tr>{lines}</table></div></div>")

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
        self._render()


def explore(runs, class_names: Sequence[str], **kwargs) -> ManifoldExplorer:
    """Build a :class:`ManifoldExplorer` (same arguments); display it as the last line of a cell."""
    return ManifoldExplorer(runs, class_names, **kwargs)
