"""The world on disk: splits saved as ``images.npy`` + ``samples.csv`` + ``meta.json``, built once per
seed and sizes and reused while the generator's fingerprint matches.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .render import WorldSplit, generate_domain, generate_split
from .spec import WorldSpec


_FORMAT_VERSION = 1
_FILES = ("images.npy", "samples.csv", "meta.json")
_COLUMNS = ("index", "label", "class_name", "caption", "ambiguity", "partner", "ambiguity_kind")


def save_split(split: WorldSplit, directory: str | os.PathLike) -> None:
    """Write ``images.npy``, ``samples.csv`` (one row per sample) and ``meta.json`` to ``directory``.

    Files go to a temporary sibling directory that is renamed into place at the end, so a crash
    leaves either the old split or the new one, never half of one.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    from ..runs import umask_mode
    os.chmod(tmp, umask_mode(directory=True))  # mkdtemp's 0700 would outlive the rename
    try:
        np.save(tmp / "images.npy", split.images, allow_pickle=False)
        with open(tmp / "samples.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(_COLUMNS + tuple(split.factors))
            for i in range(len(split)):
                # repr() of a float32 widened to float64 parses back to the very same float32.
                row = [i, int(split.labels[i]), split.class_names[split.labels[i]], split.captions[i],
                       repr(float(split.ambiguity[i])), int(split.partner[i]), split.ambiguity_kind[i]]
                for values in split.factors.values():
                    v = values[i]
                    row.append(int(v) if values.dtype == bool else repr(float(v)) if values.dtype.kind == "f" else v)
                writer.writerow(row)
        meta = {"format_version": _FORMAT_VERSION, "num_samples": len(split), "class_names": split.class_names,
                "factor_dtypes": {k: v.dtype.str for k, v in split.factors.items()}, "provenance": split.meta}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        old = None
        if directory.exists():  # rename() cannot replace a non-empty directory: move it aside first
            old = directory.parent / f".{directory.name}.old-{os.getpid()}"
            directory.rename(old)
        tmp.rename(directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_split_meta(directory: str | os.PathLike) -> dict:
    """The ``meta.json`` of a saved split (cheap: images and rows are not read)."""
    path = Path(directory) / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: {directory} is not a saved world split") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is corrupt: {err}") from None
    if not isinstance(meta, dict) or meta.get("format_version") != _FORMAT_VERSION:
        raise ValueError(f"{path}: expected format_version {_FORMAT_VERSION}, got {meta!r:.200}")
    return meta


def load_split(directory: str | os.PathLike) -> WorldSplit:
    """Read a split written by :func:`save_split`.

    Raises
    ------
    FileNotFoundError
        If one of ``images.npy``, ``samples.csv``, ``meta.json`` is missing.
    ValueError
        If a file is corrupt or the files disagree with each other.
    """
    directory = Path(directory)
    missing = [name for name in _FILES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not a saved world split: missing {', '.join(missing)}")
    meta = read_split_meta(directory)
    try:
        n, dtypes, names = int(meta["num_samples"]), meta["factor_dtypes"], list(meta["class_names"])
        images = np.load(directory / "images.npy", allow_pickle=False)
        with open(directory / "samples.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        header, rows = rows[0], rows[1:]
        if tuple(header) != _COLUMNS + tuple(dtypes):
            raise ValueError(f"samples.csv columns {header} do not match meta.json")
        if len(rows) != n or images.shape[0] != n or images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"expected {n} rows and uint8 images (N, S, S, 3); got {len(rows)} rows, "
                             f"images {images.dtype} {images.shape}")
        cols = list(zip(*rows)) if rows else [()] * len(header)
        labels, partner = np.array(cols[1], dtype=np.int64), np.array(cols[5], dtype=np.int64)
        if np.any((labels < 0) | (labels >= len(names))) or np.any((partner < -1) | (partner >= len(names))):
            raise ValueError(f"labels or partners outside 0..{len(names) - 1}")
        factors = {}
        for name, col, dtype in zip(dtypes, cols[len(_COLUMNS):], dtypes.values()):
            dtype = np.dtype(dtype)
            raw = np.array(col, dtype=str)
            factors[name] = (raw.astype(np.int64).astype(bool) if dtype == bool else
                             raw.astype(np.float64).astype(dtype) if dtype.kind == "f" else raw.astype(dtype))
        return WorldSplit(images, labels, list(cols[3]), np.array(cols[4], dtype=np.float64).astype(np.float32),
                          partner, list(cols[6]), factors, names, dict(meta.get("provenance", {})))
    except (ValueError, KeyError, TypeError, IndexError, OSError, EOFError) as err:
        raise ValueError(f"{directory}: corrupt world split ({err})") from None


def world_dir(spec: WorldSpec, root: str | os.PathLike, seed: int) -> Path:
    """The folder of one world (spec and seed) under the cache ``root``: its splits and test domains live there."""
    return Path(root) / f"{spec.fingerprint()}-seed{seed}"


def build_world(spec: WorldSpec, root: str | os.PathLike, seed: int, sizes: dict[str, int]) -> dict[str, WorldSplit]:
    """Materialize splits under ``root/<fingerprint>-seed<seed>/<split>/`` and return them.

    A split already on disk is reused when its meta (spec fingerprint, seed, split name, size)
    matches; otherwise (absent, different or corrupt) it is generated and saved.

    Parameters
    ----------
    spec : WorldSpec
        The world's parameters.
    root : str or os.PathLike
        Cache directory, created if needed.
    seed : int
        Non-negative seed shared by all splits (each split still gets its own stream).
    sizes : dict[str, int]
        Split name -> number of samples, e.g. ``{"train": 20000, "val": 2000}``.
    """
    base = world_dir(spec, root, seed)
    wanted = {"spec_fingerprint": spec.fingerprint(), "seed": seed}
    return {name: _load_or_generate(base / name, {**wanted, "split": name}, size,
                                    lambda name=name, size=size: generate_split(spec, name, size, seed))
            for name, size in sizes.items()}


def build_domains(spec: WorldSpec, root: str | os.PathLike, seed: int, num_samples: int,
                  domains: list[str] | None = None, split: str = "test") -> dict[str, WorldSplit]:
    """Materialize test domains (default: all of ``spec.domains``) next to the world's splits, as ``<split>@<domain>``.

    Each domain repeats the first ``num_samples`` samples of ``split`` under its shift (:func:`generate_domain`).
    """
    domains = sorted(spec.domains) if domains is None else list(domains)
    for name in domains:
        spec.domain(name)  # an unknown name fails here, before anything is written
    base = world_dir(spec, root, seed)
    out = {}
    for name in domains:
        wanted = {"spec_fingerprint": spec.domain(name).fingerprint(), "seed": seed, "split": split, "domain": name}
        out[name] = _load_or_generate(base / f"{split}@{name}", wanted, num_samples,
                                      lambda name=name: generate_domain(spec, name, num_samples, seed, split))
    return out


def _load_or_generate(directory: Path, provenance: dict, size: int, generate) -> WorldSplit:
    """The split saved in ``directory`` if its provenance and size match, else ``generate()`` saved there."""
    try:
        meta = read_split_meta(directory)
        if meta.get("provenance") == provenance and meta.get("num_samples") == size:
            return load_split(directory)
    except (FileNotFoundError, ValueError):
        pass  # absent or corrupt: regenerate below
    split = generate()
    save_split(split, directory)
    return split
