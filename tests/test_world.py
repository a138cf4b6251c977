"""Tests for the embedded world: determinism, labels, ambiguity ground truth, storage, validation."""

import dataclasses
import os

import numpy as np
import pytest
import yaml

from workbench import world
from workbench.world import (
    DEFAULT_MANIFEST, FACTOR_NAMES, WorldSpec, build_world, generate_split, load_split, load_world_spec, save_split,
)


@pytest.fixture(scope="module")
def spec():
    return load_world_spec()


@pytest.fixture(scope="module")
def train(spec):
    return generate_split(spec, "train", 3000, seed=7)


def assert_splits_equal(a, b):
    assert a.images.dtype == b.images.dtype == np.uint8
    assert a.images.tobytes() == b.images.tobytes()
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.ambiguity, b.ambiguity)
    np.testing.assert_array_equal(a.partner, b.partner)
    assert a.captions == b.captions and a.ambiguity_kind == b.ambiguity_kind and a.class_names == b.class_names
    assert list(a.factors) == list(b.factors)
    for k in a.factors:
        assert a.factors[k].dtype == b.factors[k].dtype, k
        np.testing.assert_array_equal(a.factors[k], b.factors[k])
    assert a.meta == b.meta


def test_default_manifest(spec):
    assert len(spec.class_names) == 30 and sorted(spec.class_names) == sorted(WorldSpec().class_names)
    assert 4 <= len(spec.prompt_templates) <= 8
    assert all(t.count("{}") == 1 for t in spec.prompt_templates)
    assert spec.fingerprint() == load_world_spec(DEFAULT_MANIFEST).fingerprint()
    assert len(spec.fingerprint()) == 12 and hash(spec) == hash(load_world_spec())


def test_fingerprint_tracks_every_field(spec):
    assert dataclasses.replace(spec, rotation_range=10.0).fingerprint() != spec.fingerprint()
    assert dataclasses.replace(spec, colours={**spec.colours, "red": (200, 0, 0)}).fingerprint() != spec.fingerprint()


def test_shapes_and_dtypes(spec, train):
    n, s = 3000, spec.image_size
    assert train.images.shape == (n, s, s, 3) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int64 and train.partner.dtype == np.int64
    assert train.ambiguity.dtype == np.float32
    assert len(train) == len(train.captions) == len(train.ambiguity_kind) == n
    assert set(train.factors) == set(FACTOR_NAMES) and all(len(v) == n for v in train.factors.values())
    counts = np.bincount(train.labels, minlength=30)
    assert counts.max() - counts.min() <= 1  # balanced classes


def test_determinism(spec, train):
    assert_splits_equal(train, generate_split(spec, "train", 3000, seed=7))
    other_seed = generate_split(spec, "train", 300, seed=8)
    other_split = generate_split(spec, "val", 300, seed=7)
    small = generate_split(spec, "train", 300, seed=7)
    assert other_seed.images.tobytes() != small.images.tobytes()
    assert other_split.images.tobytes() != small.images.tobytes()


def test_order_of_colours_does_not_change_samples(spec):
    shuffled = dataclasses.replace(spec, colours=dict(reversed(list(spec.colours.items()))),
                                   shapes=tuple(reversed(spec.shapes)))
    a, b = generate_split(spec, "x", 200, seed=1), generate_split(shuffled, "x", 200, seed=1)
    assert a.images.tobytes() == b.images.tobytes() and a.captions == b.captions


def test_labels_agree_with_names_and_captions(spec, train):
    assert train.class_names == spec.class_names
    for label, caption in zip(train.labels, train.captions):
        colour, shape = train.class_names[label].split(" ")
        words = caption.replace(",", " ").split()
        assert colour in words and shape in words, caption


def test_ambiguity_ground_truth(spec, train):
    kind = np.array(train.ambiguity_kind)
    clean = kind == "none"
    assert set(kind) == {"none", "colour", "shape"}
    assert np.all(train.ambiguity[clean] == 0) and np.all(train.partner[clean] == -1)
    amb = ~clean
    assert np.all(train.ambiguity[amb] > spec.min_ambiguity) and spec.min_ambiguity > 0
    assert np.all(train.ambiguity[amb] <= spec.max_ambiguity + 1e-6)  # float32 rounding of the bound
    for i in np.flatnonzero(amb):
        (c1, s1), (c2, s2) = (train.class_names[j].split(" ") for j in (train.labels[i], train.partner[i]))
        if kind[i] == "colour":
            assert c1 != c2 and s1 == s2
        else:
            assert c1 == c2 and s1 != s2
    assert abs(amb.mean() - spec.ambiguous_fraction) < 0.03
    assert abs((kind == "colour").sum() / amb.sum() - spec.colour_ambiguity_share) < 0.06


def test_colour_blend_lies_between_the_two_class_colours(spec):
    # Without texture, jitter, noise or occlusion the shape's centre pixel is exactly the blend.
    plain = dataclasses.replace(spec, textures=("plain",), colour_jitter=0.0, noise_range=(0.0, 0.0),
                                occlusion_prob=0.0, ambiguous_fraction=1.0, colour_ambiguity_share=1.0)
    split = generate_split(plain, "blend", 300, seed=0)
    for i in range(len(split)):
        c1, c2 = (np.array(spec.colours[split.class_names[j].split(" ")[0]], float)
                  for j in (split.labels[i], split.partner[i]))
        x, y = int(split.factors["x"][i]), int(split.factors["y"][i])
        a = float(split.ambiguity[i])
        np.testing.assert_allclose(split.images[i, y, x], (1 - a) * c1 + a * c2, atol=1.01)


def test_shape_morph_starts_at_the_primary_and_moves_to_the_partner(spec):
    plain = dataclasses.replace(spec, textures=("plain",), noise_range=(0.0, 0.0), occlusion_prob=0.0)
    shapes = sorted(plain.shapes)
    m = 64
    primary, partner = np.arange(m) % len(shapes), (np.arange(m) + 1 + np.arange(m) // 5) % len(shapes)
    partner = np.where(partner == primary, (partner + 1) % len(shapes), partner)
    factors = {"x": np.full(m, 16.0), "y": np.full(m, 16.0), "size": np.full(m, 9.0), "rotation": np.zeros(m),
               "texture": np.full(m, "plain"), "noise": np.zeros(m), "occluded": np.zeros(m, bool)}
    colour, bg = np.tile([200.0, 50, 50], (m, 1)), np.tile([30.0, 30, 30], (m, 1))
    bar = {k: np.zeros(m) for k in ("vertical", "offset", "width", "grey")}

    def render(p_shp, a):
        return world.render._render(plain, shapes, np.random.default_rng(0), primary, p_shp, np.full(m, a),
                             colour, bg, np.zeros(m), factors, bar).astype(float)

    pure = render(primary, 0.0)
    assert np.array_equal(render(partner, 0.0), pure)  # a = 0 is the pure primary class
    target = render(partner, 1.0)
    dist = [np.abs(render(partner, a) - target).sum(axis=(1, 2, 3)) for a in (0.0, 0.2, 0.45)]
    assert np.all(dist[1] <= dist[0]) and np.all(dist[2] <= dist[1]) and np.all(dist[2] < dist[0])


def test_subset(train):
    sub = train.subset([5, 2, 9])
    assert len(sub) == 3 and sub.captions[1] == train.captions[2]
    np.testing.assert_array_equal(sub.images[0], train.images[5])
    assert len(train.subset(train.labels == 0)) == np.sum(train.labels == 0)
    assert len(train.subset(slice(0, 10))) == 10


def test_save_load_round_trip(spec, tmp_path):
    split = generate_split(spec, "val", 400, seed=3)
    save_split(split, tmp_path / "val")
    assert sorted(os.listdir(tmp_path)) == ["val"]  # no temporary directories left behind
    assert_splits_equal(split, load_split(tmp_path / "val"))
    save_split(split.subset(slice(0, 10)), tmp_path / "val")  # overwriting an existing split works
    assert len(load_split(tmp_path / "val")) == 10 and sorted(os.listdir(tmp_path)) == ["val"]
    empty = generate_split(spec, "empty", 0, seed=3)
    save_split(empty, tmp_path / "empty")
    assert len(load_split(tmp_path / "empty")) == 0


def test_load_split_errors(spec, tmp_path):
    save_split(generate_split(spec, "val", 20, seed=3), tmp_path / "val")
    with pytest.raises(FileNotFoundError, match="images.npy"):
        os.remove(tmp_path / "val" / "images.npy")
        load_split(tmp_path / "val")
    save_split(generate_split(spec, "val", 20, seed=3), tmp_path / "val")
    lines = (tmp_path / "val" / "samples.csv").read_text().splitlines()
    (tmp_path / "val" / "samples.csv").write_text("\n".join(lines[:-3]) + "\n")
    with pytest.raises(ValueError, match="corrupt"):
        load_split(tmp_path / "val")


def test_build_world_reuses_cached_splits(spec, tmp_path, monkeypatch):
    sizes = {"train": 200, "val": 50}
    first = build_world(spec, tmp_path, seed=1, sizes=sizes)
    base = tmp_path / f"{spec.fingerprint()}-seed1"
    assert sorted(os.listdir(base)) == ["train", "val"]

    def fail(*args, **kwargs):
        raise AssertionError("generate_split called although the split is cached")

    with monkeypatch.context() as patch:
        patch.setattr(world, "generate_split", fail)
        second = build_world(spec, tmp_path, seed=1, sizes=sizes)
    for name in sizes:
        assert_splits_equal(first[name], second[name])

    calls = []
    monkeypatch.setattr(world.storage, "generate_split", lambda *a, **k: calls.append(a[1:]) or generate_split(*a, **k))
    build_world(spec, tmp_path, seed=1, sizes={"train": 200, "val": 60})  # a new size regenerates val only
    assert calls == [("val", 60, 1)]
    (base / "train" / "meta.json").write_text("{not json")  # a corrupt split is rebuilt
    assert len(build_world(spec, tmp_path, seed=1, sizes={"train": 200})["train"]) == 200
    assert calls[-1] == ("train", 200, 1)


def write_manifest(tmp_path, edit):
    doc = yaml.safe_load(DEFAULT_MANIFEST.read_text())
    edit(doc)
    path = tmp_path / "world.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.update(homepage="x"), "homepage"),
    (lambda d: d["generator"].update(blur=1.0), "blur"),
    (lambda d: d["prompt_templates"].append("a photo of a thing."), "prompt_templates"),
    (lambda d: d["caption_templates"].append("a {size} thing"), "caption_templates"),
    (lambda d: d["caption_templates"].append("a {colour} {shape} {mood}"), "caption_templates"),
    (lambda d: d["generator"]["shapes"].append("heart"), "shapes"),
    (lambda d: d["generator"]["colours"].update(red=[300, 0, 0]), "colours.red"),
    (lambda d: d["generator"]["colours"].update(red="crimson"), "colours"),
    (lambda d: d["generator"].update(ambiguous_fraction=1.5), "ambiguous_fraction"),
    (lambda d: d["generator"].update(max_ambiguity=0.6), "max_ambiguity"),
    (lambda d: d["generator"].update(image_size=8), "image_size"),
    (lambda d: d["generator"].update(size_range=[0.4, 0.2]), "size_range"),
    (lambda d: d["generator"]["backgrounds"].update(dark={"rgb": [0, 0, 0], "glow": 1}), "backgrounds"),
    (lambda d: d["generator"].update(min_ambiguity=0.5), "min_ambiguity"),
    (lambda d: d["classes"].pop(), "classes"),
    (lambda d: d["classes"].__setitem__(0, "pink circle"), "classes"),
    (lambda d: d.update(classes="red circle"), "classes"),
    (lambda d: d["domains"].update(blur={"blur_sigma": 10}), "domains.blur"),
    (lambda d: d["domains"].update(sketch={"style": "watercolour"}), "domains.sketch"),
    (lambda d: d["domains"].update(fog={"fog": 0.5}), "domains.fog"),
    (lambda d: d["domains"].update(recolour={"colours": {"red": [1, 2, 3]}}), "domains.recolour"),
    (lambda d: d["domains"].update(hue_shift={"hue_shift": "a lot"}), "domains.hue_shift.hue_shift"),
])
def test_validation_names_file_and_field(tmp_path, edit, field):
    path = write_manifest(tmp_path, edit)
    with pytest.raises(ValueError) as err:
        load_world_spec(path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_generate_split_argument_errors(spec):
    with pytest.raises(ValueError, match="seed"):
        generate_split(spec, "train", 10, seed=-1)
    with pytest.raises(ValueError, match="num_samples"):
        generate_split(spec, "train", -5, seed=0)


def test_class_colours_follow_the_colour_word():
    spec = WorldSpec()
    colours = spec.class_colours()
    assert len(colours) == len(spec.class_names)
    for name, css in zip(spec.class_names, colours):
        assert css == "rgb({}, {}, {})".format(*spec.colours[name.split()[0]])


def test_base_half_of_the_class_order_holds_every_colour_and_shape(spec):
    from workbench.protocol import base_new_split
    base, new = base_new_split(len(spec.class_names))
    factors = spec.class_factors()
    for labels in (base, new):
        assert set(factors["colour"][labels]) == set(range(len(spec.colours)))
        assert set(factors["shape"][labels]) == set(range(len(spec.shapes)))
    for label, name in enumerate(spec.class_names):
        colour, shape = name.split(" ")
        assert sorted(spec.colours)[factors["colour"][label]] == colour
        assert sorted(spec.shapes)[factors["shape"][label]] == shape


def test_class_order_only_relabels(spec):
    """The manifest's order changes which label a class gets, not how its images look."""
    sorted_spec = dataclasses.replace(spec, class_order=())
    a, b = generate_split(spec, "x", 300, seed=3), generate_split(sorted_spec, "x", 300, seed=3)
    assert [a.class_names[y] for y in a.labels] != [b.class_names[y] for y in b.labels]  # labels draw in label order
    names_a = np.array(a.class_names)[a.labels]
    assert all(name in caption for name, caption in zip(names_a, a.captions) if "{class}" not in caption)


def test_domains_repeat_the_test_samples_under_one_shift(spec):
    test = generate_split(spec, "test", 240, seed=5)
    assert sorted(spec.domains) == ["blur", "hue_shift", "sketch", "unseen_background", "unseen_texture"]
    for name in spec.domains:
        shifted = world.generate_domain(spec, name, 240, seed=5)
        np.testing.assert_array_equal(shifted.labels, test.labels)
        np.testing.assert_array_equal(shifted.ambiguity, test.ambiguity)
        np.testing.assert_array_equal(shifted.partner, test.partner)
        assert shifted.meta["domain"] == name
        assert shifted.images.tobytes() != test.images.tobytes(), name
        assert_splits_equal(shifted, world.generate_domain(spec, name, 240, seed=5))
    # blur and hue shift keep every nuisance draw: only the rendering differs
    blurred = world.generate_domain(spec, "blur", 240, seed=5)
    for k in test.factors:
        np.testing.assert_array_equal(blurred.factors[k], test.factors[k])
    assert np.abs(np.diff(blurred.images.astype(float), axis=2)).mean() < np.abs(
        np.diff(test.images.astype(float), axis=2)).mean()  # smoother


def test_sketch_draws_only_the_outline(spec):
    plain = dataclasses.replace(spec, textures=("plain",), noise_range=(0.0, 0.0), occlusion_prob=0.0, brightness_jitter=0.0,
                                ambiguous_fraction=0.0, position_range=0.0, backgrounds={"grey": world.Background(
                                    (128, 128, 128))}, domains={"sketch": {"style": "outline"}})
    filled, outline = generate_split(plain, "t", 60, seed=0), world.generate_domain(plain, "sketch", 60, seed=0, split="t")
    c = plain.image_size // 2
    # the centre of a filled shape is the shape's colour; the centre of its outline is background
    assert np.all(np.abs(outline.images[:, c, c].astype(int) - 128).max(axis=1) <= 2)
    assert np.all(np.abs(filled.images[:, c, c].astype(int) - 128).max(axis=1) > 20)


def test_hue_rotation_keeps_grey_and_turns_colours():
    grey = np.array([[100.0, 100.0, 100.0]])
    np.testing.assert_allclose(world.render._rotate_hue(grey, 40.0), grey, atol=1e-9)
    red = np.array([[200.0, 30.0, 30.0]])
    turned = world.render._rotate_hue(red, 120.0)  # a third of the way round: red -> green
    assert turned[0].argmax() == 1
    np.testing.assert_allclose(world.render._rotate_hue(turned, -120.0), red, atol=1e-6)


def test_unknown_domain_names_the_known_ones(spec, tmp_path):
    with pytest.raises(ValueError, match="unknown test domain 'fog'.*blur, hue_shift, sketch"):
        world.generate_domain(spec, "fog", 10, seed=0)
    with pytest.raises(ValueError, match="unknown test domain 'fog'"):
        world.build_domains(spec, tmp_path, seed=0, num_samples=10, domains=["blur", "fog"])
    assert not any(tmp_path.iterdir())  # checked before anything is written


def test_build_domains_caches_next_to_the_world(spec, tmp_path):
    first = world.build_domains(spec, tmp_path, seed=1, num_samples=50, domains=["blur", "sketch"])
    saved = sorted(p.name for p in (tmp_path / f"{spec.fingerprint()}-seed1").iterdir())
    assert saved == ["test@blur", "test@sketch"]
    again = world.build_domains(spec, tmp_path, seed=1, num_samples=50, domains=["blur", "sketch"])
    for name in first:
        assert_splits_equal(first[name], again[name])


def test_declaring_a_domain_keeps_the_training_world(spec):
    assert dataclasses.replace(spec, domains={}).fingerprint() == spec.fingerprint()
    assert spec.domain("blur").fingerprint() != spec.fingerprint()


def test_a_variant_renders_the_same_samples_in_a_narrower_world(spec, tmp_path):
    narrow = spec.variant({"backgrounds": {"dark": {"rgb": [28, 28, 36], "noise": 0}}, "textures": ["plain"]})
    assert narrow.class_names == spec.class_names and narrow.fingerprint() != spec.fingerprint()
    wide, slim = generate_split(spec, "pretrain", 300, seed=2), generate_split(narrow, "pretrain", 300, seed=2)
    np.testing.assert_array_equal(slim.labels, wide.labels)
    np.testing.assert_array_equal(slim.ambiguity, wide.ambiguity)
    assert set(slim.factors["background"]) == {"dark"} and set(slim.factors["texture"]) == {"plain"}
    assert len(set(wide.factors["background"])) == 4
    with pytest.raises(ValueError, match="world override 'shapes' is not a generator field a variant may change"):
        spec.variant({"shapes": ["circle", "square"]})
    with pytest.raises(ValueError, match="world override 'noise_range' must be a pair"):
        spec.variant({"noise_range": 3})
    with pytest.raises(ValueError, match="field 'occlusion_prob' must be a number in"):
        spec.variant({"occlusion_prob": 2.0})


def test_second_vocabulary_has_other_classes_and_keeps_the_world(spec):
    other = spec.vocabulary("second")
    assert len(other.class_names) == 12 and not set(other.class_names) & set(spec.class_names)
    assert other.class_names == sorted(other.class_names)
    assert dataclasses.replace(spec, vocabularies={}).fingerprint() == spec.fingerprint()
    split = generate_split(other, "test", 48, seed=0)
    assert split.class_names == other.class_names and np.bincount(split.labels).min() == 4
    assert other.backgrounds == spec.backgrounds and other.size_range == spec.size_range
    with pytest.raises(ValueError, match="unknown class vocabulary 'third'; this world's vocabularies: second"):
        spec.vocabulary("third")


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["vocabularies"]["second"]["shapes"].append("heart"), "vocabularies.second"),
    (lambda d: d["vocabularies"]["second"].update(textures=["plain"]), "vocabularies.second"),
    (lambda d: d["vocabularies"]["second"].update(colours={"pink": "rose"}), "vocabularies.second.colours"),
])
def test_vocabulary_validation_names_file_and_field(tmp_path, edit, field):
    path = write_manifest(tmp_path, edit)
    with pytest.raises(ValueError) as err:
        load_world_spec(path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_new_shapes_are_filled_where_their_distance_is_negative():
    for name in ("hexagon", "diamond", "ring"):
        sdf = world.SHAPE_SDFS[name]
        centre = float(sdf(np.float32(0.0), np.float32(0.0)))
        edge = float(sdf(np.float32(0.72), np.float32(0.0)))
        far = float(sdf(np.float32(1.5), np.float32(1.5)))
        assert far > 0, name
        assert (centre > 0) == (name == "ring"), name  # a ring has a hole
        assert edge < 0.3, name
