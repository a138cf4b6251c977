"""Tests for workbench.notebook_docs: executed notebooks rendered for a code host."""

import base64
import json

import pytest

from workbench import notebook_docs
from workbench.viz import find_chromium


def executed_notebook(path, figure_json):
    cells = [{"cell_type": "code", "execution_count": 1, "metadata": {}, "source": ["fig.show()"], "outputs": [
        {"output_type": "stream", "name": "stdout", "text": ["teacher from cache\n"]},
        {"output_type": "display_data", "metadata": {},
         "data": {notebook_docs.WIDGET_MIME: {"model_id": "abc"}, "text/plain": ["  0%|"]}},
        {"output_type": "display_data", "metadata": {}, "data": {notebook_docs.PLOTLY_MIME: figure_json}}]},
        {"cell_type": "markdown", "metadata": {}, "source": ["# text"]}]
    path.write_text(json.dumps({"cells": cells, "metadata": {"widgets": {"state": {}}}, "nbformat": 4,
                                "nbformat_minor": 5}))
    return path


@pytest.mark.skipif(find_chromium() is None, reason="rendering a Plotly figure to PNG needs Debian's chromium")
def test_plotly_outputs_become_pngs_and_progress_bars_go(tmp_path):
    import plotly.graph_objects as go

    figure = json.loads(go.Figure(go.Scatter(x=[0, 1], y=[1, 0])).to_json())
    source = executed_notebook(tmp_path / "run.ipynb", figure)
    counts = notebook_docs.render_for_code_host(source, tmp_path / "docs" / "run.ipynb")
    assert counts["figures"] == 1 and counts["widgets_dropped"] == 1
    rendered = json.loads((tmp_path / "docs" / "run.ipynb").read_text())
    outputs = rendered["cells"][0]["outputs"]
    assert [o["output_type"] for o in outputs] == ["stream", "display_data"]
    assert outputs[0]["text"] == ["teacher from cache\n"]
    assert base64.b64decode(outputs[1]["data"]["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert notebook_docs.PLOTLY_MIME not in outputs[1]["data"] and "widgets" not in rendered["metadata"]
    assert rendered["cells"][1] == {"cell_type": "markdown", "metadata": {}, "source": ["# text"]}


def test_a_figure_that_does_not_render_names_its_cell_and_writes_nothing(tmp_path):
    source = executed_notebook(tmp_path / "run.ipynb", {"data": [{"type": "no-such-trace"}]})
    with pytest.raises(RuntimeError, match="cell 0: the Plotly figure did not render"):
        notebook_docs.render_for_code_host(source, tmp_path / "out.ipynb")
    assert not (tmp_path / "out.ipynb").exists()


def test_docs_command_refuses_a_smoke_run_and_a_folder_without_a_quickstart(tmp_path):
    from workbench.__main__ import build_parser

    smoke = tmp_path / "smoke-run"
    smoke.mkdir()
    (smoke / "00_quickstart.ipynb").write_text("{}")
    (smoke / "parameters.json").write_text(json.dumps({"parameters": {"smoke": True}}))
    for run_dir, message in ((smoke, "is a smoke run"), (tmp_path, "00_quickstart.ipynb is missing")):
        args = build_parser().parse_args(["docs", "--run-dir", str(run_dir), "--out-dir", str(tmp_path / "out")])
        with pytest.raises(SystemExit, match=message):
            args.func(args)
    assert not (tmp_path / "out").exists()


def test_the_rendered_notebooks_show_the_committed_cells():
    """docs/notebooks/ holds executed copies of the path; a notebook edited since must be rendered again (make docs)."""
    from workbench.sweeps import NOTEBOOK_DIR

    rendered = sorted((NOTEBOOK_DIR.parent / "docs" / "notebooks").glob("*.ipynb"))
    assert {p.name for p in rendered} >= {"00_concepts.ipynb", "00_quickstart.ipynb", "01_manifold_explorer.ipynb",
                                          "02_entropy_and_ambiguity.ipynb", "03_ame_ablation.ipynb",
                                          "04_tutorial_entropy_minimization.ipynb"}
    for path in rendered:
        copy = json.loads(path.read_text())
        cells = [c for c in copy["cells"] if "injected-parameters" not in c["metadata"].get("tags", [])]
        source = json.loads((NOTEBOOK_DIR / path.name).read_text())["cells"]
        differing = [i for i, (a, b) in enumerate(zip(cells, source)) if "".join(a["source"]) != "".join(b["source"])]
        assert len(cells) == len(source) and not differing, f"{path.name}: cells {differing} changed; run make docs"
        assert any(o.get("output_type") for c in cells for o in c.get("outputs", [])), f"{path.name}: not executed"
        params = next(c for c in copy["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
        assert "smoke = True" not in "".join(params["source"]), f"{path.name}: a smoke run; the docs show the full preset"
