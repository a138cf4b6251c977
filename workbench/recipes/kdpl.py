"""KDPL (Mistretta et al., ECCV 2024, "Improving Zero-shot Generalization of Learned Prompts via
Unsupervised Knowledge Distillation").

Matched to miccunifi/KDPL ``src/trainers/vpt_kdpl.py``, ``kdpl_utils.py`` and
``src/configs/trainers/VPT_KDPL/``: the student's image tower is frozen and deep visual prompts train
(8 tokens in every layer up to 12, N(0, 0.02²)); its class vectors are its own fixed text features.
The loss is the symmetric KL ``0.5 KL(pt ‖ ps) + 0.5 KL(ps ‖ pt)`` with no temperature, and the
teacher's cosine similarities are scaled by the *student's* logit scale, so both distributions have
the same sharpness. Label-free.

Class-agnostic KDPL (``kdpl_top_k > 0``): both models score a vocabulary of generic class names (the
reference: 20,930 names, K = 1000) and each batch is distilled over the K names the teacher finds
most probable on average over the batch. The vocabulary must not contain the task's class names
(checked when the run is prepared): the point of the variant is that the task's names are not given.

``kdpl_prompts: coop`` is the reference's CoOp variant (``src/trainers/coop_kdpl.py``): the whole student
is frozen and CoOp's shared text context trains (initialised from "a photo of a", class name at the
end), so the class vectors, not the image features, move; new classes are scored with the learned
context around their own names. Its optimiser settings differ from the VPT variant's: ``configs/kdpl_coop.yaml``.
``kdpl_prompts: maple`` is the MaPLe variant (``src/trainers/maple_kdpl.py``): deep language prompts (2 tokens of
"a photo of a", 9 layers) and visual prompts coupled to them (:class:`workbench.prompts.CoupledPrompts`);
``configs/kdpl_maple.yaml`` holds its token count, depth and optimiser.
``kdpl_prompts: image_tower`` trains the whole image tower instead of prompts (not the reference's).
"""

from __future__ import annotations

import torch

from ..losses import SymmetricKLLoss
from ..prompts import CoupledPrompts, PromptedStudent, TextContext, TextPromptedStudent
from .base import Recipe, StepOutput
from .logit_kd import weighted


def _needs_names(context, variant: str) -> None:
    if context.class_names is None or context.tokenizer is None:
        raise ValueError(f"kdpl_prompts {variant!r} encodes class names with the student's text tower: distill "
                         "needs class_names and the student's tokenizer")


def _vpt_student(student, context, config, scale: float):
    depth = min(config.prompt_depth, len(student.visual.transformer.resblocks))
    return PromptedStudent(student, context.student_width, scale, config.prompt_tokens, depth,
                           config.prompt_init_std, projector="none")


def _coop_student(student, context, config, scale: float):
    _needs_names(context, "coop")
    return TextPromptedStudent(student, TextContext(student, context.tokenizer, config.text_context_init))


def _maple_student(student, context, config, scale: float):
    _needs_names(context, "maple")
    return TextPromptedStudent(student, CoupledPrompts(student, context.tokenizer, config.text_context_init,
                                                       config.prompt_tokens, config.prompt_depth))


# kdpl_prompts -> the prompted student it trains ("image_tower" trains the student itself)
PROMPTED_STUDENTS = {"vpt": _vpt_student, "coop": _coop_student, "maple": _maple_student}
TEXT_PROMPTS = ("coop", "maple")  # variants whose class vectors come from learned prompts


class KDPL(Recipe):
    name = "kdpl"
    defaults = {"temperature": 1.0, "kd_weight": 1.0, "kd_reduction": "batchmean", "kdpl_prompts": "vpt",
                "kdpl_top_k": 0, "kdpl_vocabulary": None, "prompt_tokens": 8, "prompt_depth": 12,
                "prompt_init_std": 0.02, "text_context_init": "a photo of a"}
    # The embedded world's generic names (data_manifests/vocabularies/embedded_generic.txt); a real dataset
    # needs a dictionary of its own (the reference's 20,930 names are not shipped here).
    dataset_defaults = {"embedded_world": {"kdpl_vocabulary": "embedded_generic"}}
    optim_defaults = {"epochs": 5, "batch_size": 4, "lr": 0.0025, "optimizer": "sgd", "momentum": 0.9,
                      "weight_decay": 0.0005, "warmup_fraction": 0.2, "grad_clip": 0.0}

    def __init__(self, context):
        super().__init__(context)
        config, student = self.config, context.student
        self.scale = student.logit_scale.detach().exp()
        if config.kdpl_prompts in PROMPTED_STUDENTS:
            build = PROMPTED_STUDENTS[config.kdpl_prompts]
            self.model = build(student, context, config, float(self.scale)).to(context.device)
        if config.kdpl_prompts in TEXT_PROMPTS:
            self.train_names = [context.class_names[int(i)] for i in context.classes]
        self.kd = SymmetricKLLoss(config.temperature, reduction=config.kd_reduction)
        self.vocabulary = self.student_vocabulary = None
        if config.kdpl_top_k:
            if context.vocabulary is None:
                raise ValueError("class-agnostic kdpl (kdpl_top_k > 0) needs a vocabulary of generic class names "
                                 "(kdpl_vocabulary); the task's own class names are not given to it")
            self.vocabulary = context.vocabulary.to(context.device).float()
            if config.kdpl_top_k > len(self.vocabulary):
                raise ValueError(f"kdpl_top_k={config.kdpl_top_k} exceeds the vocabulary's {len(self.vocabulary)} "
                                 "names")
            if not context.shared_text and context.student_vocabulary is None:
                raise ValueError("class-agnostic kdpl with the student's own text tower needs student_vocabulary")
            self.student_vocabulary = self.vocabulary if context.shared_text \
                else context.student_vocabulary.to(context.device).float()

    def trainable(self):
        return [self.context.student.visual] if self.model is self.context.student else self.model.trainable()

    def score_vectors(self):
        if self.config.kdpl_prompts not in TEXT_PROMPTS:
            return super().score_vectors()
        with torch.no_grad():
            return self.model.class_vectors(self.context.class_names)

    def step(self, teacher_features, pixels, indices) -> StepOutput:
        features = self.model.encode_image(pixels, normalize=True)
        if self.vocabulary is None:
            rows = self.model.class_vectors(self.train_names) if self.config.kdpl_prompts in TEXT_PROMPTS \
                else self.context.student_train_vectors
            teacher_logits = self.context.teacher_logits(teacher_features, self.scale)
        else:
            teacher_vocab = self.scale * teacher_features @ self.vocabulary.T
            top = teacher_vocab.softmax(dim=1).mean(dim=0).topk(self.config.kdpl_top_k).indices
            rows, teacher_logits = self.student_vocabulary[top], teacher_vocab[:, top]
        terms = self.kd(self.scale * features @ rows.T, teacher_logits)
        return StepOutput(weighted(terms, self.config.kd_weight), features, rows)

    def modules_to_save(self):
        return {} if self.model is self.context.student else {"prompts": self.model.prompts}
