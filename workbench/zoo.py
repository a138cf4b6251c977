"""The embedded model zoo: teacher and student CLIPs pretrained on the embedded world.

The text tower is always the locked, pretrained MiniLM (as in LiT); only the image tower learns. Two
pretraining objectives (``PRETRAIN_OBJECTIVES``):

- ``contrastive``: real CLIP training, open_clip's ``ClipLoss`` between images and their captions;
  caption embeddings are computed once, as the text tower is frozen.
- ``soft_labels``: cross-entropy of ``logit_scale * cos(image, class vector)`` over all classes against
  the world's ground truth as a distribution (``1 - a`` on the label, ``a`` on the partner class of an
  ambiguous sample). It teaches the image tower the class vectors directly and teaches it how ambiguous
  each image is, which is what a strong teacher brings to distillation.

Finished models are stored under a key derived from everything that shapes them (model config,
pretraining settings, world spec and seed), so a rerun loads them instead of training again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .image_sources import images_to_device, normalize_images
from .models import create_embedded_model, encode_texts, load_model_config, load_weights, save_weights
from .train import OptimConfig, Timer, fit, result_settings


@dataclass
class PretrainConfig:
    """How one embedded model is pretrained."""

    model: str  # name of a config in workbench/model_configs
    num_images: int  # how many samples of the world's pretraining split it sees
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimisation settings
    objective: str = "contrastive"  # a key of PRETRAIN_OBJECTIVES
    # Generator fields replaced while rendering this model's pretraining images: the same samples seen in a
    # narrower slice of the world (e.g. fewer backgrounds), as a smaller CLIP is trained on less varied data.
    world_overrides: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.objective not in PRETRAIN_OBJECTIVES:
            raise ValueError(f"unknown pretraining objective {self.objective!r}; "
                             f"known: {', '.join(PRETRAIN_OBJECTIVES)}")
        from .world import WorldSpec
        WorldSpec().variant(self.world_overrides)  # a bad override fails here, naming the field

    @classmethod
    def from_dict(cls, data: dict) -> "PretrainConfig":
        data = dict(data)
        optim = OptimConfig(**data.pop("optim", {}))
        unknown = set(data) - {"model", "num_images", "objective", "world_overrides"}
        if unknown:
            raise ValueError(f"unknown pretraining settings {sorted(unknown)}; expected model, num_images, objective, "
                             "world_overrides, optim")
        return cls(optim=optim, **data)


def cache_key(config: PretrainConfig, world_fingerprint: str) -> str:
    """Short hash of everything that determines the pretrained weights."""
    # "init" marks weights initialised from the config's seed; earlier caches depended on the process's RNG history.
    payload = json.dumps({"config": result_settings(asdict(config)), "model": load_model_config(config.model),
                          "world": world_fingerprint, "init": "seeded"}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def caption_embeddings(model, tokenizer, captions: list[str], device) -> tuple[torch.Tensor, np.ndarray]:
    """Embed each distinct caption once; returns (unique embeddings, index of each caption's row)."""
    unique, inverse = np.unique(np.asarray(captions, dtype=object).astype(str), return_inverse=True)
    return encode_texts(model, tokenizer, list(unique), device=device), inverse


def contrastive_objective(model, tokenizer, split, n: int, device, prompt_templates=None):
    """``step_loss`` of CLIP training against the captions of the first ``n`` samples."""
    import open_clip

    text_table, caption_rows = caption_embeddings(model, tokenizer, split.captions[:n], device)
    text_table = text_table.to(device)
    caption_rows = torch.as_tensor(caption_rows, device=device)
    clip_loss = open_clip.ClipLoss()

    def step_loss(image_features, indices):
        return {"contrastive_loss": clip_loss(image_features, text_table[caption_rows[indices]],
                                              model.logit_scale.exp())}
    return step_loss


def soft_label_targets(split, n: int) -> torch.Tensor:
    """(n, C) targets: ``1 - a`` on each sample's label and ``a`` on its partner class (clean: one-hot)."""
    labels, partner = torch.as_tensor(split.labels[:n]), torch.as_tensor(split.partner[:n])
    a = torch.as_tensor(split.ambiguity[:n], dtype=torch.float32)
    targets = torch.zeros(n, len(split.class_names))
    rows = torch.arange(n)
    targets[rows, labels] = 1 - a
    ambiguous = partner >= 0
    targets[rows[ambiguous], partner[ambiguous]] += a[ambiguous]
    return targets


def soft_label_objective(model, tokenizer, split, n: int, device, prompt_templates=None):
    """``step_loss`` of cross-entropy over the class vectors against the world's soft ground truth."""
    from .models import build_class_vectors

    if not prompt_templates:
        raise ValueError("the soft_labels objective scores images against class vectors: pass prompt_templates")
    vectors = build_class_vectors(model, tokenizer, split.class_names, prompt_templates, device=device).float()
    targets = soft_label_targets(split, n).to(device)

    def step_loss(image_features, indices):
        log_p = torch.log_softmax(model.logit_scale.exp() * image_features @ vectors.T, dim=1)
        return {"soft_label_loss": -(targets[indices] * log_p).sum(1).mean()}
    return step_loss


PRETRAIN_OBJECTIVES = {"contrastive": contrastive_objective, "soft_labels": soft_label_objective}


def pretrain(model, tokenizer, split, config: PretrainConfig, device: torch.device,
             log_path: str | Path | None = None, progress: bool = False, prompt_templates=None) -> list[dict]:
    """Train ``model``'s image tower by ``config.objective`` on the first ``config.num_images`` samples of ``split``."""
    n = config.num_images
    if n > len(split):
        raise ValueError(f"num_images={n} exceeds the {len(split)} samples of the pretraining split")
    model.to(device)
    objective = PRETRAIN_OBJECTIVES[config.objective](model, tokenizer, split, n, device, prompt_templates)
    images = images_to_device(split.images[:n], device)

    def step_loss(indices):
        features = model.encode_image(normalize_images(images[indices]), normalize=True)
        return {**objective(features, indices), "logit_scale": model.logit_scale.detach().exp()}

    return fit([model], step_loss, n, config.optim, device, log_path=log_path, progress=progress)


def load_or_pretrain(config: PretrainConfig, split, world_fingerprint: str, zoo_dir: str | Path,
                     device: torch.device, progress: bool = False, prompt_templates=None):
    """Return ``(model, tokenizer, info)`` for a pretrained embedded model, training it only if not cached.

    ``world_fingerprint`` must cover everything about the world that shapes the weights (spec with its
    prompt templates, seed, pretraining split size): :func:`world_key`.

    ``info`` records the cache key, the weight file, whether it was loaded from the cache, and the
    pretraining time and final loss of the run that produced it.
    """
    key = cache_key(config, world_fingerprint)
    zoo_dir = Path(zoo_dir)
    weights = zoo_dir / f"{config.model}-{key}.safetensors"
    record = zoo_dir / f"{config.model}-{key}.json"
    # Initial weights come from the config's seed, not from whatever the process drew before: the quickstart,
    # `train` and a sweep must pretrain the same model whichever of them fills the cache first.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.optim.seed)
        model, tokenizer = create_embedded_model(config.model)
    if weights.is_file() and record.is_file():
        load_weights(model, weights)
        info = json.loads(record.read_text())
        info["from_cache"] = True
        return model.to(device).eval(), tokenizer, info
    zoo_dir.mkdir(parents=True, exist_ok=True)
    with Timer() as timer:
        history = pretrain(model, tokenizer, split, config, device, log_path=zoo_dir / f"{config.model}-{key}.log.jsonl",
                           progress=progress, prompt_templates=prompt_templates)
    info = {"model": config.model, "key": key, "weights": str(weights), "config": asdict(config),
            "world": world_fingerprint, "pretrain_seconds": round(timer.seconds, 1),
            "final_loss": history[-1]["loss"], "steps": len(history)}
    save_weights(model, weights, metadata={"key": key})
    tmp = record.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(record)
    info["from_cache"] = False
    return model.eval(), tokenizer, info


def pretraining_split(spec, config: PretrainConfig, root, seed: int, size: int, default):
    """The pretraining split ``config`` trains on: ``default``, or the same samples rendered in its narrower world."""
    from . import world

    if not config.world_overrides:
        return default
    return world.build_world(spec.variant(config.world_overrides), root, seed, {"pretrain": size})["pretrain"]


def world_key(spec, seed: int, pretrain_size: int) -> str:
    """The one name of a world as far as pretrained weights care: spec fingerprint, seed, pretraining split size."""
    return f"{spec.fingerprint()}-seed{seed}-pretrain{pretrain_size}"


@dataclass
class EmbeddedSetup:
    """The embedded world of a quickstart preset with its pretrained teacher and student."""

    preset: object  # the QuickstartConfig
    spec: object  # WorldSpec
    splits: dict  # split name -> WorldSplit
    teacher: torch.nn.Module
    student: torch.nn.Module
    tokenizer: object
    class_vectors: torch.Tensor  # (C, D) from the shared, locked text tower
    teacher_info: dict
    student_info: dict


def load_embedded_setup(preset, cache_dir: str | Path, device: torch.device, progress: bool = False) -> EmbeddedSetup:
    """Build (or load) the world of ``preset`` under ``cache_dir/world`` and its models under ``cache_dir/zoo``."""
    from . import models, world

    cache = Path(cache_dir)
    spec = world.load_world_spec()
    splits = world.build_world(spec, cache / "world", seed=preset.world_seed, sizes=preset.world_sizes)
    key = world_key(spec, preset.world_seed, preset.world_sizes["pretrain"])
    loaded = []
    for config in (preset.teacher, preset.student):
        split = pretraining_split(spec, config, cache / "world", preset.world_seed, preset.world_sizes["pretrain"],
                                  splits["pretrain"])
        loaded.append(load_or_pretrain(config, split, key, cache / "zoo", device, progress=progress,
                                       prompt_templates=spec.prompt_templates))
    (teacher, tokenizer, teacher_info), (student, _, student_info) = loaded
    class_vectors = models.build_class_vectors(teacher, tokenizer, spec.class_names, spec.prompt_templates,
                                               device=device)
    return EmbeddedSetup(preset, spec, splits, teacher, student, tokenizer, class_vectors, teacher_info, student_info)


def load_or_distill(student, images, targets, class_vectors: torch.Tensor, settings, device: torch.device,
                    cache_dir: str | Path, identity: dict, log_path: str | Path, progress: bool = False) -> dict:
    """Distil into ``student`` (:func:`workbench.recipes.distill`), or load the result of the same distillation.

    The key covers ``identity`` (e.g. the pretrained teacher's and student's cache keys), every setting, the
    training images, the teacher's targets and the class vectors, so an identical run is loaded instead of
    repeated (runs are deterministic on a device: the loaded student equals the one training would give).
    The step log is copied to ``log_path`` either way. Returns ``{"key", "from_cache"}``.
    """
    import shutil

    from .image_sources import array_fingerprint
    from .recipes import distill

    if targets.features is None:
        raise ValueError("load_or_distill caches runs with cached teacher targets; a live teacher has none to key on")
    payload = json.dumps({"identity": identity, "settings": result_settings(asdict(settings.resolved())),
                          "images": array_fingerprint(images),
                          "targets": array_fingerprint(targets.features.float().cpu().numpy()),
                          "logit_scale": targets.logit_scale,
                          "vectors": array_fingerprint(class_vectors.float().cpu().numpy()), "device": device.type},
                         sort_keys=True, default=str)
    key = hashlib.sha256(payload.encode()).hexdigest()[:12]
    folder = Path(cache_dir) / key
    weights, log = folder / "student.safetensors", folder / "train.jsonl"
    if weights.is_file() and log.is_file():
        load_weights(student, weights)
        shutil.copyfile(log, log_path)
        return {"key": key, "from_cache": True}
    distill(student, images, targets, class_vectors, settings, device, log_path=log_path, progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(log_path, log.with_suffix(".tmp"))
    save_weights(student, weights, metadata={"key": key})
    log.with_suffix(".tmp").replace(log)  # the log last: a half-written entry is never taken for a finished one
    return {"key": key, "from_cache": False}
