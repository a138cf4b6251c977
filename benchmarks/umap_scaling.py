"""UMAP / figure scaling: joint_projection time and HTML size at 2k, 10k and 50k points (issue 8, item 5).

Usage: .venv/bin/python benchmarks/umap_scaling.py [--sizes 2000,10000,50000]

Features are random and clustered like a model's test set: ``--classes`` unit-norm class directions
in ``--dim`` dimensions, each image a noisy copy of its class direction, and one class text vector
per class. For every size the run times :func:`workbench.viz.joint_projection` (UMAP, the
library's defaults) and :func:`workbench.viz.manifold_figure` + :func:`workbench.viz.save_html`,
and reports the HTML file size (plotly.js inlined). The one-off numba compilation (``import umap``
plus tiny projections on both of UMAP's neighbour-search paths) is timed first and reported on
its own, so the timed runs exclude it. Goal (issue 8): 50k points in <= 60 s on 2 cores, HTML <= 10 MB and WebGL.

The 50k size takes several minutes on the 2-core reference machine; ``--sizes 500,2000`` is quick.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from workbench import viz

import harness

GOAL_SECONDS, GOAL_POINTS, GOAL_HTML_MB = 60.0, 50_000, 10.0


def clustered_features(num_images: int, num_classes: int, dim: int, seed: int = 0):
    """Image features ``(N, dim)``, class vectors ``(C, dim)`` and labels ``(N,)``, float32."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.arange(num_images) % num_classes
    images = centres[labels] + 0.06 * rng.standard_normal((num_images, dim)).astype(np.float32)
    texts = centres + 0.03 * rng.standard_normal((num_classes, dim)).astype(np.float32)
    return images, texts, labels


def measure(num_images: int, args, out_dir: Path) -> dict:
    images, texts, labels = clustered_features(num_images, args.classes, args.dim)
    names = [f"class {i:02d}" for i in range(args.classes)]
    start = time.perf_counter()
    image_xy, text_xy, _ = viz.joint_projection(images, texts, method=args.method, seed=0)
    projection_s = time.perf_counter() - start
    start = time.perf_counter()
    fig = viz.manifold_figure(image_xy, text_xy, labels, names, base_classes=np.arange(args.classes // 2))
    path = viz.save_html(fig, out_dir / f"manifold-{num_images}.html")
    figure_s = time.perf_counter() - start
    webgl = all(trace.type == "scattergl" for trace in fig.data if trace.name.startswith("images"))
    plotted = sum(len(trace.x) for trace in fig.data if trace.name.startswith("images"))
    return {"points": num_images, "plotted_images": plotted, "projection_s": projection_s, "figure_s": figure_s,
            "html_mb": path.stat().st_size / 1e6, "webgl": webgl}


def compile_umap(num_points: int, classes: int, dim: int) -> None:
    """Trigger numba's one-off compilation of every code path the timed runs take.

    UMAP computes exact neighbours below 4,096 points and switches to pynndescent above, which
    compiles separately; a tiny run forced onto the approximate path compiles that too.
    """
    import umap  # numba compiles part of umap at import

    tiny, tiny_texts, _ = clustered_features(num_points, classes, dim)
    viz.joint_projection(tiny, tiny_texts, method="umap", seed=0)
    umap.UMAP(metric="cosine", random_state=0, force_approximation_algorithm=True).fit_transform(
        np.concatenate([tiny, tiny_texts]))


def run(args) -> dict:
    """Compile once on a tiny set, then measure every size; return the figures."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)  # stated in the report
        start = time.perf_counter()
        if args.method == "umap":
            compile_umap(args.compile_points, args.classes, args.dim)
        compile_s = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            rows = [measure(n, args, Path(tmp)) for n in args.sizes]
    return {"method": args.method, "compile_s": compile_s, "compile_points": args.compile_points,
            "classes": args.classes, "dim": args.dim, "rows": rows, "load_average_1min": os.getloadavg()[0]}


def report(results: dict) -> str:
    c = results["classes"]
    lines = [f"{results['method']} projection of {c} classes, {results['dim']}-d features (+ {c} class vectors in "
             f"every projection); 1-min load average at the end {results['load_average_1min']:.2f}"]
    if results["method"] == "umap":
        lines.append(f"one-off numba compile (import umap + projections of {results['compile_points']} points on "
                     f"both neighbour-search paths): {results['compile_s']:.1f} s, excluded below. UMAP runs on one "
                     "thread: joint_projection passes random_state, so umap-learn overrides n_jobs to 1.")
    lines += ["", "| image points | projection s | figure + save_html s | HTML MB | plotted images | WebGL |",
              "|---:|---:|---:|---:|---:|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['points']:,} | {r['projection_s']:.1f} | {r['figure_s']:.1f} | {r['html_mb']:.1f} | "
                     f"{r['plotted_images']:,} | {'yes' if r['webgl'] else 'no'} |")
    goal = [r for r in results["rows"] if r["points"] == GOAL_POINTS]
    if goal and results["method"] == "umap":
        r = goal[0]
        met = r["projection_s"] <= GOAL_SECONDS and r["html_mb"] <= GOAL_HTML_MB and r["webgl"]
        lines += ["", f"goal at {GOAL_POINTS:,} points (projection <= {GOAL_SECONDS:.0f} s, HTML <= "
                      f"{GOAL_HTML_MB:.0f} MB, WebGL): {'met' if met else 'NOT met'}"]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--sizes", type=harness.int_list, default=[2000, 10000, 50000],
                        help="image-point counts, comma-separated (default 2000,10000,50000)")
    parser.add_argument("--classes", type=int, default=30, help="classes = class vectors (default 30)")
    parser.add_argument("--dim", type=int, default=384, help="feature width (default 384, the embedded models')")
    parser.add_argument("--method", default="umap", choices=viz.PROJECTION_METHODS,
                        help="projection method (default umap; pca skips the compile step: a quick plumbing check)")
    parser.add_argument("--compile-points", type=int, default=200, help="points of the compile run (default 200)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    return harness.main(parse_args, run, report, argv)


if __name__ == "__main__":
    main()
