"""Smoke tests of the benchmark scripts (issue 8): each main() runs at minimal sizes and reports sane figures.

These check the plumbing only; speed goals live in benchmarks/RESULTS.md, never in timed tests.
"""

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
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
