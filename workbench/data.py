"""Dataset manifests: validated split lists, builders, the few-shot protocol and image loaders.

A *manifest* describes one image-classification dataset as data: where its images live, which
image belongs to which split and class, the class names and prompt templates used to build
zero-shot classifiers, and where the data comes from. Builders create manifests from what a user
has on disk (an ImageFolder tree, a CSV/JSONL table, a CoOp split file, the FGVC-Aircraft
annotation files, an already-downloaded torchvision dataset); the benchmark specs in
``data_manifests/benchmarks/*.yaml`` name the builder and layout for each dataset of the
CoOp / PromptKD benchmark (see ``docs/datasets.md``). Nothing here ever downloads anything.

Manifest schema (version 1; a ``.json`` file, or ``.yaml`` read with ``yaml.safe_load``)::

    schema_version: 1                  # optional; only 1 exists
    name: caltech101                   # required; letters, digits, '_', '.', '-' (used in cache names)
    description: "..."                 # optional free text
    source: "where images and split lists come from"     # required, non-empty
    licence: "terms of use of the images"                # required, non-empty
    image_root: ${WORKBENCH_DATA}/caltech-101/101_ObjectCategories
                                       # required; $VAR / ${VAR} and ~ are expanded when images are
                                       # read (an unset variable is an error naming it); a relative
                                       # root is taken relative to the manifest's own folder
    classnames: [accordion, airplane, ...]   # required; label i is classnames[i]
    templates: ["a photo of a {}."]    # required; each contains "{}" exactly once
    splits:                            # required; split name -> list of [path, label, classname]
      train: [[accordion/image_0001.jpg, 0, accordion], ...]
      val: [...]
      test: [...]
    splits_sha256: 3f1c...             # required; sha256 of the split lists (see splits_checksum)

:func:`load_manifest` checks, and reports with the file, field and value: missing or unknown
top-level fields; malformed entries; labels outside ``0..C-1``; an entry's class name differing from
``classnames[label]``; a path listed twice in one split (the same image may appear in two splits,
as ImageNet's val does in CoOp); a class with no image in any split; paths that are absolute,
contain ``..`` or a backslash; and a ``splits_sha256`` that does not match the split lists. A
symlink that points out of the image root is rejected when the image is read (and by the builders,
which look at the files anyway).

Protocol: :func:`few_shot` (K per class, seeded, cached on disk as a small JSON of indices per
manifest checksum, split, K and seed), :func:`base_new_classes` (relabelled base / new class
subsets built on :func:`workbench.protocol.base_new_split`), :func:`distillation_indices`
(inductive: base-class training images; transductive: unlabeled training images of all classes)
and :func:`evaluation_sets` (cross-dataset and domain-generalization source -> targets).

Loading: :class:`ManifestDataset` yields ``(image, label, index)``; :func:`make_loader` wraps it in
a ``DataLoader`` with pinned memory on CUDA and persistent workers.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info

from .protocol import base_new_split, few_shot_indices
from .runs import write_json

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SPEC_DIR = REPO_ROOT / "data_manifests" / "benchmarks"  # one build spec per benchmark dataset
EVALUATION_SETS_FILE = REPO_ROOT / "data_manifests" / "evaluation_sets.yaml"
DATASETS_DIR = Path(__file__).resolve().parent / "datasets"  # class names and templates as JSON
SCHEMA_VERSION = 1
STANDARD_SHOTS = (1, 2, 4, 8, 16, "all")  # the K of the few-shot benchmark
SETTINGS = ("inductive", "transductive")
ON_ERROR = ("error", "skip")
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEFAULT_TEMPLATES = ("a photo of a {}.",)

_REQUIRED = ("name", "source", "licence", "image_root", "classnames", "templates", "splits", "splits_sha256")
_OPTIONAL = ("schema_version", "description")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_VAR_RE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_MAX_WORKER_SLOTS = 256  # skip counters, one slot per loader worker (plus the main process)


class ManifestError(ValueError):
    """A manifest, split list, spec or dataset folder is unusable; the message names file, field and value."""


class PathEscapeError(ManifestError):
    """An image path would leave the image root (absolute, '..', or a symlink pointing outside)."""


class ImageReadError(OSError):
    """An image file is missing or cannot be decoded; the message names the file."""


def _fail(origin, field: str, problem: str, error=ManifestError):
    raise error(f"{origin}: field '{field}': {problem}")


# ----------------------------------------------------------------------------- paths
def expand_path(value, *, origin="<argument>", field: str = "image_root", base_dir=None) -> Path:
    """Expand ``$VAR`` / ``${VAR}`` and ``~`` in ``value``; a relative result is joined to ``base_dir``.

    Raises
    ------
    ManifestError
        If a referenced environment variable is unset or empty (the message names it).
    """
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        _fail(origin, field, f"must be a non-empty path string, got {value!r}")
    value = os.fspath(value)

    def substitute(match):
        var = match.group(1) or match.group(2)
        got = os.environ.get(var)
        if not got:
            state = "is not set" if got is None else "is empty"
            _fail(origin, field, f"environment variable {var} {state} (value {value!r}); set it to the "
                  f"folder holding your datasets (e.g. `export {var}=/data/datasets`) or pass the root explicitly")
        return got

    path = Path(os.path.expanduser(_VAR_RE.sub(substitute, value)))
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path


def _path_problem(path) -> tuple[str, type] | None:
    """Why ``path`` is not an acceptable image path relative to a root (``None`` if it is)."""
    if not isinstance(path, str) or not path:
        return f"must be a non-empty string, got {path!r}", ManifestError
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        return f"{path!r} is absolute; paths must be relative to the image root", PathEscapeError
    if "\\" in path:
        return f"{path!r} contains '\\'; write paths with '/' separators", ManifestError
    if ".." in path.split("/"):
        return f"{path!r} contains '..', which could leave the image root", PathEscapeError
    if path.endswith("/") or path in (".", "\x00") or "\x00" in path:
        return f"{path!r} does not name a file", ManifestError
    return None


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _relative_file(root, full, origin, field: str) -> str:
    """``full`` (a path under ``root``) relative to ``root`` with '/' separators.

    Raises :class:`PathEscapeError` if the file, symlinks resolved, lies outside ``root``.
    """
    root_real, real = os.path.realpath(root), os.path.realpath(full)
    rel = os.path.relpath(full, root).replace(os.sep, "/")
    if not _inside(real, root_real) or rel.split("/")[0] == "..":
        _fail(origin, field, f"{full} resolves to {real}, outside the image root {root_real} "
              "(a symlink pointing out of the root?)", PathEscapeError)
    return rel


# ----------------------------------------------------------------------------- manifest
@dataclass(frozen=True, eq=False)
class SplitList:
    """One split: image paths relative to the image root and their integer labels."""

    paths: tuple[str, ...]  # relative, '/'-separated
    labels: np.ndarray  # int64, shape (N,), read-only

    def __len__(self) -> int:
        return len(self.paths)


@dataclass(frozen=True, eq=False)
class Manifest:
    """A validated dataset manifest (see the module docstring for the schema)."""

    name: str  # dataset name, safe for file names
    image_root: str  # as written, possibly with ${VAR}; see root()
    classnames: tuple[str, ...]  # label i -> class name
    templates: tuple[str, ...]  # prompt templates, each with one "{}"
    splits: Mapping[str, SplitList]  # split name -> paths and labels
    source: str  # where the images and split lists come from
    licence: str  # terms of use of the images
    checksum: str  # sha256 of the split lists (field splits_sha256)
    description: str = ""  # free text
    origin: str = "<memory>"  # file the manifest was read from, for messages
    base_dir: str | None = None  # folder a relative image_root is taken from

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def root(self) -> Path:
        """The image root with environment variables and ``~`` expanded."""
        return expand_path(self.image_root, origin=self.origin, field="image_root", base_dir=self.base_dir)

    def split(self, name: str) -> SplitList:
        if name not in self.splits:
            raise KeyError(f"manifest '{self.name}' ({self.origin}) has no split {name!r}; "
                           f"it has {sorted(self.splits)}")
        return self.splits[name]

    def with_image_root(self, image_root) -> Manifest:
        """The same manifest reading its images from ``image_root`` (the checksum is unchanged)."""
        return replace(self, image_root=os.fspath(image_root), base_dir=None)

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION, "name": self.name, "description": self.description,
            "source": self.source, "licence": self.licence, "image_root": self.image_root,
            "classnames": list(self.classnames), "templates": list(self.templates),
            "splits": {s: [[p, int(y), self.classnames[y]] for p, y in zip(v.paths, v.labels.tolist())]
                       for s, v in self.splits.items()},
            "splits_sha256": self.checksum,
        }


def splits_checksum(splits: Mapping[str, Iterable]) -> str:
    """sha256 (hex) of the split lists ``{split: [[path, label, classname], ...]}``.

    Computed over compact JSON with sorted split names, entries in their listed order and UTF-8
    text, so it is the same whether the manifest was written as JSON or YAML.
    """
    canon = {str(s): [[str(p), int(y), str(c)] for p, y, c in entries] for s, entries in splits.items()}
    blob = json.dumps(canon, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _check_str(doc, origin, key, *, pattern=None):
    v = doc[key]
    if not isinstance(v, str) or not v.strip():
        _fail(origin, key, f"must be a non-empty string, got {v!r}")
    if pattern is not None and not pattern.match(v):
        _fail(origin, key, f"must use only letters, digits, '_', '.' and '-', got {v!r}")
    return v


def _check_str_list(doc, origin, key) -> tuple[str, ...]:
    v = doc[key]
    if not isinstance(v, list) or not v:
        _fail(origin, key, f"must be a non-empty list of strings, got {v!r:.80}")
    for i, s in enumerate(v):
        if not isinstance(s, str) or not s.strip():
            _fail(origin, f"{key}[{i}]", f"must be a non-empty string, got {s!r}")
    return tuple(v)


def _parse_split(origin, split, entries, classnames):
    if not isinstance(entries, list) or not entries:
        _fail(origin, f"splits.{split}", f"must be a non-empty list of [path, label, classname], got {entries!r:.80}")
    n = len(classnames)
    seen: dict[str, int] = {}
    canon, labels = [], np.empty(len(entries), dtype=np.int64)
    for i, e in enumerate(entries):
        where = f"splits.{split}[{i}]"
        if not isinstance(e, (list, tuple)) or len(e) != 3:
            _fail(origin, where, f"must be [path, label, classname], got {e!r}")
        path, label, name = e
        problem = _path_problem(path)
        if problem:
            _fail(origin, f"{where}.path", *problem)
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
            _fail(origin, f"{where}.label", f"must be an integer, got {label!r}")
        if not 0 <= label < n:
            _fail(origin, f"{where}.label", f"unknown label {label} for {path!r}; classnames has {n} "
                  f"entries (labels 0..{n - 1})")
        if name != classnames[label]:
            _fail(origin, f"{where}.classname", f"{name!r} does not match classnames[{label}] = "
                  f"{classnames[label]!r} (label/class-name mismatch for {path!r})")
        if path in seen:
            _fail(origin, f"{where}.path", f"duplicate path {path!r} (already listed at splits.{split}[{seen[path]}])")
        seen[path] = i
        labels[i] = label
        canon.append((path, int(label), name))
    labels.setflags(write=False)
    return SplitList(tuple(p for p, _, _ in canon), labels), canon


def manifest_from_dict(doc, *, origin="<dict>", base_dir=None, verify_checksum: bool = True) -> Manifest:
    """Validate a parsed manifest document and return a :class:`Manifest`.

    Raises
    ------
    ManifestError
        Naming ``origin``, the offending field (e.g. ``splits.train[3].label``) and its value.
    """
    if not isinstance(doc, dict):
        raise ManifestError(f"{origin}: expected a mapping at the top level, got {type(doc).__name__}")
    missing = [k for k in _REQUIRED if k not in doc]
    if missing:
        raise ManifestError(f"{origin}: missing required field(s) {', '.join(repr(k) for k in missing)}; "
                            f"a manifest needs {', '.join(_REQUIRED)} (see docs/datasets.md)")
    unknown = sorted(set(doc) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ManifestError(f"{origin}: unknown field(s) {unknown}; allowed: {sorted(_REQUIRED + _OPTIONAL)}")
    if doc.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        _fail(origin, "schema_version", f"must be {SCHEMA_VERSION}, got {doc['schema_version']!r}")
    name = _check_str(doc, origin, "name", pattern=_NAME_RE)
    source, licence = _check_str(doc, origin, "source"), _check_str(doc, origin, "licence")
    image_root = _check_str(doc, origin, "image_root")
    description = doc.get("description") or ""
    if not isinstance(description, str):
        _fail(origin, "description", f"must be a string, got {description!r}")
    classnames = _check_str_list(doc, origin, "classnames")
    templates = _check_str_list(doc, origin, "templates")
    for i, t in enumerate(templates):
        if t.count("{}") != 1 or t.count("{") != 1 or t.count("}") != 1:
            _fail(origin, f"templates[{i}]", f'must contain "{{}}" exactly once and no other braces, got {t!r}')
    raw = doc["splits"]
    if not isinstance(raw, dict) or not raw:
        _fail(origin, "splits", f"must be a non-empty mapping split name -> entries, got {raw!r:.80}")
    splits, canon = {}, {}
    for split, entries in raw.items():
        if not isinstance(split, str) or not split:
            _fail(origin, "splits", f"split names must be non-empty strings, got {split!r}")
        splits[split], canon[split] = _parse_split(origin, split, entries, classnames)
    counts = sum(np.bincount(s.labels, minlength=len(classnames)) for s in splits.values())
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        c = int(empty[0])
        more = f" ({len(empty) - 1} more empty classes)" if len(empty) > 1 else ""
        _fail(origin, f"classnames[{c}]", f"empty class {classnames[c]!r}: no image of label {c} in any split{more}")
    checksum = doc["splits_sha256"]
    if not isinstance(checksum, str) or not _SHA_RE.match(checksum):
        _fail(origin, "splits_sha256", f"must be 64 lowercase hex digits (sha256), got {checksum!r}")
    if verify_checksum:
        actual = splits_checksum(canon)
        if actual != checksum:
            _fail(origin, "splits_sha256", f"checksum mismatch: the file says {checksum} but the split lists "
                  f"hash to {actual}; the lists changed since the manifest was built (rebuild it, or "
                  "restore the original lists)")
    return Manifest(name=name, image_root=image_root, classnames=classnames, templates=templates, splits=splits,
                    source=source, licence=licence, checksum=checksum, description=description,
                    origin=str(origin), base_dir=None if base_dir is None else str(base_dir))


def load_manifest(path, *, image_root=None, verify_checksum: bool = True) -> Manifest:
    """Read and validate a manifest file (``.json``, or ``.yaml``/``.yml`` via ``yaml.safe_load``).

    Parameters
    ----------
    path : str or os.PathLike
        The manifest file.
    image_root : str or os.PathLike, optional
        Read images from here instead of the manifest's ``image_root`` (may hold ``${VAR}``).
    verify_checksum : bool, default True
        Recompute the split lists' sha256 and compare it with ``splits_sha256``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ManifestError(f"{path}: cannot read manifest: {err}") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            doc = yaml.safe_load(text)
        elif path.suffix.lower() == ".json":
            doc = json.loads(text)
        else:
            raise ManifestError(f"{path}: manifests must end in .json, .yaml or .yml")
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ManifestError(f"{path}: not valid {path.suffix[1:].upper()}: {err}") from None
    manifest = manifest_from_dict(doc, origin=path, base_dir=path.resolve().parent, verify_checksum=verify_checksum)
    return manifest if image_root is None else manifest.with_image_root(image_root)


def save_manifest(manifest: Manifest, path) -> Path:
    """Write ``manifest`` to ``path`` (``.json``: one entry per line; ``.yaml``/``.yml``), atomically."""
    path = Path(path)
    doc = manifest.to_dict()
    if path.suffix.lower() in (".yaml", ".yml"):
        text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120)
    elif path.suffix.lower() == ".json":  # readable and diff-friendly: one entry per line
        splits, checksum = doc.pop("splits"), doc.pop("splits_sha256")
        lines = ["{"] + [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in doc.items()]
        lines.append('  "splits": {')
        for j, (split, entries) in enumerate(splits.items()):
            lines.append(f"    {json.dumps(split)}: [")
            lines.append(",\n".join("      " + json.dumps(e, ensure_ascii=False) for e in entries))
            lines.append("    ]" + ("," if j < len(splits) - 1 else ""))
        lines += ["  },", f'  "splits_sha256": {json.dumps(checksum)}', "}"]
        text = "\n".join(lines) + "\n"
    else:
        raise ValueError(f"manifest file names must end in .json, .yaml or .yml, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def make_manifest(name: str, image_root, classnames: Sequence[str], splits: Mapping[str, Iterable],
                  *, templates: Sequence[str] = DEFAULT_TEMPLATES, source: str, licence: str,
                  description: str = "", origin="<builder>") -> Manifest:
    """Build a validated manifest from ``splits = {split: [(path, label), ...]}`` (class names filled in)."""
    classnames = [str(c) for c in classnames]
    doc_splits = {}
    for s, pairs in splits.items():
        rows = []
        for path, label in pairs:
            label = int(label)
            rows.append([path, label, classnames[label] if 0 <= label < len(classnames) else None])
        doc_splits[s] = rows
    doc = {"schema_version": SCHEMA_VERSION, "name": name, "description": description, "source": source,
           "licence": licence, "image_root": os.fspath(image_root), "classnames": classnames,
           "templates": list(templates), "splits": doc_splits, "splits_sha256": "0" * 64}
    manifest = manifest_from_dict(doc, origin=origin, verify_checksum=False)
    return replace(manifest, checksum=splits_checksum(manifest.to_dict()["splits"]))


# ----------------------------------------------------------------------------- names and templates
def _datasets_json(file: str) -> dict:
    with open(DATASETS_DIR / file, encoding="utf-8") as fh:
        return {k: v for k, v in json.load(fh).items() if not k.startswith("_")}


def class_names(dataset: str) -> list[str]:
    """Shipped class names of ``dataset`` (``workbench/datasets/classnames.json``), in label order."""
    table = _datasets_json("classnames.json")
    if dataset not in table:
        raise KeyError(f"no shipped class names for {dataset!r} (shipped: {sorted(table)}); large label sets "
                       "(ImageNet, SUN397, Cars, Aircraft, UCF101, Caltech101) come from your own split files")
    return list(table[dataset])


def prompt_templates(dataset: str) -> list[str]:
    """Prompt templates of ``dataset`` (``workbench/datasets/templates.json``)."""
    table = _datasets_json("templates.json")
    if dataset not in table:
        raise KeyError(f"no templates for {dataset!r}; known: {sorted(table)}")
    return list(table[dataset])


def read_wnid_classnames(path) -> dict[str, str]:
    """CoOp's ImageNet ``classnames.txt`` (lines ``n01440764 tench``) as an ordered dict wnid -> name."""
    path = expand_path(path, field="classnames_file")
    out = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ManifestError(f"{path}: cannot read class names file: {err}") from None
    for i, line in enumerate(lines, 1):
        if line.strip():
            wnid, _, name = line.strip().partition(" ")
            if not name.strip():
                raise ManifestError(f"{path} line {i}: expected '<folder> <class name>', got {line!r}")
            out[wnid] = name.strip()
    return out


def _norm(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


# ----------------------------------------------------------------------------- builders
def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ManifestError(f"{what}: {path} is not a folder (nothing is downloaded here; see docs/datasets.md "
                            "for the expected layout)")
    return path


def _check_listed_files(root: Path, pairs_by_split: Mapping[str, list], origin) -> None:
    """Every listed file exists and stays inside ``root`` (symlinks resolved)."""
    root_real = os.path.realpath(root)
    missing, total = [], 0
    for split, pairs in pairs_by_split.items():
        for i, (path, _) in enumerate(pairs):
            total += 1
            full = os.path.join(root_real, path)
            if not _inside(os.path.realpath(full), root_real):
                _fail(origin, f"splits.{split}[{i}].path", f"{path!r} resolves to {os.path.realpath(full)}, "
                      f"outside the image root {root_real} (a symlink pointing out of the root?)", PathEscapeError)
            if not os.path.isfile(full):
                missing.append(path)
    if missing:
        raise ManifestError(f"{origin}: {len(missing)} of {total} listed images are missing under {root}, e.g. "
                            f"{missing[:3]}; check the folder layout (docs/datasets.md) or the image root")


def _classnames_from_rows(rows, origin, given=None) -> list[str]:
    """Class names from ``rows = [(label, classname or None, where)]`` or check them against ``given``."""
    named: dict[int, tuple[str, str]] = {}
    for label, name, where in rows:
        if name is None:
            continue
        if given is not None:
            if label < len(given) and name != given[label]:
                raise ManifestError(f"{where}: classname {name!r} does not match the given class name "
                                    f"{given[label]!r} of label {label} (label/class-name mismatch)")
        elif label in named and named[label][0] != name:
            raise ManifestError(f"{where}: label {label} is called {name!r} here but {named[label][0]!r} at "
                                f"{named[label][1]} (label/class-name mismatch)")
        named.setdefault(label, (name, where))
    if given is not None:
        return list(given)
    if not named:
        raise ManifestError(f"{origin}: no class names: add a 'classname' column or pass classnames=[...]")
    n = max(named) + 1
    absent = [c for c in range(n) if c not in named]
    if absent:
        raise ManifestError(f"{origin}: labels must run 0..{n - 1}, but label {absent[0]} never occurs "
                            "(empty class); pass classnames=[...] to name it")
    return [named[c][0] for c in range(n)]


def _as_label(value, where) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ManifestError(f"{where}: field 'label' must be a non-negative integer, got {value!r}")
    return value


def from_image_folder(root, *, name: str, splits: Mapping[str, str] | None = None, classnames=None,
                      folder_labels: str = "sorted", templates: Sequence[str] = DEFAULT_TEMPLATES,
                      source: str | None = None, licence: str = "unknown (user data)",
                      description: str = "") -> Manifest:
    """Manifest of an ImageFolder tree ``root/<split dir>/<class>/**/<image>``.

    Parameters
    ----------
    root : str or os.PathLike
        Image root, written into the manifest as given (``${WORKBENCH_DATA}/...`` stays portable).
    name : str
        Dataset name.
    splits : mapping, optional
        Split name -> folder under ``root`` holding one sub-folder per class; default
        ``{"all": "."}`` (``root/<class>/...`` is a single split called "all").
    classnames : list or mapping, optional
        Default: the folder names. A mapping folder -> name (e.g. from :func:`read_wnid_classnames`)
        renames them; a list gives the names by label.
    folder_labels : {"sorted", "int"}
        "sorted": label = rank of the folder among all class folders (torchvision's ImageFolder);
        "int": folders are named by their integer label (ImageNet-V2's ``0``..``999``).
    """
    root_path = _require_dir(expand_path(root, field="root"), f"from_image_folder(name={name!r})")
    splits = {"all": "."} if splits is None else dict(splits)
    if folder_labels not in ("sorted", "int"):
        raise ValueError(f"folder_labels must be 'sorted' or 'int', got {folder_labels!r}")
    per_split = {}
    for split, sub in splits.items():
        split_dir = _require_dir(root_path / sub, f"from_image_folder(name={name!r}) split {split!r}")
        per_split[split] = sorted(d.name for d in os.scandir(split_dir) if d.is_dir() and not d.name.startswith("."))
    folders = sorted(set().union(*per_split.values()))
    if not folders:
        raise ManifestError(f"from_image_folder: no class folders under {root_path} (splits {splits})")
    if folder_labels == "int":
        bad = [f for f in folders if not f.isdigit()]
        if bad:
            raise ManifestError(f"from_image_folder: folder_labels='int' needs integer folder names, got {bad[:3]}")
        label_of = {f: int(f) for f in folders}
    else:
        label_of = {f: i for i, f in enumerate(folders)}
    if classnames is None:
        if folder_labels == "int":
            raise ManifestError("from_image_folder: folder_labels='int' needs classnames=[...] (by label)")
        names = list(folders)
    elif isinstance(classnames, Mapping):
        # "int" folders are labels into the mapping's order (ImageNet-V2: 0..999 in classnames.txt order).
        unknown = [f for f in folders if f not in classnames] if folder_labels == "sorted" else \
            [f for f in folders if int(f) >= len(classnames)]
        if unknown:
            raise ManifestError(f"from_image_folder: class folders {unknown[:3]} have no entry in the class "
                                "names mapping")
        names = [classnames[f] for f in folders] if folder_labels == "sorted" else list(classnames.values())
    else:
        names = list(classnames)
        if folder_labels == "sorted" and len(names) != len(folders):
            raise ManifestError(f"from_image_folder: {len(names)} class names given for {len(folders)} class folders")
    pairs = {}
    root_real, origin = os.path.realpath(root_path), f"from_image_folder({root})"
    for split, sub in splits.items():
        rows = []
        for folder in per_split[split]:
            visited = set()
            for dirpath, dirnames, filenames in os.walk(root_path / sub / folder, followlinks=True):
                real_dir = os.path.realpath(dirpath)
                if real_dir in visited:  # a symlink loop
                    dirnames[:] = []
                    continue
                visited.add(real_dir)
                if not _inside(real_dir, root_real):
                    _fail(origin, f"splits.{split}", f"folder {dirpath} resolves to {real_dir}, outside the image "
                          f"root {root_real} (a symlink pointing out of the root?)", PathEscapeError)
                dirnames.sort()
                for fn in sorted(filenames):
                    if fn.lower().endswith(IMG_EXTENSIONS) and not fn.startswith("."):
                        full = os.path.join(dirpath, fn)
                        # only a symlinked file can leave a folder already known to be inside the root
                        rel = (_relative_file(root_path, full, origin, f"splits.{split}") if os.path.islink(full)
                               else os.path.relpath(full, root_path).replace(os.sep, "/"))
                        rows.append((rel, label_of[folder]))
        if not rows:
            raise ManifestError(f"from_image_folder: split {split!r} ({root_path / sub}) holds no images with "
                                f"extensions {IMG_EXTENSIONS}")
        pairs[split] = rows
    return make_manifest(name, os.fspath(root), names, pairs, templates=templates,
                         source=source or f"ImageFolder tree at {root}", licence=licence,
                         description=description, origin=f"from_image_folder({root})")


def _read_table(path: Path):
    """Rows ``(path, label, classname or None, where)`` of a CSV (with header) or JSONL file."""
    rows = []
    suffix = path.suffix.lower()
    try:
        fh = open(path, encoding="utf-8", newline="")
    except OSError as err:
        raise ManifestError(f"{path}: cannot read: {err}") from None
    with fh:
        if suffix in (".csv", ".tsv"):
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            cols = reader.fieldnames or []
            if "path" not in cols or "label" not in cols:
                raise ManifestError(f"{path}: the header must name columns 'path' and 'label' (and optionally "
                                    f"'classname'), got {cols}")
            for line, rec in enumerate(reader, 2):
                rows.append((rec["path"], rec["label"], rec.get("classname") or None, f"{path} line {line}"))
        elif suffix == ".jsonl":
            for line, text in enumerate(fh, 1):
                if not text.strip():
                    continue
                try:
                    rec = json.loads(text)
                except json.JSONDecodeError as err:
                    raise ManifestError(f"{path} line {line}: not valid JSON: {err}") from None
                if not isinstance(rec, dict) or "path" not in rec or "label" not in rec:
                    raise ManifestError(f"{path} line {line}: expected an object with 'path' and 'label', "
                                        f"got {text.strip()!r:.80}")
                rows.append((rec["path"], rec["label"], rec.get("classname"), f"{path} line {line}"))
        else:
            raise ManifestError(f"{path}: table files must end in .csv, .tsv or .jsonl")
    out = []
    for p, label, cname, where in rows:
        problem = _path_problem(p)
        if problem:
            raise problem[1](f"{where}: field 'path': {problem[0]}")
        out.append((p, _as_label(label, where), cname, where))
    return out


def from_table(files, *, name: str, image_root, classnames: Sequence[str] | None = None,
               templates: Sequence[str] = DEFAULT_TEMPLATES, source: str | None = None,
               licence: str = "unknown (user data)", description: str = "",
               check_files: bool = True) -> Manifest:
    """Manifest from CSV / TSV / JSONL tables with columns ``path, label[, classname]``.

    Parameters
    ----------
    files : path or mapping split -> path
        One table per split; a single path makes one split called "all".
    image_root : str or os.PathLike
        Folder the table's paths are relative to (``${VAR}`` allowed; written as given).
    classnames : list of str, optional
        Names by label; required when the tables have no ``classname`` column, otherwise checked
        against it.
    check_files : bool, default True
        Check that every listed image exists under the root (and no symlink leaves it).
    """
    files = {"all": files} if isinstance(files, (str, os.PathLike)) else dict(files)
    rows_by_split = {s: _read_table(expand_path(f, field=f"files.{s}")) for s, f in files.items()}
    all_rows = [(y, c, w) for rows in rows_by_split.values() for _, y, c, w in rows]
    names = _classnames_from_rows(all_rows, f"from_table({files})", classnames)
    pairs = {s: [(p, y) for p, y, _, _ in rows] for s, rows in rows_by_split.items()}
    origin = f"from_table({', '.join(str(f) for f in files.values())})"
    if check_files:
        _check_listed_files(expand_path(image_root), pairs, origin)
    return make_manifest(name, os.fspath(image_root), names, pairs, templates=templates,
                         source=source or f"tables {list(map(str, files.values()))}", licence=licence,
                         description=description, origin=origin)


def from_coop_split(split_file, *, name: str, image_root, classnames: Sequence[str] | None = None,
                    templates: Sequence[str] = DEFAULT_TEMPLATES, source: str | None = None,
                    licence: str = "see the dataset's source", description: str = "",
                    underscores_to_spaces: bool = True, check_files: bool = True) -> Manifest:
    """Manifest from a CoOp split file ``{"train": [[path, label, classname], ...], "val": ..., "test": ...}``.

    Parameters
    ----------
    split_file : str or os.PathLike
        E.g. ``${WORKBENCH_DATA}/caltech-101/split_zhou_Caltech101.json``; paths inside are
        relative to ``image_root``.
    classnames : list of str, optional
        Default: the names in the split file (with ``_`` -> space when ``underscores_to_spaces``,
        as CoOp does before prompting). When given, they must name the same classes in the same
        order (compared case-, '_'- and '-'-insensitively) and replace the file's names.
    """
    path = expand_path(split_file, field="split_file")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ManifestError(f"{path}: cannot read the CoOp split file ({err}); see docs/datasets.md for where "
                            "to get it") from None
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(doc, dict) or not doc or set(doc) - {"train", "val", "test"}:
        raise ManifestError(f"{path}: expected an object with keys 'train', 'val', 'test', got "
                            f"{sorted(doc) if isinstance(doc, dict) else type(doc).__name__}")
    rows, pairs = [], {}
    for split, entries in doc.items():
        if not isinstance(entries, list):
            raise ManifestError(f"{path}: field '{split}' must be a list of [path, label, classname]")
        pairs[split] = []
        for i, e in enumerate(entries):
            where = f"{path}: field '{split}[{i}]'"
            if not isinstance(e, list) or len(e) != 3 or not isinstance(e[2], str):
                raise ManifestError(f"{where}: expected [path, label, classname], got {e!r}")
            problem = _path_problem(e[0])
            if problem:
                raise problem[1](f"{where}.path: {problem[0]}")
            label = _as_label(e[1], where)
            rows.append((label, e[2].replace("_", " ") if underscores_to_spaces else e[2], where))
            pairs[split].append((e[0], label))
    from_file = _classnames_from_rows(rows, str(path))
    if classnames is not None:
        classnames = list(classnames)
        diffs = [(i, a, b) for i, (a, b) in enumerate(zip(from_file, classnames)) if _norm(a) != _norm(b)]
        if len(classnames) != len(from_file) or diffs:
            shown = "; ".join(f"label {i}: {a!r} in the file vs {b!r} given" for i, a, b in diffs[:3])
            raise ManifestError(f"{path}: the given class names do not match the split file ({len(classnames)} "
                                f"given, {len(from_file)} in the file; {shown or 'counts differ'}); pass "
                                "classnames=None to use the split file's names")
    names = classnames if classnames is not None else from_file
    if check_files:
        _check_listed_files(expand_path(image_root), pairs, str(path))
    return make_manifest(name, os.fspath(image_root), names, pairs, templates=templates,
                         source=source or f"CoOp split file {split_file}", licence=licence,
                         description=description, origin=str(path))


def from_fgvc_aircraft(root, *, name: str = "fgvc_aircraft", templates: Sequence[str] = DEFAULT_TEMPLATES,
                       source: str | None = None, licence: str = "non-commercial research use only",
                       description: str = "", check_files: bool = True) -> Manifest:
    """Manifest from FGVC-Aircraft's own files (CoOp's layout: the ``data/`` folder of fgvc-aircraft-2013b).

    Reads ``variants.txt`` (100 class names, label = line order) and
    ``images_variant_{train,val,test}.txt`` (lines ``<image id> <variant>``); images are
    ``images/<image id>.jpg``.
    """
    root_path = _require_dir(expand_path(root, field="root"), f"from_fgvc_aircraft({root})")
    try:
        names = [ln.strip() for ln in (root_path / "variants.txt").read_text().splitlines() if ln.strip()]
    except OSError as err:
        raise ManifestError(f"{root_path / 'variants.txt'}: cannot read the class names: {err}") from None
    label_of = {n: i for i, n in enumerate(names)}
    pairs = {}
    for split in ("train", "val", "test"):
        file = root_path / f"images_variant_{split}.txt"
        try:
            lines = file.read_text().splitlines()
        except OSError as err:
            raise ManifestError(f"{file}: cannot read the split list: {err}") from None
        pairs[split] = []
        for i, line in enumerate(lines, 1):
            if line.strip():
                image_id, _, variant = line.strip().partition(" ")
                if variant not in label_of:
                    raise ManifestError(f"{file} line {i}: unknown variant {variant!r} (not in variants.txt)")
                pairs[split].append((f"images/{image_id}.jpg", label_of[variant]))
    if check_files:
        _check_listed_files(root_path, pairs, f"from_fgvc_aircraft({root})")
    return make_manifest(name, os.fspath(root), names, pairs, templates=templates,
                         source=source or "FGVC-Aircraft annotation files (variants)", licence=licence,
                         description=description, origin=f"from_fgvc_aircraft({root})")


def _torchvision_samples(ds) -> list[tuple[str, int]]:
    if hasattr(ds, "samples"):  # ImageFolder / DatasetFolder subclasses (EuroSAT, ...)
        return [(str(p), int(y)) for p, y in ds.samples]
    if hasattr(ds, "_samples"):  # StanfordCars
        return [(str(p), int(y)) for p, y in ds._samples]
    for files in ("_image_files", "_images"):  # DTD, Flowers102, Food101, FGVCAircraft, SUN397, OxfordIIITPet
        if hasattr(ds, files) and hasattr(ds, "_labels"):
            return [(str(p), int(y)) for p, y in zip(getattr(ds, files), ds._labels)]
    if hasattr(ds, "categories") and hasattr(ds, "index") and hasattr(ds, "y"):  # Caltech101
        return [(os.path.join(ds.root, "101_ObjectCategories", ds.categories[y], f"image_{i:04d}.jpg"), int(y))
                for i, y in zip(ds.index, ds.y)]
    raise ManifestError(f"from_torchvision: cannot list the image files of {type(ds).__name__}; use "
                        "from_image_folder or from_table instead")


def from_torchvision(dataset, root, splits: Mapping[str, Mapping] | None = None, *, name: str | None = None,
                     classnames: Sequence[str] | None = None, templates: Sequence[str] = DEFAULT_TEMPLATES,
                     source: str | None = None, licence: str = "see the dataset's source",
                     description: str = "") -> Manifest:
    """Manifest of an already-downloaded torchvision dataset (it is constructed with ``download=False``).

    Parameters
    ----------
    dataset : str or type
        A class of ``torchvision.datasets`` or its name, e.g. ``"DTD"``, ``"EuroSAT"``, ``"Food101"``.
    root : str or os.PathLike
        The ``root`` it was downloaded to; becomes the manifest's image root.
    splits : mapping, optional
        Split name -> constructor keyword arguments, e.g. ``{"train": {"split": "train"},
        "test": {"split": "test"}}``; default ``{"test": {}}``.
    classnames : list of str, optional
        Default: the dataset's ``classes`` (``categories`` for Caltech101).

    Raises
    ------
    ManifestError
        If ``root`` is missing or torchvision finds no data there (never downloads, never waits).
    """
    import torchvision.datasets

    cls = getattr(torchvision.datasets, dataset, None) if isinstance(dataset, str) else dataset
    if not isinstance(cls, type):
        raise ManifestError(f"from_torchvision: torchvision.datasets has no dataset class {dataset!r}")
    root_path = _require_dir(expand_path(root, field="root"), f"from_torchvision({cls.__name__})")
    splits = {"test": {}} if splits is None else dict(splits)
    pairs, names = {}, None
    for split, kwargs in splits.items():
        try:
            ds = cls(root=str(root_path), download=False, **dict(kwargs))
        except (RuntimeError, OSError, ValueError) as err:
            raise ManifestError(f"from_torchvision: torchvision.datasets.{cls.__name__}(root={str(root_path)!r}, "
                                f"**{dict(kwargs)}) found no usable data: {err} (this builder never downloads; "
                                "download it with torchvision yourself first)") from None
        found = list(getattr(ds, "classes", None) or getattr(ds, "categories", None) or [])
        if names is not None and found != names:
            raise ManifestError(f"from_torchvision: split {split!r} of {cls.__name__} has other classes than "
                                "the first split")
        names = found
        pairs[split] = [(_relative_file(root_path, p, f"from_torchvision({cls.__name__})", f"splits.{split}"), y)
                        for p, y in _torchvision_samples(ds)]
    names = list(classnames) if classnames is not None else [str(n) for n in names]
    return make_manifest(name or cls.__name__.lower(), os.fspath(root), names, pairs, templates=templates,
                         source=source or f"torchvision.datasets.{cls.__name__}", licence=licence,
                         description=description, origin=f"from_torchvision({cls.__name__}, {root})")


# ----------------------------------------------------------------------------- benchmark specs
_SPEC_KEYS = {"name", "title", "description", "source", "licence", "root", "builder", "args", "classnames",
              "classnames_file", "templates", "layout"}
_BUILDER_ARGS = {"coop_split": {"split_file", "image_dir"}, "image_folder": {"image_dir", "splits", "folder_labels"},
                 "fgvc_aircraft": set()}


def list_specs() -> list[str]:
    """Names of the benchmark dataset specs in ``data_manifests/benchmarks/``."""
    return sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))


def load_spec(spec) -> dict:
    """Read and check a benchmark spec, by name (``"caltech101"``) or path."""
    path = Path(spec) if str(spec).endswith((".yaml", ".yml")) else SPEC_DIR / f"{spec}.yaml"
    if not path.is_file():
        raise ManifestError(f"unknown dataset spec {spec!r}; known: {', '.join(list_specs())}")
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise ManifestError(f"{path}: expected a mapping at the top level")
    missing = sorted({"name", "source", "licence", "root", "builder", "templates"} - set(doc))
    unknown = sorted(set(doc) - _SPEC_KEYS)
    if missing or unknown:
        raise ManifestError(f"{path}: missing fields {missing}, unknown fields {unknown}")
    if doc["builder"] not in _BUILDER_ARGS:
        _fail(path, "builder", f"must be one of {sorted(_BUILDER_ARGS)}, got {doc['builder']!r}")
    args = doc.get("args") or {}
    bad = sorted(set(args) - _BUILDER_ARGS[doc["builder"]])
    if bad:
        _fail(path, "args", f"unknown arguments {bad} for builder {doc['builder']!r}")
    need = {"coop_split": {"split_file"}, "image_folder": {"splits"}}.get(doc["builder"], set()) - set(args)
    if need:
        _fail(path, "args", f"builder {doc['builder']!r} needs {sorted(need)}")
    if "classnames" in doc and "classnames_file" in doc:
        _fail(path, "classnames", "give either classnames (a key of classnames.json) or classnames_file, not both")
    return doc


def build_from_spec(spec, *, root=None, out=None, classnames=None) -> Manifest:
    """Build the manifest a benchmark spec describes, from the user's files; optionally save it.

    Parameters
    ----------
    spec : str or os.PathLike
        Spec name (``"caltech101"``, see :func:`list_specs`) or path.
    root : str or os.PathLike, optional
        Dataset folder; default the spec's ``root`` (e.g. ``${WORKBENCH_DATA}/caltech-101``).
    out : str or os.PathLike, optional
        A ``.json``/``.yaml`` file, or a folder to write ``<name>.json`` into.
    classnames : "dataset" or list of str, optional
        Override the spec's class names; ``"dataset"`` takes them from the dataset's own files.
    """
    doc = load_spec(spec)
    root = os.fspath(root) if root is not None else doc["root"]
    args = dict(doc.get("args") or {})
    join = lambda sub: root if sub in (None, "", ".") else f"{root.rstrip('/')}/{sub}"  # noqa: E731
    names = classnames
    if names is None and "classnames" in doc:
        names = class_names(doc["classnames"])
    elif names is None and "classnames_file" in doc:
        file = doc["classnames_file"]
        names = read_wnid_classnames(file if file.startswith(("$", "~", "/")) else join(file))
    names = None if isinstance(names, str) and names == "dataset" else names
    common = dict(name=doc["name"], templates=prompt_templates(doc["templates"]), source=doc["source"].strip(),
                  licence=doc["licence"].strip(), description=(doc.get("description") or "").strip())
    if doc["builder"] == "coop_split":
        if isinstance(names, Mapping):
            names = list(names.values())
        manifest = from_coop_split(join(args["split_file"]), image_root=join(args.get("image_dir")),
                                   classnames=names, **common)
    elif doc["builder"] == "image_folder":
        manifest = from_image_folder(join(args.get("image_dir")), splits=args.get("splits"), classnames=names,
                                     folder_labels=args.get("folder_labels", "sorted"), **common)
    else:
        manifest = from_fgvc_aircraft(root, **common)
    if out is not None:
        out = Path(out)
        is_file = out.suffix.lower() in (".json", ".yaml", ".yml")
        save_manifest(manifest, out if is_file else out / f"{manifest.name}.json")
    return manifest


# ----------------------------------------------------------------------------- protocol
@dataclass(frozen=True, eq=False)
class ClassSubset:
    """A subset of a manifest's classes, relabelled ``0..n-1`` in the order of ``classes``."""

    name: str  # "base", "new" or "all"
    classes: np.ndarray  # original labels, sorted; position = new label
    classnames: tuple[str, ...]  # names in new-label order

    @property
    def mapping(self) -> dict[int, int]:
        """Original label -> new label."""
        return {int(c): i for i, c in enumerate(self.classes.tolist())}

    def relabel(self, labels) -> np.ndarray:
        """Original labels -> ``0..n-1``; every label must belong to the subset."""
        labels = np.asarray(labels, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.classes, labels), 0, len(self.classes) - 1)
        bad = self.classes[pos] != labels
        if bad.any():
            raise ValueError(f"label {int(labels[bad][0])} is not one of the {self.name} classes "
                             f"{self.classes.tolist()}")
        return pos.astype(np.int64)

    def original(self, labels) -> np.ndarray:
        """New labels ``0..n-1`` -> original labels."""
        return self.classes[np.asarray(labels, dtype=np.int64)]


def _subset(manifest: Manifest, name: str, classes) -> ClassSubset:
    classes = np.asarray(classes, dtype=np.int64)
    classes.setflags(write=False)
    return ClassSubset(name, classes, tuple(manifest.classnames[c] for c in classes.tolist()))


def all_classes(manifest: Manifest) -> ClassSubset:
    return _subset(manifest, "all", np.arange(manifest.num_classes))


def base_new_classes(manifest: Manifest) -> tuple[ClassSubset, ClassSubset]:
    """Base (first ``ceil(C/2)`` labels) and new classes, each relabelled from 0 (CoOp's protocol)."""
    base, new = base_new_split(manifest.num_classes)
    return _subset(manifest, "base", base), _subset(manifest, "new", new)


def indices_of_classes(manifest: Manifest, split: str, classes) -> np.ndarray:
    """Indices of the samples of ``split`` whose label is in ``classes`` (labels or a ClassSubset)."""
    classes = classes.classes if isinstance(classes, ClassSubset) else np.asarray(classes)
    return np.flatnonzero(np.isin(manifest.split(split).labels, classes)).astype(np.int64)


def _cache_file(cache_dir, manifest: Manifest, split: str, shots: int, seed: int) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", split)
    return Path(cache_dir) / f"{manifest.name}-{manifest.checksum[:16]}-{safe}-{shots}shot-seed{seed}.json"


def _read_cache(file: Path, manifest: Manifest, split: str, shots: int, seed: int, n: int):
    try:
        doc = json.loads(file.read_text())
        ok = (doc["splits_sha256"] == manifest.checksum and doc["split"] == split and doc["shots"] == shots
              and doc["seed"] == seed)
        idx = np.asarray(doc["indices"], dtype=np.int64)
        if ok and idx.ndim == 1 and (len(idx) == 0 or (idx.min() >= 0 and idx.max() < n)):
            return idx
        logger.warning("ignoring few-shot cache %s: it does not match manifest %s", file, manifest.name)
    except (OSError, ValueError, KeyError, TypeError) as err:
        logger.warning("ignoring unreadable few-shot cache %s: %s", file, err)
    return None


def few_shot(manifest: Manifest, shots, seed: int = 0, *, split: str = "train", classes=None,
             cache_dir=None) -> np.ndarray:
    """K images per class of ``split``, seeded, as sorted indices into that split.

    The draw covers all classes (per-class generators, :func:`workbench.protocol.few_shot_indices`)
    and is then restricted to ``classes``, so the base classes' shots are exactly those of the
    full K-shot set, as in CoOp.

    Parameters
    ----------
    shots : int or "all"
        K; the benchmark uses 1, 2, 4, 8, 16 (:data:`STANDARD_SHOTS`). "all" keeps every image.
    seed : int, default 0
        Non-negative seed.
    classes : ClassSubset or array of labels, optional
        Keep only these classes (e.g. the base classes).
    cache_dir : str or os.PathLike, optional
        Folder for ``<name>-<checksum16>-<split>-<K>shot-seed<seed>.json`` files: the first call
        writes the indices, later calls read them (a file that does not match is recomputed).

    Raises
    ------
    ValueError
        If K exceeds the size of the smallest class of the split (the message names the class).
    """
    labels = manifest.split(split).labels
    if isinstance(shots, str) and shots == "all":
        idx = np.arange(len(labels), dtype=np.int64)
    else:
        if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots <= 0:
            raise ValueError(f"shots must be a positive int or 'all', got {shots!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        shots, seed = int(shots), int(seed)
        counts = np.bincount(labels, minlength=manifest.num_classes)
        if counts.min() < shots:
            c = int(counts.argmin())
            raise ValueError(f"K={shots} shots exceeds the smallest class of split '{split}' in manifest "
                             f"'{manifest.name}': class {c} ({manifest.classnames[c]!r}) has {counts[c]} images; "
                             f"use K <= {counts.min()}")
        file = None if cache_dir is None else _cache_file(cache_dir, manifest, split, shots, seed)
        idx = _read_cache(file, manifest, split, shots, seed, len(labels)) if file and file.is_file() else None
        if idx is None:
            idx = few_shot_indices(labels, shots, seed)
            if file is not None:
                write_json(file, {"manifest": manifest.name, "splits_sha256": manifest.checksum, "split": split,
                                  "shots": shots, "seed": seed, "indices": idx.tolist()})
    if classes is not None:
        keep = classes.classes if isinstance(classes, ClassSubset) else np.asarray(classes)
        idx = idx[np.isin(labels[idx], keep)]
    return idx


def distillation_indices(manifest: Manifest, setting: str = "inductive", *, split: str = "train") -> np.ndarray:
    """Training images a distillation run may see, as indices into ``split``.

    "inductive": the base classes' images only (new classes stay unseen); "transductive": the
    images of all classes, to be used *without labels* (build the dataset with ``unlabeled=True``),
    as PromptKD's unlabeled-domain setting does.
    """
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    if setting == "transductive":
        return np.arange(len(manifest.split(split)), dtype=np.int64)
    base, _ = base_new_classes(manifest)
    return indices_of_classes(manifest, split, base)


@dataclass(frozen=True)
class EvaluationSets:
    """A transfer protocol: train on ``source``, evaluate on each target's ``split``."""

    kind: str  # "base_to_new", "cross_dataset" or "domain_generalization"
    source: str | None  # dataset trained on (None for base_to_new: each dataset is its own source)
    targets: tuple[str, ...]  # datasets evaluated (spec / manifest names)
    split: str = "test"


def evaluation_sets(kind: str) -> EvaluationSets:
    """The dataset lists of ``data_manifests/evaluation_sets.yaml``."""
    doc = yaml.safe_load(EVALUATION_SETS_FILE.read_text(encoding="utf-8"))
    if kind not in doc:
        raise ValueError(f"unknown evaluation kind {kind!r}; known: {sorted(doc)}")
    entry = doc[kind]
    if isinstance(entry, list):
        return EvaluationSets(kind, None, tuple(entry))
    return EvaluationSets(kind, entry["source"], tuple(entry["targets"]), entry.get("split", "test"))


def load_evaluation_manifests(kind: str, manifest_dir) -> dict[str, Manifest]:
    """``{name: Manifest}`` for the source and targets of ``kind``, from ``<manifest_dir>/<name>.json``."""
    sets = evaluation_sets(kind)
    out = {}
    for name in ((sets.source,) if sets.source else ()) + sets.targets:
        file = Path(manifest_dir) / f"{name}.json"
        if not file.is_file():
            raise ManifestError(f"{file}: no manifest for {name!r}; build it with "
                                f"workbench.data.build_from_spec({name!r}, out={str(manifest_dir)!r})")
        out[name] = load_manifest(file)
    return out


# ----------------------------------------------------------------------------- loading
def _to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB image -> float tensor (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)


class ManifestDataset(Dataset):
    """Images of one manifest split as ``(image, label, index)``.

    Parameters
    ----------
    manifest : Manifest
    split : str, default "test"
    transform : callable, optional
        PIL RGB image -> tensor (e.g. open_clip's preprocess); default: float tensor in [0, 1].
    indices : array of int, optional
        Indices into the split (e.g. from :func:`few_shot`); default all (of ``classes``).
    classes : ClassSubset, optional
        Return labels relabelled to this subset (base / new); indices default to its images.
    unlabeled : bool, default False
        Return label -1 (transductive training must not see labels).
    on_error : {"error", "skip"}, default "error"
        A missing or undecodable image raises :class:`ImageReadError` naming the file, or is
        skipped: the item becomes ``None`` (dropped by :func:`collate_skipping`), a warning names
        the file, and :attr:`skipped` counts it across loader workers. A path leaving the image
        root always raises :class:`PathEscapeError`.
    image_root : str or os.PathLike, optional
        Override the manifest's image root.

    ``index`` in each item is the position in the manifest split, whatever the subset.
    """

    def __init__(self, manifest: Manifest, split: str = "test", transform=None, *, indices=None,
                 classes: ClassSubset | None = None, unlabeled: bool = False, on_error: str = "error",
                 image_root=None):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        entries = manifest.split(split)
        root = manifest.root() if image_root is None else expand_path(image_root)
        if not root.is_dir():
            raise FileNotFoundError(f"image root {root} of manifest '{manifest.name}' ({manifest.origin}) is not "
                                    "a folder; set the data location (e.g. WORKBENCH_DATA) or pass image_root=...")
        if indices is None:
            indices = np.arange(len(entries)) if classes is None else indices_of_classes(manifest, split, classes)
        indices = np.asarray(indices, dtype=np.int64)
        if indices.ndim != 1 or (len(indices) and (indices.min() < 0 or indices.max() >= len(entries))):
            raise ValueError(f"indices must be 1-D and within 0..{len(entries) - 1} for split {split!r}")
        labels = entries.labels[indices]
        self.manifest, self.split, self.transform = manifest, split, transform
        self.indices = indices
        self.labels = classes.relabel(labels) if classes is not None else labels.copy()
        self.classnames = classes.classnames if classes is not None else manifest.classnames
        self.unlabeled, self.on_error = unlabeled, on_error
        self.root = os.path.realpath(root)
        self._paths = entries.paths
        self._skips = torch.zeros(_MAX_WORKER_SLOTS + 1, dtype=torch.int64).share_memory_()
        self.skipped_paths: list[str] = []  # files skipped in this process (workers keep their own)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def skipped(self) -> int:
        """How many unreadable images were skipped so far, over all loader workers."""
        return int(self._skips.sum())

    def _file(self, index: int) -> str:
        full = os.path.join(self.root, self._paths[index])
        real = os.path.realpath(full)
        if not _inside(real, self.root):
            _fail(self.manifest.origin, f"splits.{self.split}[{index}].path", f"{self._paths[index]!r} resolves "
                  f"to {real}, outside the image root {self.root} (a symlink pointing out of the root?)",
                  PathEscapeError)
        return full

    def __getitem__(self, i: int):
        index = int(self.indices[i])
        path = self._file(index)
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            if self.on_error == "error":
                raise ImageReadError(f"cannot read image {path} (manifest '{self.manifest.name}', split "
                                     f"'{self.split}', index {index}): {err}") from err
            info = get_worker_info()
            self._skips[0 if info is None else 1 + info.id % _MAX_WORKER_SLOTS] += 1
            self.skipped_paths.append(path)
            logger.warning("skipping unreadable image %s: %s", path, err)
            return None
        image = self.transform(image) if self.transform is not None else _to_tensor(image)
        return image, -1 if self.unlabeled else int(self.labels[i]), index


def collate_skipping(batch):
    """``default_collate`` without the ``None`` items of skipped images; ``None`` if all were skipped."""
    batch = [b for b in batch if b is not None]
    return default_collate(batch) if batch else None


def make_loader(dataset, batch_size: int, device="cpu", *, workers: int = 0, shuffle: bool = False,
                drop_last: bool = False, seed: int | None = None, collate_fn=None) -> DataLoader:
    """A ``DataLoader`` with pinned memory on CUDA and persistent workers when ``workers > 0``.

    Parameters
    ----------
    batch_size : int
        > 0.
    device : str or torch.device, default "cpu"
        Where batches will go; "cuda" turns on ``pin_memory``.
    workers : int, default 0
        Loader processes; > 0 keeps them alive across epochs (``persistent_workers``).
    shuffle : bool, default False
    seed : int, optional
        Seeds the shuffling (and the workers' base seed) for reproducible order.
    collate_fn : callable, optional
        Default: :func:`collate_skipping` for datasets with ``on_error="skip"`` (a batch whose
        images were all skipped comes out as ``None``), else ``default_collate``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a non-negative int, got {workers!r}")
    if collate_fn is None:
        collate_fn = collate_skipping if getattr(dataset, "on_error", "error") == "skip" else default_collate
    generator = None if seed is None else torch.Generator().manual_seed(int(seed))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=workers,
                      pin_memory=torch.device(device).type == "cuda", persistent_workers=workers > 0,
                      collate_fn=collate_fn, generator=generator)
