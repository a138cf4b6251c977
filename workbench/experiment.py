"""One distillation experiment, dataset × model pair × recipe × protocol, from a config to a run directory.

This is what ``python -m workbench train --config run.yaml`` runs. A config is data::

    dataset: embedded_world # or a benchmark spec (caltech101 …), a manifest file, imagefolder:<dir>
    data_root: ""           # the dataset's folder ("" = the spec's root under $WORKBENCH_DATA)
    model_pair: embedded    # a preset of workbench/presets/model_pairs.yaml (vit-l14_to_vit-b16 …)
    teacher: null           # or {name: ViT-L-14, pretrained: openai}, local-dir:…, hf-hub:…, a checkpoint
    protocol: base_to_new   # or cross_dataset / domain_generalization (targets: [...])
    preset: full            # embedded world: world sizes and teacher/student pretraining
    shots: 16               # K labelled images per training class (inductive setting)
    seed: 0
    setting: inductive      # or transductive: unlabeled training images of all classes
    cache_dir: runs/cache   # world, pretrained models, manifests, class vectors, teacher features
    device: auto
    distill:                # workbench.recipes.DistillConfig (recipe, temperature, ame_weight, optim …)
      recipe: logit_kd
      ame_weight: 50.0
    teacher_tuning:         # PromptKD's first stage: prompt-tune the teacher on the labelled shots
      enabled: false

Dataset, model pair and protocol are resolved and checked by :func:`workbench.task.prepare_task`
before anything is written.

The run directory receives ``config.json``, ``environment.json``, ``train.jsonl`` (every step),
``checkpoint.pt`` (every epoch, AME's projections included; ``resume=True`` continues from it),
``student.safetensors`` (the exported student backbone: AME's projections are not part of it),
``recipe_modules.safetensors`` for recipes that add modules to the student (PromptKD's prompts and
projector, DHO's heads), ``dataset.json`` (which images the test rows are, for galleries),
``samples.csv`` (per test image), ``embeddings.npz`` (student and teacher
test embeddings and logits, class vectors, labels, base/new classes) and ``metrics.json`` (base / new / HM,
or source and target accuracies for the transfer protocols, the analysis metrics,
the model selection made and DHO's mixing).

Teacher image embeddings are cached on disk under ``cache_dir/teacher_features`` (memory-mapped),
so runs that share a teacher and images never run the teacher twice.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import ConfigError, differences, from_mapping, read_config_file
from .loggers import DEFAULT_LOGGERS, check_loggers
from .recipes import DistillConfig
from .recipes.teacher_tuning import TeacherTuningConfig
from .task import EMBEDDED_WORLD, ON_ERROR, PROTOCOLS

SETTINGS = ("inductive", "transductive")


@dataclass
class ExperimentConfig:
    """Everything one distillation run depends on."""

    dataset: str = EMBEDDED_WORLD  # embedded_world, a benchmark spec name, a manifest/spec file, imagefolder:<dir>
    data_root: str = ""  # the dataset's folder; "" = the spec's own root (${WORKBENCH_DATA}/...) or the manifest's
    model_pair: str = "embedded"  # a preset of workbench/presets/model_pairs.yaml
    teacher: dict | str | None = None  # replaces the pair's teacher: {name, pretrained} or a model reference
    student: dict | str | None = None  # replaces the pair's student
    protocol: str = "base_to_new"  # "base_to_new", "cross_dataset" or "domain_generalization"
    targets: list = field(default_factory=list)  # transfer protocols: evaluated datasets; [] = evaluation_sets.yaml
    augment: bool = False  # student views augmented (manifests: open_clip's train transform; embedded world:
    # PromptKD's random resized crop + flip); the teacher runs live on the same views
    workers: int = 4  # DataLoader worker processes decoding manifest images
    on_error: str = "error"  # unreadable image: "error" (names the file) or "skip"
    preset: str = "full"  # variant of presets/quickstart.yaml: world sizes, teacher and student pretraining
    shots: int = 16  # K images per base class (inductive); ignored by the transductive setting
    seed: int = 0  # few-shot draw, batch order and AME initialisation
    setting: str = "inductive"  # "inductive" (K-shot base classes) or "transductive" (all unlabeled train images)
    cache_dir: str = "runs/cache"  # world and pretrained models, reused by every run
    device: str = "auto"  # "auto", "cpu" or "cuda"
    val_per_class: int = 8  # held-out labelled train images per training class (DHO mixing, best_val)
    loggers: list = field(default_factory=lambda: list(DEFAULT_LOGGERS))  # jsonl + views: tensorboard, wandb
    distill: DistillConfig = field(default_factory=DistillConfig)  # recipe, AME and optimisation settings
    teacher_tuning: TeacherTuningConfig = field(default_factory=TeacherTuningConfig)  # PromptKD's first stage

    def __post_init__(self):
        self.distill = self.distill.resolved(self.dataset)  # the recipe's official defaults, for this dataset
        if self.setting not in SETTINGS:
            raise ValueError(f"unknown setting {self.setting!r}; valid names: {', '.join(SETTINGS)}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; valid names: {', '.join(PROTOCOLS)}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"unknown on_error {self.on_error!r}; valid names: {', '.join(ON_ERROR)}")
        for name in ("dataset", "data_root", "model_pair"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        if not self.dataset:
            raise ValueError("dataset must not be empty")
        if not isinstance(self.targets, list) or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError(f"targets must be a list of dataset names, got {self.targets!r}")
        check_loggers(self.loggers)
        if self.targets and self.protocol == "base_to_new":
            raise ValueError("targets are for the cross_dataset and domain_generalization protocols; "
                             "base_to_new evaluates the dataset's own test split")
        if not isinstance(self.augment, bool):
            raise ValueError(f"augment must be true or false, got {self.augment!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"workers must be a non-negative integer, got {self.workers!r}")
        if self.teacher_tuning.enabled and self.augment:
            raise ValueError("teacher_tuning needs the teacher's un-augmented view of the labelled images; "
                             "it does not run with augment: true yet")
        if self.augment and self.distill.teacher_mode != "live":
            raise ValueError("augment: true needs teacher_mode: live — the teacher must see each augmented view "
                             "(cached teacher features are of un-augmented images)")
        if isinstance(self.shots, bool) or not isinstance(self.shots, int) or self.shots < 1:
            raise ValueError(f"shots must be a positive integer, got {self.shots!r}")
        if isinstance(self.val_per_class, bool) or not isinstance(self.val_per_class, int) or self.val_per_class < 1:
            raise ValueError(f"val_per_class must be a positive integer, got {self.val_per_class!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        from .presets import load_preset
        presets = load_preset("quickstart")
        if self.preset not in presets:
            raise ValueError(f"unknown preset {self.preset!r}; valid names: {', '.join(presets)}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError, ValueError):
                raise ValueError(f"device must be 'auto' or a torch device ('cpu', 'cuda', 'cuda:1' …), "
                                 f"got {self.device!r}") from None

    @classmethod
    def from_dict(cls, data: dict, origin: str = "config") -> "ExperimentConfig":
        """A config from a mapping (a parsed file); errors name ``origin`` and the dotted field."""
        return from_mapping(cls, data, origin)


def load_experiment_config(path: str | os.PathLike) -> ExperimentConfig:
    """Read a YAML or JSON experiment config (``yaml.safe_load``: data only)."""
    return ExperimentConfig.from_dict(read_config_file(path, "experiment config"), origin=str(path))


def experiment_config(base: str | os.PathLike | dict | None = None, **settings) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from a base config (file or dict) and flat setting overrides.

    Each override goes to the config level that has a field of its name — ``shots``, ``seed``,
    ``preset`` … to the experiment; ``recipe``, ``ame_weight``, ``temperature`` … to ``distill``;
    ``epochs``, ``lr``, ``batch_size`` … to ``distill.optim`` — which is how notebook and pipeline
    parameters (flat names) become a config. Unknown names raise ``ValueError`` listing valid ones;
    every value is checked here, before anything runs or is written.
    """
    from .train import OptimConfig

    origin = str(base) if base is not None and not isinstance(base, dict) else "settings"
    data = copy.deepcopy(base) if isinstance(base, dict) else read_config_file(base, "experiment config") if base is not None else {}
    data = {} if data is None else data
    for where, level in (("the top level", data), ("distill", data.get("distill") if isinstance(data, dict) else None)):
        if not isinstance(level, (dict, type(None))):
            raise ConfigError(f"{origin}: {where} must be a mapping of settings (name: value), got "
                              f"{type(level).__name__} {level!r:.80}")
    distill = data["distill"] = dict(data.get("distill") or {})
    if not isinstance(distill.get("optim"), (dict, type(None))):
        raise ConfigError(f"{origin}: distill.optim must be a mapping of settings, got {distill['optim']!r:.80}")
    distill["optim"] = dict(distill.get("optim") or {})
    levels = [({f.name for f in dataclasses.fields(ExperimentConfig)} - {"distill"}, data),
              ({f.name for f in dataclasses.fields(DistillConfig)} - {"optim"}, distill),
              ({f.name for f in dataclasses.fields(OptimConfig)} - {"seed"}, distill["optim"])]
    for name, value in settings.items():
        target = next((level for names, level in levels if name in names), None)
        if target is None:
            valid = sorted(set().union(*(names for names, _ in levels)))
            raise ConfigError(f"unknown experiment setting {name!r}; valid names: {', '.join(valid)}")
        target[name] = value
    if settings:
        origin += f" with settings {', '.join(settings)}" if origin != "settings" else ""
    return ExperimentConfig.from_dict(data, origin=origin)


def run_experiment(config: ExperimentConfig, run_dir: str | os.PathLike, resume: bool = False,
                   progress: bool = False) -> dict:
    """Run one distillation and write its run directory; returns the metrics written to metrics.json.

    Dataset, models and protocol are resolved first (:func:`workbench.task.prepare_task`); any bad
    setting fails there, before the run directory exists. A non-empty ``run_dir`` is refused unless
    ``resume`` is true, in which case training continues from ``checkpoint.pt`` and ends with the
    same metrics as an uninterrupted run.

    Under ``torchrun`` every process trains on its share of each batch (see :func:`workbench.train.fit`);
    rank 0 writes the run directory and evaluates, the other ranks return an empty dict.
    """
    from . import models, recipes
    from .cache import cached_image_features
    from .loggers import metric_scalars, run_views
    from .device import distributed_rank, select_device
    from .runs import RunDir, environment_info
    from .task import prepare_task

    rank, world_size = distributed_rank()
    run = RunDir(run_dir)
    if resume and run.has("config"):  # a run directory never describes a run that did not happen
        differ = differences(run.read("config"), json.loads(json.dumps(dataclasses.asdict(config))),
                             ignore=("device", "loggers"))
        if differ:
            raise ConfigError(f"cannot resume {run_dir}: it holds a run of another config; nothing was changed. "
                              f"Differing settings (stored → requested): {'; '.join(differ)}")
    if not resume and run.path.is_dir() and any(run.path.iterdir()):
        raise FileExistsError(f"run directory {run_dir} already exists and is not empty; choose another name, "
                              "or resume it")
    device = select_device(config.device)
    # Under torchrun rank 0 fills the shared caches (world, models, manifests, class vectors) before the others read them.
    task = _rank_zero_first(lambda: prepare_task(config, device))
    if config.teacher_tuning.enabled:
        task = _rank_zero_first(lambda: _with_tuned_teacher(task, config, device))
    if rank == 0:
        started = run.has("config")  # a resumed run keeps the record of how it started
        run = RunDir.create(run.path.parent, run.path.name, overwrite=resume)
        if not started:
            run.write("config", dataclasses.asdict(config))
            run.write("environment", {**environment_info(), "world_size": world_size})
        run.write("dataset", task.description)
    student = task.student

    settings = dataclasses.replace(config.distill, optim=dataclasses.replace(config.distill.optim, seed=config.seed))
    teacher_cache = Path(config.cache_dir) / "teacher_features"
    teacher_scale = float(task.teacher.logit_scale.detach().exp())
    live = settings.teacher_mode == "live"
    train_features = None if live else _rank_zero_first(
        lambda: cached_image_features(task.teacher, task.teacher_train_images, teacher_cache, device=device,
                                      fingerprint=task.teacher_fingerprint)[0])
    targets = recipes.TeacherTargets(train_features, teacher_scale, model=task.teacher,
                                     preprocess_cfg=models.preprocess_cfg(task.teacher))
    # The run's views of its training log (TensorBoard, W&B), rank 0's only; fit writes to them too.
    with run_views(config.loggers, run.path, enabled=rank == 0, config=dataclasses.asdict(config)) as views:
        result = recipes.distill(student, task.train_images, targets, task.teacher_vectors, settings, device,
                                 log_path=run.log, checkpoint_path=run.checkpoint,
                                 progress=progress, train_classes=task.train_classes, labels=task.train_labels,
                                 validation=task.validation, base_test=task.base_test,
                                 vocabulary=task.vocabulary[0] if task.vocabulary else None,
                                 student_vocabulary=task.vocabulary[1] if task.vocabulary else None,
                                 student_class_vectors=task.student_vectors, class_names=task.class_names,
                                 tokenizer=task.student_tokenizer)
        history = result.history
        if rank != 0:  # training was shared; evaluation and every file are rank 0's
            return {}
        models.save_weights(student, run.student, metadata={"recipe": settings.recipe})
        added = recipe_modules(result)
        if added:
            models.save_tensors(added, run.recipe_modules, metadata={"recipe": settings.recipe})

        primary, *transfer = task.evaluations
        stats = evaluate_set(result, task.teacher, primary, teacher_cache, device, run=run,
                             teacher_fingerprint=task.teacher_fingerprint)
        metrics = {"dataset": task.dataset, "protocol": task.protocol, "skipped_images": stats.pop("skipped_images")}
        if primary.base is not None:
            metrics.update(base_acc=stats["base_acc"], new_acc=stats["new_acc"], hm=stats["hm"])
        else:
            metrics["accuracy"] = stats["accuracy"]
        if transfer:
            scores = {ev.name: evaluate_set(result, task.teacher, ev, teacher_cache, device,
                                               teacher_fingerprint=task.teacher_fingerprint)["accuracy"]
                      for ev in transfer}  # unreadable target images (on_error: skip) are left out of their accuracy
            metrics.update(targets=scores, target_mean=float(np.mean(list(scores.values()))))
        metrics.update({"analysis": stats, "steps": len(history), "selection": result.selection, **result.extras,
                        "final_manifold_entropy": history[-1].get("manifold_entropy") if history else None})
        if views is not None:  # after the last step: a later resume purges and rewrites them
            views.scalars(metric_scalars(metrics), step=len(history))
    run.write("metrics", metrics)
    return metrics


def _with_tuned_teacher(task, config: ExperimentConfig, device: torch.device):
    """``task`` whose teacher is prompt-tuned on its labelled training images (cached under ``cache_dir``).

    The tuned teacher's class vectors come from its learned text context, for the task and for every
    evaluation set; the student keeps the vectors it had (a shared text tower's hand-written prompts).
    """
    from .cache import model_fingerprint
    from .recipes.teacher_tuning import load_or_tune_teacher

    labelled = np.flatnonzero(np.asarray(task.train_labels) >= 0)
    if not len(labelled):
        raise ValueError("teacher_tuning needs labelled training images (shots); this run has none")
    tuned, _ = load_or_tune_teacher(task.teacher, task.teacher_train_images.subset(labelled),
                                    np.asarray(task.train_labels)[labelled], task.teacher_vectors, task.class_names,
                                    task.teacher_tokenizer,
                                    dataclasses.replace(config.teacher_tuning, optim=dataclasses.replace(
                                        config.teacher_tuning.optim, seed=config.seed)),
                                    device, config.cache_dir)

    def vectors(names):
        with torch.no_grad():
            return tuned.class_vectors(list(names)).float().cpu()

    evaluations = [dataclasses.replace(ev, teacher_vectors=vectors(ev.class_names),
                                       student_vectors=ev.teacher_vectors if ev.student_vectors is None
                                       else ev.student_vectors) for ev in task.evaluations]
    return dataclasses.replace(task, teacher=tuned, teacher_fingerprint=model_fingerprint(tuned),
                               teacher_vectors=vectors(task.class_names), evaluations=evaluations,
                               student_vectors=task.teacher_vectors if task.student_vectors is None
                               else task.student_vectors)


def evaluate_set(result, teacher, evaluation, teacher_cache: Path, device: torch.device,
                 run=None, teacher_fingerprint: str | None = None) -> dict:
    """Analysis metrics of a distilled student on one evaluation set (base / new / HM or accuracy).

    The student is scored against its own class vectors (the teacher's for recipes that project into
    the teacher's space); the teacher's cached features of the same images give the teacher-side
    columns. ``skipped_images`` counts unreadable images left out (``on_error: skip``). With
    ``run`` (a :class:`workbench.runs.RunDir`) the per-sample table and the embeddings are written there.
    """
    from . import analysis
    from .cache import cached_image_features
    from .evaluation import predict_source
    from .runs import write_arrays

    own = evaluation.student_vectors if evaluation.student_vectors is not None else evaluation.teacher_vectors
    vectors = (evaluation.teacher_vectors if result.scores_in_teacher_space else own).float().cpu()
    if hasattr(result.model, "class_vectors"):  # learned text prompts (KDPL's CoOp, MaPLe): the set's own names
        with torch.no_grad():
            vectors = result.model.class_vectors(list(evaluation.class_names)).float().cpu()
    features, logits, kept = predict_source(result.model, evaluation.student_images, vectors, device=device)
    teacher_features = cached_image_features(teacher, evaluation.teacher_images, teacher_cache,
                                             device=device, fingerprint=teacher_fingerprint)[0][kept].float()
    teacher_scale = float(teacher.logit_scale.detach().exp())
    teacher_logits = teacher_scale * teacher_features @ evaluation.teacher_vectors.float().cpu().T
    labels = np.asarray(evaluation.labels)[kept]
    ambiguity = None if evaluation.true_ambiguity is None else np.asarray(evaluation.true_ambiguity)[kept]
    partner = None if evaluation.true_partner is None else np.asarray(evaluation.true_partner)[kept]
    table, stats = analysis.analyze_predictions(
        logits, labels, features, vectors, teacher_logits=teacher_logits, teacher_features=teacher_features,
        base_classes=evaluation.base, new_classes=evaluation.new, true_ambiguity=ambiguity,
        class_names=evaluation.class_names, true_partner=partner)
    stats["skipped_images"] = int(len(evaluation.labels) - len(kept))
    if run is not None:
        analysis.write_table(table, run.samples)
        # What the explorer and analyze_run need without the models: row i is test image kept[i].
        arrays = dict(image_features=features.numpy(), text_features=vectors.numpy(), logits=logits.numpy(),
                      teacher_features=teacher_features.numpy(), teacher_logits=teacher_logits.numpy(),
                      labels=labels, class_names=np.asarray(evaluation.class_names, dtype=str),
                      image_index=np.asarray(kept))
        if evaluation.base is not None:
            arrays.update(base_classes=np.asarray(evaluation.base), new_classes=np.asarray(evaluation.new))
        if ambiguity is not None:
            arrays["true_ambiguity"] = ambiguity
        if partner is not None:
            arrays["true_partner"] = partner
        write_arrays(run.embeddings, **arrays)
    return stats


def recipe_modules(result) -> dict:
    """Tensors a recipe added around the student (prompts, projector, heads), by name; empty for none."""
    return {f"{name}.{key}": value.detach().cpu().contiguous()
            for name, module in result.added_modules.items() for key, value in module.state_dict().items()}


def _rank_zero_first(build):
    """``build()`` on rank 0, then on the other ranks (which then read what rank 0 cached); no-op outside DDP."""
    from .device import collective, distributed_rank, working_alone

    rank, world_size = distributed_rank()
    if world_size == 1:
        return build()
    dist = torch.distributed
    failed = torch.zeros(1, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    result = error = None
    if rank == 0:
        try:
            with working_alone():  # rank 0 pretrains and fills caches alone: none of it may wait for the others
                result = build()
        except Exception as err:  # the others must hear of it, or they wait at the broadcast below for ever
            failed += 1
            error = err
    collective(dist.broadcast, failed, src=0, what=f"rank {rank} waiting for rank 0 to fill the shared caches")
    if failed.item():
        if rank == 0:
            raise error
        raise RuntimeError("rank 0 failed while preparing the run (its error is printed above); stopping too")
    return result if rank == 0 else build()


def run_step(run_dir: str | os.PathLike, config: str = "", smoke: bool = False, overwrite_run_dir: bool = False,
             **settings) -> dict:
    """One pipeline step: a run of ``config`` (a YAML/JSON file; empty for the defaults) with ``settings``.

    This is what ``notebooks/run_experiment.ipynb`` executes and what a pipeline with
    ``in_process: true`` calls directly. Settings whose value is ``None`` keep the config's value;
    ``smoke`` switches to the smoke preset and one epoch, and on a dataset of image files to the embedded
    model pair (its stand-in for open_clip models whose weights a CPU machine lacks). The run goes to
    ``run_dir/experiment`` (an interrupted run with the same config resumes from its checkpoint) and its
    metrics, with the
    wall time, to ``run_dir/metrics.json`` where the pipeline's index finds them.
    """
    import time

    from .runs import RunDir

    settings = {k: v for k, v in settings.items() if v is not None}
    if smoke:
        settings.update(preset="smoke", epochs=1)
    experiment = experiment_config(config or None, **settings)
    if smoke and experiment.dataset != EMBEDDED_WORLD:
        # Image files with the embedded pair: the whole real-data path on a CPU, without downloaded weights.
        experiment = dataclasses.replace(experiment, model_pair="embedded", teacher=None, student=None, workers=0,
                                         device="auto")
    step = RunDir.create(Path(run_dir).parent, Path(run_dir).name, overwrite=overwrite_run_dir)
    target = RunDir(step / RunDir.EXPERIMENT)
    resume = target.has("config") and target.read("config") == json.loads(json.dumps(dataclasses.asdict(experiment)))
    start = time.perf_counter()
    metrics = run_experiment(experiment, target.path, resume=resume)
    metrics = {**metrics, "seconds": round(time.perf_counter() - start, 2)}
    step.write("metrics", metrics)
    return metrics


def run_or_load(config: ExperimentConfig, run_dir: str | os.PathLike) -> tuple[dict, str]:
    """``(metrics, "loaded" | "trained")``: the finished run of ``config`` in ``run_dir``, or train it there.

    An interrupted run of the same config resumes from its checkpoint; a directory holding a run of
    another config (the device aside, which does not change what a run is) raises ``ValueError``
    naming the settings that differ.
    """
    from .runs import RunDir

    run = RunDir(run_dir)
    if run.has("config"):
        differ = differences(run.read("config"), json.loads(json.dumps(dataclasses.asdict(config))),
                             ignore=("device", "loggers"))
        if differ:
            raise ValueError(f"{run.path} holds a run of another config ({', '.join(differ)} differ); "
                             "choose another run_dir or remove it")
    if run.has("metrics"):
        return run.read("metrics"), "loaded"
    return run_experiment(config, run.path, resume=run.has("config")), "trained"
