"""One distillation experiment on the embedded world, from a config file to a finished run directory.

This is what ``python -m workbench train --config run.yaml`` runs. A config is data::

    preset: full            # quickstart preset giving world sizes and teacher/student pretraining
    shots: 16               # K labelled images per base class (inductive setting)
    seed: 0
    setting: inductive      # or transductive: unlabeled training images of all classes
    cache_dir: runs/cache   # world and pretrained models, shared between runs
    device: auto
    distill:                # workbench.recipes.DistillConfig (recipe, temperature, ame_weight, optim …)
      recipe: logit_kd
      ame_weight: 50.0

The run directory receives ``config.json``, ``environment.json``, ``train.jsonl`` (every step),
``checkpoint.pt`` (every epoch, AME's projections included; ``resume=True`` continues from it),
``student.safetensors`` (the exported student backbone: AME's projections are not part of it),
``recipe_modules.safetensors`` for recipes that add modules to the student (PromptKD's prompts and
projector, DHO's heads), ``samples.csv`` (per test image), ``embeddings.npz`` (student and teacher
test embeddings and logits, class vectors, labels, base/new classes) and ``metrics.json`` (base / new / HM, the analysis metrics,
the model selection made and DHO's mixing).

Teacher image embeddings are cached on disk under ``cache_dir/teacher_features`` (memory-mapped),
so runs that share a teacher and images never run the teacher twice.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from .recipes import DistillConfig

SETTINGS = ("inductive", "transductive")


@dataclass
class ExperimentConfig:
    """Everything one distillation run on the embedded world depends on."""

    preset: str = "full"  # variant of presets/quickstart.yaml: world sizes, teacher and student pretraining
    shots: int = 16  # K images per base class (inductive); ignored by the transductive setting
    seed: int = 0  # few-shot draw, batch order and AME initialisation
    setting: str = "inductive"  # "inductive" (K-shot base classes) or "transductive" (all unlabeled train images)
    cache_dir: str = "runs/cache"  # world and pretrained models, reused by every run
    device: str = "auto"  # "auto", "cpu" or "cuda"
    val_per_class: int = 8  # held-out labelled train images per training class (DHO mixing, best_val)
    distill: DistillConfig = field(default_factory=DistillConfig)  # recipe, AME and optimisation settings

    def __post_init__(self):
        if self.setting not in SETTINGS:
            raise ValueError(f"unknown setting {self.setting!r}; valid names: {', '.join(SETTINGS)}")
        if isinstance(self.shots, bool) or not isinstance(self.shots, int) or self.shots < 1:
            raise ValueError(f"shots must be a positive integer, got {self.shots!r}")
        if isinstance(self.val_per_class, bool) or not isinstance(self.val_per_class, int) or self.val_per_class < 1:
            raise ValueError(f"val_per_class must be a positive integer, got {self.val_per_class!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")

    @classmethod
    def from_dict(cls, data: dict, origin: str = "config") -> "ExperimentConfig":
        if not isinstance(data, dict):
            raise ValueError(f"{origin}: expected a mapping of settings, got {type(data).__name__}")
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{origin}: unknown settings {sorted(unknown)}; expected some of {sorted(known)}")
        try:
            distill = DistillConfig.from_dict(data.pop("distill", {}))
        except TypeError as err:
            raise ValueError(f"{origin}: bad 'distill' settings: {err}") from None
        return cls(distill=distill, **data)


def load_experiment_config(path: str | os.PathLike) -> ExperimentConfig:
    """Read a YAML or JSON experiment config (``yaml.safe_load``: data only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment config {path} not found")
    return ExperimentConfig.from_dict(yaml.safe_load(path.read_text()) or {}, origin=str(path))


def experiment_config(base: str | os.PathLike | dict | None = None, **settings) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from a base config (file or dict) and flat setting overrides.

    Each override goes to the config level that has a field of its name — ``shots``, ``seed``,
    ``preset`` … to the experiment; ``recipe``, ``ame_weight``, ``temperature`` … to ``distill``;
    ``epochs``, ``lr``, ``batch_size`` … to ``distill.optim`` — which is how notebook and pipeline
    parameters (flat names) become a config. Unknown names raise ``ValueError`` listing valid ones.
    """
    from .train import OptimConfig

    if base is None:
        data = {}
    elif isinstance(base, dict):
        data = copy.deepcopy(base)
    else:
        path = Path(base)
        if not path.is_file():
            raise FileNotFoundError(f"experiment config {path} not found")
        data = yaml.safe_load(path.read_text()) or {}
    data.setdefault("distill", {}).setdefault("optim", {})
    levels = [({f.name for f in dataclasses.fields(ExperimentConfig)} - {"distill"}, data),
              ({f.name for f in dataclasses.fields(DistillConfig)} - {"optim"}, data["distill"]),
              ({f.name for f in dataclasses.fields(OptimConfig)} - {"seed"}, data["distill"]["optim"])]
    for name, value in settings.items():
        target = next((level for names, level in levels if name in names), None)
        if target is None:
            valid = sorted(set().union(*(names for names, _ in levels)))
            raise ValueError(f"unknown experiment setting {name!r}; valid names: {', '.join(valid)}")
        target[name] = value
    return ExperimentConfig.from_dict(data, origin=str(base) if base is not None else "settings")


@functools.lru_cache(maxsize=4)
def _shared_setup(preset_name: str, cache_dir: str, device: str) -> dict:
    """World, pretrained teacher and student, class vectors: built or loaded once per process and preset.

    Runs of a sweep executed in one process share them (the student is copied per run).
    """
    from . import models, world, zoo
    from .presets import QuickstartConfig

    preset = QuickstartConfig.load(preset_name)
    device = torch.device(device)
    cache = Path(cache_dir)
    spec = world.load_world_spec()
    splits = world.build_world(spec, cache / "world", seed=preset.world_seed, sizes=preset.world_sizes)
    world_id = f"{spec.fingerprint()}-seed{preset.world_seed}-pretrain{preset.world_sizes['pretrain']}"
    teacher, tokenizer, _ = zoo.load_or_pretrain(preset.teacher, splits["pretrain"], world_id, cache / "zoo", device)
    student, _, _ = zoo.load_or_pretrain(preset.student, splits["pretrain"], world_id, cache / "zoo", device)
    class_vectors = models.build_class_vectors(teacher, tokenizer, spec.class_names, spec.prompt_templates,
                                               device=device)
    return {"spec": spec, "splits": splits, "teacher": teacher, "tokenizer": tokenizer, "student": student,
            "class_vectors": class_vectors}


def run_experiment(config: ExperimentConfig, run_dir: str | os.PathLike, resume: bool = False,
                   progress: bool = False) -> dict:
    """Run one distillation and write its run directory; returns the metrics written to metrics.json.

    A non-empty ``run_dir`` is refused unless ``resume`` is true, in which case training continues
    from ``checkpoint.pt`` and ends with the same metrics as an uninterrupted run.

    Under ``torchrun`` every process trains on its share of each batch (see :func:`workbench.train.fit`);
    rank 0 writes the run directory and evaluates, the other ranks return an empty dict.
    """
    from . import analysis, models, protocol, recipes
    from .evaluation import predict
    from .runs import create_run_dir, environment_info, write_arrays, write_json
    from .cache import cached_image_features
    from .train import distributed_rank, select_device

    rank, world_size = distributed_rank()
    if rank == 0:
        run_dir = create_run_dir(Path(run_dir).parent, Path(run_dir).name, overwrite=resume)
        write_json(run_dir / "config.json", dataclasses.asdict(config))
        write_json(run_dir / "environment.json", {**environment_info(), "world_size": world_size})
    run_dir = Path(run_dir)
    device = select_device(config.device)
    # Under torchrun rank 0 fills the shared caches (world, models, teacher features) before the others read them.
    setup = _rank_zero_first(lambda: _shared_setup(config.preset, str(Path(config.cache_dir).resolve()), str(device)))
    spec, splits, teacher, tokenizer, class_vectors = (setup[k] for k in ("spec", "splits", "teacher", "tokenizer",
                                                                           "class_vectors"))
    student = copy.deepcopy(setup["student"])  # training changes it; the next run starts from the same weights
    cache = Path(config.cache_dir)
    base, new = protocol.base_new_split(len(spec.class_names))
    train = splits["train"]
    shots = protocol.few_shot_indices(train.labels, config.shots, config.seed, classes=base)
    validation_indices = protocol.few_shot_indices(train.labels, config.val_per_class, config.seed, classes=base,
                                                   exclude=shots)
    validation = (train.images[validation_indices], train.labels[validation_indices])
    if config.setting == "inductive":
        train_images, train_labels = train.images[shots], train.labels[shots]
    else:  # every training image, unlabelled except the K shots
        train_images = train.images
        train_labels = np.full(len(train.labels), -1, dtype=np.int64)
        train_labels[shots] = train.labels[shots]
    test = splits["test"]
    base_test_mask = np.isin(test.labels, base)
    base_test = (test.images[base_test_mask], test.labels[base_test_mask])

    settings = dataclasses.replace(config.distill, optim=dataclasses.replace(config.distill.optim, seed=config.seed))
    teacher_cache = cache / "teacher_features"
    teacher_scale = float(teacher.logit_scale.detach().exp())
    live = settings.teacher_mode == "live"
    train_features = None if live else _rank_zero_first(
        lambda: cached_image_features(teacher, train_images, teacher_cache, device=device)[0])
    targets = recipes.TeacherTargets(train_features, teacher_scale, model=teacher)
    result = recipes.distill(student, train_images, targets, class_vectors, settings, device,
                             log_path=run_dir / "train.jsonl", checkpoint_path=run_dir / "checkpoint.pt",
                             progress=progress, train_classes=base, labels=train_labels, validation=validation,
                             base_test=base_test, vocabulary=class_vectors)
    history = result.history
    if rank != 0:  # training was shared; evaluation and every file are rank 0's
        return {}
    models.save_weights(student, run_dir / "student.safetensors", metadata={"recipe": settings.recipe})
    added = recipe_modules(result.model)
    if added:
        models.save_tensors(added, run_dir / "recipe_modules.safetensors", metadata={"recipe": settings.recipe})

    teacher_features = cached_image_features(teacher, test.images, teacher_cache, device=device)[0].float()
    teacher_logits = teacher_scale * teacher_features @ class_vectors.float().cpu().T
    features, logits = predict(result.model, test.images, class_vectors, device=device)
    table, stats = analysis.analyze_predictions(
        logits, test.labels, features, class_vectors, teacher_logits=teacher_logits,
        teacher_features=teacher_features, base_classes=base, new_classes=new,
        true_ambiguity=test.ambiguity, class_names=spec.class_names)
    analysis.write_table(table, run_dir / "samples.csv")
    # What the explorer and analyze_run need without the models: row i is test image i.
    write_arrays(run_dir / "embeddings.npz", image_features=features.numpy(), text_features=class_vectors.float().cpu().numpy(),
                 logits=logits.numpy(), teacher_features=teacher_features.numpy(), teacher_logits=teacher_logits.numpy(),
                 labels=np.asarray(test.labels), base_classes=np.asarray(base), new_classes=np.asarray(new),
                 true_ambiguity=np.asarray(test.ambiguity), class_names=np.asarray(spec.class_names, dtype=str))
    metrics = {"base_acc": stats["base_acc"], "new_acc": stats["new_acc"], "hm": stats["hm"],
               "analysis": stats, "steps": len(history), "selection": result.selection, **result.extras,
               "final_manifold_entropy": history[-1].get("manifold_entropy") if history else None}
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def recipe_modules(model) -> dict:
    """Tensors a recipe added around the student (prompts, projector, heads), by name; empty for none."""
    from .prompts import PromptedStudent
    from .recipes import DualHeadStudent

    if isinstance(model, PromptedStudent):
        parts = {"prompts": model.prompts, "projector": model.projector}
    elif isinstance(model, DualHeadStudent):
        parts = {"ce_head": model.ce_head, "kd_head": model.kd_head}
    else:
        return {}
    return {f"{name}.{key}": value.detach().cpu().contiguous()
            for name, module in parts.items() for key, value in module.state_dict().items()}


def _rank_zero_first(build):
    """``build()`` on rank 0, then on the other ranks (which then read what rank 0 cached); no-op outside DDP."""
    from .train import distributed_rank

    rank, world_size = distributed_rank()
    if world_size == 1:
        return build()
    result = build() if rank == 0 else None
    torch.distributed.barrier()
    return result if rank == 0 else build()


def run_step(run_dir: str | os.PathLike, config: str = "", smoke: bool = False, overwrite_run_dir: bool = False,
             **settings) -> dict:
    """One pipeline step: a run of ``config`` (a YAML/JSON file; empty for the defaults) with ``settings``.

    This is what ``notebooks/run_experiment.ipynb`` executes and what a pipeline with
    ``in_process: true`` calls directly. Settings whose value is ``None`` keep the config's value;
    ``smoke`` switches to the smoke preset and one epoch. The run goes to ``run_dir/experiment`` (an
    interrupted run with the same config resumes from its checkpoint) and its metrics, with the
    wall time, to ``run_dir/metrics.json`` where the pipeline's index finds them.
    """
    import json
    import time

    from .runs import create_run_dir, read_json, write_json

    settings = {k: v for k, v in settings.items() if v is not None}
    if smoke:
        settings.update(preset="smoke", epochs=1)
    experiment = experiment_config(config or None, **settings)
    run_path = create_run_dir(Path(run_dir).parent, Path(run_dir).name, overwrite=overwrite_run_dir)
    target = run_path / "experiment"
    previous = target / "config.json"
    resume = previous.is_file() and read_json(previous) == json.loads(json.dumps(dataclasses.asdict(experiment)))
    start = time.perf_counter()
    metrics = run_experiment(experiment, target, resume=resume)
    metrics = {**metrics, "seconds": round(time.perf_counter() - start, 2)}
    write_json(run_path / "metrics.json", metrics)
    return metrics


def run_or_load(config: ExperimentConfig, run_dir: str | os.PathLike) -> tuple[dict, str]:
    """``(metrics, "loaded" | "trained")``: the finished run of ``config`` in ``run_dir``, or train it there.

    An interrupted run of the same config resumes from its checkpoint; a directory holding a run of
    another config (the device aside, which does not change what a run is) raises ``ValueError``
    naming the settings that differ.
    """
    import json

    from .pipeline import flatten
    from .runs import read_json

    path = Path(run_dir)
    if (path / "config.json").is_file():
        stored = flatten(read_json(path / "config.json"))
        wanted = flatten(json.loads(json.dumps(dataclasses.asdict(config))))
        differ = sorted(k for k in stored.keys() & wanted.keys() if stored[k] != wanted[k] and k != "device")
        if differ:
            raise ValueError(f"{path} holds a run of another config ({', '.join(differ)} differ); "
                             "choose another run_dir or remove it")
    if (path / "metrics.json").is_file():
        return read_json(path / "metrics.json"), "loaded"
    return run_experiment(config, path, resume=(path / "config.json").is_file()), "trained"
