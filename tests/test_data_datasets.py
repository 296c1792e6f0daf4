"""Every dataset registry entry reads tiny fabricated folders in its real on-disk layout."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from askshift.lib.data.datasets import DATASETS, DatasetLayoutError, imagenet_wnids, load_dataset
from askshift.lib.registry import UnknownNameError

RNG = np.random.default_rng(0)


def _png(path: Path, size: tuple[int, int] = (12, 10), value: int | None = None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    arr = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8) if value is None else np.full((h, w, 3), value, np.uint8)
    Image.fromarray(arr).save(path)  # PNG: lossless, so pixels can be compared exactly
    return arr


def test_every_registered_dataset_is_covered_here():
    covered = {"digits", "cifar10", "imagefolder", "images", "imagenet-v2", "imagenet-sketch", "imagenet-r",
               "wilds:<name>", "npz"}
    assert set(DATASETS.names()) == covered


def test_a_folder_of_images_without_labels_is_a_dataset(tmp_path):
    from photo_fixtures import make_flat_folder

    from askshift.lib.data.datasets import dataset_info

    make_flat_folder(tmp_path / "flat", n=5, seed=1)
    make_flat_folder(tmp_path / "flat" / "more", n=2, seed=2, fmt="png")
    (tmp_path / "flat" / ".DS_Store").write_bytes(b"\0\1")
    (tmp_path / "flat" / "notes.txt").write_text("not an image")
    data = load_dataset("images", "all", tmp_path / "flat")
    assert len(data) == 7 and set(data.labels.tolist()) == {0} and data.class_names == ["unlabelled"]
    assert not dataset_info("images").labelled and dataset_info("imagefolder").labelled
    assert data.image_array(0).ndim == 3


def test_digits_has_fixed_disjoint_splits_of_32px_rgb():
    train, val = load_dataset("digits", "train"), load_dataset("digits", "val")
    assert len(train) + len(val) == 1797 and len(val) == 359
    assert not set(train.metadata["source_index"]) & set(val.metadata["source_index"])
    image, label = train[0]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert (image[..., 0] == image[..., 1]).all()  # grey digits replicated to RGB
    assert train.num_classes == 10 and 0 <= label < 10
    again = load_dataset("digits", "train")
    assert np.array_equal(again.labels, train.labels) and np.array_equal(again.image_array(5), train.image_array(5))
    assert load_dataset("digits", "val", size=16).image_array(0).shape == (16, 16, 3)


def test_cifar10_reads_python_pickle_batches(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    images = {}
    for name, n in [*((f"data_batch_{i}", 2) for i in range(1, 6)), ("test_batch", 3)]:
        data = RNG.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        labels = list(RNG.integers(0, 10, n))
        images[name] = (data, labels)
        with open(base / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": labels}, fh)
    with open(base / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, fh)
    train = load_dataset("cifar10", "train", root=tmp_path)  # the parent folder is accepted too
    val = load_dataset("cifar10", "val", root=base)
    assert len(train) == 10 and len(val) == 3 and val.class_names[3] == "c3"
    data, labels = images["test_batch"]
    assert np.array_equal(val.image_array(1), data[1].reshape(3, 32, 32).transpose(1, 2, 0))
    assert val.labels.tolist() == [int(x) for x in labels]


def test_cifar10_error_names_missing_file_and_layout(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"data_batch_1.*python pickles"):
        load_dataset("cifar10", "train", root=tmp_path)


def test_imagefolder_shares_train_class_ids_across_splits(tmp_path):
    for split, classes in [("train", ["cat", "dog", "eel"]), ("val", ["dog", "eel"])]:
        for c in classes:
            _png(tmp_path / split / c / "a.png")
            _png(tmp_path / split / c / "b.png")
    val = load_dataset("imagefolder", "val", root=tmp_path)
    assert val.class_names == ["cat", "dog", "eel"]
    assert sorted(set(val.labels.tolist())) == [1, 2]
    assert val.image_array(0).shape == (12, 10, 3)


def test_imagefolder_error_names_missing_split_folder(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match=r"missing folder .*val.*ImageFolder"):
        load_dataset("imagefolder", "val", root=tmp_path)


def test_imagenet_v2_numeric_folders_are_class_indices(tmp_path):
    top = tmp_path / "imagenetv2-matched-frequency-format-val"
    pixels = _png(top / "7" / "x.png")
    _png(top / "999" / "y.png")
    _png(top / "0" / "z.png")
    ds = load_dataset("imagenet-v2", "val", root=tmp_path)  # parent of the extracted folder
    assert ds.num_classes == 1000 and sorted(ds.labels.tolist()) == [0, 7, 999]
    assert np.array_equal(ds.image_array(int(np.flatnonzero(ds.labels == 7)[0])), pixels)
    assert ds.class_mask is None


def test_imagenet_r_keeps_mask_of_its_classes(tmp_path):
    wnids = imagenet_wnids()
    chosen = [wnids[1], wnids[500], wnids[999]]
    for w in chosen:
        _png(tmp_path / "imagenet-r" / w / "art_0.png")
    ds = load_dataset("imagenet-r", "val", root=tmp_path / "imagenet-r")
    assert sorted(ds.labels.tolist()) == [1, 500, 999]
    assert ds.class_mask.shape == (1000,) and np.flatnonzero(ds.class_mask).tolist() == [1, 500, 999]
    assert ds.class_names[1] == "goldfish"


def test_imagenet_sketch_wnid_folders_and_bad_folder_error(tmp_path):
    wnids = imagenet_wnids()
    for w in wnids[:2]:
        _png(tmp_path / "sketch" / w / "s.png")
    ds = load_dataset("imagenet-sketch", "val", root=tmp_path)
    assert ds.labels.tolist() == [0, 1]
    (tmp_path / "sketch" / "not_a_wnid").mkdir()
    with pytest.raises(DatasetLayoutError, match="not an ImageNet-1k WordNet id"):
        load_dataset("imagenet-sketch", "val", root=tmp_path / "sketch")


def _fake_waterbirds(root: Path) -> None:
    data = root / "waterbirds_v1.0"
    rows = ["img_filename,y,place,split"]
    for i in range(12):
        y, place, split = i % 2, (i // 2) % 2, [0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2][i]
        name = f"{i:03d}.bird/img_{i}.png"
        _png(data / name, size=(8, 8), value=i * 10)
        rows.append(f"{name},{y},{place},{split}")
    (data / "metadata.csv").write_text("\n".join(rows) + "\n")
    (data / "RELEASE_v1.0.txt").write_text("fake\n")


def test_wilds_waterbirds_keeps_background_by_label_groups(tmp_path):
    _fake_waterbirds(tmp_path)
    train = load_dataset("wilds:waterbirds", "train", root=tmp_path)
    test = load_dataset("wilds:waterbirds", "test", root=tmp_path)
    assert len(train) == 6 and len(test) == 3
    assert train.class_names == ["landbird", "waterbird"]
    # WILDS groups = background x label: 4 distinct groups, consistent with the metadata.
    expected = train.metadata["meta_y"] * 2 + train.metadata["meta_background"]
    assert np.array_equal(train.groups, expected) and len(set(train.groups.tolist())) == 4
    assert train.extra["group_fields"] == ["background", "y"]
    assert train.image_array(3)[0, 0, 0] == int(train.metadata["wilds_index"][3]) * 10


def test_wilds_missing_root_says_layout(tmp_path):
    with pytest.raises(DatasetLayoutError, match="waterbirds"):
        load_dataset("wilds:waterbirds", "train", root=tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown WILDS dataset"):
        load_dataset("wilds:nope", "train", root=tmp_path)


def test_npz_prefixed_unprefixed_and_folder_layouts(tmp_path):
    imgs = RNG.integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "split.npz", train_images=imgs, train_labels=np.arange(5) % 2,
             val_images=imgs[:2], val_labels=[1, 0], val_groups=[3, -1], class_names=np.array(["a", "b"]))
    train = load_dataset("npz", "train", root=tmp_path / "split.npz")
    val = load_dataset("npz", "val", root=tmp_path / "split.npz")
    assert len(train) == 5 and val.groups.tolist() == [3, -1] and val.class_names == ["a", "b"]
    assert np.array_equal(train.image_array(4), imgs[4])
    np.savez(tmp_path / "one.npz", images=imgs[:, :, :, 0], labels=[0, 1, 2, 0, 1])
    one = load_dataset("npz", "val", root=tmp_path / "one.npz")
    assert one.num_classes == 3 and one.image_array(0).shape == (6, 6, 3)
    folder = tmp_path / "sets"
    folder.mkdir()
    np.savez(folder / "val.npz", images=imgs, labels=np.zeros(5, int))
    assert len(load_dataset("npz", "val", root=folder)) == 5
    with pytest.raises(DatasetLayoutError, match="missing file .*train.npz"):
        load_dataset("npz", "train", root=folder)


def test_unknown_dataset_and_missing_root_errors():
    with pytest.raises(UnknownNameError, match="digits"):
        load_dataset("digit", "train")
    with pytest.raises(DatasetLayoutError, match="needs a root"):
        load_dataset("cifar10", "train")
