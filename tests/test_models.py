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
    def vision_params(name):
        cfg = models.load_model_config(name)["vision_cfg"]
        return cfg["width"] ** 2 * cfg["layers"]
    assert vision_params("embedded-vit-teacher") >= 5 * vision_params("embedded-vit-student")


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
