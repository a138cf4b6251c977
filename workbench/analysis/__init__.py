"""Analysis of distilled students: per-sample tables, ambiguity, calibration, alignment, seeds.

Every function takes embeddings, logits or labels as numpy arrays or torch tensors (any float
dtype; computed in float64 on the CPU) and returns either a flat ``dict[str, float]`` or a
columnar table, ``dict[str, np.ndarray]`` whose columns all have one row per sample. Bad shapes
or values raise ``ValueError`` with a message naming the argument.

Groups of functions:

- per sample: :func:`per_sample_table`, :func:`write_table`, :func:`read_table`;
- ambiguity: :func:`ambiguity_score`, :func:`rank_ambiguous`, :func:`ambiguity_agreement`,
  :func:`ambiguity_confounds` (what holds a score's AUROC down);
- two runs on the same samples: :func:`compare_runs`;
- one run: :func:`classification_metrics`, :func:`calibration_metrics`,
  :func:`reliability_bins`;
- the shared image-text space: :func:`alignment_metrics`, :func:`effective_rank`,
  :func:`knn_agreement`;
- several seeds: :func:`seed_summary`, :func:`paired_comparison`, :func:`bootstrap_interval`;
- training logs: :func:`entropy_trajectory`, :func:`term_push` (a loss term's gradient share).
"""

from __future__ import annotations

from .tables import (  # noqa: F401
    compare_runs, per_sample_table, read_table, write_table,
)
from .ambiguity import (  # noqa: F401
    SCORE_DEFINITIONS, ambiguity_agreement, ambiguity_confounds, ambiguity_score, rank_ambiguous,
)
from .metrics import (  # noqa: F401
    DEFAULT_BINS, alignment_metrics, calibration_metrics, classification_metrics, cross_dataset_summary, effective_rank,
    knn_agreement, reliability_bins,
)
from .statistics import (  # noqa: F401
    BOOTSTRAP_METHODS, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, bootstrap_interval, holm_adjust, paired_comparison, seed_summary,
)
from .run_analysis import (  # noqa: F401
    ame_sample_entropy, analyze_predictions, analyze_run, compare_run_dirs, entropy_trajectory, term_push,
)
