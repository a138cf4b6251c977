"""Executed notebooks a reader can see on a code host: Plotly figures as static PNGs, progress bars dropped.

Notebooks are committed without outputs; ``make docs`` executes them (full preset) and passes each executed
copy through :func:`render_for_code_host` into ``docs/notebooks/``. A code host renders a notebook's PNG
outputs but not Plotly's JSON or ipywidgets, so every Plotly output becomes a PNG (rendered by kaleido in a
headless Chromium, :func:`workbench.viz.save_png`) and every widget output (tqdm bars) is dropped; the
text a cell printed stays.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from pathlib import Path

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def render_for_code_host(executed: str | os.PathLike, out: str | os.PathLike, scale: float = 1.0) -> dict:
    """Write a copy of notebook ``executed`` to ``out`` with Plotly outputs as PNGs and widget outputs removed.

    Returns counts: ``{"figures": n, "widgets_dropped": m, "bytes": size of out}``. Nothing is written when a
    figure fails to render (the error names the cell).
    """
    import plotly.io as pio

    from .runs import write_json
    from .viz import save_png

    notebook = json.loads(Path(executed).read_text(encoding="utf-8"))
    figures = dropped = 0
    with tempfile.TemporaryDirectory() as tmp:
        for index, cell in enumerate(notebook.get("cells", [])):
            kept = []
            for output in cell.get("outputs", []):
                data = output.get("data", {})
                if PLOTLY_MIME in data:
                    try:
                        figure = pio.from_json(json.dumps(data[PLOTLY_MIME]))
                        png = save_png(figure, Path(tmp) / f"cell{index}.png", scale=scale).read_bytes()
                    except Exception as err:  # noqa: BLE001 - re-raised with the cell named
                        raise RuntimeError(f"{executed}: cell {index}: the Plotly figure did not render ({err})") from err
                    output["data"] = {"image/png": base64.b64encode(png).decode("ascii"),
                                      "text/plain": ["<Plotly figure, rendered as PNG for the code host>"]}
                    output.setdefault("metadata", {})
                    figures += 1
                elif WIDGET_MIME in data:
                    dropped += 1
                    continue
                kept.append(output)
            if "outputs" in cell:
                cell["outputs"] = kept
    notebook.get("metadata", {}).pop("widgets", None)  # widget state of the dropped bars
    write_json(out, notebook)
    return {"figures": figures, "widgets_dropped": dropped, "bytes": Path(out).stat().st_size}
