import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from workbench import data, models
from workbench.evaluation import zero_shot_manifest


def _fake_image_folder(root, classes, per_class=3):
    rng = np.random.default_rng(0)
    for c in classes:
        folder = root / "test" / c.replace(" ", "_")
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_zero_shot_on_a_manifest_in_one_call(tmp_path, student_and_tokenizer):
    classes = ["blue circle", "green star", "red square", "yellow cross"]
    _fake_image_folder(tmp_path / "images", classes)
    manifest = data.from_image_folder(tmp_path / "images", name="fake", splits={"test": "test"},
                                      classnames=classes)
    model, _ = student_and_tokenizer
    weights = tmp_path / "student.safetensors"
    models.save_weights(model, weights)
    result = zero_shot_manifest("embedded-vit-student", manifest, pretrained=str(weights), device="cpu",
                                batch_size=5, cache_dir=str(tmp_path / "cache"))
    assert set(result) == {"base_acc", "new_acc", "hm", "accuracy", "skipped_images"}
    assert all(0 <= result[k] <= 1 for k in ("base_acc", "new_acc", "hm", "accuracy"))
    assert list((tmp_path / "cache").glob("class-vectors-*.safetensors"))
    # The same numbers as encoding the images by hand with the same model.
    images = torch.stack([data.ManifestDataset(manifest, "test", transform=models.image_transforms(model)[1])[i][0]
                          for i in range(12)])
    labels = torch.tensor([data.ManifestDataset(manifest, "test")[i][1] for i in range(12)])
    vectors = models.build_class_vectors(model, student_and_tokenizer[1], classes, manifest.templates)
    with torch.no_grad():
        features = model.encode_image(images, normalize=True)
    assert result["accuracy"] == pytest.approx(float(((features @ vectors.T).argmax(1) == labels).float().mean()))


def test_zero_shot_manifest_fails_before_work_when_weights_are_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fake_image_folder(tmp_path / "images", ["a", "b"], per_class=1)
    manifest = data.from_image_folder(tmp_path / "images", name="fake", splits={"test": "test"})
    with pytest.raises(models.WeightsNotFoundError, match="'ViT-B-16'.*'openai'"):
        zero_shot_manifest("ViT-B-16", manifest, pretrained="openai", device="cpu", cache_dir=str(tmp_path))


def test_zero_shot_of_a_real_open_clip_architecture_from_a_local_checkpoint(tmp_path):
    """A stock open_clip model (ViT-S-32, random weights standing in for a download) through the same call."""
    import open_clip

    classes = ["airplane", "bird", "cat", "dog"]
    _fake_image_folder(tmp_path / "images", classes, per_class=2)
    manifest = data.from_image_folder(tmp_path / "images", name="fake", splits={"test": "test"}, classnames=classes)
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-S-32")
    checkpoint = tmp_path / "vit-s-32.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
    result = zero_shot_manifest("ViT-S-32", manifest, pretrained=str(checkpoint), device="cpu", batch_size=4,
                                cache_dir=str(tmp_path / "cache"))
    # By hand: open_clip's own preprocessing, tokenizer and zero-shot classifier on the same weights.
    _, _, preprocess = open_clip.create_model_and_transforms("ViT-S-32", pretrained=str(checkpoint))
    dataset = data.ManifestDataset(manifest, "test", transform=preprocess)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor([dataset[i][1] for i in range(len(dataset))])
    classifier = open_clip.build_zero_shot_classifier(
        model.eval(), tokenizer=open_clip.get_tokenizer("ViT-S-32"), classnames=classes,
        templates=list(manifest.templates), device="cpu")
    with torch.no_grad():
        expected = float(((model.encode_image(images, normalize=True) @ classifier).argmax(1) == labels).float().mean())
    assert result["accuracy"] == pytest.approx(expected)
