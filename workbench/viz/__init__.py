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

from .style import (  # noqa: F401
    COLOUR_BY, CORRECTNESS_COLOURS, SPLIT_COLOURS,
)
from .projection import (  # noqa: F401
    DEFAULT_MAX_POINTS, FIT_ON, PROJECTION_METHODS, TSNE_EXACT_MAX_POINTS, Projection, joint_projection, project_more,
    project_runs, stratified_subsample,
)
from .maps import (  # noqa: F401
    LEGEND_BELOW, colour_options, colouring, comparison_figure, drawn_indices, hide_axes, hover_texts, image_trace,
    manifold_figure, projection_figure, text_trace, visible_rows,
)
from .gallery import (  # noqa: F401
    ambiguity_gallery, thumbnail_uri,
)
from .diagnostics import (  # noqa: F401
    entropy_histograms, read_records, reliability_diagram, training_curves,
)
from .export import (  # noqa: F401
    find_chromium, save_html, save_png,
)
