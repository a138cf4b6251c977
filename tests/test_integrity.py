"""Run integrity: bad or changed input is refused with a message naming the problem, before anything is
written, and whatever was written before stays byte-identical."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.__main__ import main
from workbench.config import ConfigError, flatten
from workbench.experiment import ExperimentConfig, experiment_config, load_experiment_config, run_experiment
from workbench.recipes import RECIPE_FIELDS

pytestmark = pytest.mark.reliability
SMOKE = dict(preset="smoke", shots=2, device="cpu", epochs=1, batch_size=16)


def _snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity")
    config = experiment_config("configs/logit_kd.yaml", cache_dir=str(root / "cache"), **SMOKE)
    run_experiment(config, root / "run")
    return root, config


def test_resume_with_another_config_is_refused_listing_each_change_and_touches_nothing(finished_run):
    root, config = finished_run
    before = _snapshot(root / "run")
    changed = experiment_config("configs/logit_kd.yaml", cache_dir=str(root / "cache"), **{**SMOKE, "lr": 0.05,
                                                                                          "seed": 3})
    with pytest.raises(ConfigError) as info:
        run_experiment(changed, root / "run", resume=True)
    assert "distill.optim.lr: 0.0005 → 0.05" in str(info.value) and "seed: 0 → 3" in str(info.value)
    changed = experiment_config("configs/logit_kd.yaml", cache_dir=str(root / "cache"), **{**SMOKE, "ame_weight": 50})
    with pytest.raises(ConfigError, match="distill.ame_weight: 0.0 → 50.0"):
        run_experiment(changed, root / "run", resume=True)
    assert _snapshot(root / "run") == before
    # The same config resumes (here: the run had finished, so training has nothing left to do).
    assert run_experiment(config, root / "run", resume=True)["hm"] >= 0
    assert _snapshot(root / "run")["config.json"] == before["config.json"]


def test_cli_resume_without_a_checkpoint_says_so(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="holds no checkpoint.pt"):
        main(["train", "--config", "configs/logit_kd.yaml", "--run-dir", str(tmp_path / "empty"), "--resume",
              "--set", "preset=smoke"])


def test_a_bad_setting_fails_before_the_run_directory_and_the_corrected_command_then_runs(finished_run, tmp_path):
    root, _ = finished_run
    run_dir = tmp_path / "run"
    args = ["train", "--config", "configs/logit_kd.yaml", "--run-dir", str(run_dir), "--set", "preset=smoke",
            "--set", "shots=2", "--set", "epochs=1", "--set", "device=cpu", "--set", f"cache_dir={root / 'cache'}"]
    for bad, message in (("ame_variant=bogus", "unknown ame_variant 'bogus'"),
                         ("ame_manifold_dim=0", "ame_manifold_dim must be an integer >= 1"),
                         ("ame_warmup_steps=-1", "ame_warmup_steps must be an integer >= 0"),
                         ("preset=huge", "unknown preset 'huge'"), ("device=gpu0", "device must be 'auto'")):
        with pytest.raises(ConfigError, match=message):
            main(args + ["--set", bad])
        assert not run_dir.exists()
    assert main(args) == 0 and (run_dir / "metrics.json").is_file()


@pytest.mark.parametrize("text, message", [
    ("shots: [4\n", r"bad.yaml: line 2, column 1: not a valid config file"),
    ("shots: !!python/object/apply:os.system ['true']\n", "a Python tag"),
    ("- shots: 4\n", "the top level must be a mapping of settings"),
    ("distill: [1, 2]\n", "distill must be a mapping of settings"),
    ("distill:\n  ame_wieght: 50\n", r"unknown setting distill.ame_wieght \(did you mean distill.ame_weight\?\)"),
    ("distill:\n  ame_weight: '50'\n", "distill.ame_weight must be a number, got '50'"),
    ("distill:\n  ame_weight: true\n", "distill.ame_weight must be a number, got True"),
    ("distill:\n  optim: {lr: 5e-4}\n", "distill.optim.lr must be a number, got '5e-4'.*write 5.0e-4"),
    ("shots: 4.0\n", "shots must be an integer, got 4.0"),
    ("augment: 1\n", "augment must be true or false, got 1"),
    ("targets: caltech101\n", "targets must be a list, got 'caltech101'"),
])
def test_malformed_config_files_are_named_by_file_and_field(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_experiment_config(bad)
    with pytest.raises(ValueError, match=message):
        experiment_config(bad, seed=1)


def test_an_empty_distill_section_means_its_defaults(tmp_path):
    file = tmp_path / "empty_distill.yaml"
    file.write_text("shots: 4\ndistill:\n")
    assert load_experiment_config(file).distill == ExperimentConfig().distill
    assert experiment_config(file, lr=0.01).distill.optim.lr == 0.01


# Every field of the experiment config, as the dotted path a config file would use, with values of the wrong kind.
DEFAULTS = flatten(dataclasses.asdict(ExperimentConfig()))
FIELDS = sorted(k.replace("/", ".") for k, v in DEFAULTS.items() if v is not None and k != "distill/optim/seed")
WRONG = {int: ["4", 2.5, True, None, [1]], float: ["0.1", True, None, [0.1]], str: [3, True, None, ["x"]],
         bool: [1, "yes", None], list: ["a", 1, {"a": 1}]}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_field_rejects_values_of_the_wrong_kind_before_anything_is_written(tmp_path, data):
    path = data.draw(st.sampled_from(FIELDS))
    kind = type(DEFAULTS[path.replace(".", "/")])
    value = data.draw(st.sampled_from(WRONG[kind]))
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return  # an integer is a valid number
    if value is None and path.startswith("distill.") and path.split(".")[-1] in RECIPE_FIELDS:
        return  # null is valid for a recipe setting: the recipe's official default
    doc: dict = {}
    *parents, leaf = path.split(".")
    level = doc
    for name in parents:
        level = level.setdefault(name, {})
    level[leaf] = value
    before = sorted(tmp_path.iterdir())
    with pytest.raises(ConfigError) as info:
        ExperimentConfig.from_dict(doc, origin="generated.yaml")
    assert "generated.yaml" in str(info.value) and leaf in str(info.value)
    assert sorted(tmp_path.iterdir()) == before


def test_prompt_templates_with_other_fields_are_named(student_and_tokenizer):
    from workbench.models import build_class_vectors

    model, tokenizer = student_and_tokenizer
    with pytest.raises(ValueError, match=r"prompt template 'a \{\} photo \{x\}' has the field \{x\}"):
        build_class_vectors(model, tokenizer, ["cat"], ["a {} photo {x}"])


def test_atomic_writes_keep_the_umask_mode(tmp_path):
    import numpy as np

    from workbench import world
    from workbench.analysis import write_table
    from workbench.runs import umask_mode

    previous = os.umask(0o022)
    try:
        table = write_table({"a": np.arange(3)}, tmp_path / "samples.csv")
        assert table.stat().st_mode & 0o777 == umask_mode() == 0o644
        spec = world.load_world_spec()
        split = world.generate_split(spec, "test", 4, seed=0)
        world.save_split(split, tmp_path / "split")
        assert (tmp_path / "split").stat().st_mode & 0o777 == 0o755
    finally:
        os.umask(previous)


def test_torchrun_on_an_empty_cache_finishes(tmp_path):
    """Rank 0 builds the world and pretrains alone while rank 1 waits: no collective inside (it used to hang)."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "workbench", "train", "--config", "configs/logit_kd.yaml", "--run-dir", str(run_dir),
               "--set", "preset=smoke", "--set", "shots=2", "--set", "epochs=1", "--set", "device=cpu",
               "--set", f"cache_dir={tmp_path / 'empty_cache'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORKBENCH_DIST_TIMEOUT": "600"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run_dir / "metrics.json").is_file() and (run_dir / "checkpoint.pt").is_file()


def _stuck_worker(rank: int, init_file: str, queue) -> None:
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), WORKBENCH_DIST_TIMEOUT="3")
    from workbench.device import collective, dist_timeout
    import datetime

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                                         timeout=datetime.timedelta(seconds=dist_timeout()))
    if rank == 1:  # never joins the collective
        import time
        time.sleep(8)
        return
    try:
        collective(torch.distributed.all_reduce, torch.ones(1), what="test step")
        queue.put("no error")
    except TimeoutError as err:
        queue.put(str(err))


def test_a_hung_collective_fails_with_a_timeout_naming_the_setting(tmp_path):
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_stuck_worker, args=(rank, str(tmp_path / "init"), queue))
                 for rank in range(2)]
    for process in processes:
        process.start()
    message = queue.get(timeout=120)
    for process in processes:
        process.join(timeout=60)
    assert "test step: the other processes did not arrive within 3 s ($WORKBENCH_DIST_TIMEOUT)" in message
