"""Teacher tuning before distillation: prompt-tune the teacher with labels (PromptKD's first stage).

PromptKD distils from a ViT-L/14 teacher that PromptSRC prompt-tuned on the labelled 16-shot base classes
(zhengli97/PromptKD README L93-98; ``configs/trainers/PromptSRC/vit_l14_c2_ep20_batch8_4+4ctx.yaml``,
``trainers/promptsrc.py``). The stage here follows PromptSRC: deep visual prompts (4 tokens, depth 9) and deep
language prompts (a text context initialised from "a photo of a", fresh tokens in the first 9 text layers:
:class:`workbench.prompts.TextContext`) train together with

- cross-entropy over the labelled classes, at the teacher's logit scale;
- the self-regularising consistency terms: L1 between the prompted and the frozen text features (× 25; the
  frozen ones are the task's template-averaged class vectors), L1 between the prompted and the frozen image
  features (× 10), and KL(prompted logits ‖ frozen zero-shot logits) at temperature 1, summed over elements
  and divided by their number (× 1);
- Gaussian prompt aggregation (:class:`workbench.train.GaussianAverage`, mean epoch 15, std 1 of 20).

Deviations (``docs/recipes.md``): the frozen image features are computed once on the un-augmented images (the
stage has no augmentation), and the warm-up is linear. The tuned teacher is the frozen teacher with its prompts: a model with
``encode_image``, ``logit_scale`` and ``class_vectors(names)`` that every later step uses as the teacher,
cached by content.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from torch import nn

from ..prompts import PromptedStudent, TextContext
from ..selection import GaussianAverage
from ..train import OptimConfig, encode_images, fit, result_settings


def _promptsrc_optim() -> OptimConfig:
    return OptimConfig(epochs=20, batch_size=8, lr=0.005, optimizer="sgd", momentum=0.9, weight_decay=5e-4,
                       warmup_fraction=0.05, grad_clip=0.0)


@dataclass
class TeacherTuningConfig:
    """Whether and how the teacher is prompt-tuned on the labelled training images before distillation."""

    enabled: bool = False  # PromptKD's teacher is tuned; the other recipes distil the teacher as loaded
    prompt_tokens: int = 4  # visual prompt tokens per layer (PromptSRC: 4)
    prompt_depth: int = 9  # layers receiving prompts, capped at the tower's depth (PromptSRC: 9)
    prompt_init_std: float = 0.02  # prompts start as N(0, std²)
    text_context_init: str = "a photo of a"  # the text context's starting words (PromptSRC: 4 tokens)
    text_prompt_depth: int = 9  # text layers receiving context, capped at the tower's depth (PromptSRC: 9)
    text_loss_weight: float = 25.0  # L1(prompted text features, frozen ones) (PromptSRC: 25)
    image_loss_weight: float = 10.0  # L1(prompted image features, frozen ones) (PromptSRC: 10)
    logit_loss_weight: float = 1.0  # KL(prompted logits || frozen zero-shot logits) (PromptSRC: 1)
    gpa_mean: float = 15.0  # Gaussian prompt aggregation: mean epoch (1-based; PromptSRC: 15 of 20)
    gpa_std: float = 1.0  # and its std in epochs (PromptSRC: 1)
    optim: OptimConfig = field(default_factory=_promptsrc_optim)  # PromptSRC's: SGD 0.005, batch 8, 20 epochs

    def __post_init__(self):
        if not isinstance(self.enabled, bool):
            raise ValueError(f"enabled must be true or false, got {self.enabled!r}")
        for name in ("prompt_tokens", "prompt_depth", "text_prompt_depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("prompt_init_std", "gpa_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        for name in ("text_loss_weight", "image_loss_weight", "logit_loss_weight", "gpa_mean"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if not (isinstance(self.text_context_init, str) and self.text_context_init.strip()):
            raise ValueError(f"text_context_init must be a non-empty phrase, got {self.text_context_init!r}")


class TunedTeacher(nn.Module):
    """A frozen teacher with PromptSRC's prompts: deep visual prompts and a text context.

    ``encode_image`` and ``logit_scale`` as an open_clip model; ``class_vectors(names)`` gives the class
    vectors of any class names through the learned text context (what the tuned teacher is scored and
    distilled with).
    """

    def __init__(self, teacher, tokenizer, config: TeacherTuningConfig):
        super().__init__()
        width = int(teacher.visual.output_dim)
        depth = min(config.prompt_depth, len(teacher.visual.transformer.resblocks))
        self.image = PromptedStudent(teacher, width, float(teacher.logit_scale.detach().exp()), config.prompt_tokens,
                                     depth, config.prompt_init_std, projector="none")
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.text = TextContext(teacher, tokenizer, config.text_context_init, config.text_prompt_depth)
        self.visual = self.image.visual
        self.prompts = nn.ModuleDict({"image": self.image.prompts, "text": self.text})  # what trains and is cached
        self.register_buffer("logit_scale", teacher.logit_scale.detach().clone())

    def trainable(self) -> list[nn.Module]:
        return [self.prompts]

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.image.encode_image(images, normalize=normalize)

    def class_vectors(self, class_names) -> torch.Tensor:
        return self.text(class_names)


def _tuned(teacher, tokenizer, config: TeacherTuningConfig, device) -> TunedTeacher:
    torch.manual_seed(config.optim.seed)
    return TunedTeacher(teacher, tokenizer, config).to(device)


def tune_teacher(teacher, images, labels, class_vectors: torch.Tensor, class_names, tokenizer,
                 config: TeacherTuningConfig, device: torch.device, log_path: str | Path | None = None) -> TunedTeacher:
    """The teacher with PromptSRC's visual prompts and text context trained on labelled ``images``.

    ``labels`` are class indices into ``class_vectors`` (the teacher's, all classes, template-averaged: the
    frozen text features of the consistency term) and ``class_names``; logits range over the classes that
    occur among the labels (the base classes in base-to-new), at the teacher's logit scale.
    """
    from ..image_sources import as_source

    source = as_source(images)
    labels = np.asarray(labels)
    if len(labels) != len(source) or len(labels) == 0 or (labels < 0).any():
        raise ValueError(f"teacher tuning needs one class label >= 0 per image; got {len(labels)} labels for "
                         f"{len(source)} images")
    if len(class_names) != len(class_vectors):
        raise ValueError(f"{len(class_names)} class names for {len(class_vectors)} class vectors")
    classes = np.unique(labels)
    position = {int(c): i for i, c in enumerate(classes)}
    targets = torch.tensor([position[int(y)] for y in labels], device=device)
    frozen_text = class_vectors.to(device).float()[torch.as_tensor(classes, device=device)]
    names = [class_names[int(c)] for c in classes]
    frozen_images = encode_images(teacher, source, device=device).to(device)  # the un-prompted teacher's view
    model = _tuned(teacher, tokenizer, config, device)
    scale = model.logit_scale.exp()

    def step_loss(indices, pixels):
        features = model.encode_image(pixels, normalize=True)
        text = model.class_vectors(names)
        logits = scale * features @ text.T
        frozen = frozen_images[indices]
        zero_shot = scale * frozen @ frozen_text.T
        consistency = F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(zero_shot, dim=1), reduction="sum",
                               log_target=True) / logits.numel()
        return {"ce_loss": F.cross_entropy(logits, targets[indices]),
                "text_consistency_loss": config.text_loss_weight * F.l1_loss(text, frozen_text),
                "image_consistency_loss": config.image_loss_weight * F.l1_loss(features, frozen),
                "logit_consistency_loss": config.logit_loss_weight * consistency}

    average = GaussianAverage(config.optim.epochs, config.gpa_mean, config.gpa_std)
    fit(model.trainable(), step_loss, len(source), config.optim, device, log_path=log_path, images=source,
        selector=average)
    return model.eval()


def load_or_tune_teacher(teacher, images, labels, class_vectors: torch.Tensor, class_names, tokenizer,
                         config: TeacherTuningConfig, device: torch.device, cache_dir: str | Path
                         ) -> tuple[TunedTeacher, dict]:
    """:func:`tune_teacher`, or its result loaded from ``cache_dir`` when the same tuning ran before.

    The key covers the teacher's weights, the images, labels, class vectors and every setting that
    changes the result. Returns ``(tuned teacher, {"key", "from_cache", "log"})``.
    """
    from safetensors.torch import load_file, save_file

    from ..cache import model_fingerprint
    from ..image_sources import as_source

    source = as_source(images)
    payload = json.dumps({"teacher": model_fingerprint(teacher), "images": source.fingerprint(),
                          "labels": hashlib.sha256(np.asarray(labels, dtype=np.int64).tobytes()).hexdigest(),
                          "vectors": hashlib.sha256(class_vectors.float().cpu().numpy().tobytes()).hexdigest(),
                          "names": list(class_names),
                          "settings": result_settings(asdict(config))}, sort_keys=True)
    key = hashlib.sha256(payload.encode()).hexdigest()[:12]
    folder = Path(cache_dir) / "tuned_teachers"
    weights, log = folder / f"{key}.safetensors", folder / f"{key}.log.jsonl"
    if weights.is_file():
        model = _tuned(teacher, tokenizer, config, device)
        model.prompts.load_state_dict(load_file(str(weights)))
        return model.eval(), {"key": key, "from_cache": True, "log": str(log)}
    folder.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    model = tune_teacher(teacher, source, labels, class_vectors, class_names, tokenizer, config, device, log_path=log)
    tmp = weights.with_suffix(".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.prompts.state_dict().items()}, str(tmp))
    tmp.replace(weights)  # complete or absent: a crash never leaves a half-written tuned teacher
    return model, {"key": key, "from_cache": False, "log": str(log)}
