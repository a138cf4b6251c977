"""Where a training run's step records go: ``train.jsonl``, the record, and its views in TensorBoard and W&B.

:func:`workbench.train.fit` builds one record per step and hands it to :func:`open_sinks`' sinks; nothing
else logs. ``train.jsonl`` stays the run's source of truth (resume, the analysis and the notebooks read
it); TensorBoard and Weights & Biases only show the same numbers while the run trains:

- ``jsonl``: one JSON object per step, exactly as before (:class:`JsonlSink`);
- ``tensorboard``: event files in the run directory (:class:`TensorBoardSink`) — ``loss/total`` and
  ``loss/<term>`` for every ``*_loss`` term, ``train/lr``, ``train/<name>`` for the other terms
  (``train/manifold_entropy`` is H(M), gradient norms when a recipe logs them), ``eval/…`` for the
  per-epoch model-selection score and ``metrics/…`` for the final evaluation;
- ``wandb``: an offline W&B run in the run directory (:class:`WandbSink`), only when asked for and
  ``wandb`` is installed; ``WANDB_MODE`` (if the user set it) decides whether anything goes online.

An experiment opens its views with :func:`run_views` around training and evaluation; ``fit`` called
inside writes to them. :func:`tag_hparams` marks a sweep's runs with their grid point, so that
``tensorboard --logdir <sweep output>`` shows one line per run and the HParams table.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import json
import math
import os
import sys
from pathlib import Path

LOGGERS = ("jsonl", "tensorboard", "wandb")
DEFAULT_LOGGERS = ("jsonl", "tensorboard")
EVENT_FILE_PREFIX = "events.out.tfevents."  # how TensorBoard's event files are named
TENSORBOARD_FLUSH_SECS = 30  # live curves lag at most this long within an epoch (every epoch end flushes)
WANDB_PROJECT = "ame-workbench"  # default project; $WANDB_PROJECT wins


def wandb_available() -> bool:
    """Whether ``wandb`` can be imported, without importing it."""
    if "wandb" in sys.modules:
        return sys.modules["wandb"] is not None
    return importlib.util.find_spec("wandb") is not None


def check_loggers(names) -> list[str]:
    """``names`` if it is a valid logger list (``ValueError`` naming the problem otherwise)."""
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"loggers must be a list of names ({', '.join(LOGGERS)}), got {names!r}")
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ValueError(f"unknown logger {unknown[0]!r}; valid names: {', '.join(LOGGERS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"loggers lists a name twice: {list(names)!r}")
    if "jsonl" not in names:
        raise ValueError("loggers must include jsonl: train.jsonl is the run's record, which resume and the "
                         "analysis read; the other loggers are views of it")
    if "wandb" in names and not wandb_available():
        raise ValueError("loggers: wandb needs the wandb package, which is not installed (pip install wandb); "
                         "it stays optional and runs offline unless WANDB_MODE says otherwise")
    return list(names)


def scalar_tag(key: str) -> str:
    """The TensorBoard/W&B tag of a record field: losses grouped under ``loss/``, the rest under ``train/``."""
    if key == "loss":
        return "loss/total"
    if key.endswith("_loss"):
        return f"loss/{key}"
    return f"train/{key}"


def metric_scalars(metrics: dict, prefix: str = "metrics/") -> dict[str, float]:
    """The numbers of a (nested) metrics dict as ``{prefix + "a/b": value}``; text, lists and booleans left out."""
    from .config import flatten

    return {prefix + key: float(value) for key, value in flatten(metrics).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


class JsonlSink:
    """``train.jsonl``: one JSON object per step, appended (``fit`` has truncated it on resume)."""

    def __init__(self, path: str | os.PathLike):
        self.file = open(path, "a")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")

    def scalars(self, values: dict, step: int) -> None:
        pass  # the JSONL holds step records only; evaluation results live in metrics.json

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TensorBoardSink:
    """TensorBoard event files in ``log_dir``, one event per step holding every scalar of the record.

    ``start_step`` is where training (re)starts: events of that step and later from an earlier,
    interrupted attempt are purged when TensorBoard reads the directory, so a resumed run shows each
    step once.
    """

    def __init__(self, log_dir: str | os.PathLike, start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=start_step, flush_secs=TENSORBOARD_FLUSH_SECS)

    def write(self, record: dict) -> None:
        self.scalars({scalar_tag(k): v for k, v in record.items() if k not in ("epoch", "step")}, record["step"])

    def scalars(self, values: dict, step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        # One event for all of a step's scalars rather than one per scalar: a fraction of the writes.
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()])
        self.writer.file_writer.add_summary(summary, int(step))

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A W&B run writing into ``log_dir/wandb``; offline unless the user set ``WANDB_MODE``.

    A resumed training is a new W&B run (offline runs cannot be rewound) whose steps start where the
    checkpoint left off; runs of one run directory share its name as their W&B group.
    """

    def __init__(self, log_dir: str | os.PathLike, config: dict | None = None):
        import wandb  # imported here only: nothing loads wandb unless a run asks for it

        log_dir = Path(log_dir)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", WANDB_PROJECT), dir=str(log_dir),
                              name=log_dir.name, group=log_dir.name, config=config,
                              mode=os.environ.get("WANDB_MODE") or "offline")

    def write(self, record: dict) -> None:
        self.scalars({scalar_tag(k): v for k, v in record.items() if k not in ("epoch", "step")}, record["step"])

    def scalars(self, values: dict, step: int) -> None:
        self.run.log(dict(values), step=int(step))

    def flush(self) -> None:
        pass  # W&B writes in its own process

    def close(self) -> None:
        self.run.finish()


class _FanOut:
    """Hands each record (or scalar set) to every sink in ``self.sinks``."""

    sinks: list

    def write(self, record: dict) -> None:
        for sink in self.sinks:
            sink.write(record)

    def scalars(self, values: dict, step: int) -> None:
        if values:
            for sink in self.sinks:
                sink.scalars(values, step)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()


class RunViews(_FanOut):
    """The views (TensorBoard, W&B) of one run's records, in ``log_dir``; opened when training starts.

    ``names`` is the run's logger list (``jsonl`` is the log file ``fit`` writes itself). ``config`` is
    recorded with a W&B run.
    """

    def __init__(self, names, log_dir: str | os.PathLike, config: dict | None = None):
        self.names, self.log_dir, self.config = check_loggers(names), Path(log_dir), config
        self.sinks: list = []

    def start(self, step: int) -> None:
        """Open the sinks for training that starts (or resumes) at ``step``."""
        self.close()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if "tensorboard" in self.names:
            self.sinks.append(TensorBoardSink(self.log_dir, step))
        if "wandb" in self.names:
            self.sinks.append(WandbSink(self.log_dir, self.config))

    def close(self) -> None:
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.close()


_active: contextvars.ContextVar[RunViews | None] = contextvars.ContextVar("workbench_run_views", default=None)


@contextlib.contextmanager
def run_views(names, log_dir: str | os.PathLike, enabled: bool = True, config: dict | None = None):
    """``with run_views(config.loggers, run_dir) as views:`` — ``fit`` inside writes to these views.

    Yields the :class:`RunViews` (``None`` when not ``enabled``: the ranks other than 0 write nothing),
    closed on leaving. A context rather than an argument because the recipes between an experiment
    and ``fit`` need not know about logging.
    """
    views = RunViews(names, log_dir, config) if enabled else None
    token = _active.set(views)
    try:
        yield views
    finally:
        _active.reset(token)
        if views is not None:
            views.close()


class Sinks(_FanOut):
    """What one ``fit`` call writes to: its JSONL log and the run's views; closes only what it opened."""

    def __init__(self, sinks: list | None = None, owned: list | None = None):
        self.sinks, self.owned = list(sinks or []), list(owned or [])

    def close(self) -> None:
        for sink in self.owned:
            sink.close()


def open_sinks(log_path: str | os.PathLike | None, names=None, start_step: int = 0) -> Sinks:
    """The sinks of a ``fit`` call that starts (or resumes) at ``start_step``.

    ``log_path`` gets the JSONL records. ``names`` (a logger list) opens views next to ``log_path``
    for this call only; ``None`` uses the views of the enclosing :func:`run_views`, if any.
    """
    jsonl = [JsonlSink(log_path)] if log_path else []
    if names is not None:
        if not log_path:
            raise ValueError("loggers need a log_path: their files go into its directory")
        views = RunViews(names, Path(log_path).parent)
        owned = jsonl + [views]
    else:
        views = _active.get()
        owned = jsonl  # the enclosing run_views closes its own views
    if views is not None:
        views.start(start_step)
    return Sinks(jsonl + ([views] if views is not None else []), owned)


def _hparam_value(value):
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)  # lists and mappings as their text: the HParams table holds scalars only


def tag_hparams(run_dir: str | os.PathLike, hparams: dict) -> list[Path]:
    """Record ``hparams`` (a sweep's grid point) as the HParams session of each TensorBoard log under ``run_dir``.

    Returns the directories tagged; none when the run wrote no TensorBoard events or ``hparams`` is
    empty. TensorBoard's HParams dashboard then lists each run with its grid values and its scalars.
    """
    run_dir = Path(run_dir)
    if not hparams or not run_dir.is_dir():
        return []
    dirs = sorted({p.parent for p in run_dir.rglob(EVENT_FILE_PREFIX + "*")})
    if not dirs:
        return []
    from tensorboard.plugins.hparams.summary_v2 import hparams_pb
    from torch.utils.tensorboard import SummaryWriter

    summary = hparams_pb({str(k): _hparam_value(v) for k, v in hparams.items()}, trial_id=run_dir.name)
    for directory in dirs:
        with SummaryWriter(str(directory)) as writer:
            writer.file_writer.add_summary(summary)
    return dirs
