"""Data manifests: builders, schema validation, path safety, the few-shot protocol and loading.

Every dataset here is a handful of tiny images written to ``tmp_path`` with PIL; nothing is downloaded.
"""

import copy
import csv
import json
import os
import re

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import workbench.data as data
from workbench.data import (ImageReadError, ManifestDataset, ManifestError, PathEscapeError, base_new_classes,
                            build_from_spec, distillation_indices, evaluation_sets, few_shot, from_coop_split,
                            from_fgvc_aircraft, from_image_folder, from_table, from_torchvision, load_manifest,
                            make_loader, manifest_from_dict, save_manifest, splits_checksum)
from workbench.protocol import few_shot_indices

CLASSES = ["cat", "dog", "fox", "owl"]
TRAIN_SIZES = {"cat": 5, "dog": 4, "fox": 3, "owl": 4}  # fox is the smallest class


def _image(path, colour=(200, 30, 30), size=(6, 5)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


@pytest.fixture
def tree(tmp_path):
    """ImageFolder tree root/{train,test}/<class>/<i>.png."""
    root = tmp_path / "tree"
    for c, name in enumerate(CLASSES):
        for i in range(TRAIN_SIZES[name]):
            _image(root / "train" / name / f"{i}.png", colour=(40 * c, 10 * i, 100))
        for i in range(2):
            _image(root / "test" / name / f"t{i}.jpg", colour=(40 * c, 50, 10 * i))
    return root


@pytest.fixture
def manifest(tree):
    return from_image_folder(tree, name="tiny", splits={"train": "train", "test": "test"})


def _doc(tree):
    """A valid manifest document (dict) for the tree fixture."""
    m = from_image_folder(tree, name="tiny", splits={"train": "train", "test": "test"})
    return m.to_dict()


# ----------------------------------------------------------------------------- builders
def test_image_folder_round_trip(tree, manifest, tmp_path):
    assert manifest.classnames == tuple(CLASSES)
    assert len(manifest.split("train")) == sum(TRAIN_SIZES.values()) and len(manifest.split("test")) == 8
    assert manifest.split("train").paths[0] == "train/cat/0.png"
    for suffix in (".json", ".yaml"):
        loaded = load_manifest(save_manifest(manifest, tmp_path / f"tiny{suffix}"))
        assert loaded.checksum == manifest.checksum == splits_checksum(manifest.to_dict()["splits"])
        assert loaded.classnames == manifest.classnames and loaded.templates == manifest.templates
        assert loaded.split("test").paths == manifest.split("test").paths
        assert np.array_equal(loaded.split("train").labels, manifest.split("train").labels)
    ds = ManifestDataset(loaded, "train")
    image, label, index = ds[5]
    assert image.shape == (3, 5, 6) and image.dtype == torch.float32 and 0 <= float(image.min())
    assert (label, index) == (1, 5)  # index 5 is the first dog
    images, labels, indices = next(iter(make_loader(ds, batch_size=4, device="cpu")))
    assert images.shape == (4, 3, 5, 6) and labels.tolist() == [0, 0, 0, 0] and indices.tolist() == [0, 1, 2, 3]


def test_image_folder_classnames_mapping_and_int_labels(tmp_path):
    root = tmp_path / "v2"
    names = [f"class {i}" for i in range(11)]
    for label in range(11):  # lexicographic order would put 10 before 2; labels come from the names
        _image(root / str(label) / "a.jpeg")
    m = from_image_folder(root, name="v2", splits={"test": "."}, classnames=names, folder_labels="int")
    labels = dict(zip(m.split("test").paths, m.split("test").labels.tolist()))
    assert labels["10/a.jpeg"] == 10 and labels["2/a.jpeg"] == 2 and m.classnames == tuple(names)
    (root / "2" / "a.jpeg").unlink()
    (root / "2").rmdir()
    with pytest.raises(ManifestError, match=r"empty class 'class 2'"):
        from_image_folder(root, name="v2", splits={"test": "."}, classnames=names, folder_labels="int")
    mapping = {"n1": "tench", "n2": "goldfish", "n3": "shark"}  # like read_wnid_classnames
    for wnid in ("n3", "n1"):
        _image(tmp_path / "a" / wnid / "x.jpg")
    m = from_image_folder(tmp_path / "a", name="a", splits={"test": "."}, classnames=mapping)
    assert m.classnames == ("tench", "shark")  # only the folders present, sorted by folder


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_table_round_trip(tree, tmp_path, fmt):
    rows = {"train": [("train/cat/0.png", 0, "cat"), ("train/dog/1.png", 1, "dog"), ("train/cat/1.png", 0, "cat")],
            "test": [("test/dog/t0.jpg", 1, "dog"), ("test/cat/t1.jpg", 0, "cat")]}
    files = {}
    for split, entries in rows.items():
        files[split] = tmp_path / f"{split}.{fmt}"
        with open(files[split], "w", newline="") as fh:
            if fmt == "csv":
                w = csv.writer(fh)
                w.writerow(["path", "label", "classname"])
                w.writerows(entries)
            else:
                fh.writelines(json.dumps({"path": p, "label": y, "classname": c}) + "\n" for p, y, c in entries)
    m = from_table(files, name="table", image_root=tree)
    assert m.classnames == ("cat", "dog") and len(m.split("train")) == 3
    loaded = load_manifest(save_manifest(m, tmp_path / "table.json"))
    assert loaded.checksum == m.checksum
    assert [y for _, y, _ in ManifestDataset(loaded, "test")] == [1, 0]
    # without a classname column the names must be given
    (tmp_path / "bare.csv").write_text("path,label\ntrain/owl/0.png,1\ntrain/cat/0.png,0\n")
    with pytest.raises(ManifestError, match="classname"):
        from_table(tmp_path / "bare.csv", name="bare", image_root=tree)
    assert from_table(tmp_path / "bare.csv", name="bare", image_root=tree,
                      classnames=["cat", "owl"]).split("all").paths[0] == "train/owl/0.png"
    (tmp_path / "bad.csv").write_text("path,label,classname\ntrain/cat/0.png,0,cat\ntrain/dog/0.png,0,dog\n")
    with pytest.raises(ManifestError, match=r"bad.csv line 3.*label 0 is called 'dog'"):
        from_table(tmp_path / "bad.csv", name="bad", image_root=tree)
    (tmp_path / "missing.csv").write_text("path,label,classname\ntrain/cat/99.png,0,cat\n")
    with pytest.raises(ManifestError, match=r"missing.*train/cat/99.png"):
        from_table(tmp_path / "missing.csv", name="missing", image_root=tree)


def _coop_split_file(tree, tmp_path, names=("tabby_cat", "dog", "red_fox", "owl")):
    split = {s: [[f"{s}/{c}/{f.name}", i, names[i]] for i, c in enumerate(CLASSES)
                 for f in sorted((tree / s / c).iterdir())] for s in ("train", "test")}
    split["val"] = split["train"][:2]
    path = tmp_path / "split_zhou_Tiny.json"
    path.write_text(json.dumps(split))
    return path


def test_coop_split_round_trip(tree, tmp_path):
    path = _coop_split_file(tree, tmp_path)
    m = from_coop_split(path, name="coop", image_root=tree, templates=["a photo of a {}, a type of thing."])
    assert m.classnames == ("tabby cat", "dog", "red fox", "owl")  # '_' -> ' ', as CoOp prompts them
    assert sorted(m.splits) == ["test", "train", "val"] and len(m.split("val")) == 2
    assert load_manifest(save_manifest(m, tmp_path / "coop.json")).checksum == m.checksum
    # shipped names are checked against the file (case, '_' and '-' do not matter) and replace them
    given = ["Tabby Cat", "dog", "red-fox", "owl"]
    assert from_coop_split(path, name="coop", image_root=tree, classnames=given).classnames == tuple(given)
    with pytest.raises(ManifestError, match=r"label 2: 'red fox' in the file vs 'wolf' given"):
        from_coop_split(path, name="coop", image_root=tree, classnames=["tabby cat", "dog", "wolf", "owl"])
    with pytest.raises(ManifestError, match="cannot read the CoOp split file"):
        from_coop_split(tmp_path / "nope.json", name="coop", image_root=tree)


def test_fgvc_aircraft_builder(tmp_path):
    root = tmp_path / "fgvc_aircraft"
    (root).mkdir()
    (root / "variants.txt").write_text("707-320\nA300B4\n")
    for split, ids in {"train": ["001", "002"], "val": ["003"], "test": ["004", "005"]}.items():
        (root / f"images_variant_{split}.txt").write_text(
            "".join(f"{i} {'707-320' if int(i) % 2 else 'A300B4'}\n" for i in ids))
        for i in ids:
            _image(root / "images" / f"{i}.jpg")
    m = from_fgvc_aircraft(root)
    assert m.classnames == ("707-320", "A300B4") and m.split("test").paths == ("images/004.jpg", "images/005.jpg")
    assert m.split("train").labels.tolist() == [0, 1]


def test_torchvision_builder(tmp_path):
    with pytest.raises(ManifestError, match="is not a folder"):
        from_torchvision("DTD", tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match=r"DTD.*found no usable data.*never downloads"):
        from_torchvision("DTD", tmp_path / "empty", {"train": {"split": "train"}})
    with pytest.raises(ManifestError, match="no dataset class"):
        from_torchvision("NoSuchSet", tmp_path / "empty")
    for c in ("Forest", "River"):  # torchvision's EuroSAT layout: root/eurosat/2750/<class>/
        for i in range(2):
            _image(tmp_path / "tv" / "eurosat" / "2750" / c / f"{c}_{i}.jpg")
    m = from_torchvision("EuroSAT", tmp_path / "tv")
    assert m.name == "eurosat" and m.classnames == ("Forest", "River")
    assert m.split("test").paths[0] == "eurosat/2750/Forest/Forest_0.jpg"
    assert ManifestDataset(m, "test")[3][1] == 1


def test_specs_cover_the_benchmark():
    names = data.list_specs()
    assert len(names) == 15
    for name in names:
        spec = data.load_dataset_spec(name)
        assert spec["name"] == name and spec["root"].startswith("${WORKBENCH_DATA}/")
        assert data.prompt_templates(spec["templates"])
        if "classnames" in spec:
            data.class_names(spec["classnames"])
    for kind in ("base_to_new", "cross_dataset", "domain_generalization"):
        sets = evaluation_sets(kind)
        assert set(sets.targets) | ({sets.source} if sets.source else set()) <= set(names)
    assert len(evaluation_sets("base_to_new").targets) == 11
    assert evaluation_sets("domain_generalization").targets == ("imagenet_v2", "imagenet_sketch", "imagenet_a",
                                                                 "imagenet_r")
    assert len(data.class_names("dtd")) == 47 and len(data.class_names("oxford_pets")) == 37


def test_build_from_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path))
    folders = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
               "PermanentCrop", "Residential", "River", "SeaLake"]
    coop_names = data.class_names("eurosat")
    split = {"train": [], "val": [], "test": []}
    for label, (folder, cname) in enumerate(zip(folders, coop_names)):
        for s in split:
            _image(tmp_path / "eurosat" / "2750" / folder / f"{folder}_{s}.jpg")
            split[s].append([f"{folder}/{folder}_{s}.jpg", label, cname])
    (tmp_path / "eurosat" / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    m = build_from_spec("eurosat", out=tmp_path / "manifests")
    assert m.image_root == "${WORKBENCH_DATA}/eurosat/2750"  # stays portable
    assert m.templates == ("a centered satellite photo of {}.",) and m.classnames[0] == "Annual Crop Land"
    loaded = load_manifest(tmp_path / "manifests" / "eurosat.json")
    assert loaded.checksum == m.checksum and loaded.root() == tmp_path / "eurosat" / "2750"
    # ImageNet-A style: wnid folders, names from ImageNet's classnames.txt
    (tmp_path / "imagenet").mkdir()
    (tmp_path / "imagenet" / "classnames.txt").write_text("n01 tench\nn02 goldfish\nn03 great white shark\n")
    for wnid in ("n03", "n01"):
        _image(tmp_path / "imagenet-adversarial" / "imagenet-a" / wnid / "a.jpg")
    (tmp_path / "imagenet-adversarial" / "imagenet-a" / "README.txt").write_text("ignored")
    a = build_from_spec("imagenet_a")
    assert a.classnames == ("tench", "great white shark") and list(a.splits) == ["test"]


# ----------------------------------------------------------------------------- schema validation
def _entry(doc, split="train", i=0):
    return doc["splits"][split][i]


@pytest.mark.parametrize("mutate, pattern", [
    (lambda d: d.pop("licence"), r"missing required field\(s\) 'licence'"),
    (lambda d: d.pop("splits_sha256"), r"missing required field\(s\) 'splits_sha256'"),
    (lambda d: d.update(colour="red"), r"unknown field colour; valid names: name, source"),
    (lambda d: d.update(name="my data"), r"field 'name'.*'my data'"),
    (lambda d: d.update(source=""), r"field 'source': must be a non-empty string"),
    (lambda d: d.update(templates=["a photo of {c}"]), r"field 'templates\[0\]'.*'a photo of \{c\}'"),
    (lambda d: d.update(classnames="cat"), r"field 'classnames': must be a non-empty list"),
    (lambda d: _entry(d).__setitem__(1, 7), r"field 'splits.train\[0\].label': unknown label 7"),
    (lambda d: _entry(d).__setitem__(1, True), r"field 'splits.train\[0\].label': must be an integer, got True"),
    (lambda d: _entry(d).__setitem__(2, "dog"),
     r"field 'splits.train\[0\].classname': 'dog' does not match classnames\[0\] = 'cat'"),
    (lambda d: d["splits"]["train"].append(list(_entry(d))),
     r"field 'splits.train\[16\].path': duplicate path 'train/cat/0.png'"),
    (lambda d: d["splits"]["train"].__setitem__(0, ["train/cat/0.png", 0]), r"field 'splits.train\[0\]': must be"),
    (lambda d: d["classnames"].append("zebra"), r"field 'classnames\[4\]': empty class 'zebra'"),
    (lambda d: d["splits"].update(val=[]), r"field 'splits.val': must be a non-empty list"),
    (lambda d: d.update(splits_sha256="abc"), r"field 'splits_sha256': must be 64"),
    (lambda d: d.update(splits_sha256="0" * 64), r"field 'splits_sha256': checksum mismatch"),
    (lambda d: d.update(schema_version=2), r"field 'schema_version': must be 1"),
])
def test_schema_errors_name_field_and_value(tree, mutate, pattern):
    doc = _doc(tree)
    manifest_from_dict(copy.deepcopy(doc))  # the unmutated document is valid
    mutate(doc)
    with pytest.raises(ManifestError, match=pattern):
        manifest_from_dict(doc, origin="tiny.yaml")


def test_schema_error_names_the_file(tree, tmp_path):
    doc = _doc(tree)
    _entry(doc, "test", 3)[1] = 9
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ManifestError, match=r"broken.yaml: field 'splits.test\[3\].label': unknown label 9"):
        load_manifest(path)
    path.write_text("name: [unclosed\n")
    with pytest.raises(ManifestError, match="broken.yaml: not valid YAML"):
        load_manifest(path)
    (tmp_path / "evil.yaml").write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(ManifestError, match="not valid YAML"):  # safe_load: no code runs
        load_manifest(tmp_path / "evil.yaml")


def test_checksum_mismatch_detected_on_disk(manifest, tmp_path):
    path = save_manifest(manifest, tmp_path / "tiny.json")
    text = path.read_text()
    assert '"train/cat/0.png"' in text
    path.write_text(text.replace('["train/cat/0.png", 0, "cat"]', '["train/cat/0b.png", 0, "cat"]'))
    with pytest.raises(ManifestError, match=r"tiny.json: field 'splits_sha256': checksum mismatch"):
        load_manifest(path)
    assert load_manifest(path, verify_checksum=False).split("train").paths[0] == "train/cat/0b.png"


# ----------------------------------------------------------------------------- path safety
@pytest.mark.parametrize("bad", ["../outside.png", "train/../../outside.png", "/etc/passwd", "C:/x.png"])
def test_path_escape_rejected_in_manifest(tree, bad):
    doc = _doc(tree)
    _entry(doc)[0] = bad
    with pytest.raises(PathEscapeError, match=r"field 'splits.train\[0\].path': " + re.escape(repr(bad))):
        manifest_from_dict(doc)


def test_path_escape_rejected_in_table(tree, tmp_path):
    (tmp_path / "up.csv").write_text("path,label,classname\n../secret.png,0,cat\n")
    with pytest.raises(PathEscapeError, match=r"up.csv line 2.*'\.\./secret.png'"):
        from_table(tmp_path / "up.csv", name="up", image_root=tree)


def test_symlink_out_of_root_rejected(tree, manifest, tmp_path):
    outside = tmp_path / "outside.png"
    _image(outside)
    os.symlink(outside, tree / "train" / "cat" / "link.png")
    with pytest.raises(PathEscapeError, match=r"link.png resolves to .*outside.png, outside the image root"):
        from_image_folder(tree, name="tiny", splits={"train": "train"})
    (tmp_path / "t.csv").write_text("path,label,classname\ntrain/cat/link.png,0,cat\n")
    with pytest.raises(PathEscapeError, match="outside the image root"):
        from_table(tmp_path / "t.csv", name="t", image_root=tree)
    # a manifest listing the link passes validation (no file access) but the file is never opened
    doc = manifest.to_dict()
    _entry(doc)[0] = "train/cat/link.png"
    doc["splits_sha256"] = splits_checksum(doc["splits"])
    for policy in ("error", "skip"):
        ds = ManifestDataset(manifest_from_dict(doc), "train", on_error=policy)
        with pytest.raises(PathEscapeError, match=r"splits.train\[0\].path.*link.png"):
            ds[0]
    os.remove(tree / "train" / "cat" / "link.png")
    os.symlink(tmp_path, tree / "train" / "cat" / "dirlink")  # a folder symlink leaving the root
    with pytest.raises(PathEscapeError, match="dirlink"):
        from_image_folder(tree, name="tiny", splits={"train": "train"})


# ----------------------------------------------------------------------------- environment variables
def test_env_var_root_expansion_and_error(tree, monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_DATA", str(tree.parent))
    m = from_image_folder("${WORKBENCH_DATA}/tree", name="tiny", splits={"test": "test"})
    assert m.image_root == "${WORKBENCH_DATA}/tree" and m.root() == tree
    path = save_manifest(m, tmp_path / "m.json")
    assert len(ManifestDataset(load_manifest(path), "test")) == 8
    monkeypatch.delenv("WORKBENCH_DATA")
    m = load_manifest(path)  # reading the manifest needs no data
    with pytest.raises(ManifestError, match=r"m.json: field 'image_root': environment variable WORKBENCH_DATA "
                                            r"is not set \(value '\$\{WORKBENCH_DATA\}/tree'\)"):
        m.root()
    with pytest.raises(ManifestError, match="WORKBENCH_DATA is not set"):
        ManifestDataset(m, "test")
    assert len(ManifestDataset(m, "test", image_root=tree)) == 8  # an explicit root needs no variable
    assert load_manifest(path, image_root=tree).root() == tree
    monkeypatch.setenv("WORKBENCH_DATA", "")
    with pytest.raises(ManifestError, match="WORKBENCH_DATA is empty"):
        m.root()
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere/tree .*is not a folder"):
        ManifestDataset(m, "test")


# ----------------------------------------------------------------------------- protocol
def test_few_shot_determinism_and_cache(manifest, tmp_path, monkeypatch):
    labels = manifest.split("train").labels
    first = few_shot(manifest, 2, seed=1, cache_dir=tmp_path / "cache")
    assert np.array_equal(first, few_shot_indices(labels, 2, 1))  # the protocol's sampler, unchanged
    assert np.bincount(labels[first]).tolist() == [2, 2, 2, 2]
    files = list((tmp_path / "cache").iterdir())
    assert [f.name for f in files] == [f"tiny-{manifest.checksum[:16]}-train-2shot-seed1.json"]
    assert json.loads(files[0].read_text())["indices"] == first.tolist()

    def boom(*args, **kwargs):
        raise AssertionError("sampled again instead of reading the cache")

    monkeypatch.setattr(data.shots, "few_shot_indices", boom)
    assert np.array_equal(few_shot(manifest, 2, seed=1, cache_dir=tmp_path / "cache"), first)
    monkeypatch.undo()
    assert not np.array_equal(few_shot(manifest, 2, seed=2, cache_dir=tmp_path / "cache"), first)
    assert len(list((tmp_path / "cache").iterdir())) == 2
    files[0].write_text("{not json")  # a damaged cache is recomputed and rewritten
    assert np.array_equal(few_shot(manifest, 2, seed=1, cache_dir=tmp_path / "cache"), first)
    assert json.loads(files[0].read_text())["indices"] == first.tolist()
    assert np.array_equal(few_shot(manifest, "all"), np.arange(len(labels)))
    base, new = base_new_classes(manifest)
    assert np.array_equal(few_shot(manifest, 2, seed=1, classes=base), first[np.isin(labels[first], [0, 1])])


def test_few_shot_rejects_k_above_smallest_class(manifest):
    with pytest.raises(ValueError, match=r"K=4 shots exceeds the smallest class.*class 2 \('fox'\) has 3 images"):
        few_shot(manifest, 4)
    with pytest.raises(ValueError, match="shots must be"):
        few_shot(manifest, 0)


def test_base_new_relabelling(manifest):
    base, new = base_new_classes(manifest)
    assert base.classes.tolist() == [0, 1] and new.classes.tolist() == [2, 3]
    assert new.classnames == ("fox", "owl") and new.mapping == {2: 0, 3: 1}
    assert new.relabel([3, 2, 3]).tolist() == [1, 0, 1] and new.original([1, 0]).tolist() == [3, 2]
    with pytest.raises(ValueError, match="label 1 is not one of the new classes"):
        new.relabel([1])
    ds = ManifestDataset(manifest, "test", classes=new)
    items = [ds[i][1:] for i in range(len(ds))]
    assert [y for y, _ in items] == [0, 0, 1, 1]  # relabelled 0..N-1
    assert [manifest.split("test").labels[i] for _, i in items] == [2, 2, 3, 3]  # index points into the split
    assert ds.classnames == ("fox", "owl")
    shots = few_shot(manifest, 1, classes=base)
    assert ManifestDataset(manifest, "train", indices=shots, classes=base).labels.tolist() == [0, 1]


def test_transductive_vs_inductive(manifest):
    labels = manifest.split("train").labels
    inductive = distillation_indices(manifest, "inductive")
    transductive = distillation_indices(manifest, "transductive")
    assert set(labels[inductive].tolist()) == {0, 1}
    assert len(transductive) == len(labels) and set(labels[transductive].tolist()) == {0, 1, 2, 3}
    unlabeled = ManifestDataset(manifest, "train", indices=transductive, unlabeled=True)
    assert {unlabeled[i][1] for i in range(len(unlabeled))} == {-1}
    with pytest.raises(ValueError, match="setting must be one of"):
        distillation_indices(manifest, "semi")


# ----------------------------------------------------------------------------- loading
def test_corrupt_and_missing_images(tree, manifest):
    bad = tree / "train" / "dog" / "2.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(ImageReadError, match=r"cannot read image .*train/dog/2.png"):
        ManifestDataset(manifest, "train")[7]
    ds = ManifestDataset(manifest, "train", on_error="skip")
    seen = [int(i) for _, _, idx in make_loader(ds, batch_size=3) for i in idx]
    assert ds.skipped == 1 and ds.skipped_paths[0].endswith("train/dog/2.png")
    assert seen == [i for i in range(len(manifest.split("train"))) if i != 7]
    os.remove(tree / "test" / "owl" / "t1.jpg")
    with pytest.raises(ImageReadError, match=r"test/owl/t1.jpg.*No such file"):
        ManifestDataset(manifest, "test")[7]
    with pytest.raises(ValueError, match="on_error"):
        ManifestDataset(manifest, "test", on_error="ignore")


def test_skip_count_across_workers(tree, manifest):
    (tree / "train" / "cat" / "1.png").write_bytes(b"\x89PNG broken")
    ds = ManifestDataset(manifest, "train", on_error="skip")
    loader = make_loader(ds, batch_size=4, workers=1)
    assert loader.persistent_workers and not loader.pin_memory
    assert sum(len(b[2]) for b in loader) == len(ds) - 1
    assert ds.skipped == 1  # counted in the worker process, visible here
    batches = list(make_loader(ds, batch_size=1))
    assert batches[1] is None and ds.skipped == 2  # a batch of only skipped images comes out as None


def test_make_loader_settings(manifest):
    ds = ManifestDataset(manifest, "test")
    assert make_loader(ds, 2, "cuda").pin_memory and not make_loader(ds, 2, "cpu").persistent_workers
    order = lambda seed: [int(i) for b in make_loader(ds, 2, shuffle=True, seed=seed) for i in b[2]]  # noqa: E731
    assert order(3) == order(3) and sorted(order(3)) == list(range(8))
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(ds, 0)
