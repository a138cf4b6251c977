import numpy as np
import pytest

from workbench import viz


def _gapped_world(seed=0, classes=5, per_class=20, dim=16):
    rng = np.random.default_rng(seed)
    texts = rng.standard_normal((classes, dim))
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    gap = 3.0 * np.eye(dim)[0]  # every image sits far off along one shared direction: a modality gap
    labels = np.repeat(np.arange(classes), per_class)
    images = texts[labels] + gap + 0.05 * rng.standard_normal((len(labels), dim))
    return images, texts, labels


def _nearest_cluster(image_xy, text_xy, labels):
    centroids = np.stack([image_xy[labels == c].mean(0) for c in range(len(text_xy))])
    return np.linalg.norm(text_xy[:, None] - centroids[None], axis=-1).argmin(1)


def test_closing_the_modality_gap_puts_class_vectors_among_their_images():
    images, texts, labels = _gapped_world()
    image_xy, text_xy, _ = viz.joint_projection(images, texts, method="pca", close_modality_gap=True)
    assert (_nearest_cluster(image_xy, text_xy, labels) == np.arange(len(texts))).all()


def test_joint_projection_validates_its_arguments():
    images, texts, _ = _gapped_world()
    with pytest.raises(ValueError, match="unknown projection method 'tsne2'; valid names: umap, pca"):
        viz.joint_projection(images, texts, method="tsne2")
    with pytest.raises(ValueError, match="n_components must be 2 or 3"):
        viz.joint_projection(images, texts, method="pca", n_components=4)
    with pytest.raises(ValueError, match="same width"):
        viz.joint_projection(images, texts[:, :8], method="pca")


def test_reducer_places_new_points_in_the_same_map():
    images, texts, labels = _gapped_world()
    image_xy, _, reducer = viz.joint_projection(images, texts, method="pca", close_modality_gap=False)
    np.testing.assert_allclose(reducer.transform(images[:3]), image_xy[:3], atol=1e-4)


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
