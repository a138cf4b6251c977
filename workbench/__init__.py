"""AME workbench: distill a CLIP teacher into a small CLIP student, with Aligned Manifold Entropy."""

__version__ = "0.1.0"
