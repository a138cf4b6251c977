"""Presets: run settings kept as data (``workbench/presets/*.yaml``) and loaded into dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from .recipes import DistillConfig
from .zoo import PretrainConfig

PRESET_DIR = Path(__file__).resolve().parent / "presets"


def load_preset(name: str) -> dict:
    """The parsed ``presets/<name>.yaml`` (YAML ``safe_load``: data only, nothing is evaluated)."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
        raise ValueError(f"unknown preset {name!r}; known presets: {known}")
    return yaml.safe_load(path.read_text())


@dataclass
class QuickstartConfig:
    """Every size and setting of the quickstart pipeline."""

    world_seed: int  # seed of the embedded world
    world_sizes: dict  # split name -> number of samples (pretrain, train, test)
    teacher: PretrainConfig  # how the teacher is pretrained
    student: PretrainConfig  # how the student is pretrained
    distill: DistillConfig  # inductive K-shot KD settings (AME weight is set per run)
    distill_transductive: DistillConfig  # KD on every unlabelled training image, over all classes
    figure_points: int  # test images drawn in the manifold figure
    domain_samples: int  # test samples rendered in each test domain

    @classmethod
    def load(cls, variant: str = "full") -> "QuickstartConfig":
        variants = load_preset("quickstart")
        if variant not in variants:
            raise ValueError(f"unknown quickstart variant {variant!r}; valid names: {', '.join(variants)}")
        data = dict(variants[variant])
        expected = {"world_seed", "world_sizes", "teacher", "student", "distill", "distill_transductive",
                    "figure_points", "domain_samples"}
        if set(data) != expected:
            raise ValueError(f"quickstart preset {variant!r} must have exactly the keys {sorted(expected)}, "
                             f"got {sorted(data)}")
        return cls(world_seed=data["world_seed"], world_sizes=data["world_sizes"],
                   teacher=PretrainConfig.from_dict(data["teacher"]),
                   student=PretrainConfig.from_dict(data["student"]),
                   distill=DistillConfig.from_dict(data["distill"]),
                   distill_transductive=DistillConfig.from_dict(data["distill_transductive"]),
                   figure_points=data["figure_points"], domain_samples=data["domain_samples"])
