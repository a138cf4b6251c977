"""Smoke tests of the benchmark scripts (issue 8): each main() runs at minimal sizes and reports sane figures.

These check the plumbing only; speed goals live in benchmarks/RESULTS.md, never in timed tests.
"""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    if str(BENCHMARKS) not in sys.path:  # the scripts import their sibling harness.py, as `python benchmarks/x.py` does
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_zero_shot_build_reports_speedup_and_a_faster_cached_call(capsys):
    results = _load("zero_shot_build").main(
        ["--classes", "3", "--templates", "2", "--loop-prompts", "4", "--batch-size", "4"])
    assert results["prompts"] == 6 and results["loop_prompts"] == 4
    for key in ("loop_s", "batched_subset_s", "build_first_call_s", "cached_second_call_s", "speedup_same_prompts",
                "cache_bytes"):
        assert results[key] > 0, key
    assert results["cached_second_call_s"] < results["build_first_call_s"]
    out = capsys.readouterr().out
    assert "| step | prompts | seconds | prompts/s |" in out and "speed-up batched / one at a time" in out


def test_extraction_throughput_reports_every_path(capsys):
    results = _load("extraction_throughput").main(
        ["--images", "16", "--batch-one-images", "4", "--batch-sizes", "8", "--repeats", "1",
         "--models", "embedded-vit-student"])
    rows = results["models"]["embedded-vit-student"]
    assert len(rows) == 5  # library default, batch 8, loader workers=0, loader workers=1, batch 1
    assert all(r["images_per_s"] > 0 and r["ratio"] > 0 for r in rows.values())
    assert next(iter(rows.values()))["ratio"] == pytest.approx(1.0)
    assert "| embedded-vit-student | encode_images, batch" in capsys.readouterr().out


def test_projection_scaling_reports_time_and_html_size(capsys):
    results = _load("umap_scaling").main(["--method", "pca", "--sizes", "60,120", "--classes", "4", "--dim", "16"])
    assert [r["points"] for r in results["rows"]] == [60, 120]
    for r in results["rows"]:
        assert r["projection_s"] > 0 and r["figure_s"] > 0 and r["html_mb"] > 0
        assert r["plotted_images"] == r["points"]
    assert "| image points | projection s |" in capsys.readouterr().out


@pytest.mark.parametrize("recipe", ["logit_kd", "promptkd"])
def test_ame_overhead_reports_both_settings_and_their_ratio(recipe, capsys):
    results = _load("ame_overhead").main(["--recipe", recipe, "--images", "24", "--batch", "8", "--epochs", "1",
                                          "--repeats", "2", "--classes", "3", "--device", "cpu"])
    assert len(results["off_s"]) == len(results["on_s"]) == 2
    assert results["steps_per_measurement"] == 3
    assert results["ratio"] == pytest.approx(results["on_step_s"] / results["off_step_s"])
    assert f"| embedded-vit-student | {recipe} |" in capsys.readouterr().out


def test_ame_overhead_refuses_measurements_of_fewer_than_three_steps():
    with pytest.raises(ValueError, match="at least 3 steps per measurement, got 2"):
        _load("ame_overhead").main(["--images", "16", "--batch", "8", "--epochs", "1", "--repeats", "1",
                                    "--device", "cpu"])


def test_teacher_cache_reports_live_and_cached_epochs(capsys):
    results = _load("teacher_cache").main(["--images", "32", "--epochs", "1", "--repeats", "1", "--device", "cpu"])
    assert results["cached_epoch_s"] > 0 and results["live_epoch_s"] > 0 and results["cache_mb"] > 0
    assert results["ratio_live_over_cached"] == pytest.approx(results["live_epoch_s"] / results["cached_epoch_s"])
    assert "**ratio live / cached**" in capsys.readouterr().out


def test_int_list_names_the_bad_value():
    harness = _load("harness")
    assert harness.int_list("64, 128,") == [64, 128]
    with pytest.raises(Exception, match="comma-separated integers, got 'a,b'"):
        harness.int_list("a,b")


def test_prompt_distillation_throughput_reports_every_arm(capsys):
    results = _load("prompt_distillation_throughput").main(
        ["--student", "embedded-vit-student", "--teacher", "embedded-vit-teacher", "--images", "24", "--batch", "8",
         "--repeats", "1", "--classes", "3", "--device", "cpu"])
    arms = {(r["teacher"], r["ame_weight"]) for r in results["rows"]}
    assert arms == {("cached", 0.0), ("cached", 50.0), ("live", 0.0), ("live", 50.0)}
    assert all(r["images_per_s"] > 0 and r["peak_gib"] is None for r in results["rows"])  # no GPU memory on CPU
    assert results["teacher_extraction_images_per_s"] > 0
    assert "| live | 50 |" in capsys.readouterr().out


def test_prompt_distillation_throughput_rejects_models_of_different_resolution():
    with pytest.raises(ValueError, match="224 px images, student embedded-vit-student 32 px"):
        _load("prompt_distillation_throughput").main(
            ["--student", "embedded-vit-student", "--teacher", "ViT-S-32", "--images", "16", "--batch", "8",
             "--device", "cpu"])


def test_real_pair_plumbing_runs_image_files_through_both_recipes(capsys):
    results = _load("real_pair_plumbing").main(["--smoke", "--device", "cpu"])
    arms = {(r["recipe"], r["teacher_mode"], r["ame_weight"]) for r in results["rows"]}
    assert arms == {(recipe, mode, ame) for recipe, mode in
                    (("logit_kd", "cached"), ("promptkd", "cached"), ("promptkd", "live")) for ame in (0.0, 50.0)}
    assert results["images"] == 6 and results["student_width"] != results["teacher_width"]  # own text towers
    figures = [v for r in results["rows"] for v in (r["step_s"], r["images_per_s"], r["peak_gib"])]
    figures += [*results["ame_ratios"].values(), *results["cached_over_live"].values(),
                results["teacher_extraction_images_per_s"]]
    assert all(math.isfinite(v) and v > 0 for v in figures)
    assert set(results["ame_ratios"]) == {"logit_kd/cached", "promptkd/cached", "promptkd/live"}
    assert set(results["cached_over_live"]) == {"promptkd, AME 0", "promptkd, AME 50"}
    out = capsys.readouterr().out
    assert "| promptkd | live | 50 |" in out and "ratio AME on / off (step time), logit_kd/cached:" in out


def test_real_pair_plumbing_refuses_fewer_than_three_steps():
    with pytest.raises(SystemExit):
        _load("real_pair_plumbing").parse_args(["--steps", "2"])


def test_regime_benchmark_reads_finished_seeds_and_reports_mean_std(tmp_path, capsys):
    import json

    from workbench.regime import regime

    def metrics(seed):
        row = {"base_acc": 0.5 + seed / 100, "new_acc": 0.5, "hm": 0.5 + seed / 200, "acc_clean": 0.6,
               "colour_acc": 0.9, "shape_acc": 0.4, "ambiguity_auroc": 0.7, "ambiguity_spearman": 0.3}
        teacher = {**row, "hm": 0.95, "acc_clean": 0.97, "ambiguity_auroc": 0.8 + seed / 100,
                   "ambiguity_spearman": 0.6}
        models = {"teacher zero-shot": teacher, "student zero-shot": row, "KD (transductive)": {**row, "hm": 0.85},
                  "KD (inductive)": row}
        summary = regime({"teacher": teacher, "student_zs": row, "kd_transductive": models["KD (transductive)"],
                          "kd_inductive": row})
        return {"regime": summary, "models": models,
                "domains": {m: {"in_distribution": 0.9, "blur": 0.8, "domain_average": 0.8} for m in models},
                "timings": {"setup_s": 10.0, "distill_s": 5.0}}

    for seed in (0, 1):
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "metrics.json").write_text(json.dumps(metrics(seed)))
    text = _load("regime").main(["--seeds", "0,1", "--out-dir", str(tmp_path)])
    assert "| teacher_ambiguity_auroc | 0.800 | 0.810 | 0.805 ± 0.007 | >= 0.75 | yes |" in text
    assert "| kd_inductive_base_gain | 0.000 | 0.000 | 0.000 ± 0.000 | >= 0.10 | no |" in text
    assert "| student zero-shot | 50.5 ± 0.7 |" in text and "| teacher zero-shot | 90.0 | 80.0 | 80.0 |" in text
    assert text in capsys.readouterr().out


def test_ambiguity_confounds_reports_each_split_per_model(tmp_path_factory, capsys):
    # the smoke world and models, in the cache the notebook tests share (built here if this test runs first)
    cache = tmp_path_factory.getbasetemp() / "smoke-cache"
    text = _load("ambiguity_confounds").main(["--seeds", "0", "--preset", "smoke", "--cache-dir", str(cache)])
    assert text.count("| ambiguity AUROC | seed 0 | mean ± std |") == 2  # teacher and student zero-shot
    for row in ("| all samples |", "| occluded clean samples left out |", "| ambiguous with mixing weight > 0.2 only |",
                "| occluded = True (n = ", "| background = dark (n = ", "| noise |"):
        assert text.count(row) == 2, row
    assert text in capsys.readouterr().out
