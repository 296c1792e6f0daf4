"""The photo fixtures are what the data tests rely on: mixed sizes, deterministic, exact format twins, real corruption."""
from __future__ import annotations

import numpy as np
import pytest
from photo_fixtures import (
    SHAPES,
    add_corrupt_jpeg,
    add_empty_class,
    convert_folder,
    image_files,
    invert_folder,
    make_flat_folder,
    make_imagefolder,
    photo_image,
)
from PIL import Image


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def jpeg_tree(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("photos"), classes=4, per_class=(6, 3), seed=1)


def test_imagefolder_has_a_folder_per_class_and_split_with_jpegs(jpeg_tree):
    for split, n in (("train", 6), ("val", 3)):
        assert sorted(p.name for p in (jpeg_tree / split).iterdir()) == sorted(SHAPES[:4])
        for folder in (jpeg_tree / split).iterdir():
            files = sorted(folder.iterdir())
            assert len(files) == n and all(f.suffix == ".jpg" for f in files)
            with Image.open(files[0]) as im:
                assert im.format == "JPEG" and im.mode == "RGB"


def test_sides_are_mixed_and_between_150_and_500_px(jpeg_tree):
    sizes = [Image.open(p).size for p in image_files(jpeg_tree)]
    sides = np.array(sizes)
    assert sides.min() >= 150 and sides.max() <= 500
    assert len(set(sizes)) == len(sizes)  # 36 images, no two alike
    assert (sides[:, 0] > sides[:, 1]).any() and (sides[:, 0] < sides[:, 1]).any()  # landscape and portrait
    assert np.ptp(sides[:, 0]) > 150 and np.ptp(sides[:, 1]) > 150


def test_photo_image_has_the_requested_size_and_depends_on_its_class():
    a = photo_image(np.random.default_rng(5), 0, 3, size=(321, 173))
    b = photo_image(np.random.default_rng(5), 1, 3, size=(321, 173))
    assert a.size == (321, 173) and a.mode == "RGB"
    assert not np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="outside"):
        photo_image(np.random.default_rng(5), 3, 3)


def test_same_seed_writes_identical_files_in_one_or_many_processes(tmp_path):
    one = make_imagefolder(tmp_path / "one", classes=2, per_class=(3, 2), seed=7)
    many = make_imagefolder(tmp_path / "many", classes=2, per_class=(3, 2), seed=7, workers=2)
    other = make_imagefolder(tmp_path / "other", classes=2, per_class=(3, 2), seed=8)
    files = image_files(one)
    assert [p.relative_to(one) for p in files] == [p.relative_to(many) for p in image_files(many)]
    assert all(p.read_bytes() == (many / p.relative_to(one)).read_bytes() for p in files)
    assert all(p.read_bytes() != (other / p.relative_to(one)).read_bytes() for p in files)


def test_png_conversion_holds_exactly_the_decoded_jpeg_pixels(jpeg_tree, tmp_path):
    png = convert_folder(jpeg_tree, tmp_path / "png", "png")
    jpegs = image_files(jpeg_tree)
    assert [p.relative_to(jpeg_tree).with_suffix(".png") for p in jpegs] == [p.relative_to(png) for p in image_files(png)]
    for path in jpegs:
        twin = png / path.relative_to(jpeg_tree).with_suffix(".png")
        with Image.open(twin) as im:
            assert im.format == "PNG"
        assert np.array_equal(_pixels(path), _pixels(twin))


def test_conversion_keeps_empty_class_folders(tmp_path):
    src = make_imagefolder(tmp_path / "src", classes=2, per_class=(2, 1))
    add_empty_class(src, "val", "zz_empty")
    png = convert_folder(src, tmp_path / "png", "png")
    assert (png / "val" / "zz_empty").is_dir() and not any((png / "val" / "zz_empty").iterdir())


def test_inversion_is_exact_for_png_and_within_jpeg_rounding_for_jpeg(jpeg_tree, tmp_path):
    png = convert_folder(jpeg_tree, tmp_path / "png", "png")
    inverted = invert_folder(png, tmp_path / "inverted_png")
    for path in image_files(png):
        assert np.array_equal(_pixels(inverted / path.relative_to(png)), 255 - _pixels(path))
    inverted_jpeg = invert_folder(jpeg_tree, tmp_path / "inverted_jpeg")
    for path in image_files(jpeg_tree)[:5]:
        twin = inverted_jpeg / path.relative_to(jpeg_tree)
        assert twin.suffix == ".jpg"
        error = np.abs(_pixels(twin).astype(int) - (255 - _pixels(path).astype(int)))
        assert error.mean() < 2.0


def test_transform_runs_before_saving(tmp_path):
    plain = make_imagefolder(tmp_path / "plain", classes=1, per_class=2, splits=("train",), fmt="png")
    flipped = make_imagefolder(tmp_path / "flipped", classes=1, per_class=2, splits=("train",), fmt="png",
                               transform=lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    for path in image_files(plain):
        assert np.array_equal(_pixels(flipped / path.relative_to(plain)), _pixels(path)[:, ::-1])


def test_corrupt_jpegs_fail_to_load_and_the_good_ones_do_not(tmp_path):
    folder = make_imagefolder(tmp_path, classes=1, per_class=2, splits=("train",)) / "train" / SHAPES[0]
    bad = add_corrupt_jpeg(folder)
    assert sorted(p.name for p in bad) == ["garbage.jpg", "truncated.jpg"]
    for path in bad:
        with pytest.raises(OSError):  # UnidentifiedImageError and "image file is truncated" are both OSErrors
            with Image.open(path) as im:
                im.load()
    for path in set(image_files(folder)) - set(bad):
        with Image.open(path) as im:
            im.load()


def test_empty_class_and_flat_folder_have_the_layouts_they_name(tmp_path):
    root = make_imagefolder(tmp_path / "tree", classes=2, per_class=(2, 1))
    empty = add_empty_class(root, "train")
    assert empty == root / "train" / "empty" and empty.is_dir() and not any(empty.iterdir())
    flat = make_flat_folder(tmp_path / "flat", n=5, seed=3)
    assert sorted(p.name for p in flat.iterdir()) == [f"{i:05d}.jpg" for i in range(5)]
    assert all(p.is_file() for p in flat.iterdir())


def test_lib_reads_the_tree_as_an_imagefolder_with_shape_classes(jpeg_tree):
    from askshift.lib.data.datasets import load_dataset

    train = load_dataset("imagefolder", "train", root=jpeg_tree)
    assert train.class_names == sorted(SHAPES[:4]) and len(train) == 24
    image, label = train[0]
    assert image.ndim == 3 and image.shape[2] == 3 and 150 <= min(image.shape[:2])
