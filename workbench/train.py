"""One fit loop for every objective: contrastive pretraining and all distillation recipes.

A recipe hands :func:`fit` a ``step_loss(batch_indices) -> dict`` of named terms; every term whose name
ends in ``_loss`` is summed into the objective and all terms are logged. Device placement, bf16
autocast, the learning-rate schedule, gradient clipping and the JSONL log live here and nowhere else.
"""

from __future__ import annotations

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

from .device import autocast, collective, configure_backends, distributed_rank
from .image_sources import as_source, in_order
from .loggers import Sinks, open_sinks
from .selection import GaussianAverage, ModelSelector

OPTIMIZERS = ("adamw", "sgd")


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
    optimizer: str = "adamw"  # "adamw" or "sgd" (with momentum, as PromptKD trains its prompts)
    momentum: float = 0.9  # SGD momentum; unused by AdamW
    grad_diagnostics_every: int = 25  # log each loss term's gradient norm every N steps; 0 = never

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid names: {', '.join(OPTIMIZERS)}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum!r}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        every = self.grad_diagnostics_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(f"grad_diagnostics_every must be a non-negative integer (0 = off), got {every!r}")
        for name in ("lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        if self.lr == 0:
            raise ValueError("lr must be > 0")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must lie in [0, 1), got {self.warmup_fraction!r}")


@torch.no_grad()
def map_source(model: nn.Module, images, encode: Callable, batch_size: int = 512,
               device: torch.device | None = None) -> tuple[tuple[torch.Tensor, ...], np.ndarray]:
    """``encode(pixels)`` (a tensor or a tuple of tensors) over every readable image of ``images``, in eval mode.

    Returns each output concatenated over the batches (float32, CPU) and the positions of the images kept;
    ``images`` is a uint8 ``(N, H, W, 3)`` array or an image source (:mod:`workbench.image_sources`).
    """
    device = device or next(model.parameters()).device
    source = as_source(images)
    was_training = model.training
    model.eval()
    chunks, kept = [], []
    for positions, pixels in source.batches(in_order(len(source), batch_size), device):
        with autocast(device):
            out = encode(pixels)
        chunks.append(tuple(t.float().cpu() for t in (out if isinstance(out, tuple) else (out,))))
        kept.append(positions.cpu().numpy())
    model.train(was_training)
    if not chunks:
        raise ValueError("no images to encode")
    return tuple(torch.cat(parts) for parts in zip(*chunks)), np.concatenate(kept)


def encode_source(model: nn.Module, images, batch_size: int = 512, device: torch.device | None = None
                  ) -> tuple[torch.Tensor, np.ndarray]:
    """``(features, kept)``: L2-normalised embeddings (float32, CPU) of the readable images and their positions.

    ``kept`` is ``0..N-1`` unless a manifest source skipped unreadable files (:func:`map_source`).
    """
    (features,), kept = map_source(model, images, lambda pixels: model.encode_image(pixels, normalize=True),
                                   batch_size, device)
    return features, kept


def encode_images(model: nn.Module, images, batch_size: int = 512,
                  device: torch.device | None = None) -> torch.Tensor:
    """L2-normalised image embeddings ``(N, D)`` as float32 on the CPU (see :func:`encode_source`).

    Raises ``ValueError`` when a manifest source skipped unreadable images, so that rows never
    silently stop matching labels; use :func:`encode_source` to get the positions kept.
    """
    source = as_source(images)
    features, kept = encode_source(model, source, batch_size, device)
    if len(kept) != len(source):
        raise ValueError(f"{len(source) - len(kept)} unreadable images were skipped; "
                         "use encode_source to get the positions of the rows")
    return features


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


GRAD_NORM_PREFIX = "grad_norm/"  # log keys of the per-term gradient diagnostics
OBSERVING_SETTINGS = ("grad_diagnostics_every",)  # change what is logged, never the trained weights


def result_settings(settings: dict) -> dict:
    """``settings`` (a config as a nested dict) without the fields that only observe training: cache keys of
    trained models use this, so switching the diagnostics on or off reuses what was trained."""
    return {k: result_settings(v) if isinstance(v, dict) else v for k, v in settings.items()
            if k not in OBSERVING_SETTINGS}


def term_gradient_norms(terms: dict[str, torch.Tensor], params: list[nn.Parameter]) -> dict[str, torch.Tensor]:
    """The L2 norm of the gradient each ``*_loss`` term alone sends to ``params``, keyed ``grad_norm/<term>``.

    A term that does not reach ``params`` (AME's loss before any image feature depends on them, a
    zero-weight term) gets 0. One extra backward pass per term: :func:`fit` calls this every
    ``grad_diagnostics_every`` steps only.
    """
    norms = {}
    for name, value in terms.items():
        if not name.endswith("_loss"):
            continue
        key = GRAD_NORM_PREFIX + name[:-len("_loss")]
        if not value.requires_grad:
            norms[key] = torch.zeros((), device=value.device)
            continue
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        squares = [g.float().pow(2).sum() for g in grads if g is not None]
        norms[key] = torch.stack(squares).sum().sqrt() if squares else torch.zeros((), device=value.device)
    return norms


def _total_norm(params: list[nn.Parameter]) -> torch.Tensor:
    squares = [p.grad.float().pow(2).sum() for p in params if p.grad is not None]
    return torch.stack(squares).sum().sqrt() if squares else torch.zeros(())


def make_optimizer(params: list[nn.Parameter], config: OptimConfig) -> torch.optim.Optimizer:
    groups = _param_groups(params, config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr)


def fit(modules: Iterable[nn.Module], step_loss: Callable[[torch.Tensor], dict[str, torch.Tensor]],
        num_samples: int, config: OptimConfig, device: torch.device, log_path: str | Path | None = None,
        progress: bool = False, checkpoint_path: str | Path | None = None,
        selector: ModelSelector | GaussianAverage | None = None, images=None, loggers: list[str] | None = None,
        watched: Iterable[nn.Module] | None = None,
        batch_plan: Callable[[torch.Generator, int], list[torch.Tensor]] | None = None) -> list[dict]:
    """Train ``modules`` by minimising the summed ``*_loss`` terms of ``step_loss``.

    Parameters
    ----------
    modules : iterable of nn.Module
        Everything that trains; their parameters with ``requires_grad`` go to the optimiser and they
        are put in train mode for the run and back in eval mode afterwards.
    step_loss : callable
        Maps a 1-D tensor of sample indices (on ``device``) to a dict of named scalar terms; called
        as ``step_loss(indices, pixels)`` when ``images`` is given.
    num_samples : int
        Size of the index range an epoch permutes.
    config : OptimConfig
    device : torch.device
        Where the indices live; the caller has already moved modules and data there.
    log_path : path, optional
        JSONL file receiving one record per step (epoch, step, lr and every term). The same records go
        to the views of the run (TensorBoard, W&B: :mod:`workbench.loggers`) that an enclosing
        :func:`workbench.loggers.run_views` opened, or that ``loggers`` names.
    progress : bool
        Show a tqdm progress bar.
    checkpoint_path : path, optional
        Training state (modules, optimiser, schedule, batch order, RNG, model selection) is written
        here atomically after every epoch. If the file exists when ``fit`` starts, training resumes
        after the last completed epoch and ends with the same parameters as an uninterrupted run; the
        log keeps exactly the records of the completed steps.
    selector : ModelSelector or GaussianAverage, optional
        Scores the modules after each epoch and restores the best epoch at the end; default: last.
        A :class:`GaussianAverage` ends with the weighted average of the epochs' states instead.
    images : image source, optional
        Where each batch's pixels come from (:mod:`workbench.image_sources`; ``num_samples`` must be
        its length). A manifest source decodes the epoch's batches in its loader workers while the
        model trains; with ``on_error="skip"`` a batch's indices leave out unreadable images.
    loggers : list of str, optional
        Views to open next to ``log_path`` for this call only, e.g. ``["jsonl", "tensorboard"]``
        (:data:`workbench.loggers.LOGGERS`); default: the enclosing run's views, else the JSONL alone.
        The model-selection score of each epoch goes to the views as ``eval/<policy>_score``.
    watched : iterable of nn.Module, optional
        Whose trainable parameters the gradient diagnostics measure (default: all of ``modules``).
        Every ``config.grad_diagnostics_every`` steps the record carries ``grad_norm/<term>``, the norm
        of the gradient each ``*_loss`` term alone sends to them (:func:`term_gradient_norms`),
        ``grad_norm/total`` (all terms, all trained parameters, before clipping) and, with clipping
        on, ``grad_norm/clipped`` (after it; each term's share is scaled by the same factor).

    Data parallel
    -------------
    Inside a ``torch.distributed`` process group (``torchrun``; see :func:`init_distributed`) every
    process draws the same global batch order, takes every ``world_size``-th index of each batch,
    and gradients are averaged over processes before each optimiser step — what
    ``DistributedDataParallel`` does, done explicitly because recipes call the towers'
    ``encode_*`` methods rather than ``forward``. Parameters start from rank 0's values; only
    rank 0 writes the log and checkpoints. Losses that couple a batch's rows (AME's paper variant)
    see each process's shard, not the global batch.

    Returns
    -------
    list of dict
        The per-step records, as written to ``log_path``.
    """
    modules = list(modules)
    if num_samples < 1:
        raise ValueError("fit needs at least one training sample")
    if images is not None and len(images) != num_samples:
        raise ValueError(f"num_samples={num_samples} but the image source holds {len(images)} images")
    configure_backends(device)
    rank, world_size = distributed_rank()
    selector = selector or ModelSelector("last")
    params = [p for m in modules for p in m.parameters()]
    trainable = [p for p in params if p.requires_grad]
    watched_params = trainable if watched is None else [p for m in watched for p in m.parameters() if p.requires_grad]
    diagnostics_every = config.grad_diagnostics_every
    optimizer = make_optimizer(params, config)
    plan = batch_plan or _permutation_plan(num_samples)
    steps_per_epoch = len(plan(torch.Generator().manual_seed(config.seed), config.batch_size))
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_schedule(total_steps, int(config.warmup_fraction * total_steps)))
    order = torch.Generator().manual_seed(config.seed)
    first_epoch = step = 0
    history = []
    if checkpoint_path and Path(checkpoint_path).is_file():
        first_epoch, step = _restore(checkpoint_path, modules, optimizer, scheduler, order, selector)
    if checkpoint_path and log_path and rank == 0:
        # The log keeps exactly the steps the checkpoint covers: none when a run died before its first one.
        history = _truncate_log(log_path, step)
    if world_size > 1:
        for tensor in [p.data for p in params] + [b for m in modules for b in m.buffers()]:
            collective(torch.distributed.broadcast, tensor, src=0, what="fit: sharing rank 0's parameters")
    writer = rank == 0
    # One logging path: every record goes to each sink — train.jsonl and the views of it (TensorBoard,
    # W&B) — which open only now that the resume step is known, so a resumed run shows each step once.
    sinks = open_sinks(log_path, loggers, step) if writer else Sinks()
    bar = None
    if progress and writer:
        from tqdm.auto import tqdm
        bar = tqdm(total=total_steps, leave=False)
    if bar is not None:
        bar.update(step)
    for module in modules:
        module.train()
    try:
        for epoch in range(first_epoch, config.epochs):
            batches = [batch.to(device)[rank::world_size] for batch in plan(order, config.batch_size)]
            stream = ((indices, None) for indices in batches) if images is None else \
                images.batches(batches, device, epoch)
            for indices, pixels in stream:
                with autocast(device):
                    terms = step_loss(indices) if images is None else step_loss(indices, pixels)
                loss = sum(v for k, v in terms.items() if k.endswith("_loss"))
                diagnose = bool(diagnostics_every) and step % diagnostics_every == 0 and watched_params
                if diagnose:  # before backward, while the graph still holds every term separately
                    terms = {**terms, **term_gradient_norms(terms, watched_params)}
                # One device-to-host copy per step carries the loss, every term and the finite check;
                # converting each term separately would wait on the GPU once per term.
                logged = torch.stack([loss.detach().float()] + [v.detach().float() for v in terms.values()])
                finite = torch.isfinite(logged[:1]).float()
                if world_size > 1:  # every process must stop together, or the others wait forever
                    collective(torch.distributed.all_reduce, finite, op=torch.distributed.ReduceOp.MIN,
                               what=f"fit: step {step}")
                values = torch.cat([finite, logged]).tolist()
                if not values[0]:
                    raise FloatingPointError(
                        f"non-finite loss at epoch {epoch}, step {step}: "
                        + ", ".join(f"{k}={v:.4g}" for k, v in zip(terms, values[2:])))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if world_size > 1:
                    _average_gradients(trainable, world_size)
                if config.grad_clip:
                    total = nn.utils.clip_grad_norm_(params, config.grad_clip)
                elif diagnose:
                    total = _total_norm(trainable)
                optimizer.step()
                scheduler.step()
                record = {"epoch": epoch, "step": step, "lr": scheduler.get_last_lr()[0],
                          "loss": values[1], **dict(zip(terms, values[2:]))}
                if diagnose:
                    record[GRAD_NORM_PREFIX + "total"] = float(total)
                    if config.grad_clip:
                        record[GRAD_NORM_PREFIX + "clipped"] = min(float(total), config.grad_clip)
                history.append(record)
                sinks.write(record)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.3f}")
                step += 1
            sinks.flush()
            selector.observe(epoch, modules)
            if selector.scores:  # at the epoch's last step: a resume purges from the next step on
                sinks.scalars({f"eval/{selector.policy}_score": selector.scores[-1]}, step - 1)
            if checkpoint_path and writer:
                _save_checkpoint(checkpoint_path, modules, optimizer, scheduler, order, epoch + 1, step, selector)
        selector.restore(modules)
    finally:
        for module in modules:
            module.eval()
        sinks.close()
        if bar is not None:
            bar.close()
    return history


def _permutation_plan(num_samples: int) -> Callable[[torch.Generator, int], list[torch.Tensor]]:
    def plan(generator: torch.Generator, batch_size: int) -> list[torch.Tensor]:
        permutation = torch.randperm(num_samples, generator=generator)
        return [permutation[start:start + batch_size] for start in range(0, num_samples, batch_size)]
    return plan


def _average_gradients(params: list[nn.Parameter], world_size: int) -> None:
    # One flat all-reduce instead of one per tensor; a process whose shard left a parameter unused
    # contributes zeros, so every process calls the collective with the same shapes.
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    collective(torch.distributed.all_reduce, flat, what="fit: averaging gradients")
    flat /= world_size
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def _save_checkpoint(path, modules, optimizer, scheduler, order, epochs_done: int, step: int,
                     selector: ModelSelector | None = None) -> None:
    state = {"modules": [m.state_dict() for m in modules], "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "order": order.get_state(), "torch_rng": torch.get_rng_state(),
             "epochs_done": epochs_done, "step": step,
             "selector": selector.state_dict() if selector is not None else None}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact


def _restore(path, modules, optimizer, scheduler, order, selector: ModelSelector | None = None) -> tuple[int, int]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if len(state["modules"]) != len(modules):
        raise ValueError(f"checkpoint {path} holds {len(state['modules'])} modules, this run trains {len(modules)}")
    for module, module_state in zip(modules, state["modules"]):
        module.load_state_dict(module_state)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    order.set_state(state["order"])
    torch.set_rng_state(state["torch_rng"])
    if selector is not None and state.get("selector") is not None:
        selector.load_state_dict(state["selector"])
    return state["epochs_done"], state["step"]


def _truncate_log(log_path, steps: int) -> list[dict]:
    """Keep the first ``steps`` records of a JSONL log (those the checkpoint covers); return them."""
    path = Path(log_path)
    if not path.is_file():
        return []
    # Only the first `steps` lines are parsed: a line cut short by a crash lies beyond them.
    records = [json.loads(line) for line in [x for x in path.read_text().splitlines() if x.strip()][:steps]]
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
