"""Pipelines: spec validation, sweeps executed with papermill, reruns, failures, sharding, index, report.

A tiny notebook written into a temporary directory stands in for the real ones (each execution is a
kernel start, about a second); tests/test_experiment.py runs notebooks/run_experiment.ipynb itself.
"""

import csv
import json
import os
import shutil

import nbformat
import pytest
import yaml

from workbench import sweeps
from workbench.__main__ import main
from workbench.sweeps import (PipelineSpec, SpecError, build_report, load_spec, plan, run_pipeline, select_runs,
                                write_index)

TINY_PARAMETERS = """w = 0  # the swept parameter (plays omega)
seed = 0
fail_flag = ""  # while this file exists, the run w=5, seed=1 raises
counter = ""  # every execution appends a line here
run_dir = ""
overwrite_run_dir = False"""
TINY_BODY = """import json, os, pathlib
if counter:
    with open(counter, "a") as fh:
        fh.write(f"{w},{seed}\\n")
if fail_flag and pathlib.Path(fail_flag).exists() and w == 5 and seed == 1:
    raise RuntimeError("deliberate failure")
metrics = {"score": 2 * w + seed, "nested": {"w": w}, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}
pathlib.Path(run_dir, "metrics.json").write_text(json.dumps(metrics))"""
IDS = ["w=0__seed=0", "w=0__seed=1", "w=5__seed=0", "w=5__seed=1"]


def write_notebook(path, parameters=TINY_PARAMETERS, body=TINY_BODY):
    cells = [nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell(body)]
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {
        "display_name": "Python 3", "language": "python", "name": "python3"}}), str(path))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"root": root, "notebook": write_notebook(root / "tiny.ipynb"), "flag": root / "fail.flag",
            "counter": root / "counter.txt"}


def spec_data(tiny, output, **changes):
    data = {"name": "tiny", "notebook": str(tiny["notebook"]), "output": str(output),
            "parameters": {"fail_flag": str(tiny["flag"]), "counter": str(tiny["counter"])},
            "grid": {"w": [0, 5], "seed": [0, 1]},
            "report": {"metrics": ["score", "nested/w", "absent"], "seed": "seed", "sweep": "w", "off_value": 0,
                       "on_value": 5}}
    data.update(changes)
    return data


def make_spec(tiny, output, **changes):
    return PipelineSpec.from_dict(spec_data(tiny, output, **changes), origin="tiny.yaml")


def executions(tiny):
    return tiny["counter"].read_text().splitlines() if tiny["counter"].exists() else []


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def sweep(tiny):
    """A 2x2 sweep executed as two shards with one deliberate failure, then rerun twice; observations."""
    output = tiny["root"] / "out"
    spec = make_spec(tiny, output)
    tiny["flag"].write_text("fail")
    seen = {"shards": []}
    for shard in ("0/2", "1/2"):
        before = len(executions(tiny))
        result = run_pipeline(spec, shard=shard, version="v1", progress=False)
        seen["shards"].append({"executed": sorted(result.executed), "lines": executions(tiny)[before:]})
    seen["first_index"] = read_csv(output / "index.csv")
    seen["failed_status"] = json.loads((output / "w=5__seed=1" / "status.json").read_text())
    seen["failed_notebook"] = json.loads((output / "w=5__seed=1" / "tiny.ipynb").read_text())
    mtimes = {rid: (output / rid / "status.json").stat().st_mtime_ns for rid in IDS}

    before = len(executions(tiny))
    seen["retry_still_failing"] = run_pipeline(spec, version="v1", progress=False)
    seen["retry_lines"] = executions(tiny)[before:]
    tiny["flag"].unlink()
    before = len(executions(tiny))
    seen["retry_fixed"] = run_pipeline(spec, version="v1", progress=False)
    seen["fixed_lines"] = executions(tiny)[before:]
    before = len(executions(tiny))
    seen["rerun"] = run_pipeline(spec, version="v1", progress=False)
    seen["rerun_lines"] = executions(tiny)[before:]
    seen["mtimes_before"] = mtimes
    seen["mtimes_after"] = {rid: (output / rid / "status.json").stat().st_mtime_ns for rid in IDS}
    seen["fixed_status"] = json.loads((output / "w=5__seed=1" / "status.json").read_text())
    return spec, output, seen


# ----------------------------------------------------------------------------- spec
def test_grid_expands_in_spec_order_with_readable_ids_and_exclusions(tiny, tmp_path):
    spec = make_spec(tiny, tmp_path)
    assert [(r.index, r.run_id) for r in spec.runs()] == list(enumerate(IDS))
    assert spec.runs()[2].parameters == {"fail_flag": str(tiny["flag"]), "counter": str(tiny["counter"]),
                                         "w": 5, "seed": 0}
    spec = make_spec(tiny, tmp_path, exclude=[{"w": 5, "seed": [1, 2]}])
    assert [r.run_id for r in spec.runs()] == IDS[:3]
    spec = make_spec(tiny, tmp_path, grid={"w": [0.5, 2.0, "a b/c", True]})
    assert [r.run_id for r in spec.runs()] == ["w=0.5", "w=2", "w=a-b-c", "w=true"]
    assert make_spec(tiny, tmp_path, grid={}).runs()[0].run_id == "run"


@pytest.mark.parametrize("change, message", [
    ({"colour": 1}, r"unknown field colour( \(did you mean \w+\?\))?; valid names: name, description"),
    ({"name": "a b"}, "name: expected a name"),
    ({"notebook": "missing.ipynb"}, "notebook: notebook missing.ipynb not found"),
    ({"notebooks": ["x.ipynb"]}, "notebook: give exactly one of 'notebook'"),
    ({"grid": {"w": 3}}, r"grid.w: expected a non-empty list of values, got 3"),
    ({"grid": {"w": []}}, r"grid.w: expected a non-empty list"),
    ({"grid": {"w": ["a b", "a-b"]}}, r"grid.w: values must be distinct"),
    ({"grid": {"counter": [1, 2]}}, r"grid.counter: also set in 'parameters'"),
    ({"grid": {"shots": [1]}}, r"parameters/grid: \['shots'\] not declared in the parameters cell of tiny.ipynb"),
    ({"parameters": {"run_dir": "x"}}, r"parameters.run_dir: 'run_dir' is set by the pipeline"),
    ({"exclude": [{"shots": 1}]}, r"exclude\[0\].shots: not a grid parameter"),
    ({"exclude": [{"w": [0, 5]}]}, "exclude: every grid point is excluded"),
    ({"cell_timeout": 0}, "cell_timeout: expected a positive number"),
    ({"report": {True: 0}}, "report: a key reads as true/false"),
    ({"report": {"metrics": []}}, "report.metrics: expected a non-empty list"),
])
def test_bad_specs_name_the_field(tiny, tmp_path, change, message):
    with pytest.raises(SpecError, match=f"^tiny.yaml: {message}"):
        make_spec(tiny, tmp_path, **change)


def test_yaml_spec_overrides_and_shipped_specs(tiny, tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec_data(tiny, tmp_path / "out"), sort_keys=False))
    spec = load_spec(path, overrides={"seed": 3, "counter": "c.txt"}, output=tmp_path / "other")
    assert [r.run_id for r in spec.runs()] == ["w=0__seed=3", "w=5__seed=3"]
    assert spec.parameters["counter"] == "c.txt" and spec.output == tmp_path / "other"
    path.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)

    shipped = {name: load_spec(sweeps.REPO_ROOT / "pipelines" / f"{name}.yaml")
               for name in ("quickstart", "ame_ablation", "benchmark_11", "recipe_table")}
    assert len(shipped["quickstart"].runs()) == 3
    ablation = shipped["ame_ablation"]
    assert len(ablation.runs()) == 2 * 3 * 7 * 5
    assert ablation.grid["ame_weight"] == [0, 1, 5, 10, 25, 50, 100] and ablation.grid["shots"] == [1, 4, 16]
    assert ablation.runs()[0].run_id == "config=configs-logit_kd.yaml__shots=1__ame_weight=0__seed=0"
    assert len(shipped["benchmark_11"].runs()) == 11 * 2 * 2 * 3
    table = shipped["recipe_table"]
    assert len(table.runs()) == 7 * 3 * 2 * 5 and table.in_process
    for config in table.grid["config"]:  # every recipe config exists and parses
        assert (sweeps.REPO_ROOT / config).is_file(), config


def test_shards_partition_the_grid(tiny, tmp_path):
    runs = make_spec(tiny, tmp_path, grid={"w": [0, 1, 2, 3, 4], "seed": [0, 1, 2]}).runs()
    shards = [select_runs(runs, f"{i}/4") for i in range(4)]
    assert sorted(r.index for shard in shards for r in shard) == list(range(15))
    assert [r.index for r in shards[1]] == [1, 5, 9, 13]
    assert select_runs(runs, only_index=7) == [runs[7]]
    with pytest.raises(ValueError, match="out of range"):
        select_runs(runs, only_index=15)
    with pytest.raises(ValueError, match="0 <= i < n"):
        select_runs(runs, "4/4")


def test_code_version_follows_code_cells_only(tmp_path):
    a = write_notebook(tmp_path / "a.ipynb")
    version = sweeps.code_version(a)
    notebook = json.loads(a.read_text())
    notebook["cells"][1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "hi"}]
    notebook["cells"][1]["execution_count"] = 3
    a.write_text(json.dumps(notebook))
    assert sweeps.code_version(a) == version
    assert sweeps.code_version(write_notebook(tmp_path / "b.ipynb", body=TINY_BODY + "\n1")) != version


# ----------------------------------------------------------------------------- execution
def test_sweep_runs_in_shards_records_the_failure_and_goes_on(sweep):
    spec, output, seen = sweep
    first, second = seen["shards"]
    assert first["executed"] == ["w=0__seed=0", "w=5__seed=0"] and second["executed"] == ["w=0__seed=1", "w=5__seed=1"]
    assert sorted(first["lines"]) == ["0,0", "5,0"] and sorted(second["lines"]) == ["0,1", "5,1"]
    status = seen["failed_status"]
    assert status["status"] == "failed" and status["error"].startswith("RuntimeError: deliberate failure")
    assert "deliberate failure" in status["traceback"] and status["code_version"] == "v1"
    assert status["parameters"]["w"] == 5 and status["grid"] == {"w": 5, "seed": 1}
    cells = seen["failed_notebook"]["cells"]
    assert any(o.get("ename") == "RuntimeError" for o in cells[-1]["outputs"])  # kept up to the failing cell
    for rid in IDS:
        assert {"parameters.json", "environment.json", "status.json", "tiny.ipynb"} <= {p.name for p in (output / rid).iterdir()}
    rows = seen["first_index"]
    assert [r["run_id"] for r in rows] == IDS
    assert [r["status"] for r in rows] == ["done", "done", "done", "failed"]
    assert [r["metrics/score"] for r in rows] == ["0", "1", "10", ""]
    assert rows[3]["error"].startswith("RuntimeError: deliberate failure")


def test_rerun_retries_only_failed_runs_and_skips_done_ones(sweep):
    _, output, seen = sweep
    assert seen["retry_lines"] == ["5,1"] and seen["retry_still_failing"].failed == ["w=5__seed=1"]
    assert seen["retry_still_failing"].count("done") == 3 and seen["retry_still_failing"].count("failed") == 1
    assert seen["fixed_lines"] == ["5,1"] and seen["retry_fixed"].failed == []
    assert seen["fixed_status"]["status"] == "done"
    assert len(seen["fixed_status"]["previous_errors"]) == 2
    assert seen["rerun_lines"] == [] and seen["rerun"].executed == {} and seen["rerun"].count("done") == 4
    assert "4 already done (skipped)" in seen["rerun"].summary()
    assert all(seen["mtimes_before"][rid] == seen["mtimes_after"][rid] for rid in IDS[:3])  # never rewritten


def test_index_has_exactly_one_row_per_run(sweep):
    _, output, _ = sweep
    write_index(output)
    rows = read_csv(output / "index.csv")
    assert [r["run_id"] for r in rows] == IDS and {r["status"] for r in rows} == {"done"}
    assert [r["metrics/score"] for r in rows] == ["0", "1", "10", "11"]
    assert [(r["w"], r["seed"]) for r in rows] == [("0", "0"), ("0", "1"), ("5", "0"), ("5", "1")]
    assert [r["metrics/nested/w"] for r in rows] == ["0", "0", "5", "5"] and rows[0]["grid_index"] == "0"


def test_report_summarises_seeds_and_pairs_on_with_off(sweep, tmp_path):
    _, output, _ = sweep
    report = build_report(output, report_dir=tmp_path / "report")
    summary = read_csv(report["summary_csv"])
    assert [(r["w"], r["metric"], r["n"]) for r in summary] == [("0", "score", "2"), ("0", "nested/w", "2"),
                                                                ("5", "score", "2"), ("5", "nested/w", "2")]
    assert float(summary[0]["mean"]) == 0.5 and float(summary[2]["mean"]) == 10.5
    assert float(summary[2]["std"]) == pytest.approx(0.5 ** 0.5)
    paired = read_csv(report["paired_csv"])
    assert [(r["w"], r["off"], r["metric"], r["n"]) for r in paired] == [("5", "0", "score", "2"), ("5", "0", "nested/w", "2")]
    assert float(paired[0]["mean_diff"]) == 10 and float(paired[0]["ci_low"]) == 10 and paired[0]["exceeds_noise"] == "True"
    # One comparison per metric here, so Holm leaves its p-value (0: both seeds gain exactly 10) as it is.
    assert (paired[0]["comparisons"], float(paired[0]["p_holm"]), paired[0]["holds_after_holm"]) == ("1", 0.0, "True")
    assert report["result"]["missing_metrics"] == ["absent"]
    html = report["html"].read_text()
    assert html.count("Plotly.newPlot") == 6  # per metric: curve, on/off bars, paired difference
    assert "<script src=" not in html and "plotly.js v" in html  # offline
    assert "Paired comparisons" in html and "absent" in html
    markdown = report["markdown"].read_text()
    assert "| w=0 | w=5 | 5 − 0 [95% CI] | n | p, Holm over 1 |" in markdown  # the sweep values are the columns
    assert "| 0.5000 ± 0.7071 | 10.5000 ± 0.7071 | +10.0000 [+10.0000, +10.0000] | 2 | 0.0000 |" in markdown



def test_report_reads_the_training_dynamics_of_the_on_runs(sweep, tmp_path):
    _, output, _ = sweep
    copy = tmp_path / "sweep"
    shutil.copytree(output, copy)
    for seed, (first, last, ame) in enumerate([(3.0, 1.0, 0.5), (4.0, 2.0, 4.0)]):  # the w = 5 runs' logs
        records = [{"step": 0, "manifold_entropy": first, "grad_norm/kd": 2.0, "grad_norm/ame": ame},
                   {"step": 9, "manifold_entropy": last, "grad_norm/kd": 1.0, "grad_norm/ame": 0.0}]
        (copy / f"w=5__seed={seed}" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (copy / "w=0__seed=0" / "train.jsonl").write_text(json.dumps({"step": 0, "grad_norm/kd": 1.0}) + "\n")
    report = build_report(copy, report_dir=tmp_path / "report")
    assert report["dynamics"] == [{"w": 5, "runs": 2, "entropy_first": 3.5, "entropy_last": 1.5,
                                   "ame_share_median": 0.125, "ame_share_max": 2.0}]  # shares 0.25, 0, 2, 0
    row = read_csv(report["dynamics_csv"])[0]
    assert row["ame_share_max"] == "2.0" and row["ame_share_median"] == "0.125"  # plain numbers, not numpy reprs
    assert "**Training dynamics** of the w = 5 runs" in report["markdown"].read_text()
    assert "Training dynamics of the w = 5 runs" in report["html"].read_text()
    plain = build_report(output, report_dir=tmp_path / "plain")  # no logs: no section, no file
    assert plain["dynamics"] == [] and plain["dynamics_csv"] is None

def test_changed_code_or_parameters_make_finished_runs_stale(sweep, tmp_path):
    spec, output, _ = sweep
    assert {p.state for p in plan(spec, version="v2")} == {"stale"}
    assert "code version v1 -> v2" in plan(spec, version="v2")[0].detail
    data = spec_data_from(spec)
    changed = plan(PipelineSpec.from_dict({**data, "parameters": {**data["parameters"], "counter": "x.txt"}}),
                   version="v1")
    assert changed[0].state == "stale" and "parameters differ: counter" in changed[0].detail

    copy = tmp_path / "out"
    shutil.copytree(output, copy)
    spec = PipelineSpec.from_dict({**spec_data_from(spec), "output": str(copy)})
    result = run_pipeline(spec, version="v2", progress=False)
    assert result.executed == {} and result.count("stale") == 4 and "4 stale" in result.summary()
    result = run_pipeline(spec, version="v2", only_index=0, rerun_stale=True, progress=False)
    assert list(result.executed) == ["w=0__seed=0"] and result.failed == []
    archived = list((copy / ".stale").iterdir())
    assert len(archived) == 1 and archived[0].name.startswith("w=0__seed=0.v1.")
    assert json.loads((archived[0] / "status.json").read_text())["code_version"] == "v1"
    assert [p.state for p in plan(spec, version="v2")] == ["done", "stale", "stale", "stale"]
    assert len(read_csv(copy / "index.csv")) == 4  # archived runs are not in the index


def spec_data_from(spec):
    return {"name": spec.name, "notebook": str(spec.notebooks[0]), "output": str(spec.output),
            "parameters": spec.parameters, "grid": spec.grid, "report": {"seed": "seed", "sweep": "w"}}


def test_foreign_directories_are_never_touched(tiny, tmp_path):
    spec = make_spec(tiny, tmp_path / "out")
    foreign = tmp_path / "out" / IDS[1]
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    planned = plan(spec, version="v1")
    assert [p.state for p in planned] == ["missing", "conflict", "missing", "missing"]
    result = run_pipeline(spec, version="v1", only_index=1, progress=False)
    assert result.executed == {} and (foreign / "notes.txt").read_text() == "mine"
    assert not (foreign / "status.json").exists() and "1 conflict" in result.summary()


def test_parallel_workers_each_see_their_own_device(tiny, tmp_path):
    spec = make_spec(tiny, tmp_path / "out", grid={"w": [0, 5], "seed": [0]})
    result = run_pipeline(spec, devices=["7", "8"], version="v1", progress=False)
    assert sorted(result.executed) == ["w=0__seed=0", "w=5__seed=0"] and result.failed == []
    for rid, status in result.executed.items():
        metrics = json.loads((tmp_path / "out" / rid / "metrics.json").read_text())
        assert status["cuda_visible_devices"] in ("7", "8") and metrics["cuda"] == status["cuda_visible_devices"]
    with pytest.raises(ValueError, match="at most one worker per device"):
        run_pipeline(spec, workers=3, devices=["0", "1"], progress=False)


def test_command_line_runs_one_index_then_plans_indexes_and_reports(tiny, tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec_data(tiny, tmp_path / "out"), sort_keys=False))
    tiny["flag"].write_text("fail")
    try:
        assert main(["pipeline", "run", str(path), "--only-index", "3", "--quiet"]) == 1  # the failing run
        assert main(["pipeline", "run", str(path), "--only-index", "0", "--quiet"]) == 0
    finally:
        tiny["flag"].unlink()
    out = capsys.readouterr().out
    assert "failed: w=5__seed=1: RuntimeError: deliberate failure" in out and "ran 1: 1 done, 0 failed" in out
    assert main(["pipeline", "plan", str(path), "--shard", "1/2"]) == 0
    out = capsys.readouterr().out
    assert "    1  missing     w=0__seed=1" in out and "    3  failed      w=5__seed=1" in out and "2 runs" in out
    assert main(["pipeline", "index", str(tmp_path / "out")]) == 0
    assert "2 runs (1 done, 1 failed)" in capsys.readouterr().out
    assert main(["pipeline", "report", str(tmp_path / "out"), "--metric", "score"]) == 0
    out = capsys.readouterr().out
    assert "runs: 1 done, 1 failed" in out and (tmp_path / "out" / "report" / "report.html").is_file()
    with pytest.raises(SystemExit, match="grid.w: expected a non-empty list"):
        main(["pipeline", "run", str(path), "--set", "w=[]"])


@pytest.mark.reliability
def test_sigkilled_sweep_resumes_without_redoing_finished_runs(tmp_path):
    """Kill ``python -m workbench pipeline run`` mid-sweep; the rerun does only what is missing."""
    import signal
    import subprocess
    import sys
    import time

    notebook = write_notebook(tmp_path / "tiny.ipynb")
    counter = tmp_path / "counter.txt"
    data = {"name": "slow", "notebook": str(notebook), "output": str(tmp_path / "out"),
            "parameters": {"counter": str(counter)}, "grid": {"w": [0, 5], "seed": [0, 1]},
            "exclude": [], "report": {"metrics": ["score"], "seed": "seed", "sweep": "w", "off_value": 0,
                                      "on_value": 5}}
    spec_path = tmp_path / "slow.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    process = subprocess.Popen([sys.executable, "-m", "workbench", "pipeline", "run", str(spec_path), "--quiet"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(counter.read_text().splitlines() if counter.exists() else []) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    # Killed while the second run executes (each kernel start takes about a second).
    finished_before = {p.parent.name for p in (tmp_path / "out").glob("*/status.json")
                       if json.loads(p.read_text())["status"] == "done"}
    assert 1 <= len(finished_before) < 4
    spec = load_spec(spec_path)
    states = {p.run.run_id: p.state for p in plan(spec)}
    assert {rid for rid, state in states.items() if state == "done"} == finished_before
    assert set(states.values()) <= {"done", "incomplete", "missing"}  # the killed run is seen as incomplete
    lines_before = len(counter.read_text().splitlines())
    result = run_pipeline(spec, progress=False)
    assert not set(result.executed) & finished_before  # nothing finished is redone
    assert set(result.executed) | finished_before == {r.run_id for r in spec.runs()}
    assert len(counter.read_text().splitlines()) - lines_before == len(result.executed)
    index = read_csv(tmp_path / "out" / "index.csv")
    assert sorted(r["run_id"] for r in index) == sorted(r.run_id for r in spec.runs())
    assert all(r["status"] == "done" for r in index)


# ----------------------------------------------------------------------------- cluster submission (submitit)
@pytest.fixture(scope="module")
def submitted(tiny, tmp_path_factory):
    """Three runs submitted through submitit's local executor (one fails), then resubmitted twice."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("submitted")
    flag, counter = root / "fail.flag", root / "counter.txt"
    data = spec_data(tiny, root / "out", parameters={"fail_flag": str(flag), "counter": str(counter)},
                     exclude=[{"w": 5, "seed": 0}], cluster={"timeout_min": 10, "partition": None})
    spec = PipelineSpec.from_dict(data, origin="tiny.yaml")
    seen = {"spec": spec, "output": root / "out", "ids": [r.run_id for r in spec.runs()]}
    lines = lambda: counter.read_text().splitlines() if counter.exists() else []  # noqa: E731
    flag.write_text("fail")
    seen["first"] = sweeps.submit_pipeline(spec, executor="submitit-local", wait=True, version="v1", progress=False)
    seen["first_lines"] = sorted(lines())
    seen["first_states"] = [p.state for p in plan(spec, version="v1")]
    seen["first_status"] = {rid: json.loads((root / "out" / rid / "status.json").read_text()) for rid in seen["ids"]}
    seen["first_jobs"] = {rid: json.loads((root / "out" / rid / "job.json").read_text()) for rid in seen["ids"]}
    seen["first_files"] = {rid: sorted(p.name for p in (root / "out" / rid).iterdir()) for rid in seen["ids"]}
    flag.unlink()
    # The same spec executed by the local executor, for comparison.
    local = PipelineSpec.from_dict({**data, "output": str(root / "local")}, origin="tiny.yaml")
    seen["local"] = run_pipeline(local, only_index=0, version="v1", progress=False)
    seen["local_dir"] = root / "local" / seen["ids"][0]

    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    before = len(lines())
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.MonkeyPatch.context() as patch:  # through the command line
        patch.setattr(sweeps.state, "code_version", lambda notebook, digest=None: "v1")  # as version="v1" does
        seen["second_exit"] = main(["pipeline", "run", str(path), "--executor", "submitit-local", "--quiet"])
    seen["second_out"] = out.getvalue()
    seen["second_lines"] = lines()[before:]
    seen["second_status"] = json.loads((root / "out" / "w=5__seed=1" / "status.json").read_text())
    seen["second_job"] = json.loads((root / "out" / "w=5__seed=1" / "job.json").read_text())
    seen["third"] = sweeps.submit_pipeline(load_spec(path), executor="submitit-local", wait=True,
                                           progress=False, version="v1")
    seen["final_states"] = [p.state for p in plan(spec, version="v1")]
    return seen


def test_submitit_local_array_leaves_what_a_local_run_leaves(submitted, tmp_path):
    first, ids, output = submitted["first"], submitted["ids"], submitted["output"]
    assert ids == ["w=0__seed=0", "w=0__seed=1", "w=5__seed=1"]
    assert sorted(first.jobs) == ids and len(set(first.jobs.values())) == 3  # one job per run
    assert sorted(first.executed) == ids and first.failed == ["w=5__seed=1"]
    assert "submitted 3 as submitit-local jobs; ran 3: 2 done, 1 failed" in first.summary()
    assert submitted["first_lines"] == ["0,0", "0,1", "5,1"]  # every run executed once, in its own job
    local_dir = submitted["local_dir"]
    local_status = json.loads((local_dir / "status.json").read_text())
    for rid in ids[:2]:
        status = submitted["first_status"][rid]
        assert submitted["first_files"][rid] == sorted({p.name for p in local_dir.iterdir()} | {"job.json"})
        assert set(status) == set(local_status) | {"job"} and status["status"] == "done"
        assert status["code_version"] == "v1" and status["runner"] == "papermill"
        assert status["job"] == {"executor": "submitit-local", "job_id": first.jobs[rid], "host": status["host"]}
        job = submitted["first_jobs"][rid]
        assert job["job_id"] == first.jobs[rid] and job["executor"] == "submitit-local"
        assert os.path.dirname(job["stdout"]).startswith(str(output / "submitit")) and os.path.isfile(job["stdout"])
    reference = json.loads((local_dir / "metrics.json").read_text())
    metrics = json.loads((output / ids[0] / "metrics.json").read_text())
    assert {k: v for k, v in metrics.items() if k != "cuda"} == {k: v for k, v in reference.items() if k != "cuda"}
    assert submitted["first_status"][ids[0]]["parameters"] == local_status["parameters"]
    # index and report read the output as they read a local one
    rows = read_csv(write_index(output))
    assert [r["run_id"] for r in rows] == ids and [r["status"] for r in rows] == ["done"] * 3
    assert [r["metrics/score"] for r in rows] == ["0", "1", "11"]
    report = build_report(output, report_dir=tmp_path / "report")
    assert report["counts"] == {"done": 3} and report["html"].is_file()
    assert json.loads((output / "pipeline.json").read_text())["cluster"]["timeout_min"] == 10


def test_submitit_resubmits_only_the_failed_run(submitted):
    first, ids = submitted["first"], submitted["ids"]
    failed = submitted["first_status"]["w=5__seed=1"]
    assert failed["status"] == "failed" and failed["error"].startswith("RuntimeError: deliberate failure")
    assert "deliberate failure" in failed["traceback"] and failed["job"]["job_id"] == first.jobs["w=5__seed=1"]
    assert submitted["first_states"] == ["done", "done", "failed"]
    # the second submission (command line) resubmits that run alone, as a new job
    assert submitted["second_exit"] == 0 and submitted["second_lines"] == ["5,1"]
    out = submitted["second_out"]
    assert "3 runs selected; 2 already done (skipped); submitted 1 as submitit-local jobs; ran 1: 1 done" in out
    assert submitted["second_job"]["job_id"] not in first.jobs.values()
    status = submitted["second_status"]
    assert status["status"] == "done" and status["job"]["job_id"] == submitted["second_job"]["job_id"]
    assert len(status["previous_errors"]) == 1 and "deliberate failure" in status["previous_errors"][0]
    third = submitted["third"]
    assert third.jobs == {} and third.executed == {} and third.count("done") == 3
    assert submitted["final_states"] == ["done"] * 3


@pytest.mark.parametrize("cluster, message", [
    ("1 GPU", "cluster: expected a mapping"),
    ({"gpus": 1}, r"unknown field cluster.gpus; valid names: cluster.partition, .* go under cluster.extra"),
    ({"gpus_per_node": True}, "cluster.gpus_per_node: expected an integer >= 0"),
    ({"timeout_min": 0}, "cluster.timeout_min: expected an integer >= 1"),
    ({"mem_gb": "16G"}, "cluster.mem_gb: expected a number of GB > 0"),
    ({"mem_gb": 0}, "cluster.mem_gb: expected a number of GB > 0"),
    ({"partition": ""}, "cluster.partition: expected a partition name or null"),
    ({"array_parallelism": 0}, "cluster.array_parallelism: expected an integer >= 1"),
    ({"extra": ["account=x"]}, "cluster.extra: expected a mapping"),
    ({"extra": {"time": 60}}, "cluster.extra.time: give it as cluster.timeout_min"),
    ({"extra": {"ntasks_per_node": 2}}, "cluster.extra.ntasks_per_node: set by the pipeline itself"),
    ({"extra": {"acount": "lab"}}, "cluster.extra.acount: not a submitit slurm parameter"),
])
def test_submitit_bad_cluster_settings_name_the_field(tiny, tmp_path, cluster, message):
    with pytest.raises(SpecError, match=f"^tiny.yaml: {message}"):
        make_spec(tiny, tmp_path / "out", cluster=cluster)
    assert not (tmp_path / "out").exists()


def test_submitit_submission_refused_before_anything_is_written(tiny, tmp_path, monkeypatch):
    spec = make_spec(tiny, tmp_path / "out", cluster={"gpus_per_node": 1, "extra": {"account": "lab"}})
    assert spec.cluster.submitit_parameters("tiny")["slurm_account"] == "lab"
    overridden = r"^tiny.yaml \(with cluster overrides \['timeout_min'\]\): cluster.timeout_min"
    with pytest.raises(SpecError, match=overridden):
        sweeps.submit_pipeline(spec, executor="submitit-local", cluster={"timeout_min": -1})
    with pytest.raises(ValueError, match="executor must be one of"):
        sweeps.submit_pipeline(spec, executor="pbs")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec_data(tiny, tmp_path / "out"), sort_keys=False))
    with pytest.raises(SystemExit, match="cluster.gpus_per_node: expected an integer"):
        main(["pipeline", "run", str(path), "--executor", "submitit-local", "--cluster", "gpus_per_node=two"])
    with pytest.raises(SystemExit, match="--workers and --devices are for --executor local"):
        main(["pipeline", "run", str(path), "--executor", "slurm", "--workers", "2"])
    if shutil.which("srun") is None:  # no slurm here: submitit says so
        with pytest.raises(SystemExit, match="srun"):
            main(["pipeline", "run", str(path), "--executor", "slurm"])
    monkeypatch.setitem(__import__("sys").modules, "submitit", None)
    with pytest.raises(ImportError, match=r"needs the submitit package \(pip install 'submitit>=1.5'"):
        sweeps.submit_pipeline(spec, executor="slurm")
    assert not (tmp_path / "out").exists()


def test_submitit_queued_runs_count_as_running_while_their_job_lives(tiny, tmp_path):
    import platform
    import subprocess
    import sys

    spec = make_spec(tiny, tmp_path / "out")
    run_dir = tmp_path / "out" / IDS[0]
    run_dir.mkdir(parents=True)
    (run_dir / "status.json").write_text(json.dumps({"status": "queued", "run_id": IDS[0]}))
    run = spec.runs()[0]
    assert sweeps.run_state(run, spec.output, "v1") == ("incomplete", "status 'queued' (interrupted)")
    (run_dir / "job.json").write_text(json.dumps({"executor": "submitit-local", "job_id": str(os.getpid()),
                                                  "host": platform.node()}))
    assert sweeps.run_state(run, spec.output, "v1")[0] == "running"
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run_dir / "job.json").write_text(json.dumps({"executor": "submitit-local", "job_id": finished.stdout.strip(),
                                                  "host": platform.node()}))
    assert sweeps.run_state(run, spec.output, "v1")[0] == "incomplete"
    (run_dir / "job.json").write_text(json.dumps({"executor": "slurm", "job_id": "123_4"}))
    assert sweeps.run_state(run, spec.output, "v1", {"123_4": "PENDING"}) == ("running", "job 123_4 PENDING")
    state, detail = sweeps.run_state(run, spec.output, "v1", {"123_4": "CANCELLED by 0"})
    assert state == "incomplete" and "job 123_4 CANCELLED by 0" in detail
    assert sweeps.run_state(run, spec.output, "v1")[0] == "incomplete"  # unknown to the scheduler: ended
    assert sweeps.state._submitted_jobs(spec.runs(), spec.output) == ["123_4"]


def test_submitit_slurm_array_gets_the_spec_resources_and_resubmits_lost_runs(tiny, tmp_path, monkeypatch, capsys):
    """The slurm path against stand-ins for srun, sbatch and sacct: nothing is executed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {"srun": "exit 0",
               "sbatch": f'cp "$1" {tmp_path}/sbatch.$(ls {tmp_path} | grep -c sbatch).sh\n'
                         'echo "Submitted batch job 4242"',
               "sacct": f"cat {tmp_path}/sacct.txt"}
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "sacct.txt").write_text("JobID|State|NodeList\n4242_0|PENDING|\n4242_1|RUNNING|n1\n"
                                        "4242_2|CANCELLED by 0|n1\n")
    data = spec_data(tiny, tmp_path / "out", exclude=[{"w": 5, "seed": 0}],
                     cluster={"gpus_per_node": 1, "timeout_min": 720, "partition": "gpu", "extra": {"account": "lab"}})
    spec = PipelineSpec.from_dict(data, origin="tiny.yaml")
    ids = [r.run_id for r in spec.runs()]
    result = sweeps.submit_pipeline(spec, executor="slurm", version="v1", progress=False)
    assert result.jobs == {rid: f"4242_{i}" for i, rid in enumerate(ids)} and result.executed == {}
    assert result.summary() == "3 runs selected; 0 already done (skipped); submitted 3 as slurm jobs"
    sbatch = (tmp_path / "sbatch.0.sh").read_text()
    for line in ("--array=0-2%3", "--gpus-per-node=1", "--time=720", "--partition=gpu", "--account=lab",
                 "--job-name=tiny", "--ntasks-per-node=1", f"--output={tmp_path / 'out' / 'submitit'}/%A_%a/"):
        assert f"#SBATCH {line}" in sbatch
    for i, rid in enumerate(ids):
        assert json.loads((tmp_path / "out" / rid / "status.json").read_text())["status"] == "queued"
        assert json.loads((tmp_path / "out" / rid / "job.json").read_text())["job_id"] == f"4242_{i}"
    states = plan(spec, version="v1")
    assert [(p.state, p.detail) for p in states[:2]] == [("running", "job 4242_0 PENDING"),
                                                         ("running", "job 4242_1 RUNNING")]
    assert states[2].state == "incomplete" and "job 4242_2 CANCELLED by 0" in states[2].detail
    # submitting again (command line, no --wait) resubmits the cancelled run alone and says how to follow it
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setattr(sweeps.state, "code_version", lambda notebook, digest=None: "v1")
    capsys.readouterr()
    assert main(["pipeline", "run", str(path), "--executor", "slurm", "--cluster", "timeout_min=30"]) == 0
    out = capsys.readouterr().out
    assert f"job 4242: {ids[2]}" in out and "submitted 1 as slurm jobs" in out and "ran" not in out
    assert f"check: python -m workbench pipeline plan {path}" in out and "2 running" in out
    assert "#SBATCH --time=30" in (tmp_path / "sbatch.1.sh").read_text()
    status = json.loads((tmp_path / "out" / ids[2] / "status.json").read_text())
    assert status["status"] == "queued" and status["previous_errors"] == ["status 'queued'"]
