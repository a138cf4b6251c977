"""Class names and prompt templates of the benchmark datasets (JSON files under ``workbench/datasets/``)."""

from __future__ import annotations

import json

from .manifest import DATASETS_DIR, ManifestError, expand_path


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
