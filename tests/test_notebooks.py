"""Notebooks executed by papermill in smoke mode, with their outputs checked."""

import json

import pytest

from workbench.pipeline import NOTEBOOK_DIR, run_notebook
from workbench.runs import create_run_dir

MODELS = ("teacher zero-shot", "student zero-shot", "KD", "KD + AME")


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("quickstart")
    run_dir = root / "run"
    run_notebook(NOTEBOOK_DIR / "00_quickstart.ipynb", run_dir,
                 {"smoke": True, "cache_dir": str(root / "cache"), "shots": 4}, progress=False)
    return run_dir


def test_quickstart_writes_metrics_with_every_model_and_key(quickstart_run):
    metrics = json.loads((quickstart_run / "metrics.json").read_text())
    assert set(metrics["results"]) == set(MODELS)
    for name in MODELS:
        result = metrics["results"][name]
        assert set(result) == {"base_acc", "new_acc", "hm"}
        assert all(0.0 <= v <= 1.0 for v in result.values())
        b, n = result["base_acc"], result["new_acc"]
        assert result["hm"] == pytest.approx(0 if b + n == 0 else 2 * b * n / (b + n))
    assert metrics["settings"]["smoke"] is True and metrics["settings"]["shots"] == 4
    assert {"world_s", "models_s", "distill_s", "figure_s"} <= set(metrics["timings"])


def test_quickstart_logs_ame_entropy_only_in_the_ame_run(quickstart_run):
    kd = [json.loads(line) for line in (quickstart_run / "kd.jsonl").read_text().splitlines()]
    ame = [json.loads(line) for line in (quickstart_run / "kd_ame.jsonl").read_text().splitlines()]
    assert kd and ame and len(kd) == len(ame)
    assert "manifold_entropy" not in kd[0] and "manifold_entropy" in ame[0]


def test_quickstart_figure_is_self_contained_plotly_html(quickstart_run):
    html = (quickstart_run / "manifold.html").read_text()
    assert "Plotly.newPlot" in html
    assert "<script src=" not in html  # nothing is fetched: the page works offline
    assert "plotly.js v" in html  # the library's own bundle is inlined
    assert "red circle" in html  # the class text vectors are labelled


def test_quickstart_run_directory_records_parameters_and_environment(quickstart_run):
    params = json.loads((quickstart_run / "parameters.json").read_text())
    assert params["parameters"]["smoke"] is True
    env = json.loads((quickstart_run / "environment.json").read_text())
    assert env["packages"]["torch"] and env["packages"]["open_clip_torch"]
    executed = json.loads((quickstart_run / "00_quickstart.ipynb").read_text())
    assert all(c.get("outputs") is not None for c in executed["cells"] if c["cell_type"] == "code")


def test_existing_run_directory_is_not_overwritten(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already exists"):
        run_notebook(NOTEBOOK_DIR / "00_quickstart.ipynb", tmp_path / "run", {"smoke": True})
    assert (tmp_path / "run" / "metrics.json").read_text() == "{}"
    assert create_run_dir(tmp_path, "run", overwrite=True) == tmp_path / "run"


def test_quickstart_writes_per_sample_tables_and_analysis(quickstart_run):
    from workbench.analysis import read_table

    metrics = json.loads((quickstart_run / "metrics.json").read_text())
    assert set(metrics["analysis"]) == set(MODELS)
    for name in MODELS:
        assert {"ambiguity/spearman", "calibration/ece", "alignment/effective_rank"} <= set(metrics["analysis"][name])
    table = read_table(quickstart_run / "samples_kd_ame.csv")
    assert len(table["entropy"]) == 300  # the smoke test split
    assert {"predicted", "runner_up", "margin", "kl_teacher_student", "true_ambiguity"} <= set(table)
    assert metrics["kd_vs_kd_ame"]["n"] == 300


def test_quickstart_saves_distilled_students_that_reload(quickstart_run):
    import numpy as np
    import torch

    from workbench import models
    from workbench.train import encode_images

    for slug in ("kd", "kd_ame"):
        student, _ = models.create_embedded_model("embedded-vit-student")
        models.load_weights(student, quickstart_run / f"student_{slug}.safetensors")
        features = encode_images(student, np.zeros((2, 32, 32, 3), dtype=np.uint8))
        assert torch.isfinite(features).all()


def test_wrong_parameter_types_fail_before_any_work(tmp_path):
    import papermill

    from workbench.pipeline import check_parameters

    with pytest.raises(TypeError, match=r"shots='16' \(str, expected int\); smoke=1 \(int, expected bool\)"):
        check_parameters({"shots": "16", "smoke": 1}, {"shots": int, "smoke": bool})
    with pytest.raises(TypeError, match=r"ame_weight=True \(bool, expected int or float\)"):
        check_parameters({"ame_weight": True}, {"ame_weight": (int, float)})
    with pytest.raises(papermill.PapermillExecutionError, match="shots='16'"):
        run_notebook(NOTEBOOK_DIR / "00_quickstart.ipynb", tmp_path / "run",
                     {"smoke": True, "shots": "16", "cache_dir": str(tmp_path / "cache")}, progress=False)
    assert not (tmp_path / "cache").exists()  # failed before building the world
