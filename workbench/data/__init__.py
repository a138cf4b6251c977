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

from .manifest import (  # noqa: F401
    DATASETS_DIR, DEFAULT_TEMPLATES, EVALUATION_SETS_FILE, IMG_EXTENSIONS, ImageReadError, Manifest, ManifestError,
    ON_ERROR, PathEscapeError, SCHEMA_VERSION, SETTINGS, SPEC_DIR, STANDARD_SHOTS, SplitList,
    expand_path, load_manifest, make_manifest, manifest_from_dict, save_manifest, splits_checksum,
)
from .names import (  # noqa: F401
    class_names, prompt_templates, read_wnid_classnames,
)
from .builders import (  # noqa: F401
    from_coop_split, from_fgvc_aircraft, from_image_folder, from_table, from_torchvision,
)
from .specs import (  # noqa: F401
    EvaluationSets, build_from_spec, evaluation_sets, list_specs, load_dataset_spec, load_evaluation_manifests,
)
from .shots import (  # noqa: F401
    ClassSubset, all_classes, base_new_classes, distillation_indices, few_shot, indices_of_classes,
)
from .loaders import (  # noqa: F401
    ManifestDataset, collate_skipping, make_loader,
)
