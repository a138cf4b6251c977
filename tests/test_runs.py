"""The run-directory contract: one class names every file of a run."""

import pytest

from workbench.runs import RunDir


def test_run_dir_names_each_file_once_and_reads_and_writes_json(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.metrics == tmp_path / "run" / "metrics.json" and run.log == tmp_path / "run" / "train.jsonl"
    assert len(set(RunDir.FILES.values())) == len(RunDir.FILES)  # no two names for one file
    with pytest.raises(AttributeError, match="no file or attribute 'metric'; its files: config"):
        run.metric
    with pytest.raises(FileNotFoundError, match="has no metrics.json"):
        run.read("metrics")
    assert not run.has("metrics")
    run.write("metrics", {"hm": 0.5})
    assert run.has("metrics") and run.read("metrics") == {"hm": 0.5}
    assert run / "figure.html" == tmp_path / "run" / "figure.html"
    assert RunDir(str(tmp_path / "run")) == run and str(tmp_path) in repr(run)


def test_find_resolves_a_pipeline_step_to_its_experiment(tmp_path):
    step = tmp_path / "step"
    RunDir(step / RunDir.EXPERIMENT).write("dataset", {"kind": "embedded_world"})
    assert RunDir.find(step, needs="dataset") == RunDir(step / "experiment")
    RunDir(step).write("dataset", {"kind": "embedded_world"})
    assert RunDir.find(step, needs="dataset") == RunDir(step)  # the directory itself comes first
    with pytest.raises(FileNotFoundError, match=r"holds no embeddings.npz \(nor does .*experiment\)"):
        RunDir.find(step)


def test_create_refuses_a_non_empty_directory_unless_asked(tmp_path):
    run = RunDir.create(tmp_path, "run")
    run.write("config", {})
    with pytest.raises(FileExistsError):
        RunDir.create(tmp_path, "run")
    assert RunDir.create(tmp_path, "run", overwrite=True).read("config") == {}
