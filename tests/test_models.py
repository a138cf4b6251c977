import json

import numpy as np
import open_clip
import pytest
import torch

from workbench import models


def test_embedded_configs_are_listed_and_unknown_names_rejected():
    assert {"embedded-vit-teacher", "embedded-vit-student"} <= set(models.list_embedded_models())
    with pytest.raises(ValueError, match="unknown embedded model 'nope'.*embedded-vit-student"):
        models.load_model_config("nope")


def test_student_is_clearly_smaller_than_teacher():
    # Same depth and patch size, narrower: about 1.8x fewer image-tower weights (ViT-B/16 vs L/14: about 3.5x).
    def vision_params(name):
        cfg = models.load_model_config(name)["vision_cfg"]
        return cfg["width"] ** 2 * cfg["layers"]
    assert vision_params("embedded-vit-teacher") >= 1.5 * vision_params("embedded-vit-student")


def test_text_tower_is_pretrained_minilm_and_locked(student_and_tokenizer):
    model, tokenizer = student_and_tokenizer
    assert not any(p.requires_grad for p in model.text.parameters())
    assert all(p.requires_grad for p in model.visual.parameters())
    # The BERT tokenizer, not CLIP's BPE: [CLS] = 101 opens every sequence.
    assert int(tokenizer(["a red star"])[0, 0]) == 101
    vectors = models.encode_texts(model, tokenizer, ["a red triangle", "a crimson triangle", "a blue car engine"])
    # Pretrained semantics: a paraphrase is closer than an unrelated sentence.
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2]) + 0.2


def test_class_vectors_match_open_clip_zero_shot_classifier(student_and_tokenizer):
    model, tokenizer = student_and_tokenizer
    names = ["red circle", "blue square", "green star", "yellow cross", "purple triangle"]
    templates = ["a photo of a {}.", "a {} shape.", "a drawing of a {}."]
    ours = models.build_class_vectors(model, tokenizer, names, templates, batch_size=4)
    reference = open_clip.build_zero_shot_classifier(model, tokenizer, names, templates, num_classes_per_batch=2)
    torch.testing.assert_close(ours, reference.T.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(names)))


def test_class_vectors_reject_bad_templates(student_and_tokenizer):
    model, tokenizer = student_and_tokenizer
    with pytest.raises(ValueError, match="exactly once"):
        models.build_class_vectors(model, tokenizer, ["red circle"], ["a photo"])
    with pytest.raises(ValueError, match="class_names is empty"):
        models.build_class_vectors(model, tokenizer, [], ["a {}"])


def test_weights_round_trip_without_text_tower(tmp_path, student_and_tokenizer):
    model, _ = student_and_tokenizer
    path = tmp_path / "student.safetensors"
    models.save_weights(model, path, metadata={"note": "test"})
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        assert json.loads(f.metadata()["note"]) == "test"
    assert keys and not any(k.startswith("text.") for k in keys)
    fresh, _ = models.create_embedded_model("embedded-vit-student")
    models.load_weights(fresh, path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.encode_image(x), model.encode_image(x))


def test_loading_mismatched_weights_names_the_problem(tmp_path, student_and_tokenizer):
    model, _ = student_and_tokenizer
    path = tmp_path / "student.safetensors"
    models.save_weights(model, path)
    teacher, _ = models.create_embedded_model("embedded-vit-teacher")
    with pytest.raises((ValueError, RuntimeError), match="student.safetensors|size mismatch"):
        models.load_weights(teacher, path)


def test_unknown_text_tower_is_a_clear_error():
    with pytest.raises(ValueError, match="neither a packaged model"):
        models.resolve_text_tower("/no/such/dir")


# ---- any open_clip model: resolution, offline errors, export ----

def test_export_as_local_dir_loads_back_in_open_clip(tmp_path, student_and_tokenizer):
    model, tokenizer = student_and_tokenizer
    folder = models.save_pretrained(model, tmp_path / "student", models.embedded_open_clip_config("embedded-vit-student"))
    loaded = models.load_model(f"local-dir:{folder}")
    direct = open_clip.create_model(f"local-dir:{folder}")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encode_image(x), model.encode_image(x))
        torch.testing.assert_close(direct.encode_image(x), model.encode_image(x))
        texts = ["a red circle", "a blue star"]
        torch.testing.assert_close(loaded.model.encode_text(loaded.tokenizer(texts)), model.encode_text(tokenizer(texts)),
                                   atol=1e-5, rtol=1e-5)


def test_offline_missing_weights_fail_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.WeightsNotFoundError) as err:
        models.load_model("ViT-L-14", "openai", cache_dir=str(tmp_path))
    message = str(err.value)
    assert "'ViT-L-14'" in message and "'openai'" in message and "offline" in message
    assert "Tried:" in message and "pretrained='/path/to/checkpoint" in message
    with pytest.raises(models.WeightsNotFoundError, match="hf-hub:org/none.*offline"):
        models.load_model("hf-hub:org/none", cache_dir=str(tmp_path))


def test_unknown_names_and_tags_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown model 'ViT-B-61'.*ViT-B-16"):
        models.load_model("ViT-B-61")
    with pytest.raises(ValueError, match=r"unknown pretrained tag 'nope' for model 'ViT-B-16'; valid tags: openai"):
        models.load_model("ViT-B-16", "nope")
    with pytest.raises(models.WeightsNotFoundError, match="checkpoint file .*missing.pt"):
        models.load_model("ViT-B-16", "/nowhere/missing.pt")
    with pytest.raises(models.WeightsNotFoundError, match="open_clip_config.json"):
        models.load_model("local-dir:/nowhere")


def test_checkpoints_load_without_unpickling_code(tmp_path, student_and_tokenizer):
    model, _ = student_and_tokenizer
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in models.trainable_state_dict(model).items()}}, good)
    fresh, _ = models.create_embedded_model("embedded-vit-student")
    models._load_checkpoint_file(fresh, good)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.encode_image(x), model.encode_image(x))

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    evil = tmp_path / "evil.pt"
    torch.save({"visual.proj": Payload()}, evil)
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):
        models._load_checkpoint_file(fresh, evil)


def test_class_vectors_are_cached_on_disk(tmp_path, student_and_tokenizer, monkeypatch):
    model, tokenizer = student_and_tokenizer
    loaded = models.LoadedModel(model, None, tokenizer, "embedded-vit-student", None)
    first = models.cached_class_vectors(loaded, ["red circle", "blue star"], ["a {}."], tmp_path)
    assert len(list(tmp_path.glob("class-vectors-*.safetensors"))) == 1
    monkeypatch.setattr(models, "build_class_vectors", lambda *a, **k: pytest.fail("cache not used"))
    torch.testing.assert_close(models.cached_class_vectors(loaded, ["red circle", "blue star"], ["a {}."], tmp_path), first)
    other = models.LoadedModel(model, None, tokenizer, "embedded-vit-student", "other.safetensors")
    with pytest.raises(pytest.fail.Exception):
        models.cached_class_vectors(other, ["red circle", "blue star"], ["a {}."], tmp_path)


def test_model_pair_presets_name_valid_open_clip_models_and_tags():
    from workbench.presets import load_preset

    pairs = load_preset("model_pairs")
    assert pairs["vit-l14_to_vit-b16"]["teacher"] == {"name": "ViT-L-14", "pretrained": "openai"}
    for pair in pairs.values():
        for role in ("teacher", "student"):
            ref = pair[role]
            if ref["name"] in models.list_embedded_models():
                continue
            assert ref["name"] in open_clip.list_models()
            assert ref["pretrained"] in open_clip.list_pretrained_tags_by_model(ref["name"])
