import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from workbench import analysis, viz
from workbench.explorer import ManifoldExplorer, RunData, load_run, save_run_embeddings

CLASSES, PER_CLASS, DIM = 4, 15, 8
NAMES = [f"class {i}" for i in range(CLASSES)]


def _run(features, texts, labels, seed):
    rng = np.random.default_rng(seed)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    logits = 6.0 * unit @ texts.T
    teacher = logits + rng.standard_normal(logits.shape)
    table = analysis.per_sample_table(logits, labels, teacher_logits=teacher, class_names=NAMES)
    return features, texts, table, logits


@pytest.fixture(scope="module")
def runs():
    rng = np.random.default_rng(0)
    texts = rng.standard_normal((CLASSES, DIM))
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    kd = texts[labels] + 0.6 * rng.standard_normal((len(labels), DIM))
    ame = texts[labels] + 0.3 * rng.standard_normal((len(labels), DIM))
    return {"KD": _run(kd, texts, labels, 1), "KD + AME": _run(ame, texts, labels, 2)}


@pytest.fixture()
def explorer(runs):
    images = np.random.default_rng(0).integers(0, 255, (CLASSES * PER_CLASS, 12, 12, 3), dtype=np.uint8)
    return ManifoldExplorer(runs, NAMES, images=images, base_classes=[0, 1], method="pca", figure_widget=False)


def _drawn(explorer):
    return np.asarray(explorer.figure.data[0].customdata, dtype=np.int64)


def test_explorer_starts_with_every_sample_coloured_by_class(explorer, runs):
    table = runs["KD"][2]
    assert explorer.run.options == ("KD", "KD + AME")
    assert "entropy" in explorer.colour_by.options and "teacher_kl" in explorer.colour_by.options
    np.testing.assert_array_equal(_drawn(explorer), np.arange(CLASSES * PER_CLASS))
    palette = viz.maps._class_colours(NAMES, None)
    assert list(explorer.figure.data[0].marker.color) == [palette[y] for y in table["label"]]
    assert "60 of 60 selected samples drawn" in explorer.status.value and "class 3" in explorer.status.value
    assert explorer.widget.children  # a displayable VBox


def test_colour_by_dropdown_recolours_the_figure_in_place(explorer, runs):
    figure = explorer.figure
    explorer.colour_by.value = "entropy"
    assert explorer.figure is figure
    np.testing.assert_allclose(figure.data[0].marker.color, runs["KD"][2]["entropy"])
    assert figure.data[0].marker.showscale and figure.layout.title.text == "KD: coloured by entropy"
    explorer.colour_by.value = "correctness"
    expected = np.where(runs["KD"][2]["correct"], "#2ca02c", "#d62728")
    assert list(figure.data[0].marker.color) == expected.tolist()
    assert not figure.data[0].marker.showscale


def test_entropy_threshold_and_class_filter_hide_samples(explorer, runs):
    table = runs["KD"][2]
    threshold = float(np.median(table["entropy"]))
    explorer.entropy_threshold.value = round(threshold, 2)
    rows = _drawn(explorer)
    np.testing.assert_array_equal(rows, np.flatnonzero(table["entropy"] >= explorer.entropy_threshold.value))
    explorer.entropy_threshold.value = 0.0
    explorer.class_filter.value = (1, 3)
    rows = _drawn(explorer)
    np.testing.assert_array_equal(rows, np.flatnonzero(np.isin(table["label"], [1, 3])))
    image_xy, _ = explorer.coordinates()
    np.testing.assert_allclose(explorer.figure.data[0].x, image_xy[rows, 0])


def test_run_picker_moves_the_points_within_one_map(explorer, runs):
    kd_x = np.array(explorer.figure.data[0].x)
    explorer.colour_by.value = "margin"
    explorer.run.value = "KD + AME"
    features, texts, table, _ = runs["KD + AME"]
    expected = explorer.projection.transform(features)
    np.testing.assert_allclose(explorer.figure.data[0].x, expected[:, 0], atol=1e-5)
    assert not np.allclose(explorer.figure.data[0].x, kd_x)
    np.testing.assert_allclose(explorer.figure.data[0].marker.color, table["margin"])
    assert explorer.colour_by.value == "margin"


def test_the_explorer_can_fit_one_map_on_all_runs(runs):
    joint = ManifoldExplorer(runs, NAMES, method="pca", figure_widget=False, fit_on="all")
    features = {name: (run[0], run[1]) for name, run in runs.items()}
    coords, _ = viz.project_runs(features, fit_on="all", method="pca")
    for name in runs:
        joint.run.value = name
        np.testing.assert_allclose(joint.figure.data[0].x, coords[name][0][:, 0], atol=1e-5)
    with pytest.raises(ValueError, match="fit_on must be one of reference, all"):
        ManifoldExplorer(runs, NAMES, method="pca", figure_widget=False, fit_on="joint")


def test_clicking_a_point_shows_the_sample(explorer, runs):
    explorer.colour_by.value = "entropy"
    trace = explorer.figure.data[0]
    explorer.on_click(trace, SimpleNamespace(point_inds=[7], xs=[], ys=[]), None)
    row = int(trace.customdata[7])
    assert explorer.sample.value == row
    html = explorer.detail.value
    table, logits = runs["KD"][2], runs["KD"][3]
    assert "data:image/png;base64," in html and f"true class: <b>{NAMES[table['label'][row]]}</b>" in html
    kind, top = explorer.top_classes(row)
    assert kind == "probability" and top[0][0] == int(np.argmax(logits[row])) and len(top) == CLASSES
    probs = np.exp(logits[row] - logits[row].max())
    assert top[0][1] == pytest.approx(probs.max() / probs.sum())
    explorer.on_click(trace, SimpleNamespace(point_inds=[]), None)  # a click beside the points changes nothing
    assert explorer.sample.value == row
    explorer.run.value = "KD + AME"  # the detail follows the picked run
    assert f"entropy: {runs['KD + AME'][2]['entropy'][row]:.3f}" in explorer.detail.value
    with pytest.raises(ValueError, match="row must be in 0..59"):
        explorer.select(60)


def test_detail_without_logits_uses_cosine_similarity(runs):
    features, texts, table, _ = runs["KD + AME"]
    explorer = ManifoldExplorer({"AME": (features, texts, table)}, NAMES, method="pca", top_k=2,
                                figure_widget=False)
    explorer.select(3)
    kind, top = explorer.top_classes(3)
    unit = features[3] / np.linalg.norm(features[3])
    assert kind == "cosine" and len(top) == 2 and top[0][1] == pytest.approx(float(np.max(texts @ unit)), abs=1e-5)
    assert "<th>cosine</th>" in explorer.detail.value and "<img" not in explorer.detail.value


def test_runs_are_read_from_run_directories(runs, tmp_path):
    for name, (features, texts, table, logits) in runs.items():
        directory = tmp_path / name.replace(" ", "")
        save_run_embeddings(directory, features, texts, logits)
        analysis.write_table(table, directory / "samples.csv")
    run = load_run(tmp_path / "KD")
    np.testing.assert_allclose(run.image_features, runs["KD"][0], rtol=1e-6)
    assert run.logits is not None and set(run.table) == set(runs["KD"][2])
    explorer = ManifoldExplorer([tmp_path / "KD", tmp_path / "KD+AME"], NAMES, method="pca", figure_widget=False)
    assert explorer.run.options == ("KD", "KD+AME")
    with pytest.raises(FileNotFoundError, match="holds no embeddings.npz"):
        load_run(tmp_path)
    # a pipeline step keeps its run in experiment/: the step's directory is enough
    shutil.copytree(tmp_path / "KD", tmp_path / "step" / "experiment")
    np.testing.assert_array_equal(load_run(tmp_path / "step").image_features, run.image_features)
    (tmp_path / "step" / "experiment" / "samples.csv").unlink()
    with pytest.raises(FileNotFoundError, match="has no samples.csv"):
        load_run(tmp_path / "step")


def test_explorer_refuses_runs_of_other_samples(runs):
    features, texts, table, _ = runs["KD"]
    shuffled = {**table, "label": np.roll(table["label"], 1)}
    with pytest.raises(ValueError, match="run 'B' describes other samples"):
        ManifoldExplorer({"A": (features, texts, table), "B": (features, texts, shuffled)}, NAMES, method="pca",
                         figure_widget=False)
    with pytest.raises(ValueError, match="one row per image"):
        RunData(features[:5], texts, table)
    with pytest.raises(ValueError, match="class_names has 2 names for 4 class vectors"):
        ManifoldExplorer({"A": (features, texts, table)}, NAMES[:2], method="pca", figure_widget=False)


def test_the_explorer_uses_a_figure_widget_when_anywidget_is_installed(runs):
    pytest.importorskip("anywidget")
    import plotly.graph_objects as go

    explorer = ManifoldExplorer({"KD": runs["KD"]}, NAMES, method="pca")
    assert isinstance(explorer.figure, go.FigureWidget) and explorer.interactive
    assert explorer.figure in explorer.widget.children
    explorer.colour_by.value = "entropy"
    np.testing.assert_allclose(explorer.figure.data[0].marker.color, runs["KD"][2]["entropy"])


def test_explorer_draws_each_class_with_its_symbol_through_redraws(runs):
    symbols = ["circle", "square", "triangle-up", "cross", "star", "diamond"][:len(NAMES)]
    explorer = ManifoldExplorer(runs, NAMES, base_classes=[0, 1], method="pca", figure_widget=False,
                                class_symbols=symbols)
    labels = np.asarray(runs["KD"][2]["label"])[_drawn(explorer)]
    expected = [symbols[y] + ("" if y in (0, 1) else "-open") for y in labels]
    assert list(explorer.figure.data[0].marker.symbol) == expected
    assert list(explorer.figure.data[1].marker.symbol) == symbols
    explorer.colour_by.value = "entropy"  # a redraw keeps the symbols
    assert list(explorer.figure.data[0].marker.symbol) == expected
