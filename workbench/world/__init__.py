"""The embedded world: a seeded, procedurally generated colour x shape image dataset.

Real CLIP weights and datasets are out of reach, so the workbench trains small CLIP models on this
world instead. Every class is "<colour> <shape>" (e.g. "red triangle"); images are rendered with
numpy from signed distance fields, under moderate nuisance (size, position, rotation, background,
texture, pixel noise, occlusion). A fraction of samples lies *between* two classes, with the mixing
weight recorded, so that calibration-style metrics have a ground truth to compare against.

The generator's parameters, prompt templates and caption templates are data:
``data_manifests/embedded_world.yaml``, read by :func:`load_world_spec`.
"""

from __future__ import annotations

from .spec import (  # noqa: F401
    Background, CAPTION_FIELDS, DEFAULT_MANIFEST, FACTOR_NAMES, GENERATOR_VERSION, STYLES, TEXTURES, WorldSpec,
    load_world_spec,
)
from .shapes import SHAPE_SDFS, SHAPE_SYMBOLS  # noqa: F401
from .render import (  # noqa: F401
    WorldSplit, generate_domain, generate_split,
)
from .storage import (  # noqa: F401
    build_domains, build_world, load_split, read_split_meta, save_split, world_dir,
)
