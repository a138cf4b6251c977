"""Every notebook executed by papermill in smoke mode, with its outputs checked; then nbval.

The notebooks share one smoke cache (world and pretrained models, built by the first notebook that
needs it; ``tests/test_browser.py`` uses the same path). After the papermill runs,
:func:`test_notebooks_pass_nbval` runs ``pytest --nbval-lax`` on the committed notebooks with smoke
parameters injected: every cell must run, and the cells marked ``# NBVAL_CHECK_OUTPUT`` must print
what the committed notebook shows. After a deliberate change of such an output, rerun this file
with ``WORKBENCH_UPDATE_NOTEBOOK_OUTPUTS=1`` to store the new outputs in ``notebooks/``.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import time

import pytest

from workbench.sweeps import NOTEBOOK_DIR, run_notebook
from workbench.runs import create_run_dir

MODELS = ("teacher zero-shot", "student zero-shot", "KD (inductive)", "KD + AME (inductive)", "KD (transductive)",
          "KD + AME (transductive)")
RUNS = ("kd_inductive", "kd_ame_inductive", "kd_transductive", "kd_ame_transductive")  # file slugs of the KD runs
CELL_TIMEOUT = 600  # seconds one cell may run before the notebook fails (a hang, not a slow machine)
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
SECONDS = {}  # notebook -> papermill wall time, reported by test_notebook_runtimes


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory):
    # Under the session's base temp dir, so tests/test_browser.py finds the same cache.
    return str(tmp_path_factory.getbasetemp() / "smoke-cache")


def execute(name: str, run_dir, parameters: dict):
    """Run notebook ``name`` with papermill into ``run_dir`` (smoke mode) and record its wall time."""
    start = time.perf_counter()
    run_notebook(NOTEBOOK_DIR / name, run_dir, {"smoke": True, **parameters}, progress=False,
                 execution_timeout=CELL_TIMEOUT)
    SECONDS[name] = time.perf_counter() - start
    return run_dir


def read_json(path):
    return json.loads(path.read_text())


def is_self_contained_html(path) -> bool:
    text = path.read_text()
    return "Plotly.newPlot" in text and "<script src=" not in text and "plotly.js v" in text


@pytest.fixture(scope="module")
def concepts_run(tmp_path_factory, smoke_cache):
    return execute("00_concepts.ipynb", tmp_path_factory.mktemp("concepts") / "run",
                   {"cache_dir": smoke_cache, "solutions": True})


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory, smoke_cache):
    return execute("00_quickstart.ipynb", tmp_path_factory.mktemp("quickstart") / "run",
                   {"cache_dir": smoke_cache, "shots": 4})


@pytest.fixture(scope="module")
def explorer_run(tmp_path_factory, smoke_cache):
    return execute("01_manifold_explorer.ipynb", tmp_path_factory.mktemp("explorer") / "run",
                   {"cache_dir": smoke_cache, "fit_on": "all"})  # nbval runs the default, "reference"


@pytest.fixture(scope="module")
def entropy_run(tmp_path_factory, smoke_cache, explorer_run):
    return execute("02_entropy_and_ambiguity.ipynb", tmp_path_factory.mktemp("entropy") / "run",
                   {"cache_dir": smoke_cache, "explorer_dir": str(explorer_run), "gallery_score": "ambiguity_student"})


@pytest.fixture(scope="module")
def ablation_run(tmp_path_factory, smoke_cache):
    return execute("03_ame_ablation.ipynb", tmp_path_factory.mktemp("ablation") / "run", {"cache_dir": smoke_cache})


@pytest.fixture(scope="module")
def tutorial_run(tmp_path_factory, smoke_cache):
    return execute("04_tutorial_entropy_minimization.ipynb", tmp_path_factory.mktemp("tutorial") / "run",
                   {"cache_dir": smoke_cache, "solutions": True})  # nbval runs the stubs


@pytest.fixture(scope="module")
def benchmark_recipe_run(tmp_path_factory, smoke_cache):
    return execute("05_real_benchmark_recipe.ipynb", tmp_path_factory.mktemp("benchmark") / "run",
                   {"cache_dir": smoke_cache, "method": "pca"})


# ----------------------------------------------------------------------------- 00 quickstart
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
    assert metrics["settings"]["images"] == {"inductive": 4 * 15, "transductive": 900, "test": 300, "per_domain": 60}
    assert {"setup_s", "distill_s", "domains_s", "figure_s"} <= set(metrics["timings"])


def test_quickstart_reports_the_regime_and_every_domain(quickstart_run):
    from workbench.regime import TARGETS, meets

    metrics = json.loads((quickstart_run / "metrics.json").read_text())
    summary, models = metrics["regime"], metrics["models"]
    assert set(TARGETS) <= set(summary)
    assert summary["teacher_hm"] == models["teacher zero-shot"]["hm"]
    assert summary["kd_inductive_base_gain"] == pytest.approx(
        models["KD (inductive)"]["base_acc"] - models["student zero-shot"]["base_acc"])
    gap = models["teacher zero-shot"]["hm"] - models["student zero-shot"]["hm"]
    if gap > 0:
        assert summary["gap_closed_transductive"] == pytest.approx(
            (models["KD (transductive)"]["hm"] - models["student zero-shot"]["hm"]) / gap)
    assert summary["met"] == {k: meets(k, summary[k]) for k in TARGETS if summary[k] is not None}
    for name in MODELS:
        assert {"colour_acc", "shape_acc", "acc_clean", "ambiguity_auroc", "ambiguity_spearman"} <= set(models[name])
    domains = metrics["domains"]
    assert set(domains) == set(MODELS)
    expected = {"in_distribution", "blur", "hue_shift", "sketch", "unseen_background", "unseen_texture",
                "domain_average", "vocabulary_second"}
    for row in domains.values():
        assert set(row) == expected and all(0 <= v <= 1 for v in row.values())
        assert row["domain_average"] == pytest.approx(
            sum(row[d] for d in expected - {"in_distribution", "domain_average", "vocabulary_second"}) / 5)


def test_quickstart_logs_ame_entropy_only_in_the_ame_runs(quickstart_run):
    for protocol in ("inductive", "transductive"):
        kd = [json.loads(line) for line in (quickstart_run / f"kd_{protocol}.jsonl").read_text().splitlines()]
        ame = [json.loads(line) for line in (quickstart_run / f"kd_ame_{protocol}.jsonl").read_text().splitlines()]
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
    table = read_table(quickstart_run / "samples_kd_ame_transductive.csv")
    assert len(table["entropy"]) == 300  # the smoke test split
    assert {"predicted", "runner_up", "margin", "kl_teacher_student", "true_ambiguity"} <= set(table)
    assert metrics["kd_vs_kd_ame"]["inductive"]["n"] == metrics["kd_vs_kd_ame"]["transductive"]["n"] == 300


def test_quickstart_saves_distilled_students_that_reload(quickstart_run):
    import numpy as np
    import torch

    from workbench import models
    from workbench.train import encode_images

    for slug in RUNS:
        student, _ = models.create_embedded_model("embedded-vit-student")
        models.load_weights(student, quickstart_run / f"student_{slug}.safetensors")
        features = encode_images(student, np.zeros((2, 32, 32, 3), dtype=np.uint8))
        assert torch.isfinite(features).all()


def test_wrong_parameter_types_fail_before_any_work(tmp_path):
    import papermill

    from workbench.notebook import check_parameters

    with pytest.raises(TypeError, match=r"shots='16' \(str, expected int\); smoke=1 \(int, expected bool\)"):
        check_parameters({"shots": "16", "smoke": 1}, {"shots": int, "smoke": bool})
    with pytest.raises(TypeError, match=r"ame_weight=True \(bool, expected int or float\)"):
        check_parameters({"ame_weight": True}, {"ame_weight": (int, float)})
    with pytest.raises(papermill.PapermillExecutionError, match="shots='16'"):
        run_notebook(NOTEBOOK_DIR / "00_quickstart.ipynb", tmp_path / "run",
                     {"smoke": True, "shots": "16", "cache_dir": str(tmp_path / "cache")}, progress=False)
    assert not (tmp_path / "cache").exists()  # failed before building the world


# ----------------------------------------------------------------------------- every notebook
def notebook_cells(path):
    return json.loads(path.read_text())["cells"]


def source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_every_notebook_opens_with_a_parameters_cell_and_a_smoke_switch():
    for path in sorted(NOTEBOOK_DIR.glob("*.ipynb")):
        code = [c for c in notebook_cells(path) if c["cell_type"] == "code"]
        assert "parameters" in code[0]["metadata"].get("tags", []), f"{path.name}: first code cell not tagged"
        assert "smoke = False" in source(code[0]), f"{path.name}: no smoke switch in the parameters cell"
        assert all("parameters" not in c["metadata"].get("tags", []) for c in code[1:]), path.name


def test_every_numbered_notebook_opens_with_objectives_prerequisites_run_time_and_references():
    for path in sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")):
        opening = source(notebook_cells(path)[0])
        for part in ("**You will learn to**", "**Prerequisites**", "**Run time**", "**References**"):
            assert part in opening, (path.name, part)


def test_every_numbered_notebook_is_executed_by_this_suite():
    fixtures = {"00_concepts.ipynb", "00_quickstart.ipynb", "01_manifold_explorer.ipynb", "02_entropy_and_ambiguity.ipynb",
                "03_ame_ablation.ipynb", "04_tutorial_entropy_minimization.ipynb", "05_real_benchmark_recipe.ipynb"}
    numbered = {p.name for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")}
    assert numbered == fixtures == set(NBVAL_PARAMETERS)  # run_experiment.ipynb: tests/test_sweeps.py


def test_checked_cells_have_committed_outputs():
    for name in NBVAL_PARAMETERS:
        for cell in notebook_cells(NOTEBOOK_DIR / name):
            if cell["cell_type"] == "code" and source(cell).startswith(CHECK_MARK):
                assert cell["outputs"], f"{name}: a {CHECK_MARK} cell has no stored output to compare with"
                assert {o["output_type"] for o in cell["outputs"]} == {"stream"}, name  # small prints only


def test_exercises_are_stubs_with_checks_and_no_notebook_carries_solutions():
    for path in sorted(NOTEBOOK_DIR.glob("*.ipynb")):
        cells = notebook_cells(path)
        assert not [c for c in cells if "solution" in c["metadata"].get("tags", [])], path.name
        stubs = [source(c) for c in cells if c["cell_type"] == "code" and "# your code here" in source(c)]
        for stub in stubs:  # each stub returns None until written, then its check runs
            assert "return None" in stub and "exercises.check(" in stub, (path.name, stub[:80])
            name = stub.split("exercises.check(")[1].split('"')[1]
            assert f'exercises.solution("{path.stem}", "{name}")' in stub, (path.name, name)
        if stubs:
            assert (NOTEBOOK_DIR / "solutions" / f"{path.stem}.py").is_file(), path.name
    assert len([c for c in notebook_cells(NOTEBOOK_DIR / "04_tutorial_entropy_minimization.ipynb")
                if c["cell_type"] == "code" and "# your code here" in source(c)]) == 4


def test_quickstart_computes_the_numbers_its_prose_states(quickstart_run):
    from workbench.notebook import check_stated_numbers, stated_numbers

    notebook = NOTEBOOK_DIR / "00_quickstart.ipynb"
    assert len(stated_numbers(notebook)) >= 6
    assert check_stated_numbers(notebook, read_json(quickstart_run / "metrics.json")["regime"], smoke=True) == []


# ----------------------------------------------------------------------------- 00 concepts
def test_concepts_computes_every_number_its_prose_states(concepts_run):
    from workbench.notebook import check_stated_numbers, stated_numbers

    notebook = NOTEBOOK_DIR / "00_concepts.ipynb"
    metrics = read_json(concepts_run / "metrics.json")
    assert metrics["smoke"] is True
    assert len(stated_numbers(notebook)) >= 9
    assert check_stated_numbers(notebook, metrics["numbers"], smoke=True) == []


def test_concepts_exercises_are_stubs_whose_solutions_pass_their_checks(concepts_run):
    assert read_json(concepts_run / "metrics.json")["exercises"] == dict.fromkeys(
        ("kd_loss", "harmonic_mean", "entropy_gradient"), "correct")  # this run loaded notebooks/solutions/
    cells = [source(c) for c in notebook_cells(NOTEBOOK_DIR / "00_concepts.ipynb") if c["cell_type"] == "code"]
    stubs = [c for c in cells if "# your code here" in c]
    assert len(stubs) == 3 and all("return None" in c and "exercises.check(" in c for c in stubs)


@pytest.mark.skipif(not os.environ.get("WORKBENCH_FULL_CACHE"), reason="needs a cache of the full preset's world "
                    "and models (WORKBENCH_FULL_CACHE); pretraining them takes minutes")
def test_concepts_full_preset_computes_the_numbers_shown(tmp_path):
    from workbench.notebook import check_stated_numbers

    run = tmp_path / "full"
    run_notebook(NOTEBOOK_DIR / "00_concepts.ipynb", run, {"cache_dir": os.environ["WORKBENCH_FULL_CACHE"]},
                 progress=False, execution_timeout=CELL_TIMEOUT)
    assert check_stated_numbers(NOTEBOOK_DIR / "00_concepts.ipynb", read_json(run / "metrics.json")["numbers"]) == []


# ----------------------------------------------------------------------------- 01 manifold explorer
def test_explorer_trains_both_runs_into_its_run_directory(explorer_run):
    metrics = read_json(explorer_run / "metrics.json")
    assert set(metrics["results"]) == {"KD", "KD + AME"}
    for name, folder in metrics["runs"].items():
        result = metrics["results"][name]
        assert all(0 <= result[k] <= 1 for k in ("base_acc", "new_acc", "hm"))
        for file in ("config.json", "train.jsonl", "samples.csv", "embeddings.npz", "metrics.json"):
            assert (explorer_run / folder / file).is_file(), (folder, file)
    assert metrics["settings"]["fit_on"] == "all"  # one map fitted on both runs (nbval runs the default)
    kd, ame = (read_json(explorer_run / f / "config.json")["distill"]["ame_weight"] for f in ("kd", "kd_ame"))
    assert (kd, ame) == (0.0, 50.0)
    assert "manifold_entropy" in (explorer_run / "kd_ame" / "train.jsonl").read_text()
    assert "manifold_entropy" not in (explorer_run / "kd" / "train.jsonl").read_text()


def test_explorer_displays_the_widget_and_saves_the_comparison(explorer_run):
    executed = notebook_cells(explorer_run / "01_manifold_explorer.ipynb")
    views = [o for c in executed if c["cell_type"] == "code" for o in c["outputs"]
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert views, "the explorer cell displayed no widget"
    for file in ("comparison.html", "comparison_animated.html"):
        assert is_self_contained_html(explorer_run / file), file
    assert "Plotly.addFrames" in (explorer_run / "comparison_animated.html").read_text()


def test_explorer_computes_the_numbers_its_prose_states(explorer_run):
    from workbench.notebook import check_stated_numbers, stated_numbers

    notebook = NOTEBOOK_DIR / "01_manifold_explorer.ipynb"
    assert len(stated_numbers(notebook)) == 8
    assert check_stated_numbers(notebook, read_json(explorer_run / "metrics.json")["numbers"], smoke=True) == []


def test_explorer_runs_each_recipe_with_its_own_config_file(explorer_run):
    from workbench.experiment import load_experiment_config

    official = load_experiment_config(NOTEBOOK_DIR.parent / "configs" / "logit_kd.yaml").distill
    trained = read_json(explorer_run / "kd" / "config.json")
    assert trained["setting"] == "inductive" and trained["preset"] == "smoke"
    optim = trained["distill"]["optim"]
    assert optim["epochs"] == 2  # smoke shortens the run; everything else is the recipe's, not the preset's
    assert {k: optim[k] for k in ("lr", "batch_size", "warmup_fraction", "optimizer", "grad_clip")} == {
        "lr": official.optim.lr, "batch_size": official.optim.batch_size, "warmup_fraction": 0.05,
        "optimizer": official.optim.optimizer, "grad_clip": official.optim.grad_clip}


# ----------------------------------------------------------------------------- 02 entropy and ambiguity
def test_entropy_notebook_reads_the_explorer_runs_without_training(entropy_run, explorer_run):
    metrics = read_json(entropy_run / "metrics.json")
    assert metrics["source"] == str(explorer_run)
    assert not (entropy_run / "kd").exists()  # nothing was trained here
    for name in ("KD", "KD + AME"):
        assert 0 <= metrics["calibration"][name]["ece"] <= 1
        for score in ("ambiguity score (student)", "ambiguity score (student + teacher)", "entropy", "1 - margin",
                      "teacher-student KL"):
            rho = metrics["agreement"][f"{name}: {score}"]["spearman"]
            assert math.isnan(rho) or -1 <= rho <= 1
    for file in metrics["figures"]:
        assert is_self_contained_html(entropy_run / file), file


def test_entropy_notebook_computes_the_calibration_and_entropy_its_prose_states(entropy_run):
    from workbench.notebook import check_stated_numbers, stated_numbers

    notebook = NOTEBOOK_DIR / "02_entropy_and_ambiguity.ipynb"
    assert len(stated_numbers(notebook)) == 6
    assert check_stated_numbers(notebook, read_json(entropy_run / "metrics.json")["numbers"], smoke=True) == []


def test_entropy_gallery_shows_the_top_ambiguity_scores(entropy_run, explorer_run):
    import numpy as np

    from workbench.analysis import read_table

    metrics = read_json(entropy_run / "metrics.json")
    rows = metrics["gallery_rows"]
    assert metrics["gallery_score"] == "ambiguity_student"  # the student's own score (nbval runs the averaged one)
    scores = np.asarray(read_table(explorer_run / "kd_ame" / "samples.csv")["ambiguity_student"], float)
    assert len(rows) == 12  # the default `top`
    assert sorted(scores[rows]) == sorted(np.sort(scores)[-12:])


# ----------------------------------------------------------------------------- 03 ablation
def test_ablation_runs_a_small_sweep_over_five_seeds_and_writes_the_report(ablation_run):
    sweep = ablation_run / "sweep"
    metrics = read_json(ablation_run / "metrics.json")
    assert metrics["runs"] == {"done": 10}  # omega 0 and 50 x seeds 0-4
    assert (sweep / "index.csv").is_file() and (sweep / "pipeline.json").is_file()
    assert sorted({r["ame_weight"] for r in metrics["summary"]}) == [0, 50]
    assert [r["ame_weight"] for r in metrics["paired"]] == [50]
    for file in ("summary.csv", "paired.csv"):
        assert (ablation_run / "report" / file).is_file()
    assert is_self_contained_html(ablation_run / "report" / "report.html")
    assert is_self_contained_html(ablation_run / "training_curves.html")


def test_ablation_states_the_effect_with_its_interval_and_corrections(ablation_run):
    from workbench.analysis import holm_adjust
    from workbench.notebook import check_stated_numbers, stated_numbers

    notebook = NOTEBOOK_DIR / "03_ame_ablation.ipynb"
    numbers = read_json(ablation_run / "metrics.json")["numbers"]
    assert numbers["n"] == 5 and numbers["hm_ci_low"] <= numbers["hm_diff"] <= numbers["hm_ci_high"]
    assert numbers["hm_diff"] == pytest.approx(numbers["hm_on"] - numbers["hm_off"])
    metrics = ("hm", "base_acc", "new_acc")
    assert [numbers[f"{m}_p_holm_metrics"] for m in metrics] == pytest.approx(
        holm_adjust([numbers[f"{m}_p"] for m in metrics]).tolist())
    assert len(stated_numbers(notebook)) >= 6
    assert check_stated_numbers(notebook, numbers, smoke=True) == []


# ----------------------------------------------------------------------------- 04 tutorial
def test_tutorial_demonstrates_what_it_claims(tutorial_run):
    demos = read_json(tutorial_run / "metrics.json")["demos"]
    log_rows = math.log(15 + 48)  # C base classes + B images
    # Trained projections drive H(M) far down; KD alone leaves it at its ceiling.
    assert demos["KD + AME"]["manifold_entropy"] < 0.5 * log_rows
    assert demos["KD"]["manifold_entropy"] > 0.99 * log_rows
    # Frozen projections: AME alone collapses the features onto (nearly) one axis.
    assert demos["AME only, frozen"]["effective_rank"] < min(3.0, demos["KD"]["effective_rank"] / 4)
    # Step 7: a real distillation logs each term's gradient norm on the student next to H(M).
    real = read_json(tutorial_run / "metrics.json")["real_run"]
    assert real["grad_norm/kd"] > 0 and real["grad_norm/ame"] > 0 and real["manifold_entropy"] > 0
    for file in ("optimisation_demo.html", "collapse_demo.html", "real_run_curves.html"):
        assert is_self_contained_html(tutorial_run / file), file
    # the reference solutions (notebooks/solutions/) pass every exercise's check
    assert read_json(tutorial_run / "metrics.json")["exercises"] == dict.fromkeys(
        ("uniform_manifold", "omega_sweep", "per_sample_runs", "entropy_by_batch"), "correct")


def test_tutorial_computes_the_numbers_its_prose_states(tutorial_run):
    from workbench.notebook import check_stated_numbers, stated_numbers

    notebook = NOTEBOOK_DIR / "04_tutorial_entropy_minimization.ipynb"
    assert len(stated_numbers(notebook)) == 16
    assert check_stated_numbers(notebook, read_json(tutorial_run / "metrics.json")["numbers"], smoke=True) == []


# ----------------------------------------------------------------------------- 05 benchmark recipe
def test_benchmark_recipe_builds_manifests_from_stand_ins_and_scores_zero_shot(benchmark_recipe_run):
    from workbench import data

    metrics = read_json(benchmark_recipe_run / "metrics.json")
    for name in ("caltech101", "eurosat"):  # stand-ins in the layout the real datasets have, under WORKBENCH_DATA
        manifest = data.load_manifest(benchmark_recipe_run / "manifests" / f"{name}.json")
        assert manifest.image_root.startswith("${WORKBENCH_DATA}"), name
        assert manifest.num_classes == 10 and len(manifest.split("test")) == 40, name
    assert set(metrics["zero_shot"]) == {f"{d}: {side}" for d in ("caltech101", "eurosat")
                                         for side in ("teacher", "student")}
    for result in metrics["zero_shot"].values():
        assert 0 <= result["hm"] <= 1 and result["skipped_images"] == 0
    assert metrics["sweep"]["runs"] == 132 and metrics["sweep"]["states"] == {"missing": 132}


def test_benchmark_recipe_trains_and_explores_a_run_on_the_stand_in_images(benchmark_recipe_run):
    from pathlib import Path

    metrics = read_json(benchmark_recipe_run / "metrics.json")
    run = metrics["run"]
    experiment = benchmark_recipe_run / "distill" / "experiment"
    assert run["dataset"] == "caltech101" and Path(run["dir"]).resolve() == experiment.resolve()
    assert all(0 <= run[k] <= 1 for k in ("base_acc", "new_acc", "hm")) and run["steps"] > 0
    assert run["skipped_images"] == 0
    for file in ("config.json", "dataset.json", "train.jsonl", "student.safetensors", "samples.csv", "embeddings.npz"):
        assert (experiment / file).is_file(), file
    assert read_json(experiment / "config.json")["distill"]["ame_weight"] == 50.0
    dataset = read_json(experiment / "dataset.json")
    stand_ins = (benchmark_recipe_run / "stand_ins").resolve()
    assert dataset["kind"] == "manifest" and Path(dataset["image_root"]).resolve().is_relative_to(stand_ins)
    executed = notebook_cells(benchmark_recipe_run / "05_real_benchmark_recipe.ipynb")
    views = [o for c in executed if c["cell_type"] == "code" for o in c["outputs"]
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
             and "VBox" in "".join(o["data"].get("text/plain", ""))]
    assert views, "the explorer cell displayed no widget"
    assert len(metrics["gallery_rows"]) == 12 and all(0 <= i < 40 for i in metrics["gallery_rows"])
    assert is_self_contained_html(benchmark_recipe_run / "ambiguity_gallery.html")


def test_benchmark_recipe_states_what_a_reader_should_see(benchmark_recipe_run):
    """The pair's image-tower sizes (smoke: the embedded pair's) and the sweep's plan, checked against the run."""
    from workbench.notebook import check_stated_numbers, stated_numbers

    notebook = NOTEBOOK_DIR / "05_real_benchmark_recipe.ipynb"
    assert len(stated_numbers(notebook)) == 6
    numbers = read_json(benchmark_recipe_run / "metrics.json")["numbers"]
    assert check_stated_numbers(notebook, numbers, smoke=True) == []
    assert numbers["image_params_ratio"] == pytest.approx(numbers["teacher_image_params_m"]
                                                          / numbers["student_image_params_m"])


# ----------------------------------------------------------------------------- nbval
def nbval_parameters(name: str, runs: dict, cache: str, tmp_path):
    """Smoke parameters of ``name`` for the nbval run: reuse the papermill runs' outputs where a
    notebook can (trained runs are loaded, done sweep runs skipped), in copies so nothing is changed."""
    fresh = tmp_path / f"nbval-{name.removesuffix('.ipynb')}"
    if name == "01_manifold_explorer.ipynb":
        fresh.mkdir()
        for folder in ("kd", "kd_ame"):
            shutil.copytree(runs[name] / folder, fresh / folder)
        return {"cache_dir": cache, "run_dir": str(fresh), "overwrite_run_dir": True, "method": "pca"}
    if name == "02_entropy_and_ambiguity.ipynb":
        return {"cache_dir": cache, "run_dir": str(fresh), "explorer_dir": str(runs["01_manifold_explorer.ipynb"])}
    if name == "03_ame_ablation.ipynb":
        shutil.copytree(runs[name] / "sweep", tmp_path / "nbval-sweep")
        return {"cache_dir": cache, "run_dir": str(fresh), "sweep_dir": str(tmp_path / "nbval-sweep")}
    if name == "04_tutorial_entropy_minimization.ipynb":
        return {"cache_dir": cache, "run_dir": str(fresh), "steps": 10}
    extra = {"shots": 4} if name == "00_quickstart.ipynb" else {"method": "pca"} if name.startswith("05") else {}
    return {"cache_dir": cache, "run_dir": str(fresh), **extra}


NBVAL_PARAMETERS = dict.fromkeys(["00_concepts.ipynb", "00_quickstart.ipynb", "01_manifold_explorer.ipynb", "02_entropy_and_ambiguity.ipynb",
                                  "03_ame_ablation.ipynb", "04_tutorial_entropy_minimization.ipynb",
                                  "05_real_benchmark_recipe.ipynb"])


def store_checked_outputs(executed, committed) -> None:
    """Copy the outputs of the ``# NBVAL_CHECK_OUTPUT`` cells of an executed notebook into ``committed``."""
    import nbformat

    notebook = nbformat.read(committed, as_version=4)
    checked = [c for c in notebook.cells if c.cell_type == "code" and c.source.startswith(CHECK_MARK)]
    if not checked:
        return
    fresh = {c.id: c for c in nbformat.read(executed, as_version=4).cells if c.cell_type == "code"}
    for cell in checked:
        cell.outputs = [o for o in fresh[cell.id].outputs if o.output_type == "stream"]
        cell.execution_count = fresh[cell.id].execution_count  # nbval refuses outputs of an "unrun" cell
    nbformat.write(notebook, committed)


def test_notebooks_pass_nbval(tmp_path, smoke_cache, concepts_run, quickstart_run, explorer_run, entropy_run,
                              ablation_run, tutorial_run, benchmark_recipe_run):
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook
    import nbformat

    runs = dict(zip(NBVAL_PARAMETERS, (concepts_run, quickstart_run, explorer_run, entropy_run, ablation_run,
                                       tutorial_run, benchmark_recipe_run)))
    if os.environ.get("WORKBENCH_UPDATE_NOTEBOOK_OUTPUTS"):
        for name, run_dir in runs.items():
            store_checked_outputs(run_dir / name, NOTEBOOK_DIR / name)
    copies = []
    for name in NBVAL_PARAMETERS:
        notebook = load_notebook_node(str(NOTEBOOK_DIR / name))
        parameters = {"smoke": True, **nbval_parameters(name, runs, smoke_cache, tmp_path)}
        nbformat.write(parameterize_notebook(notebook, parameters), tmp_path / name)
        copies.append(name)
    start = time.perf_counter()
    # cwd=tmp_path: the copies are outside the repository, so its pytest settings do not apply.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", f"--nbval-cell-timeout={CELL_TIMEOUT}",
         "-p", "no:cacheprovider", "-q", *copies],
        cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    SECONDS["nbval (all notebooks)"] = time.perf_counter() - start
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_notebook_runtimes():
    """Not a check: prints the wall time of each notebook run above (shown with pytest -s or -rA)."""
    if SECONDS:
        report = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in SECONDS.items())
        print(f"\nnotebook wall times: {report}; total {sum(SECONDS.values()):.0f} s")
