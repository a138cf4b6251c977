"""Distillation on image files with open_clip model pairs: the path real datasets and weights take.

Image folders, a CSV table and a CoOp split file are written by the tests (real PNG and JPEG files);
the teacher is a tiny open_clip architecture whose weights come from a checkpoint file, the student
one exported as a ``local-dir:`` folder, with other input sizes and normalisation than the teacher
and another embedding width, so every bridge between the two (view adapter, own text towers,
projector) is exercised.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from workbench import analysis, data, models, task
from workbench.experiment import experiment_config, run_experiment
from workbench.image_sources import ManifestImages, ViewAdapter

CLASSES = ("red square", "blue circle", "green triangle", "yellow star")
COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220), "green": (40, 180, 60), "yellow": (230, 210, 40)}
TINY = {
    "tiny-clip-teacher": {"embed_dim": 48, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                                                          "head_width": 32},
                          "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}},
    "tiny-clip-student": {"embed_dim": 32, "vision_cfg": {"image_size": 24, "layers": 2, "width": 32, "patch_size": 8,
                                                          "head_width": 16},
                          "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}},
}


def _draw(name: str, rng: np.random.Generator, size: int = 40) -> Image.Image:
    colour, shape = name.split()
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 60, 3)))
    draw = ImageDraw.Draw(image)
    c, r = size / 2 + rng.uniform(-3, 3), size * rng.uniform(0.25, 0.35)
    box = (c - r, c - r, c + r, c + r)
    fill = COLOURS[colour]
    if shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(c, c - r), (c - r, c + r), (c + r, c + r)], fill=fill)
    else:
        draw.polygon([(c + r * math.cos(a), c - r * math.sin(a)) for a in np.linspace(math.pi / 2, 4.5 * math.pi, 6)],
                     fill=fill)
    return image


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """``root/{train,test}/<class>/*``: PNG training images, JPEG test images, 40 px (resized by the transforms)."""
    root = tmp_path_factory.mktemp("images") / "shapes"
    rng = np.random.default_rng(0)
    for split, count, suffix in (("train", 12, "png"), ("test", 4, "jpg")):
        for name in CLASSES:
            folder = root / split / name.replace(" ", "_")
            folder.mkdir(parents=True)
            for k in range(count):
                _draw(name, rng).save(folder / f"{k:03d}.{suffix}")
    return root


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """A teacher from a checkpoint file (open_clip name + path) and a student from a ``local-dir:`` export."""
    import open_clip
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("tiny_models")
    for name, cfg in TINY.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)  # what a user's own architecture config does
    torch.manual_seed(0)
    teacher = open_clip.create_model("tiny-clip-teacher")
    checkpoint = folder / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(checkpoint))
    torch.manual_seed(1)
    student = open_clip.create_model("tiny-clip-student")
    export = models.save_pretrained(student, folder / "student", TINY["tiny-clip-student"],
                                    {"image_size": 24, "mean": [0.5] * 3, "std": [0.5] * 3})
    return {"teacher": {"name": "tiny-clip-teacher", "pretrained": str(checkpoint)},
            "student": f"local-dir:{export}"}


def _config(image_folder, tiny_pair, tmp_path, **settings):
    base = dict(dataset=f"imagefolder:{image_folder}", teacher=tiny_pair["teacher"], student=tiny_pair["student"],
                model_pair="vit-l14_to_vit-b16", shots=4, val_per_class=2, workers=0, device="cpu",
                cache_dir=str(tmp_path / "cache"), epochs=1, batch_size=8)
    return experiment_config(None, **{**base, **settings})


def test_image_folder_resolves_to_a_validated_manifest(image_folder):
    manifest = task.resolve_dataset(f"imagefolder:{image_folder}")
    assert manifest.classnames == tuple(sorted(n.replace(" ", "_") for n in CLASSES))
    assert {s: len(manifest.split(s)) for s in ("train", "test")} == {"train": 48, "test": 16}
    with pytest.raises(FileNotFoundError, match="needs sub-folders train/ and test/"):
        task.resolve_dataset(f"imagefolder:{image_folder / 'train'}")
    with pytest.raises(ValueError, match="unknown dataset 'caltech-101'.*caltech101"):
        task.resolve_dataset("caltech-101")


def test_manifest_source_decodes_each_batch_and_seeds_its_augmentation(image_folder, tiny_pair):
    manifest = task.resolve_dataset(f"imagefolder:{image_folder}")
    loaded = models.load_model("tiny-clip-teacher", tiny_pair["teacher"]["pretrained"])
    train_t, eval_t = models.image_transforms(loaded.model)
    plain = ManifestImages(manifest, "train", np.arange(10), eval_t)
    batches = [torch.tensor([3, 1]), torch.tensor([9, 0, 5])]
    got = list(plain.batches(batches, torch.device("cpu")))
    assert [g[0].tolist() for g in got] == [[3, 1], [9, 0, 5]]
    assert got[0][1].shape == (2, 3, 32, 32)
    # The same file through the transform by hand gives the same pixels.
    with Image.open(manifest.root() / manifest.split("train").paths[3]) as im:
        assert torch.equal(got[0][1][0], eval_t(im.convert("RGB")))
    augmented = ManifestImages(manifest, "train", np.arange(10), train_t, augmented=True, seed=7)
    first = [p for _, p in augmented.batches(batches, torch.device("cpu"), epoch=0)]
    again = [p for _, p in augmented.batches(batches, torch.device("cpu"), epoch=0)]
    other = [p for _, p in augmented.batches(batches, torch.device("cpu"), epoch=1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))



def test_array_source_draws_promptkds_crops_and_flips_seeded_per_epoch():
    from workbench.image_sources import ArrayImages, AugmentedArrayImages

    ramp = np.linspace(0, 255, 16, dtype=np.uint8)  # left-to-right ramp: crops and flips change every image
    images = np.stack([np.broadcast_to(np.roll(ramp, k)[None, :, None], (16, 16, 3)) for k in range(6)]).copy()
    batches, cpu = [torch.tensor([4, 0, 2]), torch.tensor([1, 5, 3])], torch.device("cpu")
    views = AugmentedArrayImages(images, seed=3)
    assert views.augmented and not ArrayImages(images).augmented
    first = [p for _, p in views.batches(batches, cpu, epoch=0)]
    assert all(torch.equal(a, b) for a, b in zip(first, [p for _, p in views.batches(batches, cpu, epoch=0)]))
    assert not any(torch.equal(a, b) for a, b in zip(first, [p for _, p in views.batches(batches, cpu, epoch=1)]))
    assert not any(torch.equal(a, b) for a, b in zip(first, [p for _, p in ArrayImages(images).batches(batches, cpu)]))
    assert first[0].shape == (3, 3, 16, 16) and views.subset([1, 2]).seed == 3
    assert views.fingerprint() != ArrayImages(images).fingerprint()
    # The crop box: 8-100 % of the area, aspect 3/4-4/3, inside the image, the whole range drawn
    rng = np.random.default_rng(0)
    boxes = [views.crop_box(rng, 64, 64) for _ in range(2000)]
    areas = np.array([h * w / 64 ** 2 for _, _, h, w in boxes])
    assert all(0 <= t and 0 <= l and t + h <= 64 and l + w <= 64 for t, l, h, w in boxes)
    assert areas.min() < 0.1 and areas.max() > 0.95 and all(0.7 < w / h < 1.4 for _, _, h, w in boxes)
    # Whole-image "crops": every view is the image or its mirror, and both occur
    flips = AugmentedArrayImages(images, seed=3, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    plain = torch.cat([p for _, p in ArrayImages(images).batches(batches, cpu)])
    seen = torch.cat([p for epoch in range(3) for _, p in flips.batches(batches, cpu, epoch=epoch)])
    same = [torch.allclose(v, o, atol=1e-5) for v, o in zip(seen, plain.repeat(3, 1, 1, 1))]
    mirrored = [torch.allclose(v, o.flip(-1), atol=1e-5) for v, o in zip(seen, plain.repeat(3, 1, 1, 1))]
    assert all(a or b for a, b in zip(same, mirrored)) and any(same) and any(mirrored)
    with pytest.raises(ValueError, match="crop scale must satisfy"):
        AugmentedArrayImages(images, scale=(0.5, 0.2))

def test_view_adapter_maps_one_models_pixels_to_anothers():
    student = {"size": (24, 24), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    teacher = {"size": (32, 32), "mean": (0.48, 0.46, 0.41), "std": (0.27, 0.26, 0.28)}
    raw = torch.rand(2, 3, 24, 24)
    adapted = ViewAdapter(student, teacher)((raw - 0.5) / 0.5)
    expected = (torch.nn.functional.interpolate(raw, size=(32, 32), mode="bicubic").clamp(0, 1)
                - torch.tensor(teacher["mean"]).view(1, 3, 1, 1)) / torch.tensor(teacher["std"]).view(1, 3, 1, 1)
    assert torch.allclose(adapted, expected, atol=1e-5)
    same = ViewAdapter(student, dict(student))
    assert same.identity and same(raw) is raw


@pytest.mark.parametrize("recipe", ["logit_kd", "promptkd", "kdpl", "dho", "feature_kd"])
def test_each_recipe_distils_on_image_files_with_an_open_clip_pair(image_folder, tiny_pair, tmp_path, recipe):
    config = _config(image_folder, tiny_pair, tmp_path, recipe=recipe, ame_weight=50.0)
    run_dir = tmp_path / "run"
    metrics = run_experiment(config, run_dir)
    for name in ("config.json", "environment.json", "dataset.json", "train.jsonl", "checkpoint.pt",
                 "student.safetensors", "samples.csv", "embeddings.npz", "metrics.json"):
        assert (run_dir / name).is_file(), name
    assert metrics["dataset"] == "shapes" and metrics["protocol"] == "base_to_new"
    assert 0 <= metrics["hm"] <= 1 and metrics["skipped_images"] == 0
    log = [json.loads(line) for line in (run_dir / "train.jsonl").read_text().splitlines()]
    assert len(log) == math.ceil(8 / 8) and all(math.isfinite(r["loss"]) for r in log)  # 4 shots x 2 base classes
    assert "manifold_entropy" in log[0]
    arrays = np.load(run_dir / "embeddings.npz")
    assert arrays["image_features"].shape[0] == 16 and list(arrays["image_index"]) == list(range(16))
    width = 48 if recipe == "promptkd" else 32  # PromptKD scores in the teacher's space, the others in the student's
    assert arrays["image_features"].shape[1] == width and arrays["text_features"].shape == (4, width)
    # Analysis rebuilds the run's own metrics from its directory alone.
    _, rebuilt = analysis.analyze_run(run_dir)
    for key in ("base_acc", "new_acc", "hm", "calibration/ece"):
        assert rebuilt[key] == pytest.approx(metrics["analysis"][key], rel=1e-6, abs=1e-9), key
    # Thumbnails for the gallery and the explorer come from the dataset's own files.
    images = task.run_images(run_dir)
    assert len(images) == 16 and images[0].dtype == np.uint8 and images[0].shape[2] == 3


def test_a_real_run_trains_the_student_and_opens_in_the_explorer_and_gallery(image_folder, tiny_pair, tmp_path):
    from workbench import viz
    from workbench.explorer import ManifoldExplorer, load_run

    before = models.load_model(tiny_pair["student"]).model.visual.state_dict()
    config = _config(image_folder, tiny_pair, tmp_path, recipe="logit_kd", epochs=2)
    run_dir = tmp_path / "run"
    run_experiment(config, run_dir)
    trained = models.load_model(tiny_pair["student"]).model
    models.load_weights(trained, run_dir / "student.safetensors")
    moved = [not torch.equal(before[k], v) for k, v in trained.visual.state_dict().items()]
    assert any(moved)
    dataset = json.loads((run_dir / "dataset.json").read_text())
    run = load_run(run_dir)
    explorer = ManifoldExplorer({"kd": run}, dataset["class_names"], images=task.run_images(run_dir),
                                base_classes=np.load(run_dir / "embeddings.npz")["base_classes"], method="pca",
                                figure_widget=False)
    assert len(explorer.images) == len(run.image_features)
    figure = viz.ambiguity_gallery(task.run_images(run_dir), run.table, top=4, class_names=dataset["class_names"])
    assert len(figure.layout.images) == 4


def test_augmented_runs_need_the_live_teacher_and_see_the_same_view(image_folder, tiny_pair, tmp_path):
    with pytest.raises(ValueError, match="augment: true needs teacher_mode: live"):
        _config(image_folder, tiny_pair, tmp_path, augment=True)
    config = _config(image_folder, tiny_pair, tmp_path, augment=True, teacher_mode="live", recipe="promptkd",
                     setting="transductive")
    metrics = run_experiment(config, tmp_path / "run")
    log = (tmp_path / "run" / "train.jsonl").read_text().splitlines()
    assert len(log) == math.ceil(48 / 8)  # transductive: every training image of all four classes
    assert 0 <= metrics["hm"] <= 1


@pytest.mark.parametrize("variant", ["coop", "maple"])
def test_kdpl_text_prompts_score_the_test_classes_through_what_they_learned(image_folder, tiny_pair, tmp_path,
                                                                            variant):
    from safetensors.torch import load_file

    from workbench.prompts import CoupledPrompts, TextContext

    shape = {"prompt_tokens": 2, "prompt_depth": 9} if variant == "maple" else {}
    config = _config(image_folder, tiny_pair, tmp_path, recipe="kdpl", kdpl_prompts=variant, epochs=2, lr=0.05,
                     **shape)
    metrics = run_experiment(config, tmp_path / "run")
    assert 0 <= metrics["hm"] <= 1
    saved = load_file(str(tmp_path / "run" / "recipe_modules.safetensors"))
    loaded = models.load_model(tiny_pair["student"])
    torch.manual_seed(config.seed)  # as distill seeds the prompts: `start` is the run's own start
    prompts = TextContext(loaded.model, loaded.tokenizer) if variant == "coop" else \
        CoupledPrompts(loaded.model, loaded.tokenizer, num_tokens=2, depth=9)
    assert sorted(saved) == sorted(f"prompts.{k}" for k in prompts.state_dict())
    names = task.resolve_dataset(f"imagefolder:{image_folder}").classnames
    start = prompts(names).detach()
    prompts.load_state_dict({k.removeprefix("prompts."): v for k, v in saved.items()})
    learned = prompts(names).detach().numpy()
    text_features = np.load(tmp_path / "run" / "embeddings.npz")["text_features"]
    np.testing.assert_allclose(text_features, learned, atol=1e-5)  # base and new classes, through the prompts
    assert np.abs(text_features - start.numpy()).max() > 1e-4  # and the prompts did train


def test_transfer_protocol_evaluates_each_target_among_its_own_classes(image_folder, tiny_pair, tmp_path):
    # A second dataset with two of the classes: a CoOp split file over the same images.
    manifest = task.resolve_dataset(f"imagefolder:{image_folder}")
    test = manifest.split("test")
    keep = [i for i, y in enumerate(test.labels) if y < 2]
    split_file = tmp_path / "split_two.json"
    split_file.write_text(json.dumps({s: [[test.paths[i], int(test.labels[i]), manifest.classnames[test.labels[i]]]
                                          for i in keep] for s in ("train", "test")}))
    two = data.from_coop_split(split_file, name="two_classes", image_root=str(image_folder))
    data.save_manifest(two, tmp_path / "two_classes.json")
    config = _config(image_folder, tiny_pair, tmp_path, protocol="cross_dataset",
                     targets=[str(tmp_path / "two_classes.json")])
    metrics = run_experiment(config, tmp_path / "run")
    assert set(metrics["targets"]) == {"two_classes"} and "accuracy" in metrics and "hm" not in metrics
    assert metrics["target_mean"] == pytest.approx(metrics["targets"]["two_classes"])
    assert json.loads((tmp_path / "run" / "dataset.json").read_text())["targets"] == ["two_classes"]


@pytest.mark.reliability
def test_a_table_manifest_and_unreadable_images_follow_the_on_error_policy(image_folder, tiny_pair, tmp_path):
    manifest = task.resolve_dataset(f"imagefolder:{image_folder}")
    for split in ("train", "test"):
        entries = manifest.split(split)
        rows = ["path,label"] + [f"{p},{y}" for p, y in zip(entries.paths, entries.labels.tolist())]
        (tmp_path / f"{split}.csv").write_text("\n".join(rows) + "\n")
    broken = image_folder.parent / "broken"
    import shutil
    shutil.copytree(image_folder, broken)
    (broken / manifest.split("test").paths[5]).write_bytes(b"not an image")
    table = data.from_table({s: tmp_path / f"{s}.csv" for s in ("train", "test")}, name="table",
                            image_root=str(broken), classnames=list(manifest.classnames))
    data.save_manifest(table, tmp_path / "table.json")
    config = _config(image_folder, tiny_pair, tmp_path, dataset=str(tmp_path / "table.json"))
    with pytest.raises(data.ImageReadError, match=manifest.split("test").paths[5]):
        run_experiment(config, tmp_path / "strict")
    config = _config(image_folder, tiny_pair, tmp_path, dataset=str(tmp_path / "table.json"), on_error="skip")
    metrics = run_experiment(config, tmp_path / "lenient")
    assert metrics["skipped_images"] == 1
    arrays = np.load(tmp_path / "lenient" / "embeddings.npz")
    assert len(arrays["image_index"]) == 15 and 5 not in arrays["image_index"]
    thumbnails = task.run_images(tmp_path / "lenient")  # row i of samples.csv is image image_index[i]
    assert len(thumbnails) == 15 and thumbnails.paths[5] == manifest.split("test").paths[6]


@pytest.mark.reliability
@pytest.mark.parametrize("settings, message", [
    (dict(dataset="imagefolder:/nonexistent/folder"), "image folder /nonexistent/folder not found"),
    (dict(dataset="caltech101", data_root=""), "WORKBENCH_DATA"),
    (dict(dataset="caltech101", data_root="/nonexistent/caltech"), "/nonexistent/caltech"),
    (dict(teacher={"name": "tiny-clip-teacher", "pretrained": "/nonexistent/teacher.safetensors"}),
     "checkpoint file /nonexistent/teacher.safetensors"),
    (dict(student="local-dir:/nonexistent/student"), "expected an open_clip export folder"),
    (dict(shots=40), "class 0 ('blue_circle') has only 12 samples, fewer than shots=40"),
    (dict(model_pair="vit-l14-to-b16"), "unknown model_pair 'vit-l14-to-b16'"),
    (dict(protocol="cross_dataset", targets=["no_such_dataset"]), "unknown dataset 'no_such_dataset'"),
])
def test_bad_settings_fail_before_the_run_directory_exists(image_folder, tiny_pair, tmp_path, monkeypatch, settings,
                                                           message):
    monkeypatch.delenv("WORKBENCH_DATA", raising=False)
    config = _config(image_folder, tiny_pair, tmp_path, **settings)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        run_experiment(config, tmp_path / "run")
    assert message in str(info.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.reliability
def test_recipe_settings_are_checked_before_anything_is_written(image_folder, tiny_pair, tmp_path):
    from workbench.config import ConfigError

    with pytest.raises(ConfigError, match="kd_weight must be a finite number >= 0, got -1"):
        _config(image_folder, tiny_pair, tmp_path, recipe="promptkd", kd_weight=-1)
    with pytest.raises(ConfigError, match="kdpl_top_k is a setting of recipe kdpl; recipe 'logit_kd' does not read"):
        _config(image_folder, tiny_pair, tmp_path, kdpl_top_k=3)
    with pytest.raises(ConfigError, match="unknown experiment setting 'kdpl_topk'"):
        _config(image_folder, tiny_pair, tmp_path, recipe="kdpl", kdpl_topk=3)
    # Class-agnostic KDPL must not be given the task's own class names.
    vocabulary = tmp_path / "names.txt"
    vocabulary.write_text("# generic names\npink hexagon\nBlue_Circle\nteal ring\n")
    config = _config(image_folder, tiny_pair, tmp_path, recipe="kdpl", kdpl_top_k=2, kdpl_vocabulary=str(vocabulary))
    with pytest.raises(ValueError, match=r"contains 1 of the task's class names \(Blue_Circle\)"):
        run_experiment(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    missing = _config(image_folder, tiny_pair, tmp_path, recipe="kdpl", kdpl_top_k=2)
    with pytest.raises(ValueError, match="class-agnostic KDPL \\(kdpl_top_k > 0\\) needs kdpl_vocabulary"):
        run_experiment(missing, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    vocabulary.write_text("pink hexagon\nteal ring\nlime diamond\n")
    metrics = run_experiment(config, tmp_path / "run")  # the generic names only: it trains
    first = json.loads((tmp_path / "run" / "train.jsonl").read_text().splitlines()[0])
    assert first["symmetric_kl_loss"] > 0 and first["grad_norm/symmetric_kl"] > 0 and 0 <= metrics["hm"] <= 1


@pytest.mark.reliability
def test_offline_weights_are_named_before_anything_is_written(image_folder, tiny_pair, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    config = _config(image_folder, tiny_pair, tmp_path, teacher=None, student=None)  # ViT-L-14 / ViT-B-16, openai
    with pytest.raises(models.WeightsNotFoundError, match="ViT-L-14.*openai.*offline"):
        run_experiment(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_every_benchmark_spec_builds_from_its_stand_in(tmp_path, monkeypatch):
    from workbench import stand_ins

    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path))
    built = {}
    for name in data.list_specs():
        stand_ins.write_stand_in(name, tmp_path, classes=6)
        built[name] = data.build_from_spec(name)
    named = {"dtd": 47, "eurosat": 10, "oxford_pets": 37, "flowers102": 102, "food101": 101}  # classnames.json
    for name, manifest in built.items():
        expected = named.get(name, 3 if name in ("imagenet_a", "imagenet_r") else 6)
        assert manifest.num_classes == expected, name
        assert len(manifest.split("test")) == 2 * expected, name
    # ImageNet's variants name their classes as ImageNet does; A and R cover a subset of them.
    assert built["imagenet_v2"].classnames == built["imagenet"].classnames
    assert set(built["imagenet_r"].classnames) < set(built["imagenet"].classnames)


def test_benchmark_11_runs_in_smoke_mode_on_stand_ins(tmp_path, monkeypatch):
    """The shipped spec, unchanged but for smoke settings: spec → runs → index → report, then one run as a notebook."""
    import dataclasses

    from workbench import sweeps, stand_ins

    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path / "data"))
    spec = sweeps.load_spec("pipelines/benchmark_11.yaml", output=tmp_path / "out",
                            overrides={"smoke": True, "shots": 1, "seed": [1], "cache_dir": str(tmp_path / "cache")})
    for name in spec.grid["dataset"]:
        stand_ins.write_stand_in(name, tmp_path / "data", classes=4)
    in_process = dataclasses.replace(spec, in_process=True)  # run_step directly: what the notebook's one call does
    result = sweeps.run_pipeline(in_process, progress=False)
    assert len(result.executed) == 44 and not result.failed, result.summary()
    index = (tmp_path / "out" / "index.csv").read_text().splitlines()
    assert len(index) == 45
    metrics = json.loads(next((tmp_path / "out").glob("dataset=food101__config=configs-promptkd*50*/metrics.json"))
                         .read_text())
    assert metrics["dataset"] == "food101" and 0 <= metrics["hm"] <= 1
    report = sweeps.build_report(tmp_path / "out")
    assert (tmp_path / "out" / "report" / "paired.csv").is_file() and report
    # The same spec through papermill: the notebook path a GPU machine takes, for one run.
    notebook_out = tmp_path / "notebook_out"
    single = dataclasses.replace(spec, output=notebook_out)
    result = sweeps.run_pipeline(single, only_index=0, progress=False)
    assert [s["status"] for s in result.executed.values()] == ["done"], result.summary()
    assert json.loads(next(notebook_out.glob("*/metrics.json")).read_text())["dataset"] == "imagenet"


def test_cli_train_takes_dataset_and_pair_settings(image_folder, tiny_pair, tmp_path, capsys):
    from workbench.__main__ import main

    teacher = tiny_pair["teacher"]
    args = ["train", "--config", "configs/logit_kd.yaml", "--run-dir", str(tmp_path / "run"),
            "--set", f"dataset=imagefolder:{image_folder}", "--set", "model_pair=vit-l14_to_vit-b16",
            "--set", f"teacher={{name: {teacher['name']}, pretrained: {teacher['pretrained']}}}",
            "--set", f"student={tiny_pair['student']}", "--set", "shots=2", "--set", "epochs=1", "--set", "workers=0",
            "--set", "device=cpu", "--set", f"cache_dir={tmp_path / 'cache'}"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "HM" in printed and str(tmp_path / "run") in printed
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["dataset"] == f"imagefolder:{image_folder}" and config["teacher"] == teacher


def test_domain_generalization_on_imagenet_stand_ins_scores_a_and_r_among_their_subsets(tmp_path, monkeypatch):
    from workbench import stand_ins
    from workbench.experiment import run_step

    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path / "data"))
    for name in ("imagenet", *data.evaluation_sets("domain_generalization").targets):
        stand_ins.write_stand_in(name, tmp_path / "data", classes=6)
    metrics = run_step(tmp_path / "run", config="configs/logit_kd.yaml", smoke=True, dataset="imagenet",
                       protocol="domain_generalization", shots=1, cache_dir=str(tmp_path / "cache"))
    assert set(metrics["targets"]) == {"imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"}
    assert metrics["target_mean"] == pytest.approx(np.mean(list(metrics["targets"].values())))
    recorded = json.loads((tmp_path / "run" / "experiment" / "dataset.json").read_text())
    assert recorded["name"] == "imagenet" and len(recorded["class_names"]) == 6
    config = experiment_config("configs/logit_kd.yaml", dataset="imagenet", protocol="domain_generalization",
                               shots=1, preset="smoke", cache_dir=str(tmp_path / "cache"), workers=0)
    prepared = task.prepare_task(config, torch.device("cpu"))
    classes = {ev.name: (len(ev.class_names), ev.teacher_vectors.shape[0]) for ev in prepared.evaluations}
    assert classes == {"imagenet": (6, 6), "imagenet_v2": (6, 6), "imagenet_sketch": (6, 6),
                       "imagenet_a": (3, 3), "imagenet_r": (3, 3)}
