"""The embedded model zoo: teacher and student CLIPs pretrained contrastively on the embedded world.

Pretraining is real CLIP training (open_clip's ``ClipLoss`` between images and their captions) with
the text tower locked, as in LiT. Because the text tower is frozen, caption embeddings are computed
once and reused every step. Finished models are stored under a key derived from everything that
shapes them (model config, pretraining settings, world spec and seed), so a rerun loads them instead
of training again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .models import create_embedded_model, encode_texts, load_model_config, load_weights, save_weights
from .train import OptimConfig, Timer, fit, images_to_device, normalize_images


@dataclass
class PretrainConfig:
    """How one embedded model is pretrained."""

    model: str  # name of a config in workbench/model_configs
    num_images: int  # how many samples of the world's pretraining split it sees
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimisation settings

    @classmethod
    def from_dict(cls, data: dict) -> "PretrainConfig":
        data = dict(data)
        optim = OptimConfig(**data.pop("optim", {}))
        unknown = set(data) - {"model", "num_images"}
        if unknown:
            raise ValueError(f"unknown pretraining settings {sorted(unknown)}; expected model, num_images, optim")
        return cls(optim=optim, **data)


def cache_key(config: PretrainConfig, world_fingerprint: str) -> str:
    """Short hash of everything that determines the pretrained weights."""
    # "init" marks weights initialised from the config's seed; earlier caches depended on the process's RNG history.
    payload = json.dumps({"config": asdict(config), "model": load_model_config(config.model),
                          "world": world_fingerprint, "init": "seeded"}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def caption_embeddings(model, tokenizer, captions: list[str], device) -> tuple[torch.Tensor, np.ndarray]:
    """Embed each distinct caption once; returns (unique embeddings, index of each caption's row)."""
    unique, inverse = np.unique(np.asarray(captions, dtype=object).astype(str), return_inverse=True)
    return encode_texts(model, tokenizer, list(unique), device=device), inverse


def pretrain(model, tokenizer, split, config: PretrainConfig, device: torch.device,
             log_path: str | Path | None = None, progress: bool = False) -> list[dict]:
    """Contrastively train ``model``'s image tower on the first ``config.num_images`` samples of ``split``."""
    import open_clip

    if config.num_images > len(split):
        raise ValueError(f"num_images={config.num_images} exceeds the {len(split)} samples of the pretraining split")
    model.to(device)
    captions = split.captions[:config.num_images]
    text_table, caption_rows = caption_embeddings(model, tokenizer, captions, device)
    text_table = text_table.to(device)
    caption_rows = torch.as_tensor(caption_rows, device=device)
    images = images_to_device(split.images[:config.num_images], device)
    clip_loss = open_clip.ClipLoss()

    def step_loss(indices):
        image_features = model.encode_image(normalize_images(images[indices]), normalize=True)
        text_features = text_table[caption_rows[indices]]
        return {"contrastive_loss": clip_loss(image_features, text_features, model.logit_scale.exp()),
                "logit_scale": model.logit_scale.detach().exp()}

    return fit([model], step_loss, config.num_images, config.optim, device, log_path=log_path, progress=progress)


def load_or_pretrain(config: PretrainConfig, split, world_fingerprint: str, zoo_dir: str | Path,
                     device: torch.device, progress: bool = False):
    """Return ``(model, tokenizer, info)`` for a pretrained embedded model, training it only if not cached.

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
                           progress=progress)
    info = {"model": config.model, "key": key, "weights": str(weights), "config": asdict(config),
            "world": world_fingerprint, "pretrain_seconds": round(timer.seconds, 1),
            "final_loss": history[-1]["contrastive_loss"], "steps": len(history)}
    save_weights(model, weights, metadata={"key": key})
    tmp = record.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(record)
    info["from_cache"] = False
    return model.eval(), tokenizer, info
