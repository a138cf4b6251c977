"""What one run trains on and is evaluated on: dataset × model pair × protocol, resolved before any file is written.

:func:`prepare_task` turns an :class:`workbench.experiment.ExperimentConfig` into a :class:`Task`:
the teacher and student (the embedded pair pretrained on the embedded world, or any open_clip pair:
name + pretrained tag, ``hf-hub:``, checkpoint file, ``local-dir:``), each side's class vectors from
its own text tower and the dataset's prompt templates, the training images (the student's view) and
the teacher's view of them, the labelled validation images, and the evaluation sets of the protocol.
Every check that can fail (dataset or root missing, ``WORKBENCH_DATA`` unset, weights not on the
machine, too few images for K shots, unknown targets) fails here, so a bad setting never leaves a
half-written run directory behind.

Datasets (``dataset``):

- ``embedded_world``: the procedurally rendered world (:mod:`workbench.world`), the offline default;
- a benchmark spec name of ``data_manifests/benchmarks/`` (``caltech101`` …), built from the user's
  files under ``data_root`` or the spec's own root (``${WORKBENCH_DATA}/…``) into a manifest that is
  kept under ``cache_dir/manifests``;
- a manifest file (``.json``/``.yaml``, :func:`workbench.data.load_manifest`) or a build spec file
  (a YAML with a ``builder``: image folder, CoOp split JSON …);
- ``imagefolder:<dir>``: ``<dir>/train/<class>/*`` and ``<dir>/test/<class>/*`` (``val/`` optional).

Protocols (``protocol``), as in CoOp / CoCoOp / PromptKD:

- ``base_to_new``: train on the base classes (first half of the labels) — K labelled shots
  (``setting: inductive``) or every training image unlabelled (``transductive``); test on base and
  new classes, each scored among its own classes, and report their harmonic mean;
- ``cross_dataset`` / ``domain_generalization``: train on all classes of the source, then evaluate
  zero-shot on each target's test split among the target's own classes (ImageNet-A and -R carry
  their 200-class subsets in their manifests); targets default to ``data_manifests/evaluation_sets.yaml``.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from .config import DATA_MANIFESTS

EMBEDDED_WORLD = "embedded_world"
PROTOCOLS = ("base_to_new", "cross_dataset", "domain_generalization")
IMAGEFOLDER = "imagefolder:"
ON_ERROR = ("error", "skip")


@dataclass
class EvalSet:
    """One labelled test set and how each model sees it."""

    name: str  # dataset name
    student_images: object  # image source in the student's eval view
    teacher_images: object  # the same images in the teacher's eval view
    labels: np.ndarray  # class of each image
    class_names: list[str]
    teacher_vectors: torch.Tensor  # (C, Dt) the teacher's class vectors
    student_vectors: torch.Tensor | None  # (C, Ds) the student's own; None: shared text tower
    base: np.ndarray | None = None  # base classes (base-to-new); None: accuracy over all classes
    new: np.ndarray | None = None
    true_ambiguity: np.ndarray | None = None  # the embedded world's ground truth: partner weight, 0 = clean
    thumbnails: object = None  # sequence of uint8 images, row i = image i
    true_partner: np.ndarray | None = None  # the embedded world's partner class of each image, -1 = clean


@dataclass
class Task:
    """Everything a run needs, resolved and checked."""

    dataset: str  # the dataset's name
    protocol: str
    teacher: nn.Module
    student: nn.Module  # a fresh copy: training changes it
    class_names: list[str]  # training dataset's classes
    teacher_vectors: torch.Tensor  # (C, Dt)
    student_vectors: torch.Tensor | None  # (C, Ds); None: the pair shares its text tower
    train_images: object  # image source, the student's (possibly augmented) view
    teacher_train_images: object  # the teacher's un-augmented view of the same images
    train_labels: np.ndarray  # class or -1 (unlabelled)
    train_classes: np.ndarray  # classes training sees
    validation: tuple | None  # (image source, labels) of held-out labelled training-class images; None: none left
    base_test: tuple | None  # (image source, labels) of the base classes' test images
    evaluations: list[EvalSet]  # the dataset's own test split first, then transfer targets
    description: dict = field(default_factory=dict)  # what dataset.json records
    teacher_fingerprint: str | None = None  # cache.model_fingerprint(teacher), computed once (None: when needed)
    vocabulary: tuple | None = None  # class-agnostic KDPL: (teacher (V, Dt), student (V, Ds) or None) vectors
    student_tokenizer: object | None = None  # for recipes that encode class names while training (KDPL's CoOp)
    teacher_tokenizer: object | None = None  # for the teacher-tuning stage's text context


VOCABULARY_DIR = DATA_MANIFESTS / "vocabularies"


def read_vocabulary(ref: str, class_names) -> list[str]:
    """The generic class names of a vocabulary file (``ref``: a path, or a name in ``data_manifests/vocabularies``).

    One name per line, ``#`` starts a comment line, duplicates are dropped. A vocabulary that contains
    any of the task's ``class_names`` (compared case- and underscore-insensitively) is refused: class-
    agnostic KDPL must not be given the task's own names.
    """
    if not ref:
        raise ValueError("class-agnostic KDPL (kdpl_top_k > 0) needs kdpl_vocabulary: a file of generic class names "
                         "(KDPL's reference uses a 20,930-name dictionary), one per line")
    path = Path(ref)
    if not path.is_file() and (VOCABULARY_DIR / f"{ref}.txt").is_file():
        path = VOCABULARY_DIR / f"{ref}.txt"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in VOCABULARY_DIR.glob("*.txt")))
        raise FileNotFoundError(f"kdpl_vocabulary {ref!r} is neither a file nor a vocabulary of "
                                f"data_manifests/vocabularies ({known})")
    names = list(dict.fromkeys(line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                               if line.strip() and not line.lstrip().startswith("#")))
    if not names:
        raise ValueError(f"kdpl_vocabulary {path} holds no class names")

    def key(name):
        return " ".join(name.replace("_", " ").lower().split())

    task = {key(name) for name in class_names}
    leaked = [name for name in names if key(name) in task]
    if leaked:
        raise ValueError(f"kdpl_vocabulary {path} contains {len(leaked)} of the task's class names "
                         f"({', '.join(leaked[:10])}{' …' if len(leaked) > 10 else ''}); class-agnostic KDPL must "
                         "not be given the task's names — remove them from the vocabulary")
    return names


# ----------------------------------------------------------------------------- datasets
def resolve_dataset(ref: str, data_root: str = "", manifest_dir: str | os.PathLike | None = None):
    """A validated :class:`workbench.data.Manifest` for a dataset reference (see the module docstring)."""
    from . import data

    if not isinstance(ref, str) or not ref:
        raise ValueError(f"dataset must be a non-empty string, got {ref!r}")
    if ref.startswith(IMAGEFOLDER):
        root = Path(os.path.expandvars(os.path.expanduser(ref[len(IMAGEFOLDER):] or data_root)))
        if not root.is_dir():
            raise FileNotFoundError(f"dataset {ref!r}: image folder {root} not found")
        splits = {s: s for s in ("train", "val", "test") if (root / s).is_dir()}
        missing = [s for s in ("train", "test") if s not in splits]
        if missing:
            raise FileNotFoundError(f"dataset {ref!r}: {root} needs sub-folders train/ and test/ of class folders "
                                    f"(missing: {', '.join(missing)})")
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", root.name) or "imagefolder"
        return data.from_image_folder(root, name=name, splits=splits)
    if ref.endswith((".json", ".yaml", ".yml")):
        path = Path(ref)
        if not path.is_file():
            raise FileNotFoundError(f"dataset file {path} not found")
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(doc, dict) and "builder" in doc:
            return data.build_from_spec(path, root=data_root or None)
        return data.load_manifest(path, image_root=data_root or None)
    if ref not in data.list_specs():
        raise ValueError(f"unknown dataset {ref!r}: not '{EMBEDDED_WORLD}', a benchmark spec "
                         f"({', '.join(data.list_specs())}), a manifest/spec file or '{IMAGEFOLDER}<dir>'")
    spec = data.load_dataset_spec(ref)
    root = data_root or spec["root"]
    if manifest_dir is not None:
        # Keyed by the expanded folder, so another $WORKBENCH_DATA never reuses this manifest.
        key = hashlib.sha256(str(data.expand_path(root, origin=f"dataset {ref!r}", field="root")).encode()
                             ).hexdigest()[:8]
        cached = Path(manifest_dir) / f"{ref}-{key}.json"
        if cached.is_file():
            return data.load_manifest(cached)
        return data.build_from_spec(ref, root=root, out=cached)
    return data.build_from_spec(ref, root=root)


def _check_splits(manifest, needed=("train", "test")) -> None:
    missing = [s for s in needed if s not in manifest.splits]
    if missing:
        raise ValueError(f"dataset '{manifest.name}' ({manifest.origin}) has no split {', '.join(map(repr, missing))}; "
                         f"it has {sorted(manifest.splits)}")
    if not manifest.root().is_dir():
        raise FileNotFoundError(f"image root {manifest.root()} of dataset '{manifest.name}' ({manifest.origin}) is not "
                                "a folder; set data_root (or WORKBENCH_DATA) to where the images are")


# ----------------------------------------------------------------------------- protocol splits
def _training_split(labels: np.ndarray, train_classes, config, class_names=None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train positions, their labels or -1, validation positions)`` of a labelled training split.

    Validation takes ``val_per_class`` images per training class outside the shots, or as many as
    the smallest class has left (none when a class has no image to spare).
    """
    from .protocol import few_shot_indices

    shots = few_shot_indices(labels, config.shots, config.seed, classes=train_classes, class_names=class_names)
    left = np.bincount(np.delete(labels, shots), minlength=int(labels.max()) + 1)[np.asarray(train_classes)]
    per_class = min(config.val_per_class, int(left.min()) if len(left) else 0)
    validation = few_shot_indices(labels, per_class, config.seed, classes=train_classes, exclude=shots) \
        if per_class else np.empty(0, dtype=np.int64)
    if config.setting == "inductive":
        return shots, labels[shots], validation
    # PromptKD's setting: every training image of every class, unlabelled except the K shots.
    train_labels = np.full(len(labels), -1, dtype=np.int64)
    train_labels[shots] = labels[shots]
    return np.arange(len(labels)), train_labels, validation


def _distilled_classes(train_classes, num_classes: int, config) -> np.ndarray:
    """Classes the KD logits range over: the training classes inductively; every class transductively,
    as PromptKD distils over all classes' teacher text features (its names are known, its images unlabelled)."""
    return np.asarray(train_classes) if config.setting == "inductive" else np.arange(num_classes)


# ----------------------------------------------------------------------------- the embedded world
@functools.lru_cache(maxsize=4)
def _embedded_setup(preset_name: str, cache_dir: str, device: str) -> dict:
    """World, pretrained teacher and student, class vectors: built or loaded once per process and preset.

    Runs of a sweep executed in one process share them (the student is copied per run).
    """
    from . import zoo
    from .presets import QuickstartConfig

    s = zoo.load_embedded_setup(QuickstartConfig.load(preset_name), cache_dir, torch.device(device))
    return {"spec": s.spec, "splits": s.splits, "teacher": s.teacher, "tokenizer": s.tokenizer, "student": s.student,
            "class_vectors": s.class_vectors, "preset": s.preset}


def _embedded_task(config, device: torch.device) -> Task:
    from . import protocol
    from .image_sources import ArrayImages, AugmentedArrayImages

    if config.protocol != "base_to_new":
        raise ValueError(f"protocol {config.protocol!r} needs target datasets; the embedded world has one class "
                         "vocabulary and no shifted domains yet, so it runs 'base_to_new' only")
    setup = _embedded_setup(config.preset, str(Path(config.cache_dir).resolve()), str(device))
    spec, splits, vectors = setup["spec"], setup["splits"], setup["class_vectors"]
    base, new = protocol.base_new_split(len(spec.class_names))
    train, test = splits["train"], splits["test"]
    positions, train_labels, validation = _training_split(train.labels, base, config, spec.class_names)
    vocabulary = None
    if config.distill.recipe == "kdpl" and config.distill.kdpl_top_k:
        from .models import build_class_vectors
        names = read_vocabulary(config.distill.kdpl_vocabulary, spec.class_names)
        vocabulary = (build_class_vectors(setup["teacher"], setup["tokenizer"], names, spec.prompt_templates,
                                          device=device).cpu(), None)
    train_images = ArrayImages(train.images[positions])
    # PromptKD's crop-and-flip views for the student; the live teacher sees the same pixels (no cached view)
    student_train = AugmentedArrayImages(train_images.images, seed=config.seed) if config.augment else train_images
    test_images = ArrayImages(test.images)
    base_mask = np.isin(test.labels, base)
    evaluation = EvalSet(EMBEDDED_WORLD, test_images, test_images, np.asarray(test.labels), list(spec.class_names),
                         vectors, None, base, new, np.asarray(test.ambiguity), test.images, np.asarray(test.partner))
    return Task(EMBEDDED_WORLD, config.protocol, setup["teacher"], copy.deepcopy(setup["student"]),
                list(spec.class_names), vectors, None, student_train, None if config.augment else train_images,
                train_labels,
                _distilled_classes(base, len(spec.class_names), config),
                (ArrayImages(train.images[validation]), train.labels[validation]),
                (ArrayImages(test.images[base_mask]), test.labels[base_mask]), [evaluation],
                {"kind": EMBEDDED_WORLD, "name": EMBEDDED_WORLD, "preset": config.preset,
                 "world_seed": setup["preset"].world_seed, "cache_dir": str(Path(config.cache_dir).resolve()),
                 "class_names": list(spec.class_names)}, vocabulary=vocabulary, student_tokenizer=setup["tokenizer"],
                teacher_tokenizer=setup["tokenizer"])


# ----------------------------------------------------------------------------- manifests and open_clip pairs
def load_model_pair(model_pair: str = "embedded", teacher: dict | str | None = None,
                    student: dict | str | None = None) -> dict[str, dict]:
    """``{"teacher": {"name", "pretrained"}, "student": {...}}`` from a preset of ``presets/model_pairs.yaml``.

    ``teacher``/``student`` replace a side: a mapping ``{name, pretrained}`` or just a model reference
    (``local-dir:…`` and ``hf-hub:…`` carry their weights). Unknown pairs raise ``ValueError`` naming
    the known ones.
    """
    from .models import list_embedded_models
    from .presets import load_preset

    pairs = load_preset("model_pairs")
    if model_pair not in pairs:
        raise ValueError(f"unknown model_pair {model_pair!r}; known: {', '.join(pairs)}")
    out = {side: dict(pairs[model_pair][side]) for side in ("teacher", "student")}
    for side, given in (("teacher", teacher), ("student", student)):
        if given in (None, "", {}):
            continue
        ref = {"name": given} if isinstance(given, str) else dict(given)
        unknown = set(ref) - {"name", "pretrained"}
        if unknown or not isinstance(ref.get("name"), str) or not ref["name"]:
            raise ValueError(f"{side} must be a model reference or a mapping with 'name' (and 'pretrained'); "
                             f"got {given!r}")
        out[side] = {"name": ref["name"], "pretrained": ref.get("pretrained")}
    embedded = [side for side, ref in out.items() if ref["name"] in list_embedded_models()]
    if len(embedded) == 1:
        raise ValueError(f"the {embedded[0]} is an embedded model and the other side is not; embedded models are "
                         "pretrained together on the embedded world (model_pair: embedded) — pair them with each other")
    return out


def _load_pair(config, device: torch.device) -> dict:
    """``{side: (model, tokenizer)}``; the embedded pair comes from the zoo (pretrained on the world)."""
    from . import models

    pair = load_model_pair(config.model_pair, config.teacher, config.student)
    if pair["teacher"]["name"] in models.list_embedded_models():
        setup = _embedded_setup(config.preset, str(Path(config.cache_dir).resolve()), str(device))
        return {"teacher": (setup["teacher"], setup["tokenizer"]),
                "student": (copy.deepcopy(setup["student"]), setup["tokenizer"]), "refs": pair}
    loaded = {side: models.load_model(ref["name"], ref.get("pretrained"), device=device)
              for side, ref in pair.items()}
    return {"teacher": (loaded["teacher"].model, loaded["teacher"].tokenizer),
            "student": (loaded["student"].model, loaded["student"].tokenizer), "refs": pair}


def _manifest_task(config, device: torch.device) -> Task:
    from . import data, models
    from .cache import model_fingerprint
    from .protocol import base_new_split
    from .image_sources import ManifestImages

    if config.protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {config.protocol!r}; valid names: {', '.join(PROTOCOLS)}")
    cache = Path(config.cache_dir)
    manifest = resolve_dataset(config.dataset, config.data_root, cache / "manifests")
    _check_splits(manifest)
    targets = []
    if config.protocol != "base_to_new":
        names = list(config.targets) or list(data.evaluation_sets(config.protocol).targets)
        targets = [resolve_dataset(name, "", cache / "manifests") for name in names]
        for target in targets:
            _check_splits(target, ("test",))
    pair = _load_pair(config, device)
    teacher, teacher_tok = pair["teacher"]
    student, student_tok = pair["student"]
    fingerprints = {side: model_fingerprint(pair[side][0]) for side in ("teacher", "student")}
    vector_dir = cache / "class_vectors"

    def vectors(side, names, templates):
        model, tokenizer = pair[side]
        return models.class_vectors_on_disk(model, tokenizer, fingerprints[side], names, templates, vector_dir, device)

    t_train, t_eval = models.image_transforms(teacher)
    s_train, s_eval = models.image_transforms(student)
    t_cfg, s_cfg = models.preprocess_cfg(teacher), models.preprocess_cfg(student)
    common = dict(workers=config.workers, seed=config.seed, on_error=config.on_error)

    def student_view(m, split, positions=None, augmented=False):
        return ManifestImages(m, split, positions, s_train if augmented else s_eval, augmented=augmented,
                              preprocess_cfg=s_cfg, **common)

    def teacher_view(m, split, positions=None):
        return ManifestImages(m, split, positions, t_eval, preprocess_cfg=t_cfg, **common)

    labels = manifest.split("train").labels
    if config.protocol == "base_to_new":
        base, new = base_new_split(manifest.num_classes)
        train_classes = base
    else:
        base = new = None
        train_classes = np.arange(manifest.num_classes)
    try:
        positions, train_labels, validation = _training_split(labels, train_classes, config, manifest.classnames)
    except ValueError as err:
        raise ValueError(f"dataset '{manifest.name}': {err}") from None
    train_images = student_view(manifest, "train", positions, augmented=config.augment)
    teacher_train = None if config.augment else teacher_view(manifest, "train", positions)
    teacher_vectors = vectors("teacher", manifest.classnames, manifest.templates)
    student_vectors = vectors("student", manifest.classnames, manifest.templates)
    vocabulary = None
    if config.distill.recipe == "kdpl" and config.distill.kdpl_top_k:
        names = read_vocabulary(config.distill.kdpl_vocabulary, manifest.classnames)
        vocabulary = (vectors("teacher", names, manifest.templates), vectors("student", names, manifest.templates))

    test_labels = manifest.split("test").labels
    evaluations = [EvalSet(manifest.name, student_view(manifest, "test"), teacher_view(manifest, "test"), test_labels,
                           list(manifest.classnames), teacher_vectors, student_vectors, base, new, None,
                           ManifestImages(manifest, "test").thumbnails())]
    for target in targets:
        evaluations.append(EvalSet(
            target.name, student_view(target, "test"), teacher_view(target, "test"), target.split("test").labels,
            list(target.classnames), vectors("teacher", target.classnames, target.templates),
            vectors("student", target.classnames, target.templates), thumbnails=ManifestImages(target, "test").thumbnails()))
    base_test = None
    if base is not None:
        where = np.flatnonzero(np.isin(test_labels, base))
        base_test = (student_view(manifest, "test", where), test_labels[where])
    description = {"kind": "manifest", "name": manifest.name, "origin": str(manifest.origin),
                   "image_root": str(manifest.root()), "splits_sha256": manifest.checksum,
                   "class_names": list(manifest.classnames), "templates": list(manifest.templates),
                   "test_paths": list(manifest.split("test").paths), "pair": pair["refs"],
                   "targets": [t.name for t in targets], "augment": bool(config.augment)}
    return Task(manifest.name, config.protocol, teacher, student, list(manifest.classnames), teacher_vectors,
                student_vectors, train_images, teacher_train, np.asarray(train_labels),
                _distilled_classes(train_classes, manifest.num_classes, config),
                (student_view(manifest, "train", validation), labels[validation]) if len(validation) else None,
                base_test, evaluations,
                description, fingerprints["teacher"], vocabulary, student_tok, teacher_tok)


def prepare_task(config, device: torch.device) -> Task:
    """Resolve and check ``config``'s dataset, model pair and protocol (see the module docstring)."""
    if config.dataset == EMBEDDED_WORLD:
        if (config.model_pair, config.teacher, config.student) != ("embedded", None, None):
            raise ValueError("the embedded world runs with the embedded pair (model_pair: embedded); other pairs "
                             "need a dataset of image files (a benchmark spec, a manifest or imagefolder:<dir>)")
        return _embedded_task(config, device)
    return _manifest_task(config, device)


def run_images(run_dir: str | os.PathLike):
    """The test images of a finished run (item ``i`` = row ``i`` of its ``samples.csv``), for galleries.

    Read from ``dataset.json``: the embedded world's test split from its cache, or a manifest's image
    files (loaded lazily, one thumbnail at a time).
    """
    from .image_sources import FileThumbnails
    from .runs import RunDir

    run = RunDir.find(run_dir, needs="dataset")
    info = run.read("dataset")
    kept = None  # rows of samples.csv: the test images that were readable
    if run.has("embeddings"):
        with np.load(run.embeddings) as arrays:
            kept = arrays["image_index"] if "image_index" in arrays else None
    if info["kind"] == EMBEDDED_WORLD:
        from . import world
        from .presets import QuickstartConfig

        preset = QuickstartConfig.load(info["preset"])
        spec = world.load_world_spec()
        images = world.build_world(spec, Path(info["cache_dir"]) / "world", seed=info["world_seed"],
                                   sizes=preset.world_sizes)["test"].images
        return images if kept is None else images[kept]
    paths = info["test_paths"] if kept is None else [info["test_paths"][i] for i in kept.tolist()]
    return FileThumbnails(info["image_root"], paths)
