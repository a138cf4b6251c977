"""Prompts that train while a CLIP model's weights stay fixed: deep visual prompts and CoOp's text context.

Visual prompts (:class:`VisualPrompts`, PromptKD and KDPL's VPT variant): a few learnable tokens are
appended after the class and patch tokens of the image tower; in each of the first ``depth`` transformer
layers the prompt tokens coming out of the previous layer are replaced by that layer's own learnable
tokens (VPT-deep). Only ``num_tokens × depth × width`` prompt parameters (plus a projector) train.

Text context (:class:`TextContext`, CoOp; KDPL's CoOp variant): the word embeddings of a phrase such as
"a photo of a" become parameters shared by every class; each class vector is the text tower's encoding
of "<context> <class name>." with those parameters in place of the phrase's words, so it can be
computed for any class name, including classes never trained on. With ``depth > 1`` fresh tokens replace
the context in the first layers too (PromptSRC's and MaPLe's deep language prompts), and
:class:`CoupledPrompts` (MaPLe) maps each layer's language prompts to that layer's visual prompts.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def _check_vit(visual: nn.Module) -> None:
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "_pool")
    missing = [name for name in needed if not hasattr(visual, name)]
    if missing:
        raise TypeError(f"deep visual prompts need an open_clip VisionTransformer image tower; "
                        f"{type(visual).__name__} lacks {', '.join(missing)}")
    if getattr(visual, "attn_pool", None) is not None:
        raise TypeError("deep visual prompts do not support attention-pooled image towers (attn_pool)")


class VisualPrompts(nn.Module):
    """Learnable prompt tokens for the first ``depth`` layers of a ViT of width ``width``.

    Parameters
    ----------
    width : int
        Token width of the image tower (``visual.transformer.width``).
    num_tokens : int, default 4
        Prompt tokens per layer; > 0.
    depth : int, default 1
        Number of layers, counted from the first, that receive fresh prompt tokens; 1 is shallow
        VPT, the tower's layer count is fully deep.
    init_std : float, optional
        Prompts start as N(0, init_std²); default ``width ** -0.5``, the scale of the tower's own token
        embeddings at initialisation. PromptKD and KDPL use 0.02.
    """

    def __init__(self, width: int, num_tokens: int = 4, depth: int = 1, init_std: float | None = None):
        super().__init__()
        for name, value in (("width", width), ("num_tokens", num_tokens), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.num_tokens, self.depth = num_tokens, depth
        std = width ** -0.5 if init_std is None else float(init_std)
        self.tokens = nn.Parameter(torch.randn(depth, num_tokens, width) * std)

    def encode(self, visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """``visual(images)`` with the prompts inserted: pooled, projected image features."""
        return encode_with_prompts(visual, images, self.tokens)


def encode_with_prompts(visual: nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``visual(images)`` with deep visual prompts ``tokens`` (depth, num_tokens, width) inserted (VPT-deep).

    The prompts follow the class and patch tokens; before each of the first ``depth`` layers the prompt
    positions get that layer's tokens. Pooling sees the tower's own tokens only, as without prompts.
    """
    _check_vit(visual)
    blocks = visual.transformer.resblocks
    depth, num_tokens = tokens.shape[0], tokens.shape[1]
    if depth > len(blocks):
        raise ValueError(f"prompt depth {depth} exceeds the image tower's {len(blocks)} layers")
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    x = visual.patch_dropout(x)
    prompts = tokens.to(x.dtype)
    x = torch.cat([x, prompts[0].expand(x.shape[0], -1, -1)], dim=1)
    x = visual.ln_pre(x)
    batch_first = getattr(visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for index, block in enumerate(blocks):
        if 0 < index < depth:
            fresh = prompts[index].expand(x.shape[0 if batch_first else 1], -1, -1)
            if batch_first:
                x = torch.cat([x[:, :-num_tokens], fresh], dim=1)
            else:
                x = torch.cat([x[:-num_tokens], fresh.transpose(0, 1)], dim=0)
        x = block(x)
    if not batch_first:
        x = x.transpose(0, 1)
    x = x[:, :-num_tokens]  # pooling sees the tower's own tokens only, as without prompts
    pooled, _ = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled


def mlp_projector(in_width: int, out_width: int) -> nn.Module:
    """PromptKD's projector: Linear, BatchNorm, ReLU, Linear (two 1×1 convolutions in the reference code)."""
    return nn.Sequential(nn.Linear(in_width, out_width), nn.BatchNorm1d(out_width), nn.ReLU(inplace=True),
                         nn.Linear(out_width, out_width))


def linear_projector(in_width: int, out_width: int) -> nn.Module:
    """One Linear; identity-initialised when the widths agree, so training starts from the zero-shot student."""
    projector = nn.Linear(in_width, out_width)
    if in_width == out_width:
        with torch.no_grad():
            projector.weight.copy_(torch.eye(out_width))
            projector.bias.zero_()
    return projector


def no_projector(in_width: int, out_width: int) -> nn.Module:
    """None: the prompted tower stays in its own embedding space (KDPL's VPT variant)."""
    if in_width != out_width:
        raise ValueError(f"projector 'none' keeps the width {in_width}; the target width is {out_width}")
    return nn.Identity()


PROJECTORS = {"mlp": mlp_projector, "linear": linear_projector, "none": no_projector}


class PromptedStudent(nn.Module):
    """A student CLIP's image tower with deep visual prompts and a projector to the teacher's width.

    Behaves like an open_clip model for evaluation (``encode_image``, ``logit_scale``): images land
    in the teacher's embedding space, where they are compared with the teacher's class text vectors.
    Only ``prompts`` and ``projector`` are meant to train; the backbone is frozen here.

    Parameters
    ----------
    student : open_clip model
        Its ``visual`` tower must be a ViT.
    teacher_width : int
        Width of the teacher's embeddings (the class vectors the student is scored against).
    logit_scale : float
        Multiplier of cosine similarities (PromptKD: the student's own frozen CLIP scale).
    num_tokens, depth, init_std
        See :class:`VisualPrompts`.
    projector : {"mlp", "linear", "none"}, default "mlp"
        :func:`mlp_projector` (PromptKD's, random initialisation), :func:`linear_projector`, or none
        (``teacher_width`` must then be the student's own width).
    """

    def __init__(self, student: nn.Module, teacher_width: int, logit_scale: float, num_tokens: int = 4,
                 depth: int = 1, init_std: float | None = None, projector: str = "mlp"):
        super().__init__()
        _check_vit(student.visual)
        if projector not in PROJECTORS:
            raise ValueError(f"unknown projector {projector!r}; valid names: {', '.join(PROJECTORS)}")
        self.visual = student.visual
        for p in self.visual.parameters():
            p.requires_grad_(False)
        self.prompts = VisualPrompts(self.visual.transformer.width, num_tokens, depth, init_std)
        self.projector = PROJECTORS[projector](int(student.visual.output_dim), teacher_width)
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)).log())

    def trainable(self) -> list[nn.Module]:
        return [self.prompts, self.projector]

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.projector(self.prompts.encode(self.visual, images))
        return F.normalize(features, dim=-1) if normalize else features


def _text_tower_kind(model: nn.Module) -> str:
    """"hf" (a Hugging Face text tower, e.g. the embedded models' MiniLM) or "open_clip" (CLIP's own)."""
    if type(getattr(model, "text", None)).__name__ == "HFTextEncoder":
        return "hf"
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
    missing = [name for name in needed if not hasattr(model, name)]
    if missing:
        raise TypeError(f"CoOp text context needs an open_clip text transformer or a Hugging Face text tower; "
                        f"{type(model).__name__} lacks {', '.join(missing)}")
    return "open_clip"


class TextContext(nn.Module):
    """CoOp's learnable context: the word embeddings of ``init`` (e.g. "a photo of a"), shared by all classes.

    Matched to CoOp's ``PromptLearner`` as KDPL runs it (miccunifi/KDPL ``src/trainers/coop.py``,
    ``src/scripts/coop_kdpl/reproduce_base2new_train.sh``): a generic context (not class-specific),
    initialised from the phrase's own token embeddings, the class name at the end ("<context> <name>.").
    Before any training the class vectors equal the text tower's encoding of "<init> <name>.".

    Parameters
    ----------
    model : open_clip model
        Supplies the text tower (weights are not changed; gradients flow through it to the context).
    tokenizer : the model's tokenizer
    init : str
        The phrase the context starts as; its token count is the context length.
    depth : int, default 1
        Layers of the text tower that receive context, counted from the first. 1 is CoOp's (the input only);
        PromptSRC's deep language prompts (zhengli97/PromptKD ``trainers/promptsrc.py``, depth 9) replace the
        context positions' hidden states with fresh learnable tokens (N(0, 0.02²)) before each of the next
        ``depth - 1`` layers. Capped at the tower's layer count.
    num_tokens : int, optional
        Learn only the first ``num_tokens`` of the phrase's tokens; the rest stay words of the prompt (MaPLe's
        2 of "a photo of a"). Default: all of them (CoOp's).
    """

    def __init__(self, model: nn.Module, tokenizer, init: str = "a photo of a", depth: int = 1,
                 num_tokens: int | None = None):
        super().__init__()
        if not isinstance(init, str) or not init.strip():
            raise ValueError(f"init must be a non-empty phrase, got {init!r}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive int, got {depth!r}")
        self.kind = _text_tower_kind(model)
        self.tokenizer, self.init = tokenizer, " ".join(init.split())
        self._tower = [model]  # a list keeps the tower out of this module's parameters and state_dict
        tokens = tokenizer([self.init])
        phrase_tokens = int((tokens[0] != self._pad_id).sum()) - 2  # between the start and end tokens
        if phrase_tokens < 1:
            raise ValueError(f"context phrase {init!r} has no tokens")
        if num_tokens is not None and (isinstance(num_tokens, bool) or not isinstance(num_tokens, int)
                                       or not 1 <= num_tokens <= phrase_tokens):
            raise ValueError(f"num_tokens must be an int in [1, {phrase_tokens}] (the tokens of {init!r}), "
                             f"got {num_tokens!r}")
        self.num_tokens = num_tokens or phrase_tokens
        with torch.no_grad():
            words = self._embed(tokens.to(self._device))[0, 1:1 + self.num_tokens]
        self.context = nn.Parameter(words.detach().clone().float())
        self.depth = min(depth, len(self._layers()))
        if self.depth > 1:
            self.deep = nn.Parameter(torch.randn(self.depth - 1, self.num_tokens, words.shape[-1]) * 0.02)
        else:
            self.register_parameter("deep", None)
        self._tokens: dict[tuple[str, ...], torch.Tensor] = {}

    def _layers(self) -> nn.ModuleList:
        if self.kind == "hf":
            return self._model.text.transformer.encoder.layer
        return self._model.transformer.resblocks

    def _deep_hooks(self) -> list:
        """Forward pre-hooks that put layer i's fresh context into the hidden states entering it (i >= 1)."""
        batch_first = self.kind == "hf" or getattr(self._model.transformer, "batch_first", True)
        span = slice(1, 1 + self.num_tokens)

        def hook_for(tokens):
            def hook(module, args, kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                fresh = tokens.to(hidden.dtype)
                if batch_first:
                    hidden = torch.cat([hidden[:, :1], fresh.expand(hidden.shape[0], -1, -1),
                                        hidden[:, span.stop:]], dim=1)
                else:
                    hidden = torch.cat([hidden[:1], fresh.unsqueeze(1).expand(-1, hidden.shape[1], -1),
                                        hidden[span.stop:]], dim=0)
                if args:
                    return (hidden, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": hidden}
            return hook

        layers = self._layers()
        return [layers[i].register_forward_pre_hook(hook_for(self.deep[i - 1]), with_kwargs=True)
                for i in range(1, self.depth)]

    @property
    def _model(self) -> nn.Module:
        return self._tower[0]

    @property
    def _device(self) -> torch.device:
        return next(self._model.parameters()).device

    @property
    def _pad_id(self) -> int:
        return int(self._model.text.config.pad_token_id) if self.kind == "hf" else 0

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.kind == "hf":
            return self._model.text.transformer.get_input_embeddings()(tokens)
        return self._model.token_embedding(tokens)

    def prompts(self, class_names) -> list[str]:
        """The text each class is encoded from, the context's words standing for the learned embeddings."""
        return [f"{self.init} {name.replace('_', ' ')}." for name in class_names]

    def _tokenize(self, class_names) -> torch.Tensor:
        key = tuple(class_names)
        if key not in self._tokens:
            tokens = self.tokenizer(self.prompts(key))
            if self.kind == "hf":  # the tower masks padding: cut to the longest prompt, as encode_texts does
                tokens = tokens[:, :int((tokens != self._pad_id).any(dim=0).nonzero().max()) + 1]
            self._tokens[key] = tokens
        return self._tokens[key].to(self._device)

    def forward(self, class_names) -> torch.Tensor:
        """Unit-norm class vectors ``(C, D)`` of ``class_names`` with the current context."""
        if not len(class_names):
            raise ValueError("class_names is empty")
        tokens = self._tokenize(class_names)
        words = self._embed(tokens)
        context = self.context.to(words.dtype).expand(len(tokens), -1, -1)
        x = torch.cat([words[:, :1], context, words[:, 1 + self.num_tokens:]], dim=1)
        model = self._model
        hooks = self._deep_hooks()
        try:
            if self.kind == "hf":
                text = model.text
                mask = (tokens != self._pad_id).long()
                out = text.transformer(inputs_embeds=x, attention_mask=mask)
                features = text.proj(text.pooler(out, mask))
            else:  # open_clip's CLIP.encode_text, with the context's embeddings in place of the phrase's
                from open_clip.transformer import text_global_pool

                x = x + model.positional_embedding.to(x.dtype)
                x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
                x = text_global_pool(x, tokens, model.text_pool_type,
                                     eos_token_id=getattr(model, "text_eos_id", None))
                features = model.text_projection(x) if isinstance(model.text_projection, nn.Linear) \
                    else x @ model.text_projection
        finally:  # the tower is shared: it never keeps the hooks
            for hook in hooks:
                hook.remove()
        return F.normalize(features.float(), dim=-1)


class CoupledPrompts(nn.Module):
    """MaPLe's multi-modal prompts: deep language prompts, and deep visual prompts coupled to them.

    Matched to miccunifi/KDPL ``src/trainers/maple.py`` (``MultiModalPromptLearner``) and
    ``src/configs/trainers/MaPLe_KDPL/vit_b32_c2_ep5_batch4_2ctx.yaml``: a :class:`TextContext` of
    ``num_tokens`` tokens (2 of "a photo of a") with ``depth`` layers of language prompts (9), and for each of
    those layers one Linear map from the text width to the image tower's width, whose output is that layer's
    visual prompt tokens. The maps of the deeper layers start as copies of one initialisation, as the
    reference's ``_get_clones`` makes them. Both towers get prompts in the same first ``depth`` layers
    (capped at the shallower tower).
    """

    def __init__(self, model: nn.Module, tokenizer, init: str = "a photo of a", num_tokens: int = 2, depth: int = 9):
        super().__init__()
        _check_vit(model.visual)
        depth = min(depth, len(model.visual.transformer.resblocks))
        self.text = TextContext(model, tokenizer, init, depth=depth, num_tokens=num_tokens)
        self.depth = self.text.depth
        text_width, image_width = self.text.context.shape[1], model.visual.transformer.width
        deeper = nn.Linear(text_width, image_width)
        self.couplings = nn.ModuleList([nn.Linear(text_width, image_width)]
                                       + [copy.deepcopy(deeper) for _ in range(self.depth - 1)])

    def visual_tokens(self) -> torch.Tensor:
        """``(depth, num_tokens, image width)``: each layer's visual prompts, mapped from its language prompts."""
        text = [self.text.context] + ([] if self.text.deep is None else list(self.text.deep))
        return torch.stack([coupling(tokens) for coupling, tokens in zip(self.couplings, text)])

    def forward(self, class_names) -> torch.Tensor:
        return self.text(class_names)


class TextPromptedStudent(nn.Module):
    """A frozen student CLIP whose class vectors come from learned prompts: CoOp's or MaPLe's.

    ``prompts`` is a :class:`TextContext` (CoOp: the image tower runs as it is) or a :class:`CoupledPrompts`
    (MaPLe: the image tower also gets the visual prompts coupled to the language prompts). Behaves like an
    open_clip model for evaluation (``encode_image``, ``logit_scale``) and adds ``class_vectors(class_names)``,
    which evaluation uses in place of the hand-written prompts' vectors.
    """

    def __init__(self, student: nn.Module, prompts: nn.Module):
        super().__init__()
        for p in student.parameters():
            p.requires_grad_(False)
        self.visual = student.visual
        self.prompts = prompts
        self.register_buffer("logit_scale", student.logit_scale.detach().clone())

    def trainable(self) -> list[nn.Module]:
        return [self.prompts]

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        coupled = getattr(self.prompts, "visual_tokens", None)
        features = self.visual(images) if coupled is None else encode_with_prompts(self.visual, images, coupled())
        return F.normalize(features, dim=-1) if normalize else features

    def class_vectors(self, class_names) -> torch.Tensor:
        return self.prompts(class_names)
