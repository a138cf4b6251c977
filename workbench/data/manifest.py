"""The manifest: one dataset's images, splits, class names and templates as validated data.

Schema, checks and error types are described in :mod:`workbench.data`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import yaml

from ..config import DATA_MANIFESTS, check_names


logger = logging.getLogger(__name__)

SPEC_DIR = DATA_MANIFESTS / "benchmarks"  # one build spec per benchmark dataset
EVALUATION_SETS_FILE = DATA_MANIFESTS / "evaluation_sets.yaml"
DATASETS_DIR = Path(__file__).resolve().parents[1] / "datasets"  # class names and templates as JSON
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
    check_names(doc, _REQUIRED + _OPTIONAL, origin, error=ManifestError, what="field")
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
