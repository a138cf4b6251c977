"""AME workbench: distill a CLIP teacher into a small CLIP student, with Aligned Manifold Entropy.

The names a user needs, importable from the package itself (``from workbench import AMELoss``); each is
imported from its module on first use, so importing the package stays cheap (no torch, open_clip or
plotly until a name that needs them is asked for)::

    from workbench import experiment_config, run_experiment, analyze_run, ManifoldExplorer
    config = experiment_config("configs/logit_kd.yaml", dataset="imagefolder:/data/my_images", ame_weight=50)
    run_experiment(config, "runs/my-run")
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it (one obvious home per concept).
_EXPORTS = {
    # losses and recipes
    "AMELoss": "losses", "KDLoss": "losses", "SymmetricKLLoss": "losses", "FeatureKDLoss": "losses",
    "DistillConfig": "recipes", "RECIPES": "recipes", "TeacherTargets": "recipes", "distill": "recipes",
    # models, data and the embedded world
    "load_model": "models", "build_class_vectors": "models", "load_world_spec": "world", "build_world": "world",
    "load_manifest": "data", "build_from_spec": "data", "write_stand_in": "stand_ins",
    # experiments
    "ExperimentConfig": "experiment", "experiment_config": "experiment", "load_experiment_config": "experiment",
    "run_experiment": "experiment", "run_step": "experiment", "prepare_task": "task", "run_images": "task",
    # looking at a run
    "analyze_run": "analysis", "analyze_predictions": "analysis", "compare_run_dirs": "analysis",
    "ManifoldExplorer": "explorer", "load_run": "explorer", "ambiguity_gallery": "viz", "RunDir": "runs",
    # notebooks
    "start": "notebook",
    # sweeps
    "load_spec": "sweeps", "run_pipeline": "sweeps", "submit_pipeline": "sweeps", "build_report": "sweeps",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'workbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
