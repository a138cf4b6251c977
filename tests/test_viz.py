import base64
import io
import json
import math

import sys

import numpy as np
import pytest
from PIL import Image

from workbench import analysis, viz


def _gapped_world(seed=0, classes=5, per_class=20, dim=16):
    rng = np.random.default_rng(seed)
    texts = rng.standard_normal((classes, dim))
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    gap = 3.0 * np.eye(dim)[0]  # every image sits far off along one shared direction: a modality gap
    labels = np.repeat(np.arange(classes), per_class)
    images = texts[labels] + gap + 0.05 * rng.standard_normal((len(labels), dim))
    return images, texts, labels


def _table(images, texts, labels, seed=0):
    """A per-sample table (with teacher columns) of a cosine classifier over the world."""
    rng = np.random.default_rng(seed)
    unit = images / np.linalg.norm(images, axis=1, keepdims=True)
    logits = 8.0 * unit @ texts.T + rng.standard_normal((len(labels), len(texts)))
    teacher = logits + rng.standard_normal(logits.shape)
    names = [f"class {i}" for i in range(len(texts))]
    return analysis.per_sample_table(logits, labels, teacher_logits=teacher, class_names=names), logits, names


def _nearest_cluster(image_xy, text_xy, labels):
    centroids = np.stack([image_xy[labels == c].mean(0) for c in range(len(text_xy))])
    return np.linalg.norm(text_xy[:, None] - centroids[None], axis=-1).argmin(1)


# ----------------------------------------------------------------------------- projection
def test_closing_the_modality_gap_puts_class_vectors_among_their_images():
    images, texts, labels = _gapped_world()
    image_xy, text_xy, _ = viz.joint_projection(images, texts, method="pca", close_modality_gap=True)
    assert (_nearest_cluster(image_xy, text_xy, labels) == np.arange(len(texts))).all()


def test_joint_projection_validates_its_arguments():
    images, texts, _ = _gapped_world()
    with pytest.raises(ValueError, match="unknown projection method 'tsne2'; valid names: umap, pca, tsne"):
        viz.joint_projection(images, texts, method="tsne2")
    with pytest.raises(ValueError, match="n_components must be 2 or 3"):
        viz.joint_projection(images, texts, method="pca", n_components=4)
    with pytest.raises(ValueError, match="same width"):
        viz.joint_projection(images, texts[:, :8], method="pca")


def test_reducer_places_new_points_in_the_same_map():
    images, texts, labels = _gapped_world()
    image_xy, _, reducer = viz.joint_projection(images, texts, method="pca", close_modality_gap=False)
    np.testing.assert_allclose(reducer.transform(images[:3]), image_xy[:3], atol=1e-4)


def test_projection_remembers_the_centring_so_a_copy_of_a_point_lands_on_it():
    images, texts, _ = _gapped_world()
    image_xy, text_xy, projection = viz.joint_projection(images, texts, method="pca", close_modality_gap=True)
    # a second "checkpoint" holding copies of some training points: centred with the fitted means
    np.testing.assert_allclose(projection.transform(images[[0, 7, 42]]), image_xy[[0, 7, 42]], atol=1e-4)
    placed_images, placed_texts = viz.project_more(projection, images[:5], texts)
    np.testing.assert_allclose(placed_images, image_xy[:5], atol=1e-4)
    np.testing.assert_allclose(placed_texts, text_xy, atol=1e-4)
    # a single new point is not re-centred on itself (which would send it to the origin)
    assert np.linalg.norm(projection.transform(images[:1])) > 0.1
    with pytest.raises(ValueError, match="modality must be 'image' or 'text'"):
        projection.transform(images, modality="audio")
    with pytest.raises(ValueError, match=r"shape \(N, 16\)"):
        projection.transform(images[:, :4])


def test_tsne_map_places_training_points_near_their_coordinates():
    images, texts, labels = _gapped_world(classes=3, per_class=12)
    image_xy, text_xy, projection = viz.joint_projection(images, texts, method="tsne", perplexity=5)
    assert image_xy.shape == (36, 2) and text_xy.shape == (3, 2)
    spread = np.ptp(image_xy, axis=0).max()
    np.testing.assert_allclose(projection.transform(images[:4]), image_xy[:4], atol=1e-3 * spread)
    assert (_nearest_cluster(image_xy, text_xy, labels) == np.arange(3)).all()


def test_project_runs_fits_the_reference_and_places_the_others():
    images, texts, _ = _gapped_world()
    other = images + 0.01
    coords, projection = viz.project_runs({"kd": (images, texts), "ame": (other, texts)}, method="pca")
    image_xy, text_xy, _ = viz.joint_projection(images, texts, method="pca")
    np.testing.assert_allclose(coords["kd"][0], image_xy, atol=1e-5)
    np.testing.assert_allclose(coords["ame"][0], projection.transform(other), atol=1e-6)
    with pytest.raises(ValueError, match="reference 'x' is not one of the runs: kd"):
        viz.project_runs({"kd": (images, texts)}, reference="x", method="pca")


def test_project_runs_can_fit_one_map_on_every_run():
    images, texts, _ = _gapped_world()
    other = images[::-1] * 1.5 + 0.2  # a run unlike the first: a map fitted on "kd" alone would not be fitted on it
    coords, projection = viz.project_runs({"kd": (images, texts), "ame": (other, texts)}, fit_on="all",
                                          method="pca")
    image_xy, text_xy, _ = viz.joint_projection(np.concatenate([images, other]), np.concatenate([texts, texts]),
                                                method="pca")
    n, c = len(images), len(texts)
    np.testing.assert_allclose(coords["kd"][0], image_xy[:n], atol=1e-5)
    np.testing.assert_allclose(coords["ame"][0], image_xy[n:], atol=1e-5)
    np.testing.assert_allclose(coords["ame"][1], text_xy[c:], atol=1e-5)
    reference_fit, _ = viz.project_runs({"kd": (images, texts), "ame": (other, texts)}, method="pca")
    assert not np.allclose(reference_fit["kd"][0], coords["kd"][0], atol=1e-3)  # a different map
    with pytest.raises(ValueError, match="fit_on must be one of reference, all; got 'both'"):
        viz.project_runs({"kd": (images, texts)}, fit_on="both")


def test_stratified_subsample_keeps_every_class_and_respects_the_limit():
    labels = np.repeat([0, 1, 2, 3], [1000, 200, 5, 1])
    rows = viz.stratified_subsample(labels, max_points=100, seed=3)
    assert len(rows) == 100 and len(np.unique(rows)) == 100 and (np.diff(rows) > 0).all()
    counts = np.bincount(labels[rows], minlength=4)
    assert (counts >= 1).all()
    assert abs(counts[0] - 1000 / 1206 * 100) <= 2 and abs(counts[1] - 200 / 1206 * 100) <= 2
    np.testing.assert_array_equal(rows, viz.stratified_subsample(labels, max_points=100, seed=3))
    np.testing.assert_array_equal(viz.stratified_subsample(labels, max_points=None), np.arange(len(labels)))
    np.testing.assert_array_equal(viz.stratified_subsample(labels[:50], max_points=100), np.arange(50))
    with pytest.raises(ValueError, match="at least the number of classes"):
        viz.stratified_subsample(labels, max_points=3)


# ----------------------------------------------------------------------------- the map
@pytest.fixture(scope="module")
def world_map():
    images, texts, labels = _gapped_world()
    table, logits, names = _table(images, texts, labels)
    image_xy, text_xy, projection = viz.joint_projection(images, texts, method="pca")
    return dict(images=images, texts=texts, labels=labels, table=table, logits=logits, names=names,
                image_xy=image_xy, text_xy=text_xy, projection=projection)


def test_colour_by_entropy_colours_each_point_by_its_entropy(world_map):
    w = world_map
    fig = viz.projection_figure(w["image_xy"], w["text_xy"], w["table"], w["names"], colour_by="entropy")
    images = fig.data[0]
    assert images.type == "scattergl" and images.name == "images"
    rows = viz.drawn_indices(fig)
    np.testing.assert_array_equal(rows, np.arange(len(w["labels"])))
    np.testing.assert_allclose(images.marker.color, w["table"]["entropy"][rows])
    assert images.marker.cmin == 0 and images.marker.cmax == pytest.approx(math.log(5))
    assert images.marker.showscale and images.marker.colorscale is not None
    assert "entropy: " in images.text[0] and "predicted: class" in images.text[0]
    assert fig.data[1].name == "class text vectors" and list(fig.data[1].text) == w["names"]


@pytest.mark.parametrize("colour_by, column", [("margin", "margin"), ("ambiguity", "ambiguity_score"),
                                                ("teacher_kl", "kl_teacher_student")])
def test_numeric_colourings_follow_their_columns(world_map, colour_by, column):
    w = world_map
    fig = viz.projection_figure(w["image_xy"], w["text_xy"], w["table"], w["names"], colour_by=colour_by)
    np.testing.assert_allclose(fig.data[0].marker.color, w["table"][column])


def test_categorical_colourings(world_map):
    w = world_map
    table = w["table"]
    fig = viz.projection_figure(w["image_xy"], w["text_xy"], table, w["names"], colour_by="correctness")
    expected = np.where(table["correct"], viz.CORRECTNESS_COLOURS["correct"], viz.CORRECTNESS_COLOURS["wrong"])
    assert list(fig.data[0].marker.color) == expected.tolist()
    assert [t.name for t in fig.data[2:]] == ["correct", "wrong"]  # legend entries
    fig = viz.projection_figure(w["image_xy"], w["text_xy"], table, w["names"], colour_by="split", base_classes=[0, 1])
    is_base = np.isin(table["label"], [0, 1])
    assert list(fig.data[0].marker.color) == np.where(is_base, "#1f77b4", "#ff7f0e").tolist()
    assert list(fig.data[0].marker.symbol) == np.where(is_base, "circle", "diamond").tolist()
    colours = [f"#0000{i}{i}" for i in range(5)]
    fig = viz.projection_figure(w["image_xy"], w["text_xy"], table, w["names"], class_colours=colours)
    assert list(fig.data[0].marker.color) == [colours[y] for y in table["label"]]


def test_colouring_by_a_missing_column_names_the_valid_choices(world_map):
    w = world_map
    table = {k: v for k, v in w["table"].items() if k != "kl_teacher_student"}
    assert "teacher_kl" not in viz.colour_options(table) and "split" not in viz.colour_options(table)
    with pytest.raises(ValueError, match="no column 'kl_teacher_student'; valid choices for this table: class"):
        viz.projection_figure(w["image_xy"], w["text_xy"], table, w["names"], colour_by="teacher_kl")
    with pytest.raises(ValueError, match="needs base_classes"):
        viz.projection_figure(w["image_xy"], w["text_xy"], table, w["names"], colour_by="split")
    with pytest.raises(ValueError, match="row i of the table must describe image i"):
        viz.projection_figure(w["image_xy"][:10], w["text_xy"], table, w["names"])


def test_large_maps_draw_a_stratified_subsample(world_map):
    w = world_map
    mask = w["table"]["label"] != 4
    fig = viz.projection_figure(w["image_xy"], w["text_xy"], w["table"], w["names"], colour_by="entropy",
                                max_points=20, mask=mask)
    rows = viz.drawn_indices(fig)
    assert len(rows) == 20 and set(w["labels"][rows]) == {0, 1, 2, 3}
    np.testing.assert_allclose(fig.data[0].x, w["image_xy"][rows, 0])
    np.testing.assert_allclose(fig.data[0].marker.color, w["table"]["entropy"][rows])


def test_three_dimensional_maps(world_map):
    w = world_map
    image_xyz, text_xyz, _ = viz.joint_projection(w["images"], w["texts"], method="pca", n_components=3)
    fig = viz.projection_figure(image_xyz, text_xyz, w["table"], w["names"], colour_by="margin")
    assert [t.type for t in fig.data] == ["scatter3d", "scatter3d"]
    np.testing.assert_allclose(fig.data[0].z, image_xyz[:, 2])


def test_figure_is_saved_as_self_contained_html(tmp_path):
    images, texts, labels = _gapped_world()
    image_xy, text_xy, _ = viz.joint_projection(images, texts, method="pca")
    names = [f"class {i}" for i in range(len(texts))]
    fig = viz.manifold_figure(image_xy, text_xy, labels, names, base_classes=[0, 1, 2])
    assert [t.name for t in fig.data] == ["images: base classes", "images: new classes", "class text vectors"]
    assert sum(len(t.x) for t in fig.data[:2]) == len(labels)
    html = viz.save_html(fig, tmp_path / "fig.html").read_text()
    assert "plotly.js v" in html and "<script src=" not in html and "class 4" in html


def test_class_colours_must_match_the_classes():
    images, texts, labels = _gapped_world()
    image_xy, text_xy, _ = viz.joint_projection(images, texts, method="pca")
    names = [f"class {i}" for i in range(len(texts))]
    fig = viz.manifold_figure(image_xy, text_xy, labels, names, class_colours=["red"] * 5)
    assert list(fig.data[-1].marker.color) == ["red"] * 5
    with pytest.raises(ValueError, match="class_colours has 2 entries for 5 classes"):
        viz.manifold_figure(image_xy, text_xy, labels, names, class_colours=["red", "blue"])


def test_class_symbols_mark_each_class_filled_for_base_open_for_new():
    images, texts, labels = _gapped_world()
    image_xy, text_xy, _ = viz.joint_projection(images, texts, method="pca")
    names = [f"class {i}" for i in range(len(texts))]
    symbols = ["circle", "square", "triangle-up", "cross", "star"]
    fig = viz.manifold_figure(image_xy, text_xy, labels, names, base_classes=[0, 1, 2], class_symbols=symbols)
    base_trace, new_trace, text_trace = fig.data
    assert set(base_trace.marker.symbol) <= {"circle", "square", "triangle-up"}
    assert set(new_trace.marker.symbol) <= {"cross-open", "star-open"} and len(set(new_trace.marker.symbol)) == 2
    assert list(text_trace.marker.symbol) == symbols
    with pytest.raises(ValueError, match="class_symbols has 1 entries for 5 classes"):
        viz.manifold_figure(image_xy, text_xy, labels, names, class_symbols=["circle"])


# ----------------------------------------------------------------------------- comparison
@pytest.fixture(scope="module")
def two_runs(world_map):
    w = world_map
    second = w["images"] + 0.3 * np.random.default_rng(1).standard_normal(w["images"].shape)
    table_b, _, _ = _table(second, w["texts"], w["labels"], seed=1)
    coords, _ = viz.project_runs({"KD": (w["images"], w["texts"]), "KD + AME": (second, w["texts"])}, method="pca")
    return {"KD": (*coords["KD"], w["table"]), "KD + AME": (*coords["KD + AME"], table_b)}


def test_side_by_side_comparison_shows_the_same_samples_in_each_panel(two_runs, world_map):
    fig = viz.comparison_figure(two_runs, world_map["names"], colour_by="teacher_kl", max_points=50)
    panels = [t for t in fig.data if t.name == "images"]
    assert len(panels) == 2 and panels[0].xaxis == "x" and panels[1].xaxis == "x2"
    np.testing.assert_array_equal(panels[0].customdata, panels[1].customdata)
    rows = np.asarray(panels[0].customdata)
    assert len(rows) == 50
    for panel, (image_xy, _, table) in zip(panels, two_runs.values()):
        np.testing.assert_allclose(panel.x, image_xy[rows, 0])
        np.testing.assert_allclose(panel.marker.color, table["kl_teacher_student"][rows])
    both = np.concatenate([t["kl_teacher_student"] for _, _, t in two_runs.values()])
    assert panels[0].marker.cmin == panels[1].marker.cmin == pytest.approx(both.min())
    assert panels[0].marker.cmax == panels[1].marker.cmax == pytest.approx(both.max())
    assert list(fig.layout.annotations[i].text for i in range(2)) == ["KD", "KD + AME"]


def test_animated_comparison_has_one_frame_per_run(two_runs, world_map):
    fig = viz.comparison_figure(two_runs, world_map["names"], colour_by="correctness", animate=True)
    assert [f.name for f in fig.frames] == ["KD", "KD + AME"]
    for frame, (image_xy, text_xy, table) in zip(fig.frames, two_runs.values()):
        np.testing.assert_allclose(frame.data[0].x, image_xy[:, 0])
        np.testing.assert_allclose(frame.data[1].y, text_xy[:, 1])
    assert [s.label for s in fig.layout.sliders[0].steps] == ["KD", "KD + AME"]
    assert fig.layout.xaxis.autorange is False


def test_comparison_refuses_runs_of_other_samples(two_runs, world_map):
    runs = dict(two_runs)
    image_xy, text_xy, table = runs["KD + AME"]
    runs["KD + AME"] = (image_xy, text_xy, {**table, "label": np.roll(table["label"], 1)})
    with pytest.raises(ValueError, match="describes other samples than 'KD'"):
        viz.comparison_figure(runs, world_map["names"])


# ----------------------------------------------------------------------------- samples
def _decode(uri):
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_thumbnail_uri_is_a_nearest_neighbour_png():
    image = np.zeros((8, 8, 3), np.uint8)
    image[:4, :, 0] = 255  # top half red
    decoded = _decode(viz.thumbnail_uri(image, size=32))
    assert decoded.shape == (32, 32, 3)
    assert (decoded[:16, :, 0] == 255).all() and (decoded[16:, :, 0] == 0).all()
    chw_float = np.moveaxis(image, -1, 0).astype(np.float32) / 255
    np.testing.assert_array_equal(_decode(viz.thumbnail_uri(chw_float, size=32)), decoded)
    with pytest.raises(ValueError, match="image must be"):
        viz.thumbnail_uri(np.zeros((2, 3, 4, 5)))


def test_ambiguity_gallery_shows_the_most_ambiguous_samples(world_map):
    table = world_map["table"]
    pictures = np.random.default_rng(0).integers(0, 255, (len(table["label"]), 16, 16, 3), dtype=np.uint8)
    fig = viz.ambiguity_gallery(pictures, table, top=4, columns=3)
    expected = np.argsort(-table["ambiguity_score"], kind="stable")[:4]
    np.testing.assert_array_equal(fig.data[0].customdata, expected)
    assert len(fig.layout.images) == 4 and all(im.source.startswith("data:image/png") for im in fig.layout.images)
    np.testing.assert_array_equal(_decode(fig.layout.images[0].source)[::6, ::6], pictures[expected[0]])
    first = fig.layout.annotations[0].text
    p1 = table["max_prob"][expected[0]]
    assert f"<b>{table['predicted_name'][expected[0]]}</b> {p1:.2f} vs <b>{table['runner_up_name'][expected[0]]}</b>" in first
    assert f"true: {table['label_name'][expected[0]]}" in first
    assert "ranked by ambiguity_score: (H/log C + 1 - margin)/2, student and teacher averaged" in fig.layout.title.text
    by_kl = viz.ambiguity_gallery(pictures, table, top=2, column="kl_teacher_student")
    np.testing.assert_array_equal(by_kl.data[0].customdata, np.argsort(-table["kl_teacher_student"], kind="stable")[:2])
    alone = viz.ambiguity_gallery(pictures, table, top=3, column="ambiguity_student", title="KD alone")
    np.testing.assert_array_equal(alone.data[0].customdata, np.argsort(-table["ambiguity_student"], kind="stable")[:3])
    assert alone.layout.title.text == "KD alone<br><sup>ranked by ambiguity_student: (H/log C + 1 - margin)/2 of the student alone</sup>"
    titles = {name: viz.colouring(table, name, [str(i) for i in range(int(table["label"].max()) + 1)])["title"]
              for name in ("ambiguity", "ambiguity_student")}
    assert titles == {"ambiguity": "ambiguity (student + teacher)", "ambiguity_student": "ambiguity (student)"}
    with pytest.raises(ValueError, match="images has 3 entries but the table has 100 rows"):
        viz.ambiguity_gallery(pictures[:3], table)


def test_ambiguity_gallery_captions_name_the_true_mixing_weight_and_partner(world_map):
    w = world_map
    n = len(w["labels"])
    weight = np.where(np.arange(n) % 2 == 0, 0.3, 0.0)
    partner = np.where(weight > 0, (np.asarray(w["labels"]) + 1) % len(w["names"]), -1)
    table, _ = analysis.analyze_predictions(w["logits"], w["labels"], w["images"], w["texts"],
                                            true_ambiguity=weight, class_names=w["names"], true_partner=partner)
    assert list(table["true_partner_name"][:2]) == [w["names"][partner[0]], ""]
    pictures = np.zeros((n, 8, 8, 3), dtype=np.uint8)
    fig = viz.ambiguity_gallery(pictures, table, top=n, columns=10)
    captions = {int(row): note.text for row, note in zip(fig.data[0].customdata, fig.layout.annotations)}
    assert f"true: {w['names'][w['labels'][0]]}, a = 0.30 toward {w['names'][partner[0]]}" in captions[0]
    assert f"true: {w['names'][w['labels'][1]]} (clean)" in captions[1]


# ----------------------------------------------------------------------------- calibration and training
def test_reliability_diagram_draws_the_bins_and_their_ece(world_map):
    w = world_map
    bins = analysis.reliability_bins(w["logits"], w["labels"], n_bins=10)
    fig = viz.reliability_diagram({"KD": bins})
    accuracy_bars = fig.data[1]
    filled = bins["count"] > 0
    np.testing.assert_allclose(accuracy_bars.y, bins["accuracy"][filled])
    ece = analysis.calibration_metrics(w["logits"], w["labels"], n_bins=10)["ece"]
    assert accuracy_bars.name == f"KD: accuracy (ECE {ece:.3f})"
    np.testing.assert_array_equal(fig.data[3].y, bins["count"])
    assert viz.reliability_diagram(bins).data[1].name.startswith("accuracy (ECE")
    with pytest.raises(ValueError, match="has no 'count'"):
        viz.reliability_diagram({"KD": {k: v for k, v in bins.items() if k != "count"}})


def test_entropy_histograms_split_base_and_new(world_map):
    table = world_map["table"]
    fig = viz.entropy_histograms({"KD": table, "KD + AME": table}, base_classes=[0, 1])
    assert [len(t.x) for t in fig.data] == [40, 60, 40, 60]
    assert [t.name for t in fig.data] == ["KD", "KD", "KD + AME", "KD + AME"]
    np.testing.assert_allclose(sorted(fig.data[0].x), sorted(table["entropy"][table["label"] < 2]))
    assert len(viz.entropy_histograms(table).data) == 1


def test_training_curves_from_records_and_a_jsonl_log(tmp_path):
    kd = [{"epoch": 0, "step": s, "loss": 1.0 / (s + 1), "kd_loss": 0.5 / (s + 1)} for s in range(5)]
    ame = [{**r, "ame_loss": 0.1, "manifold_entropy": 2.0 - 0.1 * r["step"]} for r in kd]
    ame.append({"step": 4, "base_acc": 0.5, "new_acc": 0.4})
    log = tmp_path / "ame.jsonl"
    stale = [{"step": 0, "loss": 9.0}, {"step": 1, "loss": 9.0}]  # an earlier run appended to the same file
    log.write_text("".join(json.dumps(r) + "\n" for r in stale + ame))
    assert viz.read_records(log) == ame
    fig = viz.training_curves({"KD": kd, "KD + AME": log})
    assert [a.text for a in fig.layout.annotations] == ["H(M) (nats)", "loss", "accuracy"]
    names = [t.name for t in fig.data]
    assert names == ["KD: loss", "KD: kd_loss", "KD + AME: manifold_entropy", "KD + AME: loss",
                     "KD + AME: ame_loss", "KD + AME: kd_loss", "KD + AME: base_acc", "KD + AME: new_acc"]
    hm = fig.data[2]
    assert list(hm.x) == [0, 1, 2, 3, 4] and list(hm.y) == [r["manifold_entropy"] for r in ame[:5]]
    assert len(viz.training_curves(kd, keys=["kd_loss"]).data) == 1
    with pytest.raises(ValueError, match="no record has 'manifold_entropy'"):
        viz.training_curves(kd, keys=["manifold_entropy"])


def test_training_curves_put_each_terms_gradient_norm_next_to_h():
    # fit logs the diagnostics every few steps only; the curve joins the steps that have them
    records = [{"step": s, "loss": 1.0, "kd_loss": 1.0, "ame_loss": 150.0, "manifold_entropy": 3.0,
                **({"grad_norm/kd": 0.5, "grad_norm/ame": 1e-4} if s % 3 == 0 else {})} for s in range(7)]
    fig = viz.training_curves(records)
    assert [a.text for a in fig.layout.annotations] == ["H(M) (nats)", "gradient norm of each term", "loss"]
    ame = next(t for t in fig.data if t.name == "grad_norm/ame")
    assert list(ame.x) == [0, 3, 6] and list(ame.y) == [1e-4] * 3
    assert fig.layout.yaxis2.type == "log"  # terms 5000 times apart share the panel on a log axis


# ----------------------------------------------------------------------------- files
def _has_kaleido():
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    return True


def test_save_png_without_kaleido_or_chromium_says_what_to_install(world_map, tmp_path, monkeypatch):
    fig = viz.reliability_diagram(analysis.reliability_bins(world_map["logits"], world_map["labels"]))
    monkeypatch.setitem(sys.modules, "kaleido", None)  # as if not installed
    with pytest.raises(ImportError, match=r"kaleido' \(>= 1\) and a Chromium"):
        viz.save_png(fig, tmp_path / "fig.png")
    monkeypatch.delitem(sys.modules, "kaleido")
    if _has_kaleido():
        monkeypatch.setattr(viz.export, "find_chromium", lambda: None)
        with pytest.raises(RuntimeError, match="save_png found no Chromium"):
            viz.save_png(fig, tmp_path / "fig.png")
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not _has_kaleido() or viz.find_chromium() is None, reason="needs kaleido >= 1 and a Chromium")
def test_save_png_writes_a_png(world_map, tmp_path):
    fig = viz.reliability_diagram(analysis.reliability_bins(world_map["logits"], world_map["labels"]))
    path = viz.save_png(fig, tmp_path / "fig.png", scale=1)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp*"))


def test_projection_and_comparison_maps_draw_each_class_with_its_symbol(world_map):
    w = world_map
    symbols = ["circle", "square", "triangle-up", "cross", "star"]
    fig = viz.projection_figure(w["image_xy"], w["text_xy"], w["table"], w["names"], base_classes=[0, 1],
                                class_symbols=symbols, max_points=None)
    labels = np.asarray(w["table"]["label"])[np.asarray(fig.data[0].customdata)]
    expected = [symbols[y] + ("" if y in (0, 1) else "-open") for y in labels]
    assert list(fig.data[0].marker.symbol) == expected and list(fig.data[1].marker.symbol) == symbols
    panels = {"a": (w["image_xy"], w["text_xy"], w["table"]), "b": (w["image_xy"], w["text_xy"], w["table"])}
    both = viz.comparison_figure(panels, w["names"], class_symbols=symbols, max_points=None)
    assert list(both.data[1].marker.symbol) == symbols and set(both.data[0].marker.symbol) <= set(symbols)
    plain = viz.projection_figure(w["image_xy"], w["text_xy"], w["table"], w["names"], max_points=None)
    assert plain.data[1].marker.symbol == "star"
    with pytest.raises(ValueError, match="class_symbols has 2 entries for 5 classes"):
        viz.projection_figure(w["image_xy"], w["text_xy"], w["table"], w["names"], class_symbols=["circle", "star"])
