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
``checkpoint.pt`` (every epoch; ``resume=True`` continues from it), ``student.safetensors`` (the
exported student: AME's projections are not part of it), ``samples.csv`` and ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

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
    distill: DistillConfig = field(default_factory=DistillConfig)  # recipe, AME and optimisation settings

    def __post_init__(self):
        if self.setting not in SETTINGS:
            raise ValueError(f"unknown setting {self.setting!r}; valid names: {', '.join(SETTINGS)}")
        if isinstance(self.shots, bool) or not isinstance(self.shots, int) or self.shots < 1:
            raise ValueError(f"shots must be a positive integer, got {self.shots!r}")
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


def run_experiment(config: ExperimentConfig, run_dir: str | os.PathLike, resume: bool = False,
                   progress: bool = False) -> dict:
    """Run one distillation and write its run directory; returns the metrics written to metrics.json.

    A non-empty ``run_dir`` is refused unless ``resume`` is true, in which case training continues
    from ``checkpoint.pt`` and ends with the same metrics as an uninterrupted run.
    """
    from . import analysis, models, protocol, recipes, world, zoo
    from .evaluation import predict
    from .presets import QuickstartConfig
    from .runs import create_run_dir, environment_info, write_json
    from .train import select_device

    run_dir = create_run_dir(Path(run_dir).parent, Path(run_dir).name, overwrite=resume)
    write_json(run_dir / "config.json", dataclasses.asdict(config))
    write_json(run_dir / "environment.json", environment_info())
    preset = QuickstartConfig.load(config.preset)
    device = select_device(config.device)
    cache = Path(config.cache_dir)

    spec = world.load_world_spec()
    splits = world.build_world(spec, cache / "world", seed=preset.world_seed, sizes=preset.world_sizes)
    world_id = f"{spec.fingerprint()}-seed{preset.world_seed}-pretrain{preset.world_sizes['pretrain']}"
    teacher, tokenizer, _ = zoo.load_or_pretrain(preset.teacher, splits["pretrain"], world_id, cache / "zoo", device)
    student, _, _ = zoo.load_or_pretrain(preset.student, splits["pretrain"], world_id, cache / "zoo", device)
    class_vectors = models.build_class_vectors(teacher, tokenizer, spec.class_names, spec.prompt_templates,
                                               device=device)
    base, new = protocol.base_new_split(len(spec.class_names))
    train = splits["train"]
    if config.setting == "inductive":
        train = train.subset(protocol.few_shot_indices(train.labels, config.shots, config.seed, classes=base))
        train_vectors = class_vectors[base]
    else:
        train_vectors = class_vectors

    settings = dataclasses.replace(config.distill, optim=dataclasses.replace(config.distill.optim, seed=config.seed))
    targets = recipes.TeacherTargets.from_model(teacher, train.images, device=device)
    history = recipes.distill(student, train.images, targets, train_vectors, settings, device,
                              log_path=run_dir / "train.jsonl", checkpoint_path=run_dir / "checkpoint.pt",
                              progress=progress)
    models.save_weights(student, run_dir / "student.safetensors", metadata={"recipe": settings.recipe})

    test = splits["test"]
    teacher_features, teacher_logits = predict(teacher, test.images, class_vectors, device=device)
    features, logits = predict(student, test.images, class_vectors, device=device)
    table, stats = analysis.analyze_predictions(
        logits, test.labels, features, class_vectors, teacher_logits=teacher_logits,
        teacher_features=teacher_features, base_classes=base, new_classes=new,
        true_ambiguity=test.ambiguity, class_names=spec.class_names)
    analysis.write_table(table, run_dir / "samples.csv")
    metrics = {"base_acc": stats["base_acc"], "new_acc": stats["new_acc"], "hm": stats["hm"],
               "analysis": stats, "steps": len(history),
               "final_manifold_entropy": history[-1].get("manifold_entropy") if history else None}
    write_json(run_dir / "metrics.json", metrics)
    return metrics
