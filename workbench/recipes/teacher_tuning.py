"""Teacher tuning before distillation: prompt-tune the teacher with labels (PromptKD's first stage).

PromptKD distils from a ViT-L/14 teacher that PromptSRC prompt-tuned on the labelled 16-shot base classes
(zhengli97/PromptKD README L93-98; ``configs/trainers/PromptSRC/vit_l14_c2_ep20_batch8_4+4ctx.yaml``: 4 + 4
prompt tokens, depth 9, SGD 0.005, batch 8, 20 epochs). The stage here tunes deep visual prompts with
cross-entropy against the teacher's own class vectors of the labelled classes, with those settings;
PromptSRC's text prompts, its L1 consistency terms and its Gaussian prompt averaging are not built
(``docs/recipes.md``). The tuned teacher is the frozen teacher with its prompts: a model with
``encode_image`` and ``logit_scale`` that every later step uses as the teacher, cached by content.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..prompts import PromptedStudent
from ..train import OptimConfig, fit, result_settings


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
    optim: OptimConfig = field(default_factory=_promptsrc_optim)  # PromptSRC's: SGD 0.005, batch 8, 20 epochs

    def __post_init__(self):
        if not isinstance(self.enabled, bool):
            raise ValueError(f"enabled must be true or false, got {self.enabled!r}")
        for name in ("prompt_tokens", "prompt_depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.prompt_init_std, (int, float)) and self.prompt_init_std > 0):
            raise ValueError(f"prompt_init_std must be a number > 0, got {self.prompt_init_std!r}")


def _prompted(teacher, config: TeacherTuningConfig, device) -> PromptedStudent:
    width = int(teacher.visual.output_dim)
    depth = min(config.prompt_depth, len(teacher.visual.transformer.resblocks))
    torch.manual_seed(config.optim.seed)
    return PromptedStudent(teacher, width, float(teacher.logit_scale.detach().exp()), config.prompt_tokens, depth,
                           config.prompt_init_std, projector="none").to(device)


def tune_teacher(teacher, images, labels, class_vectors: torch.Tensor, config: TeacherTuningConfig,
                 device: torch.device, log_path: str | Path | None = None) -> PromptedStudent:
    """The teacher with visual prompts trained by cross-entropy on labelled ``images``.

    ``labels`` are class indices into ``class_vectors`` (the teacher's, all classes); logits range over
    the classes that occur among the labels (the base classes in base-to-new), at the teacher's logit scale.
    """
    from ..image_sources import as_source

    source = as_source(images)
    labels = np.asarray(labels)
    if len(labels) != len(source) or len(labels) == 0 or (labels < 0).any():
        raise ValueError(f"teacher tuning needs one class label >= 0 per image; got {len(labels)} labels for "
                         f"{len(source)} images")
    classes = np.unique(labels)
    position = {int(c): i for i, c in enumerate(classes)}
    targets = torch.tensor([position[int(y)] for y in labels], device=device)
    vectors = class_vectors.to(device).float()[torch.as_tensor(classes, device=device)]
    model = _prompted(teacher, config, device)

    def step_loss(indices, pixels):
        features = model.encode_image(pixels, normalize=True)
        return {"ce_loss": F.cross_entropy(model.logit_scale.exp() * features @ vectors.T, targets[indices])}

    fit(model.trainable(), step_loss, len(source), config.optim, device, log_path=log_path, images=source)
    return model.eval()


def load_or_tune_teacher(teacher, images, labels, class_vectors: torch.Tensor, config: TeacherTuningConfig,
                         device: torch.device, cache_dir: str | Path) -> tuple[PromptedStudent, dict]:
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
                          "settings": result_settings(asdict(config))}, sort_keys=True)
    key = hashlib.sha256(payload.encode()).hexdigest()[:12]
    folder = Path(cache_dir) / "tuned_teachers"
    weights, log = folder / f"{key}.safetensors", folder / f"{key}.log.jsonl"
    if weights.is_file():
        model = _prompted(teacher, config, device)
        model.prompts.load_state_dict(load_file(str(weights)))
        return model.eval(), {"key": key, "from_cache": True, "log": str(log)}
    folder.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    model = tune_teacher(teacher, source, labels, class_vectors, config, device, log_path=log)
    tmp = weights.with_suffix(".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.prompts.state_dict().items()}, str(tmp))
    tmp.replace(weights)  # complete or absent: a crash never leaves a half-written tuned teacher
    return model, {"key": key, "from_cache": False, "log": str(log)}
