"""Loggers (issue 20): TensorBoard and W&B are views of train.jsonl's records, read back here with
TensorBoard's own event reader; a sweep shows one run per grid point with its hparams; nothing leaves
the machine by default."""

import json
import socket
import sys
import types

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import metadata as hparams_metadata

from workbench.experiment import ExperimentConfig, experiment_config, run_experiment
from workbench.loggers import DEFAULT_LOGGERS, check_loggers, scalar_tag, tag_hparams
from workbench.selection import ModelSelector
from workbench.train import OptimConfig, fit

CPU = torch.device("cpu")


def _scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _problem(seed=0):
    data = torch.Generator().manual_seed(1)
    inputs, target = torch.randn(24, 3, generator=data), torch.randn(24, 3, generator=data)
    torch.manual_seed(seed)  # initial weights and dropout draws
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 3))

    def step_loss(idx):
        out = model(inputs[idx])
        return {"mse_loss": (out - target[idx]).pow(2).mean(), "l1_loss": 0.1 * (out - target[idx]).abs().mean(),
                "manifold_entropy": out.detach().softmax(1).mean()}
    return model, step_loss


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))  # the smoke world and models, built once for this module


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open an internet connection fails the test (Unix sockets stay usable)."""
    connect = socket.socket.connect

    def refuse(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network connection attempted to {address!r}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail(f"network connection to {a!r}"))
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails: nothing may load it unasked


def test_tensorboard_shows_the_jsonl_records_and_logging_changes_no_number(tmp_path):
    config = OptimConfig(epochs=3, batch_size=8, lr=0.05)
    runs = {}
    for name, loggers in (("plain", None), ("views", ["jsonl", "tensorboard"])):
        (tmp_path / name).mkdir()
        model, step_loss = _problem()
        history = fit([model], step_loss, 24, config, CPU, log_path=tmp_path / name / "train.jsonl", loggers=loggers)
        runs[name] = (model, history, torch.get_rng_state())
    (plain, plain_history, plain_rng), (viewed, viewed_history, viewed_rng) = runs["plain"], runs["views"]
    # Bit-identical: same records, same parameters, same global RNG state afterwards; same JSONL bytes.
    assert plain_history == viewed_history
    for a, b in zip(plain.parameters(), viewed.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(plain_rng, viewed_rng)
    assert (tmp_path / "plain" / "train.jsonl").read_bytes() == (tmp_path / "views" / "train.jsonl").read_bytes()
    assert not list((tmp_path / "plain").glob("events.out.tfevents.*"))  # fit alone writes the JSONL only

    scalars = _scalars(tmp_path / "views")
    records = _read_jsonl(tmp_path / "views" / "train.jsonl")
    diagnostics = {"grad_norm/mse", "grad_norm/l1", "grad_norm/total", "grad_norm/clipped"}  # every 25 steps
    assert set(scalars) == {"loss/total", "loss/mse_loss", "loss/l1_loss", "train/lr", "train/manifold_entropy"} | {
        f"train/{key}" for key in diagnostics}
    for key in ("loss", "mse_loss", "l1_loss", "lr", "manifold_entropy", *diagnostics):
        logged = [r for r in records if key in r]
        assert [s for s, _ in scalars[scalar_tag(key)]] == [r["step"] for r in logged]
        assert [v for _, v in scalars[scalar_tag(key)]] == pytest.approx([r[key] for r in logged], rel=1e-6)
    assert [r["step"] for r in records if "grad_norm/mse" in r] == [0]


def test_model_selection_score_is_logged_per_epoch(tmp_path):
    model, step_loss = _problem()
    scores = iter([0.5, 0.7, 0.6])
    selector = ModelSelector("best_val", lambda: next(scores))
    fit([model], step_loss, 24, OptimConfig(epochs=3, batch_size=8), CPU, log_path=tmp_path / "train.jsonl",
        selector=selector, loggers=list(DEFAULT_LOGGERS))
    # Each epoch's score at that epoch's last step; the JSONL keeps its step records only.
    assert _scalars(tmp_path)["eval/best_val_score"] == [(2, 0.5), (5, pytest.approx(0.7)), (8, pytest.approx(0.6))]
    assert all("eval/best_val_score" not in r for r in _read_jsonl(tmp_path / "train.jsonl"))


def test_a_resumed_fit_shows_each_step_once(tmp_path):
    config = OptimConfig(epochs=4, batch_size=8, lr=0.05)
    straight, step_loss = _problem()
    (tmp_path / "straight").mkdir()
    fit([straight], step_loss, 24, config, CPU, log_path=tmp_path / "straight" / "train.jsonl",
        loggers=list(DEFAULT_LOGGERS))

    run = tmp_path / "resumed"
    run.mkdir()
    model, step_loss = _problem()
    calls = {"n": 0}

    def dies_in_the_third_epoch(idx):
        calls["n"] += 1
        if calls["n"] == 9:  # steps 6 and 7 are logged, the checkpoint holds 2 epochs (6 steps)
            raise KeyboardInterrupt("simulated kill")
        return step_loss(idx)

    with pytest.raises(KeyboardInterrupt):
        fit([model], dies_in_the_third_epoch, 24, config, CPU, log_path=run / "train.jsonl",
            checkpoint_path=run / "ckpt.pt", loggers=list(DEFAULT_LOGGERS))
    assert [s for s, _ in _scalars(run)["loss/total"]] == list(range(8))
    model, step_loss = _problem(seed=5)  # a new process: the checkpoint restores weights and RNG
    fit([model], step_loss, 24, config, CPU, log_path=run / "train.jsonl", checkpoint_path=run / "ckpt.pt",
        loggers=list(DEFAULT_LOGGERS))
    resumed, expected = _scalars(run), _scalars(tmp_path / "straight")
    assert set(resumed) == set(expected)
    for tag, points in expected.items():
        every = [0] if "grad_norm" in tag else list(range(12))  # the diagnostics come every 25 steps
        assert [s for s, _ in resumed[tag]] == every, tag  # no step twice, none missing
        assert [v for _, v in resumed[tag]] == pytest.approx([v for _, v in points], rel=1e-5), tag


def test_an_experiment_writes_tensorboard_and_sends_nothing_anywhere(tmp_path, cache, no_network):
    config = experiment_config("configs/logit_kd.yaml", preset="smoke", shots=2, epochs=2, batch_size=4,
                               ame_weight=50.0, device="cpu", cache_dir=cache)
    assert config.loggers == ["jsonl", "tensorboard"]
    metrics = run_experiment(config, tmp_path / "run")
    scalars = _scalars(tmp_path / "run")
    records = _read_jsonl(tmp_path / "run" / "train.jsonl")
    steps = list(range(metrics["steps"]))
    assert len(steps) > 2 and [r["step"] for r in records] == steps
    for tag in ("loss/total", "loss/kd_loss", "loss/ame_loss", "train/lr", "train/manifold_entropy"):
        assert [s for s, _ in scalars[tag]] == steps, tag
    assert [v for _, v in scalars["train/manifold_entropy"]] == pytest.approx(
        [r["manifold_entropy"] for r in records], rel=1e-6)
    # The final evaluation, one step past training.
    for key in ("hm", "base_acc", "new_acc"):
        assert scalars[f"metrics/{key}"] == [(len(steps), pytest.approx(metrics[key]))]
    assert "wandb" not in sys.modules or sys.modules["wandb"] is None
    assert not (tmp_path / "run" / "wandb").exists()


def test_a_sweep_directory_shows_one_run_per_grid_point_with_its_hparams(tmp_path, cache):
    from workbench.sweeps import NOTEBOOK_DIR, PipelineSpec, run_pipeline

    spec = PipelineSpec.from_dict({
        "name": "tb", "notebook": str(NOTEBOOK_DIR / "run_experiment.ipynb"), "in_process": True,
        "output": str(tmp_path / "sweep"),
        "parameters": {"smoke": True, "config": "configs/logit_kd.yaml", "shots": 2, "device": "cpu",
                       "cache_dir": cache},
        "grid": {"ame_weight": [0.0, 50.0]}})
    result = run_pipeline(spec, progress=False)
    assert all(s["status"] == "done" and "tensorboard_error" not in s for s in result.executed.values())

    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(tmp_path / "sweep"))
    multiplexer.Reload()
    runs = {name: tags for name, tags in multiplexer.Runs().items() if tags["scalars"]}
    assert sorted(runs) == sorted(f"{r.run_id}/experiment" for r in spec.runs())  # one line per run
    for run in spec.runs():
        name = f"{run.run_id}/experiment"
        assert "loss/total" in runs[name]["scalars"] and "metrics/hm" in runs[name]["scalars"]
        content = multiplexer.PluginRunToTagToContent("hparams")[name][hparams_metadata.SESSION_START_INFO_TAG]
        info = hparams_metadata.parse_session_start_info_plugin_data(content)
        assert {k: v.number_value for k, v in info.hparams.items()} == run.grid
    # The AME run logs H(M), the plain one has none to log.
    plain, ame = (f"{r.run_id}/experiment" for r in spec.runs())
    assert "train/manifold_entropy" in runs[ame]["scalars"] and "train/manifold_entropy" not in runs[plain]["scalars"]


def test_tag_hparams_leaves_runs_without_tensorboard_alone(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    assert tag_hparams(tmp_path, {"w": 1}) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_wandb_runs_offline_and_only_when_asked(tmp_path, monkeypatch):
    calls = []

    class FakeRun:
        def __init__(self, **kwargs):
            self.kwargs, self.logged, self.finished = kwargs, [], False

        def log(self, values, step):
            self.logged.append((step, values))

        def finish(self):
            self.finished = True

    def init(**kwargs):
        calls.append(FakeRun(**kwargs))
        return calls[-1]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    model, step_loss = _problem()
    fit([model], step_loss, 24, OptimConfig(epochs=1, batch_size=8), CPU, log_path=tmp_path / "train.jsonl",
        loggers=["jsonl", "wandb"])
    (run,) = calls
    assert run.kwargs["mode"] == "offline" and run.kwargs["dir"] == str(tmp_path) and run.finished
    records = _read_jsonl(tmp_path / "train.jsonl")
    assert [step for step, _ in run.logged] == [r["step"] for r in records]
    assert run.logged[0][1]["loss/mse_loss"] == records[0]["mse_loss"]
    assert not list(tmp_path.glob("events.out.tfevents.*"))  # only the views that were asked for

    monkeypatch.setenv("WANDB_MODE", "online")  # the user's own choice is respected
    fit([model], step_loss, 24, OptimConfig(epochs=1, batch_size=8), CPU, log_path=tmp_path / "again.jsonl",
        loggers=["jsonl", "wandb"])
    assert calls[-1].kwargs["mode"] == "online"


def test_logger_settings_are_checked(monkeypatch):
    assert ExperimentConfig().loggers == ["jsonl", "tensorboard"]
    assert ExperimentConfig.from_dict({"loggers": ["jsonl"]}).loggers == ["jsonl"]
    for bad, message in ((["jsonl", "tb"], "unknown logger 'tb'"), (["tensorboard"], "must include jsonl"),
                         (["jsonl", "jsonl"], "twice"), ("jsonl", "loggers must be a list")):
        with pytest.raises(ValueError, match=message):
            ExperimentConfig.from_dict({"loggers": bad})
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(ValueError, match="pip install wandb"):
        check_loggers(["jsonl", "wandb"])
