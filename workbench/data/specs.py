"""Benchmark build specs (``data_manifests/benchmarks/*.yaml``) and the transfer protocols' dataset lists
(``data_manifests/evaluation_sets.yaml``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import check_names
from .builders import from_coop_split, from_fgvc_aircraft, from_image_folder
from .manifest import EVALUATION_SETS_FILE, Manifest, ManifestError, SPEC_DIR, _fail, load_manifest, save_manifest
from .names import class_names, prompt_templates, read_wnid_classnames


_SPEC_KEYS = {"name", "title", "description", "source", "licence", "root", "builder", "args", "classnames",
              "classnames_file", "templates", "layout"}
_BUILDER_ARGS = {"coop_split": {"split_file", "image_dir"}, "image_folder": {"image_dir", "splits", "folder_labels"},
                 "fgvc_aircraft": set()}


def list_specs() -> list[str]:
    """Names of the benchmark dataset specs in ``data_manifests/benchmarks/``."""
    return sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))


def load_dataset_spec(spec) -> dict:
    """Read and check a benchmark spec, by name (``"caltech101"``) or path."""
    path = Path(spec) if str(spec).endswith((".yaml", ".yml")) else SPEC_DIR / f"{spec}.yaml"
    if not path.is_file():
        raise ManifestError(f"unknown dataset spec {spec!r}; known: {', '.join(list_specs())}")
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise ManifestError(f"{path}: expected a mapping at the top level")
    check_names(doc, sorted(_SPEC_KEYS), path, error=ManifestError, what="field")
    missing = sorted({"name", "source", "licence", "root", "builder", "templates"} - set(doc))
    if missing:
        raise ManifestError(f"{path}: missing fields {missing}")
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
    doc = load_dataset_spec(spec)
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
