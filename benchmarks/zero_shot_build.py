"""Zero-shot classifier build: batched vs one prompt at a time, and the on-disk cache (issue 8, item 3).

Usage: .venv/bin/python benchmarks/zero_shot_build.py [--classes 1000] [--templates 80] [--loop-prompts 2000]

Builds class vectors for ``--classes`` synthetic class names ("class 0042") x ``--templates``
synthetic prompt templates ("a photo of a {}." variants) with the embedded teacher's text tower
(the pretrained MiniLM, offline). Measured in one run:

* one prompt at a time: a loop calling ``model.encode_text`` on each prompt alone, timed on the
  first ``--loop-prompts`` prompts and extrapolated per prompt to the whole vocabulary (the full loop
  would take about 18 minutes on 2 quiet cores);
* the library's batched encoder (:func:`workbench.models.encode_texts`) on the very same prompts,
  which gives the speed-up ratio on identical work;
* :func:`workbench.models.cached_class_vectors` on the full vocabulary with an empty cache
  directory (the batched :func:`~workbench.models.build_class_vectors` plus the safetensors write),
  then a second call that reads the cache.

The full-size run takes about as long as the batched build it measures: about 7 minutes in all on
the quiet 2-core reference machine (80,000 prompts at about 225 prompts/s), three times that when
other jobs share the cores. ``--classes 50 --loop-prompts 500`` runs in under a minute.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from workbench import models

import harness

# 8 frames x 10 modifiers = 80 templates, each with "{}" exactly once, of varied length like CLIP's.
FRAMES = ("a photo of a {m}{{}}.", "a blurry photo of the {m}{{}}.", "a drawing of a {m}{{}}.",
          "itap of my {m}{{}}.", "a close-up photo of the {m}{{}}.", "a rendering of a {m}{{}}.",
          "a low resolution photo of a {m}{{}} in the wild.", "a sculpture of the {m}{{}}.")
MODIFIERS = ("", "small ", "large ", "clean ", "dirty ", "bright ", "dark ", "cropped ", "weird ", "good ")


def synthetic_vocabulary(num_classes: int, num_templates: int) -> tuple[list[str], list[str]]:
    """``num_classes`` names "class 0000".. and the first ``num_templates`` of 80 synthetic templates."""
    templates = [frame.format(m=m) for m in MODIFIERS for frame in FRAMES]
    if not 1 <= num_templates <= len(templates):
        raise ValueError(f"--templates must lie in 1..{len(templates)}, got {num_templates}")
    if num_classes < 1:
        raise ValueError(f"--classes must be >= 1, got {num_classes}")
    return [f"class {i:04d}" for i in range(num_classes)], templates[:num_templates]


@torch.no_grad()
def encode_one_at_a_time(model, tokenizer, prompts, device) -> torch.Tensor:
    """The unbatched baseline: tokenize and encode each prompt alone."""
    return torch.cat([model.encode_text(tokenizer([p]).to(device), normalize=True).float().cpu() for p in prompts])


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def run(args) -> dict:
    """Measure; return the figures as a flat dict of floats (seconds, prompts/s, ratios, bytes)."""
    device = torch.device(args.device)
    names, templates = synthetic_vocabulary(args.classes, args.templates)
    prompts = [t.format(n) for n in names for t in templates]  # the order build_class_vectors uses
    subset = prompts[:min(args.loop_prompts, len(prompts))]
    load_s, loaded = _timed(models.load_model, args.model, device=device)
    models.encode_texts(loaded.model, loaded.tokenizer, prompts[:args.batch_size], device=device)  # warm-up

    loop_s, one = _timed(encode_one_at_a_time, loaded.model, loaded.tokenizer, subset, device)
    batched_s, batched = _timed(models.encode_texts, loaded.model, loaded.tokenizer, subset,
                                batch_size=args.batch_size, device=device)
    if not torch.allclose(one, batched, atol=1e-4):
        raise AssertionError("batched and one-at-a-time embeddings differ")

    with tempfile.TemporaryDirectory() as cache:
        first_s, first = _timed(models.cached_class_vectors, loaded, names, templates, cache, device=device)
        second_s, second = _timed(models.cached_class_vectors, loaded, names, templates, cache, device=device)
        cache_bytes = sum(p.stat().st_size for p in Path(cache).iterdir())
    if not torch.equal(first, second):
        raise AssertionError("the cached class vectors differ from the built ones")

    loop_full_s = loop_s / len(subset) * len(prompts)  # extrapolated per prompt
    return {"load_average_1min": os.getloadavg()[0], "classes": len(names), "templates": len(templates),
            "prompts": len(prompts), "loop_prompts": len(subset), "model_load_s": load_s,
            "loop_s": loop_s, "batched_subset_s": batched_s, "speedup_same_prompts": loop_s / batched_s,
            "loop_full_extrapolated_s": loop_full_s, "build_first_call_s": first_s,
            "speedup_full": loop_full_s / first_s, "cached_second_call_s": second_s,
            "cache_speedup": first_s / second_s, "cache_bytes": cache_bytes}


def report(r: dict) -> str:
    """The figures as a small markdown table plus the ratios."""
    n, k = r["prompts"], r["loop_prompts"]
    rows = [
        (f"one prompt at a time (first {k} prompts)", k, r["loop_s"]),
        (f"batched `encode_texts` (same {k} prompts)", k, r["batched_subset_s"]),
        (f"one prompt at a time, extrapolated to all {n} prompts", n, r["loop_full_extrapolated_s"]),
        ("`cached_class_vectors`, 1st call: batched build + cache write", n, r["build_first_call_s"]),
        ("`cached_class_vectors`, 2nd call: read from disk cache", n, r["cached_second_call_s"]),
    ]
    lines = [f"{r['classes']} classes x {r['templates']} templates = {n} prompts "
             f"(model load {r['model_load_s']:.1f} s, not counted; 1-min load average at the end "
             f"{r['load_average_1min']:.2f})", "",
             "| step | prompts | seconds | prompts/s |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {p} | {s:.3f} | {p / s:,.0f} |" for name, p, s in rows]
    lines += ["",
              f"speed-up batched / one at a time, same {k} prompts: {r['speedup_same_prompts']:.2f}x",
              f"speed-up full build / one at a time (extrapolated): {r['speedup_full']:.2f}x",
              f"cache: 2nd call {1000 * r['cached_second_call_s']:.1f} ms = 1/{r['cache_speedup']:,.0f} of the "
              f"1st; cache file {r['cache_bytes'] / 1024:.0f} KiB"]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--model", default="embedded-vit-teacher", help="embedded model whose text tower is used")
    parser.add_argument("--classes", type=int, default=1000, help="number of synthetic class names (default 1000)")
    parser.add_argument("--templates", type=int, default=80, help="number of templates, 1..80 (default 80)")
    parser.add_argument("--loop-prompts", type=int, default=2000,
                        help="prompts timed one at a time, then extrapolated (default 2000)")
    parser.add_argument("--batch-size", type=int, default=256, help="encode_texts batch size (library default 256)")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    return harness.main(parse_args, run, report, argv)


if __name__ == "__main__":
    main()
