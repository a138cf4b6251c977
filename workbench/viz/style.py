"""What every figure shares: what a map can be coloured by, the colours, and the check for optional
plotting packages.
"""

from __future__ import annotations

import importlib


# colour-by name -> (table column, colour scale or "categorical"); "split" is derived from labels
COLOUR_BY = {
    "class": ("label", "categorical"),
    "prediction": ("predicted", "categorical"),
    "split": ("label", "categorical"),
    "correctness": ("correct", "categorical"),
    "entropy": ("entropy", "Viridis"),
    "margin": ("margin", "Viridis"),
    "ambiguity": ("ambiguity_score", "Inferno"),
    "ambiguity_student": ("ambiguity_student", "Inferno"),
    "teacher_kl": ("kl_teacher_student", "Plasma"),
    "true_ambiguity": ("true_ambiguity", "Inferno"),
}
SPLIT_COLOURS = {"base": "#1f77b4", "new": "#ff7f0e"}
CORRECTNESS_COLOURS = {"correct": "#2ca02c", "wrong": "#d62728"}


def _require(module: str, purpose: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{purpose} needs the package {module!r}; install the workbench with its "
                          "dependencies (pip install -e .)") from err


def _palette() -> list[str]:
    px = _require("plotly.express", "plotting")
    return px.colors.qualitative.Dark24 + px.colors.qualitative.Light24
