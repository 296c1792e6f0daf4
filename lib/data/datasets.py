"""Image-classification datasets by name (a registry): digits, cifar10, imagefolder, ImageNet shifts, WILDS, npz.

A dataset entry is a function ``(root, split, **options) -> ImageDataset``.  An ``ImageDataset`` is an
indexable sequence of ``(image, label)`` with images as HWC uint8 RGB arrays (or PIL images), plus
class names, optional groups (ints, -1 = no group), optional per-example metadata and, for datasets
that cover only part of ImageNet (ImageNet-R), a ``class_mask`` over the 1000 ImageNet classes.
Nothing here downloads: every entry reads a local path and says which layout it expects when the
path is missing.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from askshift.lib.registry import Registry

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")


class DatasetLayoutError(FileNotFoundError):
    """A dataset's files are missing or not in the expected layout; the message says what to provide."""


@dataclass
class ImageDataset:
    """One split of a dataset: ``len(ds)`` examples, ``ds[i] -> (image, label)``.

    ``load_image(i)`` returns an HWC uint8 RGB array or a PIL image; ``labels`` are ints in
    ``[0, num_classes)``.  ``groups`` (ints, -1 = no group) and ``metadata`` (column -> array)
    are optional.  ``class_mask`` (bool, ``num_classes`` long) marks the classes the dataset
    actually contains when it covers only some of them (ImageNet-R: 200 of 1000).
    """

    name: str
    split: str
    labels: np.ndarray
    class_names: list[str]
    load_image: Callable[[int], Any]
    groups: np.ndarray | None = None
    metadata: dict[str, np.ndarray] = field(default_factory=dict)
    class_mask: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # JSON-able facts kept in the .beton manifest
    files: list[Path] | None = None  # the image files of a folder dataset, checked for decodability before compute
    default_write_mode: str = "jpg"
    default_max_resolution: int | None = 256

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.groups is not None:
            self.groups = np.asarray(self.groups, dtype=np.int64)
            if len(self.groups) != len(self.labels):
                raise ValueError(f"{self.name}: {len(self.groups)} groups for {len(self.labels)} labels")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.load_image(int(index)), int(self.labels[index])

    def image_array(self, index: int) -> np.ndarray:
        """The image as a contiguous HWC uint8 RGB array (what the .beton writer stores)."""
        return to_rgb_array(self.load_image(int(index)))


def to_rgb_array(image: Any) -> np.ndarray:
    """PIL image or array (HW, HWC gray/RGB/RGBA) -> contiguous HWC uint8 RGB."""
    if not isinstance(image, np.ndarray):
        image = np.asarray(image.convert("RGB"))
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)


def open_rgb(path: str | os.PathLike) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as exc:  # the file's name, not only PIL's "image file is truncated"
        raise OSError(f"cannot decode image {path}: {' '.join(str(exc).split())}") from exc


# A dataset builder: (root, split, **options) -> ImageDataset
DatasetBuilder = Callable[..., ImageDataset]
DATASETS: Registry[DatasetBuilder] = Registry("dataset")


@dataclass(frozen=True)
class DatasetInfo:
    """What the registry knows about a dataset without reading it."""

    splits: tuple[str, ...]
    needs_root: bool
    layout: str
    photos: bool = False  # images of mixed sizes: read with crops at the model's resolution (askshift.lib.data.transforms)
    labelled: bool = True  # False: no labels (every label is 0): a shifted side for the domain classifier only


_INFO: dict[str, DatasetInfo] = {}


def register_dataset(name: str, description: str, splits: Sequence[str], needs_root: bool, layout: str,
                     photos: bool = False, labelled: bool = True):
    def decorator(fn: DatasetBuilder) -> DatasetBuilder:
        DATASETS.add(name, fn, description)
        _INFO[name] = DatasetInfo(tuple(splits), needs_root, layout, photos, labelled)
        return fn

    return decorator


def _base_name(name: str) -> str:
    # "wilds:waterbirds" is served by the "wilds:<name>" entry
    return "wilds:<name>" if name.startswith("wilds:") else name


def dataset_info(name: str) -> DatasetInfo:
    DATASETS.get(_base_name(name))  # raises UnknownNameError with the choices
    return _INFO[_base_name(name)]


def load_dataset(name: str, split: str, root: str | os.PathLike | None = None, **options: Any) -> ImageDataset:
    """Open one split of a registered dataset.  ``root`` is required for everything but ``digits``."""
    base = _base_name(name)
    builder = DATASETS.get(base)
    info = _INFO[base]
    if info.needs_root and root is None:
        raise DatasetLayoutError(f"dataset {name!r} needs a root (--root PATH): {info.layout}")
    if base == "wilds:<name>":
        return builder(root, split, wilds_name=name.split(":", 1)[1], **options)
    return builder(root, split, **options)


def _check_split(name: str, split: str, splits: Sequence[str]) -> None:
    if split not in splits:
        raise ValueError(f"dataset {name!r} has no split {split!r}; choose one of: {', '.join(splits)}")


def _require_dir(path: Path, name: str, layout: str) -> Path:
    if not path.is_dir():
        raise DatasetLayoutError(f"dataset {name!r}: missing folder {path}. Expected layout: {layout}")
    return path


# --- digits: the embedded default ---------------------------------------------------------

DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


@register_dataset(
    "digits",
    "scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes) upsampled to RGB; no download",
    splits=("train", "val"),
    needs_root=False,
    layout="bundled with scikit-learn, no files needed",
)
def digits(root: str | None, split: str, size: int = 32) -> ImageDataset:
    """scikit-learn digits, a fixed seeded 80/20 train/val split, bilinearly upsampled to size x size RGB."""
    _check_split("digits", split, ("train", "val"))
    import torch
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # values are 0..16
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels))
    n_val = int(round(DIGITS_VAL_FRACTION * len(labels)))
    chosen = np.sort(order[:n_val] if split == "val" else order[n_val:])
    small = torch.from_numpy(images[chosen])[:, None]
    big = torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    arrays = (big.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).contiguous().numpy()
    return ImageDataset(
        name="digits",
        split=split,
        labels=labels[chosen],
        class_names=[str(i) for i in range(10)],
        load_image=lambda i: arrays[i],
        metadata={"source_index": chosen.astype(np.int64)},
        default_write_mode="raw",
        default_max_resolution=None,
    )


# --- CIFAR-10, python pickle layout -------------------------------------------------------

CIFAR_LAYOUT = (
    "ROOT/ is the extracted 'cifar-10-batches-py' folder (or its parent) holding data_batch_1 .. data_batch_5, "
    "test_batch and batches.meta (python pickles)"
)


# Everything a CIFAR-10 batch pickle refers to by name: numpy arrays (and scalars) and inert builtins.  Anything
# else (os.system, builtins.eval, ...) would be code run by loading a file, so it is refused.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    *(("builtins", name) for name in ("bytearray", "bytes", "complex", "dict", "frozenset", "list", "set", "tuple")),
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only what CIFAR batches hold: dicts, lists, bytes, str, numbers, numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # Python 2's name, which the base class maps to builtins
            module = "builtins"
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which no CIFAR-10 batch needs "
                                         "(refused, not run)")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):  # numpy 2 moved it; skip the deprecation shim
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def load_cifar_pickle(path: Path) -> Any:
    """Unpickle one CIFAR-10 python batch file with the restricted unpickler; a file that is no such batch is a
    DatasetLayoutError naming it."""
    try:
        with open(path, "rb") as fh:
            return _CifarUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise DatasetLayoutError(f"dataset 'cifar10': {path} is not a CIFAR-10 python batch: {exc}") from exc


@register_dataset(
    "cifar10",
    "CIFAR-10 from a local folder in the python-pickle layout (cifar-10-batches-py); val = test_batch",
    splits=("train", "val"),
    needs_root=True,
    layout=CIFAR_LAYOUT,
)
def cifar10(root: str, split: str) -> ImageDataset:
    """CIFAR-10 (train = data_batch_1..5, val = test_batch)."""
    _check_split("cifar10", split, ("train", "val"))
    base = Path(root).expanduser()
    if (base / "cifar-10-batches-py").is_dir():
        base = base / "cifar-10-batches-py"
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [f for f in files + ["batches.meta"] if not (base / f).is_file()]
    if missing:
        raise DatasetLayoutError(f"dataset 'cifar10': missing {', '.join(str(base / m) for m in missing)}. Expected: {CIFAR_LAYOUT}")
    data, labels = [], []
    for f in files:
        batch = load_cifar_pickle(base / f)
        data.append(np.asarray(batch[b"data"], dtype=np.uint8))
        labels.extend(batch[b"labels"])
    meta = load_cifar_pickle(base / "batches.meta")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    arrays = np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    return ImageDataset(
        name="cifar10",
        split=split,
        labels=np.asarray(labels),
        class_names=names,
        load_image=lambda i: arrays[i],
        default_write_mode="raw",
        default_max_resolution=None,
    )


# --- folder trees -------------------------------------------------------------------------


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan(folders: list[tuple[Path, int]]) -> tuple[list[Path], np.ndarray]:
    paths: list[Path] = []
    labels: list[int] = []
    for folder, label in folders:
        files = _list_images(folder)
        paths.extend(files)
        labels.extend([label] * len(files))
    return paths, np.asarray(labels, dtype=np.int64)


def _folder_dataset(name: str, split: str, paths: list[Path], labels: np.ndarray, class_names: list[str],
                    layout: str, root: Path, class_mask: np.ndarray | None = None) -> ImageDataset:
    if not paths:
        raise DatasetLayoutError(f"dataset {name!r}: no images under {root}. Expected layout: {layout}")
    return ImageDataset(
        name=name,
        split=split,
        labels=labels,
        class_names=class_names,
        load_image=lambda i: open_rgb(paths[i]),
        metadata={"path": np.asarray([str(p.relative_to(root)) for p in paths])},
        class_mask=class_mask,
        files=list(paths),
    )


IMAGES_LAYOUT = "ROOT/<image> (a folder of images, sub-folders included; no class folders needed, no labels)"


@register_dataset(
    "images",
    "a folder of images without labels, ROOT/*.jpg (sub-folders included): the shifted side of `askshift ask`",
    splits=("all",),
    needs_root=True,
    layout=IMAGES_LAYOUT,
    photos=True,
    labelled=False,
)
def images(root: str, split: str = "all") -> ImageDataset:
    """Every image file under ``root``, in path order, each labelled 0 (no labels are known)."""
    _check_split("images", split, ("all",))
    base = _require_dir(Path(root).expanduser(), "images", IMAGES_LAYOUT)
    paths = sorted(p for p in base.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not p.name.startswith("."))
    return _folder_dataset("images", split, paths, np.zeros(len(paths), np.int64), ["unlabelled"], IMAGES_LAYOUT, base)


IMAGEFOLDER_LAYOUT = "ROOT/train/<class>/<image> and ROOT/val/<class>/<image> (ImageFolder; classes = sorted train/ folders)"


@register_dataset(
    "imagefolder",
    "any ImageFolder tree ROOT/{train,val}/<class>/*.jpg (e.g. ImageNet); classes from train/",
    splits=("train", "val", "test"),
    needs_root=True,
    layout=IMAGEFOLDER_LAYOUT,
    photos=True,
)
def imagefolder(root: str, split: str) -> ImageDataset:
    """An ImageFolder tree; the class list comes from ``train/`` so every split shares label ids."""
    base = _require_dir(Path(root).expanduser(), "imagefolder", IMAGEFOLDER_LAYOUT)
    split_dir = _require_dir(base / split, "imagefolder", IMAGEFOLDER_LAYOUT)
    class_source = base / "train" if (base / "train").is_dir() else split_dir
    class_dirs = _class_folders(class_source)
    classes = [p.name for p in class_dirs]
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise DatasetLayoutError(f"dataset 'imagefolder': {class_source} needs at least two class folders (found {found}); "
                                 f"a classifier of one class learns nothing. Expected layout: {IMAGEFOLDER_LAYOUT}")
    empty = [p for p in class_dirs if not any(f.suffix.lower() in IMAGE_EXTENSIONS for f in p.rglob("*"))]
    if empty:
        raise DatasetLayoutError(f"dataset 'imagefolder': class folder {empty[0]} has no images"
                                 f"{f' ({len(empty) - 1} more)' if len(empty) > 1 else ''}; classes come from the "
                                 f"folders of {class_source.name}/: add images or remove the folder")
    folders = []
    for folder in _class_folders(split_dir):
        if folder.name not in classes:
            raise DatasetLayoutError(
                f"dataset 'imagefolder': class folder {folder} has no counterpart in {class_source}; "
                f"every split must use the class folders of train/"
            )
        folders.append((folder, classes.index(folder.name)))
    paths, labels = _scan(folders)
    return _folder_dataset("imagefolder", split, paths, labels, classes, IMAGEFOLDER_LAYOUT, split_dir)


def _timm_info(filename: str) -> Path:
    import importlib.util

    # Located without importing timm (seconds of start-up) -- only its data files are needed.
    spec = importlib.util.find_spec("timm")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the ImageNet class list comes with timm: pip install timm")
    return Path(spec.origin).parent / "data" / "_info" / filename


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in class-index order (shipped with timm, no download)."""
    return _timm_info("imagenet_synsets.txt").read_text().split()


def imagenet_class_names() -> list[str]:
    """Readable ImageNet-1k class names in class-index order: open_clip's curated list (the one CLIP's zero-shot
    heads were built with in the original; shipped with open_clip, no download).  The one source of these names."""
    from open_clip import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def _descend(root: Path, looks_like_class: Callable[[str], bool]) -> Path:
    """Accept the extracted archive's top folder or its parent (imagenet-r/, sketch/, imagenetv2-*/)."""
    children = _class_folders(root) if root.is_dir() else []
    if children and any(looks_like_class(c.name) for c in children):
        return root
    if len(children) == 1:
        return _descend(children[0], looks_like_class)
    return root


def _single_set_splits(name: str, split: str) -> None:
    # These sets are evaluation-only; "val"/"test"/"all" all mean the whole set.
    _check_split(name, split, ("val", "test", "all"))


V2_LAYOUT = "ROOT/<class index 0..999>/<image> (ImageNetV2 matched-frequency format; ROOT may be the extracted folder or its parent)"


@register_dataset(
    "imagenet-v2",
    "ImageNet-V2 (class folders named 0..999, ImageNet class order); evaluation only (split val)",
    splits=("val",),
    needs_root=True,
    layout=V2_LAYOUT,
    photos=True,
)
def imagenet_v2(root: str, split: str) -> ImageDataset:
    """ImageNet-V2: folder ``k`` holds class ``k`` of ImageNet-1k."""
    _single_set_splits("imagenet-v2", split)
    base = _descend(_require_dir(Path(root).expanduser(), "imagenet-v2", V2_LAYOUT), str.isdigit)
    folders = []
    for folder in _class_folders(base):
        if not folder.name.isdigit() or not 0 <= int(folder.name) < 1000:
            raise DatasetLayoutError(f"dataset 'imagenet-v2': unexpected folder {folder}. Expected layout: {V2_LAYOUT}")
        folders.append((folder, int(folder.name)))
    paths, labels = _scan(sorted(folders, key=lambda f: f[1]))
    return _folder_dataset("imagenet-v2", split, paths, labels, imagenet_class_names(), V2_LAYOUT, base)


def _wnid_dataset(name: str, root: str, split: str, layout: str) -> ImageDataset:
    _single_set_splits(name, split)
    wnids = imagenet_wnids()
    index = {w: i for i, w in enumerate(wnids)}
    base = _descend(_require_dir(Path(root).expanduser(), name, layout), lambda n: n in index)
    folders = []
    for folder in _class_folders(base):
        if folder.name not in index:
            raise DatasetLayoutError(f"dataset {name!r}: folder {folder} is not an ImageNet-1k WordNet id. Expected layout: {layout}")
        folders.append((folder, index[folder.name]))
    mask = np.zeros(len(wnids), dtype=bool)
    mask[[label for _, label in folders]] = True
    paths, labels = _scan(folders)
    # The mask lets reference predictions be restricted to the classes the shifted set covers.
    class_mask = None if mask.all() else mask
    return _folder_dataset(name, split, paths, labels, imagenet_class_names(), layout, base, class_mask=class_mask)


SKETCH_LAYOUT = "ROOT/<wnid, e.g. n01440764>/<image> (ImageNet-Sketch 'sketch/' folder or its parent)"
R_LAYOUT = "ROOT/<wnid, e.g. n01443537>/<image> (ImageNet-R 'imagenet-r/' folder or its parent; 200 of the 1000 classes)"


@register_dataset(
    "imagenet-sketch",
    "ImageNet-Sketch (WordNet-id folders, labels in ImageNet-1k order); evaluation only (split val)",
    splits=("val",),
    needs_root=True,
    layout=SKETCH_LAYOUT,
    photos=True,
)
def imagenet_sketch(root: str, split: str) -> ImageDataset:
    """ImageNet-Sketch: one folder per ImageNet-1k WordNet id."""
    return _wnid_dataset("imagenet-sketch", root, split, SKETCH_LAYOUT)


@register_dataset(
    "imagenet-r",
    "ImageNet-R (200 WordNet-id folders; keeps the mask of its classes among ImageNet-1k); evaluation only",
    splits=("val",),
    needs_root=True,
    layout=R_LAYOUT,
    photos=True,
)
def imagenet_r(root: str, split: str) -> ImageDataset:
    """ImageNet-R: labels in ImageNet-1k order plus ``class_mask`` marking its 200 classes."""
    return _wnid_dataset("imagenet-r", root, split, R_LAYOUT)


# --- WILDS ----------------------------------------------------------------------------------

WILDS_LAYOUT = (
    "ROOT is the WILDS root_dir holding <name>_v<version>/ as the wilds package lays it out "
    "(e.g. waterbirds_v1.0/ with RELEASE_v1.0.txt, metadata.csv and the images); nothing is downloaded"
)


def _wilds_groups(dataset: Any) -> tuple[np.ndarray, list[str]]:
    """Groups from the dataset's own evaluation grouper (e.g. background x label for Waterbirds).

    Computed from metadata with the grouper only; ``dataset.eval()`` is never called because it
    imports torch_scatter, which wilds does not declare.
    """
    grouper = getattr(dataset, "_eval_grouper", None)
    metadata = dataset.metadata_array
    if grouper is not None and hasattr(grouper, "metadata_to_group"):
        groups = grouper.metadata_to_group(metadata).numpy().astype(np.int64)
        fields = list(getattr(grouper, "groupby_fields", None) or [])
        return groups, fields
    first = dataset.metadata_fields[0]
    return metadata[:, 0].numpy().astype(np.int64), [first]


@register_dataset(
    "wilds:<name>",
    "a WILDS dataset, e.g. wilds:waterbirds, wilds:fmow (local root_dir, download=False; groups from its metadata)",
    splits=("train", "val", "test", "id_val", "id_test"),
    needs_root=True,
    layout=WILDS_LAYOUT,
    photos=True,
)
def wilds_dataset(root: str, split: str, wilds_name: str = "", **wilds_options: Any) -> ImageDataset:
    """Any image dataset of the wilds package, read from its local ``root_dir`` (never downloads)."""
    import wilds

    if wilds_name not in wilds.supported_datasets:
        raise ValueError(f"unknown WILDS dataset {wilds_name!r}; choose one of: {', '.join(wilds.supported_datasets)}")
    base = _require_dir(Path(root).expanduser(), f"wilds:{wilds_name}", WILDS_LAYOUT)
    try:
        dataset = wilds.get_dataset(dataset=wilds_name, root_dir=str(base), download=False, **wilds_options)
    except (FileNotFoundError, ValueError) as exc:
        raise DatasetLayoutError(f"dataset 'wilds:{wilds_name}' could not be read from {base}: {exc}. Expected: {WILDS_LAYOUT}") from exc
    if split not in dataset.split_dict:
        raise ValueError(f"dataset 'wilds:{wilds_name}' has no split {split!r}; choose one of: {', '.join(dataset.split_dict)}")
    chosen = np.flatnonzero(dataset.split_array == dataset.split_dict[split])
    groups_all, group_fields = _wilds_groups(dataset)
    meta = dataset.metadata_array.numpy()
    metadata = {f"meta_{name}": meta[chosen, j].astype(np.int64) for j, name in enumerate(dataset.metadata_fields)}
    metadata["wilds_index"] = chosen.astype(np.int64)
    y = dataset.y_array.numpy()[chosen]
    n_classes = int(getattr(dataset, "n_classes", None) or (int(y.max()) + 1))
    class_names = [str(i) for i in range(n_classes)]
    label_map = (getattr(dataset, "metadata_map", None) or {}).get("y")
    if label_map is not None and len(label_map) == n_classes:
        class_names = [str(n).strip() for n in label_map]
    return ImageDataset(
        name=f"wilds:{wilds_name}",
        split=split,
        labels=y,
        class_names=class_names,
        load_image=lambda i: dataset.get_input(int(chosen[i])),
        groups=groups_all[chosen],
        metadata=metadata,
        extra={"group_fields": group_fields},
    )


# --- npz: custom sets -------------------------------------------------------------------------

NPZ_LAYOUT = (
    "ROOT is a .npz file with images (N,H,W,3 uint8) and labels (N,) [+ groups (N,), class_names], either "
    "prefixed by split (train_images, train_labels, val_images, ...) or unprefixed (one set served for every split), "
    "or a folder holding <split>.npz files with unprefixed keys"
)


@register_dataset(
    "npz",
    "images (N,H,W,3 uint8) + labels [+ groups] from a .npz file: custom sets and in/out-of-support sub-sets",
    splits=("train", "val", "<any key prefix>"),
    needs_root=True,
    layout=NPZ_LAYOUT,
)
def npz(root: str, split: str) -> ImageDataset:
    """Arrays from a .npz file (``<split>_images`` / ``images``) or from ``ROOT/<split>.npz``."""
    path = Path(root).expanduser()
    if path.is_dir():
        path = path / f"{split}.npz"
        prefix = ""
    else:
        prefix = None
    if not path.is_file():
        raise DatasetLayoutError(f"dataset 'npz': missing file {path}. Expected: {NPZ_LAYOUT}")
    import zipfile

    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle and suggest allow_pickle, which we never use
        raise DatasetLayoutError(f"dataset 'npz': {path} is not a .npz archive of arrays (write one with "
                                 f"numpy.savez). Expected: {NPZ_LAYOUT}")
    with np.load(path, allow_pickle=False) as data:
        keys = set(data.files)
        if prefix is None:
            prefix = f"{split}_" if f"{split}_images" in keys else ""
        if f"{prefix}images" not in keys or f"{prefix}labels" not in keys:
            raise DatasetLayoutError(
                f"dataset 'npz': {path} has no '{prefix}images'/'{prefix}labels' for split {split!r} "
                f"(keys: {', '.join(sorted(keys))}). Expected: {NPZ_LAYOUT}"
            )
        images = np.asarray(data[f"{prefix}images"])
        labels = np.asarray(data[f"{prefix}labels"]).astype(np.int64)
        groups = np.asarray(data[f"{prefix}groups"]) if f"{prefix}groups" in keys else None
        names_key = f"{prefix}class_names" if f"{prefix}class_names" in keys else "class_names"
        class_names = [str(n) for n in data[names_key]] if names_key in keys else None
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
        raise DatasetLayoutError(
            f"dataset 'npz': {path} images must be uint8 (N,H,W,3) or (N,H,W) matching {len(labels)} labels, "
            f"got {images.dtype} {images.shape}"
        )
    if class_names is None:
        class_names = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
    return ImageDataset(
        name="npz",
        split=split,
        labels=labels,
        class_names=class_names,
        load_image=lambda i: images[i],
        groups=groups,
        default_write_mode="raw",
        default_max_resolution=None,
    )


def dataset_num_classes(name: str, root: str | os.PathLike | None = None, split: str | None = None) -> int:
    """Number of classes, opening the dataset only when it is not known in advance."""
    known = {"digits": 10, "cifar10": 10, "imagenet-v2": 1000, "imagenet-sketch": 1000, "imagenet-r": 1000}
    if name in known:
        return known[name]
    if name == "imagefolder" and root is not None:
        base = Path(root).expanduser()
        return len(_class_folders(_require_dir(base / "train", name, IMAGEFOLDER_LAYOUT)))
    splits = dataset_info(name).splits
    return load_dataset(name, split or ("val" if "val" in splits else splits[0]), root).num_classes


__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetLayoutError",
    "ImageDataset",
    "dataset_info",
    "dataset_num_classes",
    "imagenet_class_names",
    "imagenet_wnids",
    "load_dataset",
    "to_rgb_array",
]
