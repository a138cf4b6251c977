"""One fit loop for every objective: contrastive pretraining and all distillation recipes.

A recipe hands :func:`fit` a ``step_loss(batch_indices) -> dict`` of named terms; every term whose name
ends in ``_loss`` is summed into the objective and all terms are logged. Device placement, bf16
autocast, the learning-rate schedule, gradient clipping and the JSONL log live here and nowhere else.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

# The embedded world's images are stored as uint8 RGB; models see them scaled to [-1, 1].
IMAGE_MEAN = 0.5
IMAGE_STD = 0.5


@dataclass
class OptimConfig:
    """Optimisation settings shared by every objective."""

    epochs: int = 10  # passes over the training samples
    batch_size: int = 64  # samples per step
    lr: float = 1e-3  # peak AdamW learning rate
    weight_decay: float = 0.05  # AdamW decoupled weight decay (not applied to 1-D parameters)
    warmup_fraction: float = 0.1  # share of all steps spent ramping the learning rate up linearly
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    seed: int = 0  # seeds the batch order

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        if self.lr == 0:
            raise ValueError("lr must be > 0")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must lie in [0, 1), got {self.warmup_fraction!r}")


def select_device(preference: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; any other value is passed to ``torch.device``."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full precision elsewhere (CPU bf16 is slower than fp32 for these sizes)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure_backends(device: torch.device) -> None:
    """TF32 matmuls on CUDA: free speed for training, no effect on CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def images_to_device(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 NHWC images → uint8 NCHW tensor on ``device`` (pinned first on CUDA for async copies)."""
    tensor = torch.as_tensor(images).permute(0, 3, 1, 2).contiguous()
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def normalize_images(batch: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW → float NCHW scaled to the models' input range."""
    return (batch.float() / 255.0 - IMAGE_MEAN) / IMAGE_STD


@torch.no_grad()
def encode_images(model: nn.Module, images: np.ndarray | torch.Tensor, batch_size: int = 512,
                  device: torch.device | None = None) -> torch.Tensor:
    """L2-normalised image embeddings ``(N, D)`` as float32 on the CPU."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    stored = images_to_device(images, device)
    chunks = []
    for start in range(0, len(stored), batch_size):
        with autocast(device):
            features = model.encode_image(normalize_images(stored[start:start + batch_size]), normalize=True)
        chunks.append(features.float().cpu())
    model.train(was_training)
    return torch.cat(chunks)


def cosine_schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate multiplier: linear warm-up, then cosine decay to zero."""
    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return multiplier


def _param_groups(parameters: Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    # Decay matrices only: decaying gains, biases and the logit scale hurts CLIP-style training.
    params = [p for p in parameters if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def fit(modules: Iterable[nn.Module], step_loss: Callable[[torch.Tensor], dict[str, torch.Tensor]],
        num_samples: int, config: OptimConfig, device: torch.device, log_path: str | Path | None = None,
        progress: bool = False, checkpoint_path: str | Path | None = None) -> list[dict]:
    """Train ``modules`` by minimising the summed ``*_loss`` terms of ``step_loss``.

    Parameters
    ----------
    modules : iterable of nn.Module
        Everything that trains; their parameters with ``requires_grad`` go to the optimiser and they
        are put in train mode for the run and back in eval mode afterwards.
    step_loss : callable
        Maps a 1-D tensor of sample indices (on ``device``) to a dict of named scalar terms.
    num_samples : int
        Size of the index range an epoch permutes.
    config : OptimConfig
    device : torch.device
        Where the indices live; the caller has already moved modules and data there.
    log_path : path, optional
        JSONL file receiving one record per step (epoch, step, lr and every term).
    progress : bool
        Show a tqdm progress bar.
    checkpoint_path : path, optional
        Training state (modules, optimiser, schedule, batch order, RNG) is written here atomically
        after every epoch. If the file exists when ``fit`` starts, training resumes after the last
        completed epoch and ends with the same parameters as an uninterrupted run; the log keeps
        exactly the records of the completed steps.

    Returns
    -------
    list of dict
        The per-step records, as written to ``log_path``.
    """
    modules = list(modules)
    if num_samples < 1:
        raise ValueError("fit needs at least one training sample")
    configure_backends(device)
    params = [p for m in modules for p in m.parameters()]
    optimizer = torch.optim.AdamW(_param_groups(params, config.weight_decay), lr=config.lr)
    steps_per_epoch = math.ceil(num_samples / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_schedule(total_steps, int(config.warmup_fraction * total_steps)))
    order = torch.Generator().manual_seed(config.seed)
    first_epoch = step = 0
    history = []
    if checkpoint_path and Path(checkpoint_path).is_file():
        first_epoch, step = _restore(checkpoint_path, modules, optimizer, scheduler, order)
        history = _truncate_log(log_path, step) if log_path else []
    log_file = open(log_path, "a") if log_path else None
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total_steps, leave=False)
    if bar is not None:
        bar.update(step)
    for module in modules:
        module.train()
    try:
        for epoch in range(first_epoch, config.epochs):
            permutation = torch.randperm(num_samples, generator=order).to(device)
            for start in range(0, num_samples, config.batch_size):
                indices = permutation[start:start + config.batch_size]
                with autocast(device):
                    terms = step_loss(indices)
                loss = sum(v for k, v in terms.items() if k.endswith("_loss"))
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite loss at epoch {epoch}, step {step}: "
                        + ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items()))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    nn.utils.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                scheduler.step()
                record = {"epoch": epoch, "step": step, "lr": scheduler.get_last_lr()[0],
                          "loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}
                history.append(record)
                if log_file:
                    log_file.write(json.dumps(record) + "\n")
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.3f}")
                step += 1
            if log_file:
                log_file.flush()
            if checkpoint_path:
                _save_checkpoint(checkpoint_path, modules, optimizer, scheduler, order, epoch + 1, step)
    finally:
        for module in modules:
            module.eval()
        if log_file:
            log_file.close()
        if bar is not None:
            bar.close()
    return history


def _save_checkpoint(path, modules, optimizer, scheduler, order, epochs_done: int, step: int) -> None:
    state = {"modules": [m.state_dict() for m in modules], "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "order": order.get_state(), "torch_rng": torch.get_rng_state(),
             "epochs_done": epochs_done, "step": step}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact


def _restore(path, modules, optimizer, scheduler, order) -> tuple[int, int]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if len(state["modules"]) != len(modules):
        raise ValueError(f"checkpoint {path} holds {len(state['modules'])} modules, this run trains {len(modules)}")
    for module, module_state in zip(modules, state["modules"]):
        module.load_state_dict(module_state)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    order.set_state(state["order"])
    torch.set_rng_state(state["torch_rng"])
    return state["epochs_done"], state["step"]


def _truncate_log(log_path, steps: int) -> list[dict]:
    """Keep the first ``steps`` records of a JSONL log (those the checkpoint covers); return them."""
    path = Path(log_path)
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][:steps]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)
    return records


class Timer:
    """Wall-clock seconds of a ``with`` block, in ``.seconds``."""

    def __enter__(self):
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._start
