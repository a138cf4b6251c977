"""Manifests from what a user has on disk: an ImageFolder tree, a CSV/JSONL table, a CoOp split file,
the FGVC-Aircraft annotation files, an already-downloaded torchvision dataset. Nothing is downloaded.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from .manifest import (
    DEFAULT_TEMPLATES, IMG_EXTENSIONS, Manifest, ManifestError, PathEscapeError, _fail, _inside, _path_problem,
    _relative_file, expand_path, make_manifest,
)
from .names import _norm


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
