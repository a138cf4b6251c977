"""Notebook set-up in one call: parameters checked, repository root, run directory."""

import os
from pathlib import Path

import pytest

from workbench.notebook import REPO_ROOT, start
from workbench.runs import RunDir


@pytest.fixture
def back_home():
    here = os.getcwd()
    yield
    os.chdir(here)


def test_start_checks_every_parameter_then_opens_the_run_directory(tmp_path, back_home, capsys):
    os.chdir(tmp_path)
    namespace = {"smoke": True, "shots": 16, "run_dir": str(tmp_path / "runs" / "mine"), "overwrite_run_dir": False}
    run = start("quickstart", namespace, smoke=bool, shots=int)
    assert isinstance(run, RunDir) and run.path == tmp_path / "runs" / "mine" and run.path.is_dir()
    assert Path.cwd() == REPO_ROOT  # relative paths mean what they mean in pipelines and on the command line
    assert f"run directory: {run.path}" in capsys.readouterr().out
    (run.path / "result.txt").write_text("kept")
    with pytest.raises(FileExistsError, match="not empty"):  # nothing written is lost
        start("quickstart", namespace, smoke=bool, shots=int)
    assert (run.path / "result.txt").read_text() == "kept"
    assert start("quickstart", {**namespace, "overwrite_run_dir": True}, smoke=bool, shots=int) == run


def test_start_names_an_empty_run_dir_after_the_notebook(tmp_path, back_home):
    os.chdir(tmp_path)
    run = start("manifold-explorer", {"run_dir": "", "overwrite_run_dir": False}, chdir=False)
    assert run.path.parent == Path("runs") and run.path.name.startswith("manifold-explorer-")
    assert (tmp_path / run.path).is_dir()


def test_start_refuses_wrong_types_and_missing_parameters_before_writing(tmp_path, back_home):
    os.chdir(tmp_path)
    base = {"run_dir": str(tmp_path / "run"), "overwrite_run_dir": False}
    with pytest.raises(TypeError, match=r"shots='16' \(str, expected int\)"):
        start("x", {**base, "shots": "16"}, shots=int)
    with pytest.raises(TypeError, match=r"overwrite_run_dir=1 \(int, expected bool\)"):
        start("x", {**base, "overwrite_run_dir": 1})
    with pytest.raises(NameError, match="defines no seed"):
        start("x", base, seed=int)
    with pytest.raises(NameError, match="defines no run_dir, overwrite_run_dir"):
        start("x", {})
    assert not (tmp_path / "run").exists()


def _notebook(tmp_path, *markdown):
    import json

    cells = [{"cell_type": "markdown", "metadata": {}, "source": text} for text in markdown]
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_stated_numbers_are_read_from_the_prose_and_checked_against_a_run(tmp_path):
    from workbench.notebook import check_stated_numbers, stated_numbers

    path = _notebook(tmp_path, "HM **0.97** <!-- expect teacher_hm tol=0.03 smoke=0.60 --> and",
                     "mean vs HM: **0.45** <!-- expect hm tol=0.001 -->")
    assert stated_numbers(path) == {"teacher_hm": {"shown": 0.97, "tolerance": 0.03, "smoke": 0.6},
                                    "hm": {"shown": 0.45, "tolerance": 0.001, "smoke": None}}
    assert check_stated_numbers(path, {"teacher_hm": 0.955, "hm": 0.45}) == []
    assert check_stated_numbers(path, {"teacher_hm": 0.61, "hm": 0.4502}, smoke=True) == []  # smoke= where given
    assert check_stated_numbers(path, {"teacher_hm": 0.90, "hm": 0.45}) == [
        "teacher_hm: the prose says 0.97 (± 0.03), the run computed 0.9"]
    assert check_stated_numbers(path, {"hm": 0.45}) == ["teacher_hm: stated in the prose, not computed by the run"]


def test_a_marker_away_from_its_number_or_a_number_stated_twice_is_refused(tmp_path):
    from workbench.notebook import stated_numbers

    with pytest.raises(ValueError, match="1 expect marker"):
        stated_numbers(_notebook(tmp_path, "**0.97** of them <!-- expect x tol=0.1 -->"))
    with pytest.raises(ValueError, match="'x' is stated twice"):
        stated_numbers(_notebook(tmp_path, "**1** <!-- expect x tol=0 -->", "**1** <!-- expect x tol=0 -->"))
