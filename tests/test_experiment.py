import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from workbench.__main__ import main
from workbench.analysis import analyze_run, compare_run_dirs
from workbench.experiment import ExperimentConfig, experiment_config, load_experiment_config, run_experiment

SMOKE = {"preset": "smoke", "shots": 4, "seed": 0, "device": "cpu",
         "distill": {"recipe": "kdpl", "ame_weight": 50.0, "optim": {"epochs": 2, "batch_size": 16}}}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def test_shipped_configs_load():
    for name in ("kd_ame", "kdpl", "logit_kd", "promptkd", "dho", "feature_kd"):
        config = load_experiment_config(f"configs/{name}.yaml")
        assert config.distill.recipe in ("logit_kd", "kdpl", "promptkd", "dho", "feature_kd")


def test_bad_configs_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"shots": 4, "lr": 0.1}))
    with pytest.raises(ValueError, match=r"bad.yaml: unknown setting lr; valid names: dataset"):
        load_experiment_config(bad)
    with pytest.raises(ValueError, match="unknown setting 'semi'"):
        ExperimentConfig(setting="semi")
    with pytest.raises(ValueError, match="shots must be a positive integer"):
        ExperimentConfig(shots=0)
    with pytest.raises(ValueError, match="unknown recipe"):
        ExperimentConfig.from_dict({"distill": {"recipe": "dho2"}})


def test_cli_train_writes_a_complete_run_directory(tmp_path, cache):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**SMOKE, "cache_dir": cache}))
    run_dir = tmp_path / "run"
    assert main(["train", "--config", str(config), "--run-dir", str(run_dir)]) == 0
    for name in ("config.json", "environment.json", "train.jsonl", "checkpoint.pt", "student.safetensors",
                 "samples.csv", "metrics.json"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"base_acc", "new_acc", "hm", "analysis"} <= set(metrics)
    assert metrics["final_manifold_entropy"] is not None
    with pytest.raises(FileExistsError):
        main(["train", "--config", str(config), "--run-dir", str(run_dir)])

    # The analysis is rebuilt from the directory alone, equal to what the run computed.
    samples_before = (run_dir / "samples.csv").read_bytes()
    assert main(["analyze", str(run_dir), "--compare", str(run_dir)]) is not None
    table, rebuilt = analyze_run(run_dir)
    for key, value in metrics["analysis"].items():
        assert rebuilt[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert "ambiguity/spearman" in rebuilt and rebuilt["manifold_entropy/final"] == pytest.approx(
        metrics["final_manifold_entropy"])
    assert table["ame_sample_entropy"].shape == (len(table["label"]),)  # AME was on: entropy on its manifold
    assert (run_dir / "samples.csv").read_bytes() == samples_before  # the run's own files stay as they were
    assert json.loads((run_dir / "analysis.json").read_text())["hm"] == pytest.approx(metrics["hm"])
    same = compare_run_dirs(run_dir, run_dir)
    assert same["wrong_to_right"] == same["right_to_wrong"] == 0 and same["mean_entropy_change"] == 0
    with pytest.raises(FileNotFoundError, match="holds no embeddings.npz"):
        analyze_run(tmp_path)


def test_interrupted_run_resumes_to_the_same_metrics(tmp_path, cache, monkeypatch):
    import workbench.train as train

    config = ExperimentConfig.from_dict({**SMOKE, "cache_dir": cache,
                                         "distill": {**SMOKE["distill"], "optim": {"epochs": 3, "batch_size": 16}}})
    straight = run_experiment(config, tmp_path / "straight")

    save = train._save_checkpoint

    def save_then_die(path, modules, optimizer, scheduler, order, epochs_done, step, selector=None):
        save(path, modules, optimizer, scheduler, order, epochs_done, step, selector)
        if epochs_done == 1:
            raise KeyboardInterrupt("killed after the first epoch")

    monkeypatch.setattr(train, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path / "partial")
    monkeypatch.setattr(train, "_save_checkpoint", save)
    assert not (tmp_path / "partial" / "metrics.json").exists()
    with pytest.raises(FileExistsError):
        run_experiment(config, tmp_path / "partial")  # never overwritten without resume
    resumed = run_experiment(config, tmp_path / "partial", resume=True)
    assert resumed["steps"] == straight["steps"]
    for key in ("base_acc", "new_acc", "hm"):
        assert resumed[key] == pytest.approx(straight[key])
    assert resumed["analysis"]["calibration/nll"] == pytest.approx(straight["analysis"]["calibration/nll"], rel=1e-5)


def test_flat_settings_go_to_the_config_level_that_has_them():
    config = experiment_config("configs/promptkd.yaml", shots=4, ame_weight=50, epochs=3, selection="best_val")
    assert (config.shots, config.distill.recipe, config.distill.ame_weight) == (4, "promptkd", 50)
    assert (config.distill.optim.epochs, config.distill.optim.optimizer, config.distill.selection) == (3, "sgd", "best_val")
    assert config.distill.kd_weight == 1000.0  # from the file, untouched
    with pytest.raises(ValueError, match="unknown experiment setting 'omega'; valid names: ame_hidden_dim"):
        experiment_config(None, omega=1.0)
    with pytest.raises(FileNotFoundError, match="experiment config configs/none.yaml not found"):
        experiment_config("configs/none.yaml")


def test_pipeline_step_gives_the_same_run_through_papermill_and_in_process(tmp_path, cache, monkeypatch):
    from workbench.sweeps import NOTEBOOK_DIR, PipelineSpec, run_pipeline

    monkeypatch.delenv("WORKBENCH_DATA", raising=False)

    metrics = {}
    for in_process in (False, True):
        spec = PipelineSpec.from_dict({
            "name": "step", "notebook": str(NOTEBOOK_DIR / "run_experiment.ipynb"), "in_process": in_process,
            "output": str(tmp_path / f"out-{in_process}"),
            "parameters": {"smoke": True, "config": "configs/logit_kd.yaml", "shots": 2, "device": "cpu",
                           "cache_dir": cache},
            "grid": {"ame_weight": [50], "dataset": ["embedded_world", "imagenet"]}})
        result = run_pipeline(spec, progress=False)
        done, unsupported = (result.executed[r.run_id] for r in spec.runs())
        assert done["status"] == "done", done.get("traceback")
        # A benchmark dataset without its data: a failed run naming what is missing, before anything trains.
        assert unsupported["status"] == "failed" and "WORKBENCH_DATA is not set" in unsupported["error"]
        run_dir = tmp_path / f"out-{in_process}" / done["run_id"]
        assert (run_dir / "experiment" / "embeddings.npz").is_file()
        assert (run_dir / "run_experiment.ipynb").is_file() != in_process  # papermill keeps the executed notebook
        metrics[in_process] = json.loads((run_dir / "metrics.json").read_text())
    for key in ("base_acc", "new_acc", "hm", "final_manifold_entropy"):
        assert metrics[True][key] == pytest.approx(metrics[False][key], rel=1e-6)


@pytest.mark.reliability
def test_sigkilled_training_resumes_to_the_same_metrics(tmp_path, cache):
    """Kill ``python -m workbench train`` with SIGKILL at two points, resume each, compare with a straight run."""
    import random
    import signal
    import subprocess
    import sys
    import time

    settings = {**SMOKE, "cache_dir": cache, "distill": {**SMOKE["distill"], "optim": {"epochs": 4, "batch_size": 8}}}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(settings))
    straight = run_experiment(ExperimentConfig.from_dict(settings), tmp_path / "straight")
    rng = random.Random(0)

    def killed_when(run_dir, ready):
        process = subprocess.Popen([sys.executable, "-m", "workbench", "train", "--config", str(config),
                                    "--run-dir", str(run_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 240
        while not ready(run_dir) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL, "training ended before it could be killed"

    points = {"before the first checkpoint": lambda d: (d / "train.jsonl").is_file(),
              "after a checkpoint": lambda d: (d / "checkpoint.pt").is_file()}
    for name, ready in points.items():
        run_dir = tmp_path / name.replace(" ", "-")
        killed_when(run_dir, ready)
        assert not (run_dir / "metrics.json").exists()
        resumed = run_experiment(ExperimentConfig.from_dict(settings), run_dir, resume=True)
        log = [json.loads(line) for line in (run_dir / "train.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == list(range(straight["steps"])), name  # no step lost or repeated
        for key in ("base_acc", "new_acc", "hm"):
            assert resumed[key] == pytest.approx(straight[key]), (name, key)
        assert not list(run_dir.glob("*.tmp*")), name  # no half-written file left behind


def test_teacher_tuning_prompt_tunes_the_teacher_once_and_distils_from_it(tmp_path, cache):
    from workbench.experiment import ExperimentConfig
    from workbench.runs import read_json

    tuning = {"enabled": True, "prompt_depth": 2, "optim": {"epochs": 6, "batch_size": 8, "lr": 0.05}}
    config = ExperimentConfig.from_dict({**SMOKE, "cache_dir": cache, "teacher_tuning": tuning,
                                         "distill": {"recipe": "promptkd", "optim": {"epochs": 1, "batch_size": 8}}})
    plain = dataclasses.replace(config, teacher_tuning=dataclasses.replace(config.teacher_tuning, enabled=False))
    untuned = run_experiment(plain, tmp_path / "plain")
    tuned = run_experiment(config, tmp_path / "tuned")
    assert read_json(tmp_path / "tuned" / "config.json")["teacher_tuning"]["enabled"] is True
    logs = list((Path(cache) / "tuned_teachers").glob("*.log.jsonl"))
    assert len(logs) == 1 and len(list((Path(cache) / "tuned_teachers").glob("*.safetensors"))) == 1
    records = [json.loads(line) for line in logs[0].read_text().splitlines()]
    ce = [r["ce_loss"] for r in records]
    assert np.mean(ce[-3:]) < np.mean(ce[:3])  # cross-entropy on the labelled shots falls
    # PromptSRC's self-regularising terms are part of the objective, each with its weight
    assert {"text_consistency_loss", "image_consistency_loss", "logit_consistency_loss"} <= set(records[0])
    assert all(r["text_consistency_loss"] >= 0 and r["image_consistency_loss"] >= 0 for r in records)
    # The tuned teacher is another teacher: its (cached) features, hence the distilled student, differ.
    with np.load(tmp_path / "plain" / "embeddings.npz") as a, np.load(tmp_path / "tuned" / "embeddings.npz") as b:
        assert not np.allclose(a["teacher_features"], b["teacher_features"])
        # and it scores with its learned text context: other class vectors (promptkd's student is scored in
        # the teacher's space, so text_features are the teacher's), and the teacher's logits come from them
        assert not np.allclose(b["text_features"], a["text_features"], atol=1e-4)
        cosine = b["teacher_features"] @ b["text_features"].T
        np.testing.assert_allclose(b["teacher_logits"], cosine * (b["teacher_logits"][0, 0] / cosine[0, 0]),
                                   rtol=1e-4, atol=1e-4)
    assert 0 <= untuned["hm"] <= 1
    again = run_experiment(config, tmp_path / "again")  # loaded from the cache, not tuned twice
    assert again["hm"] == tuned["hm"] and len(list((Path(cache) / "tuned_teachers").glob("*.safetensors"))) == 1
    with pytest.raises(ValueError, match="teacher_tuning needs the teacher's un-augmented view"):
        ExperimentConfig.from_dict({**SMOKE, "augment": True, "teacher_tuning": {"enabled": True},
                                    "distill": {"recipe": "promptkd", "teacher_mode": "live"}})



def test_embedded_world_runs_promptkds_augmentation_with_the_teacher_live(tmp_path, cache):
    from workbench.image_sources import AugmentedArrayImages
    from workbench.task import prepare_task

    settings = {**SMOKE, "cache_dir": cache, "distill": {"recipe": "promptkd", "teacher_mode": "live",
                                                         "optim": {"epochs": 1, "batch_size": 8}}}
    with pytest.raises(ValueError, match="augment: true needs teacher_mode: live"):
        ExperimentConfig.from_dict({**settings, "augment": True, "distill": {"recipe": "promptkd"}})
    augmented = ExperimentConfig.from_dict({**settings, "augment": True})
    built = prepare_task(augmented, torch.device("cpu"))
    assert isinstance(built.train_images, AugmentedArrayImages) and built.teacher_train_images is None
    crops = run_experiment(augmented, tmp_path / "crops")
    run_experiment(ExperimentConfig.from_dict(settings), tmp_path / "plain")
    assert 0 <= crops["hm"] <= 1 and json.loads((tmp_path / "crops" / "config.json").read_text())["augment"] is True
    with np.load(tmp_path / "crops" / "embeddings.npz") as a, np.load(tmp_path / "plain" / "embeddings.npz") as b:
        assert not np.allclose(a["image_features"], b["image_features"])  # other views, another student

def test_dho_run_scores_the_test_images_with_its_mixed_heads(tmp_path, cache):
    from workbench.experiment import ExperimentConfig
    from workbench.recipes import DHO_ALPHAS, DHO_BETAS

    config = ExperimentConfig.from_dict({**SMOKE, "cache_dir": cache,
                                         "distill": {"recipe": "dho", "optim": {"epochs": 2, "batch_size": 8}}})
    metrics = run_experiment(config, tmp_path / "run")
    mixing = metrics["dho_mixing"]
    assert mixing["alpha"] in DHO_ALPHAS and mixing["beta"] in DHO_BETAS and 0 <= mixing["val_acc"] <= 1
    with np.load(tmp_path / "run" / "embeddings.npz") as arrays:  # log p of the heads' mixture, one pass
        np.testing.assert_allclose(np.exp(arrays["logits"]).sum(1), 1.0, atol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(arrays["image_features"], axis=1), 1.0, atol=1e-4)
    assert (tmp_path / "run" / "recipe_modules.safetensors").is_file()  # both heads are saved with the run
