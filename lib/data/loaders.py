"""FFCV loaders for experiment splits: device-aware pipelines, class-rate subsampling, shifts and augmentations.

``split_loader(spec, split, cache_dir, config, train)`` writes (or reuses) the split's .beton and
yields ``(images, labels, indices)``: images float in [0, 1], NCHW, on ``config.device``; labels
int64; indices int64 = the example's row in the split (stable ids for predictions and groups).

FFCV decodes (and crops, for the crop decoders) inside its compiled pipeline; the shift transform
and the flip / translate / cutout augmentations run as torch ops on the yielded batch (torch
modules inside an FFCV pipeline hit numba typing errors, FFCV issue #264).  Their randomness is
keyed by (seed, epoch, example index), so a resumed run sees the same augmentations.
"""
from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from askshift.lib.data.beton import BetonFile, BetonOptions, ensure_beton
from askshift.lib.data.shifts import example_uniform, make_shift
from askshift.lib.data.specs import DistributionSpec, ExperimentSpec
from askshift.lib.data.transforms import TRAIN_CROP_SCALE

# Salt of the class-rate subsampling stream: fixed, so a distribution is the same set of examples everywhere.
_RATE_SALT = 0x5EED_C1A5
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "uint8": torch.uint8}


class LoaderConfig(BaseModel):
    """How batches are decoded, augmented and delivered."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_size: int = Field(256, ge=1)
    num_workers: int = Field(0, ge=0, description="FFCV decoding threads; 0 = all cores (FFCV also sets torch's thread count to this)")
    decoder: Literal["simple", "center_crop", "random_crop", "imagenet_random_crop"] = Field(
        "simple",
        description="simple: images as stored (resized to `resolution` if set); center_crop: crop ratio 224/256 then resize; "
        "random_crop: random resized crop, scale 0.35-1 (training; center_crop in evaluation); "
        "imagenet_random_crop: scale 0.08-1 as for ImageNet",
    )
    resolution: int | None = Field(None, ge=1, description="output side length; None = as stored (simple) or required for crops")
    flip: bool = Field(False, description="random horizontal flip (training only)")
    translate: int = Field(0, ge=0, description="random translation by up to this many pixels, zero-filled (training only)")
    cutout: int = Field(0, ge=0, description="side of a random zeroed square (training only); 0 = off")
    device: str = Field("cpu", description="torch device of the batches: cpu, cuda, cuda:1, ...")
    dtype: Literal["float32", "float16", "bfloat16", "uint8"] = Field(
        "float32", description="image dtype of the batches; uint8 = the stored bytes, turned into float [0, 1] on the "
        "model's device by askshift.lib.models.training.place_images (FFCV's own recipe: the float conversion runs on the accelerator)")
    channels_last: bool = Field(True, description="deliver images in channels-last memory format (FFCV yields NHWC: no copy; the models are channels-last)")
    center_crop_ratio: float = Field(224 / 256, gt=0, le=1)
    batches_ahead: int = Field(3, ge=1)

    @field_validator("device", mode="before")
    @classmethod
    def _valid_device(cls, device: object) -> str:
        # torch.device objects are accepted and kept as their string form (JSON-able, hashable configs).
        return str(torch.device(device))  # raises on nonsense

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]


@dataclass(frozen=True)
class SplitInfo:
    """What a split holds.  ``groups`` and ``labels`` are indexed by example index (length = records in the
    split, before class-rate subsampling); ``indices`` are the examples the split's loader yields."""

    num_examples: int
    num_classes: int
    class_names: list[str]
    groups: np.ndarray | None
    class_mask: np.ndarray | None = None
    indices: np.ndarray | None = None
    labels: np.ndarray | None = None
    path: Path | None = None


def _float(dtype: torch.dtype) -> torch.dtype:
    # Shifts work on float [0, 1] images: a shifted split's uint8 batches are delivered as float32.
    return torch.float32 if dtype == torch.uint8 else dtype


def _import_ffcv():
    # Importing ffcv sets torch's thread count to 1 for the whole process; keep the caller's setting.
    threads = torch.get_num_threads()
    import ffcv  # noqa: F401
    import ffcv.fields.decoders  # noqa: F401
    import ffcv.loader  # noqa: F401
    import ffcv.transforms  # noqa: F401

    torch.set_num_threads(threads)


def beton_options(dist: DistributionSpec) -> BetonOptions:
    return BetonOptions(write_mode=dist.write_mode, max_resolution=dist.max_resolution,
                        jpeg_quality=dist.jpeg_quality, dataset_options=dist.dataset_options)


def split_beton(spec: ExperimentSpec, split: str, cache_dir: str | os.PathLike) -> tuple[DistributionSpec, BetonFile]:
    """Write or reuse the .beton behind an experiment split."""
    dist, dataset_split = spec.distribution(split)
    return dist, ensure_beton(dist.dataset, dataset_split, cache_dir, dist.root, beton_options(dist))


def kept_examples(labels: np.ndarray, rates: np.ndarray | None) -> np.ndarray:
    """Example indices kept by class-rate subsampling: example i stays when u(i) < rate[label_i].

    u(i) depends on the index only, so the subsample is one fixed set (not redrawn each epoch).
    """
    indices = np.arange(len(labels), dtype=np.int64)
    if rates is None:
        return indices
    u = example_uniform(0, _RATE_SALT, indices)
    return indices[u < rates[labels]]


def _select(beton: BetonFile, dist: DistributionSpec, indices: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    labels = beton.labels()
    kept = kept_examples(labels, dist.rates_array(beton.num_classes))
    if dist.classes is not None:
        kept = kept[np.isin(labels[kept], np.asarray(dist.classes, dtype=np.int64))]
    if indices is not None:
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= beton.num_records):
            raise IndexError(f"indices must lie in [0, {beton.num_records}) for {beton.path.name}")
        kept = np.intersect1d(kept, indices)
    return kept, labels


def split_info(spec: ExperimentSpec, split: str, cache_dir: str | os.PathLike) -> SplitInfo:
    """Sizes, classes, groups and class mask of an experiment split (writes its .beton if needed)."""
    dist, beton = split_beton(spec, split, cache_dir)
    kept, labels = _select(beton, dist, None)
    return SplitInfo(
        num_examples=len(kept),
        num_classes=beton.num_classes,
        class_names=beton.class_names,
        groups=beton.groups(),
        class_mask=beton.class_mask,
        indices=kept,
        labels=labels,
        path=beton.path,
    )


def _seed_from_batch(batch_indices):
    # FNV-1a over the batch's example order: the traversal order is a function of (seed, epoch), so the crops are too.
    h = np.uint64(14695981039346656037)
    for k in range(len(batch_indices)):
        h = (h ^ np.uint64(batch_indices[k] + 1)) * np.uint64(1099511628211)
    np.random.seed(np.int64(h >> np.uint64(33)))


_SEEDED_CROP = None


def seeded_random_resized_crop(output_size: tuple[int, int], scale: tuple[float, float]):
    """FFCV's own ``RandomResizedCropRGBImageDecoder``, its (numba) generator seeded per batch from the batch's
    example order: a run, and a run resumed from a checkpoint, draw the same crops.  Exact with one decoding
    thread (tasks use one); with several, numba gives each thread its own generator and crops vary."""
    global _SEEDED_CROP
    if _SEEDED_CROP is None:
        from ffcv.fields.decoders import RandomResizedCropRGBImageDecoder
        from ffcv.pipeline.compiler import Compiler

        class SeededRandomResizedCrop(RandomResizedCropRGBImageDecoder):
            def generate_code(self):
                decode = Compiler.compile(super().generate_code())
                seed = Compiler.compile(_seed_from_batch)

                def seeded_decode(batch_indices, my_storage, metadata, storage_state):
                    seed(batch_indices)
                    return decode(batch_indices, my_storage, metadata, storage_state)

                return seeded_decode

        _SEEDED_CROP = SeededRandomResizedCrop
    return _SEEDED_CROP(output_size, scale=scale)


def _image_pipeline(config: LoaderConfig, train: bool, stored_shape: tuple[int, int] | None):
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, SimpleRGBImageDecoder
    from ffcv.transforms import ToDevice, ToTensor, ToTorchImage

    res = config.resolution
    decoder_name = config.decoder
    if decoder_name in ("random_crop", "imagenet_random_crop") and not train:
        decoder_name = "center_crop"
    if decoder_name != "simple" and res is None:
        if stored_shape is None:
            raise ValueError(f"decoder {config.decoder!r} needs a resolution (images of this split differ in size)")
        res = max(stored_shape)
    if decoder_name == "simple":
        if stored_shape is None and res is None:
            raise ValueError("images of this split differ in size: choose a resolution (--resolution N)")
        if res is None or stored_shape == (res, res):
            decoder = SimpleRGBImageDecoder()
        else:
            decoder = CenterCropRGBImageDecoder((res, res), ratio=1.0)  # a plain resize of the whole image
    elif decoder_name == "center_crop":
        decoder = CenterCropRGBImageDecoder((res, res), ratio=config.center_crop_ratio)
    elif decoder_name == "random_crop":
        decoder = seeded_random_resized_crop((res, res), scale=(0.35, 1.0))
    else:
        decoder = seeded_random_resized_crop((res, res), scale=TRAIN_CROP_SCALE)
    ops = [decoder, ToTensor()]
    if config.torch_device.type != "cpu":
        ops.append(ToDevice(config.torch_device, non_blocking=True))
    ops.append(ToTorchImage(channels_last=config.channels_last))
    return ops


def _int_pipeline(config: LoaderConfig):
    from ffcv.fields.basics import IntDecoder
    from ffcv.transforms import Squeeze, ToDevice, ToTensor

    ops = [IntDecoder(), ToTensor(), Squeeze(1)]
    if config.torch_device.type != "cpu":
        ops.append(ToDevice(config.torch_device, non_blocking=True))
    return ops


def stored_shape(beton: BetonFile) -> tuple[int, int] | None:
    """(H, W) when every stored image has the same size, else None."""
    from ffcv.reader import Reader

    meta = Reader(str(beton.path)).metadata["f0"]
    heights, widths = np.unique(meta["height"]), np.unique(meta["width"])
    if len(heights) == 1 and len(widths) == 1:
        return int(heights[0]), int(widths[0])
    return None


def _salt(epoch: int) -> int:
    return (epoch + 1) * 1_000_003


def flip_in_place(images: torch.Tensor, indices: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """Mirror about half the images (which ones: keyed by (seed, epoch, example index)), in place.

    Done on the uint8 batch before it becomes float: a quarter of the bytes, and only the flipped rows move
    (on 224 px photos this took the loader from ~700 to ~1,200 images/s on two cores).
    """
    chosen = np.flatnonzero(example_uniform(seed, _salt(epoch), indices, 1) < 0.5)
    if not chosen.size:
        return images
    if (images.device.type == "cpu" and images.dtype == torch.uint8 and images.dim() == 4
            and images.is_contiguous(memory_format=torch.channels_last)):
        # FFCV's channels-last uint8 batch: pixels swapped in place, images in parallel (5x torch's gather-flip-scatter)
        _flip_kernel()(images.permute(0, 2, 3, 1).numpy(), chosen.astype(np.int64))
        return images
    rows = torch.as_tensor(chosen, device=images.device)
    images[rows] = images[rows].flip(-1)
    return images


def _flip_rows_nhwc(images, rows):
    """Mirror ``images[rows]`` (N, H, W, C) in place; compiled by numba in ``_flip_kernel``."""
    _, height, width, channels = images.shape
    for k in _prange(rows.size):
        i = rows[k]
        for y in range(height):
            for x in range(width // 2):
                for c in range(channels):
                    t = images[i, y, x, c]
                    images[i, y, x, c] = images[i, y, width - 1 - x, c]
                    images[i, y, width - 1 - x, c] = t


_prange = range  # numba.prange once compiled (numba reads the global at compile time)
_FLIP_KERNEL = None


def _flip_kernel():
    global _FLIP_KERNEL, _prange
    if _FLIP_KERNEL is None:
        import numba  # FFCV's own dependency

        _prange = numba.prange
        _FLIP_KERNEL = numba.njit(parallel=True, nogil=True, cache=True)(_flip_rows_nhwc)
    return _FLIP_KERNEL


def augment(images: torch.Tensor, indices: torch.Tensor, config: LoaderConfig, seed: int, epoch: int,
            flipped: bool = False) -> torch.Tensor:
    """Flip (unless ``flipped`` already) / translate / cutout with randomness keyed by (seed, epoch, example index)."""
    n, _, h, w = images.shape
    salt = _salt(epoch)
    dev = images.device
    if config.flip and not flipped:
        images = flip_in_place(images.clone(), indices, seed, epoch)
    if config.translate:
        pad = config.translate
        dy = np.floor(example_uniform(seed, salt, indices, 2) * (2 * pad + 1)).astype(np.int64)
        dx = np.floor(example_uniform(seed, salt, indices, 3) * (2 * pad + 1)).astype(np.int64)
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
        rows = torch.as_tensor(dy, device=dev)[:, None] + torch.arange(h, device=dev)[None, :]
        cols = torch.as_tensor(dx, device=dev)[:, None] + torch.arange(w, device=dev)[None, :]
        batch = torch.arange(n, device=dev)[:, None, None]
        moved = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # N, H, W, C
        images = moved.permute(0, 3, 1, 2)
    if config.cutout:
        cy = torch.as_tensor(np.floor(example_uniform(seed, salt, indices, 4) * h), device=dev).view(n, 1, 1)
        cx = torch.as_tensor(np.floor(example_uniform(seed, salt, indices, 5) * w), device=dev).view(n, 1, 1)
        half = config.cutout / 2
        r = torch.arange(h, device=dev).view(1, h, 1)
        c = torch.arange(w, device=dev).view(1, 1, w)
        hole = ((r - cy).abs() < half) & ((c - cx).abs() < half)
        images = images.masked_fill(hole[:, None], 0.0)
    return images


# --- compiled FFCV loaders, reused -----------------------------------------------------------------------------
# Building an FFCV Loader generates its pipeline code, which numba compiles on the first pass: about a second on
# two cores, longer than an epoch of a small split.  A miniature experiment builds dozens of loaders over the same
# two or three .beton files, so a loader freed by one run (or prediction) is kept and re-pointed at the next
# one's examples and seed rather than rebuilt.  Only what the compiled pipeline depends on is in the key: the file,
# the decoding / device settings and the batch size; order, indices, seed and drop_last are set per use.
# A pool is owned by whoever runs the work (the Prefect tasks: ``askshift.tasks.loader_pool.LOADER_POOL``) and passed
# down to what builds loaders; without one (``pool=None``) every loader is built afresh.

_POOL_ENV = "ASKSHIFT_LOADER_POOL"  # "0" builds every loader afresh (benchmarks, debugging)
_PIPELINE_FIELDS = ("batch_size", "num_workers", "decoder", "resolution", "device", "channels_last",
                    "center_crop_ratio", "batches_ahead")


@dataclass
class PoolStats:
    built: int = 0
    reused: int = 0


class LoaderPool:
    """Idle FFCV Loaders by (file, pipeline, train); a loader is used by one SplitLoader at a time.

    Bounded: at most ``max_idle_per_key`` idle loaders per key and ``max_keys`` keys, the least recently returned
    key dropped first (each idle loader holds its pipeline's buffers: a batch of images per ``batches_ahead``).
    ``ASKSHIFT_LOADER_POOL=0`` turns every pool off (benchmarks, debugging).
    """

    def __init__(self, max_idle_per_key: int = 2, max_keys: int = 8):
        self._idle: OrderedDict[tuple, list] = OrderedDict()
        self._lock = threading.Lock()
        self.max_idle_per_key = max_idle_per_key
        self.max_keys = max_keys
        self.stats = PoolStats()

    @staticmethod
    def enabled() -> bool:
        """False when ``ASKSHIFT_LOADER_POOL=0``: loaders are then built afresh even where a pool is given."""
        return os.environ.get(_POOL_ENV, "1") != "0"

    @staticmethod
    def key(beton_path: Path, config: LoaderConfig, train: bool) -> tuple:
        stat = os.stat(beton_path)  # a rewritten file is another key
        fields = tuple(getattr(config, name) for name in _PIPELINE_FIELDS)
        return (str(beton_path), stat.st_ino, stat.st_size, stat.st_mtime_ns, fields, bool(train))

    def take(self, key: tuple):
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                self.stats.reused += 1
                return idle.pop()
            self.stats.built += 1
            return None

    def give_back(self, key: tuple, loader) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            self._idle.move_to_end(key)
            if len(idle) < self.max_idle_per_key:
                idle.append(loader)
            while len(self._idle) > self.max_keys:
                self._idle.popitem(last=False)

    def __len__(self) -> int:
        """Idle loaders held."""
        with self._lock:
            return sum(len(v) for v in self._idle.values())

    def clear(self) -> None:
        with self._lock:
            self._idle.clear()


def _repoint(loader, indices: np.ndarray, seed: int, drop_last: bool) -> None:
    """Point a compiled FFCV Loader at other examples and another seed (what its constructor would have set)."""
    loader.indices = np.array(indices)
    loader.seed = seed
    loader.drop_last = drop_last
    loader.traversal_order.indices = loader.indices
    loader.traversal_order.seed = seed
    loader.next_epoch = 0
    loader.first_traversal_order = loader.next_traversal_order()


class SplitLoader:
    """Iterable over ``(images, labels, indices)`` batches of one experiment split; ``len()`` = batches per epoch.

    With a ``pool``, the compiled FFCV loader is taken from it when one is idle and handed back on ``close()``."""

    def __init__(self, spec: ExperimentSpec, split: str, cache_dir: str | os.PathLike, config: LoaderConfig,
                 train: bool, indices: np.ndarray | None = None, seed: int = 0, pool: LoaderPool | None = None):
        _import_ffcv()
        from ffcv.loader import Loader, OrderOption

        self.spec, self.split, self.config, self.train, self.seed = spec, split, config, train, int(seed)
        self.distribution, self.beton = split_beton(spec, split, cache_dir)
        self.indices, _ = _select(self.beton, self.distribution, indices)
        if len(self.indices) == 0:
            raise ValueError(f"split {split!r} of {spec.name!r} has no examples left after class rates / indices")
        self.num_classes = self.beton.num_classes
        dist = self.distribution
        self.shift = make_shift(dist.shift, self.num_classes, dist.shift_params) if dist.shift else None
        workers = config.num_workers or os.cpu_count() or 1
        # Dropping the last partial batch would leave a tiny training set with no batch at all.
        drop_last = train and len(self.indices) >= config.batch_size
        pooled = pool is not None and LoaderPool.enabled()
        key = LoaderPool.key(self.beton.path, config, train) if pooled else None
        threads = torch.get_num_threads()
        loader = pool.take(key) if pooled else None
        if loader is not None:
            _repoint(loader, self.indices, self.seed, drop_last)
        else:
            pipelines = {
                "image": _image_pipeline(config, train, stored_shape(self.beton)),
                "label": _int_pipeline(config),
                "index": _int_pipeline(config),
            }
            loader = Loader(
                str(self.beton.path),
                batch_size=config.batch_size,
                num_workers=workers,
                order=OrderOption.RANDOM if train else OrderOption.SEQUENTIAL,
                seed=self.seed,
                indices=self.indices,
                pipelines=pipelines,
                drop_last=drop_last,
                batches_ahead=config.batches_ahead,
            )
        torch.set_num_threads(threads)
        self.loader = loader
        # Back to the pool when this SplitLoader is closed or garbage-collected.
        self._release = weakref.finalize(self, pool.give_back, key, loader) if pooled else None
        self.epoch = 0

    @property
    def num_examples(self) -> int:
        return len(self.indices)

    def close(self) -> None:
        """Hand the compiled FFCV loader back to its pool now (also done when this object is garbage-collected)."""
        if self._release is not None:
            self._release()

    def __enter__(self) -> "SplitLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_epoch(self, epoch: int) -> None:
        """Start the next pass at ``epoch`` (order and augmentations of a resumed run match an uninterrupted one)."""
        self.epoch = int(epoch)
        self.loader.next_epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        epoch = self.loader.next_epoch
        self.epoch = epoch + 1
        dtype = self.config.torch_dtype
        flip_first = self.train and self.config.flip
        for images, labels, indices in self.loader:
            # FFCV reuses its output buffers: copy labels/indices, and convert images to a new tensor.
            labels = labels.to(torch.int64, copy=True).view(-1)
            indices = indices.to(torch.int64, copy=True).view(-1)
            if flip_first:  # the buffer is ours until the next batch; every shift is mirror-symmetric in distribution
                flip_in_place(images, indices, self.seed, epoch)
            x = images.clone() if dtype == torch.uint8 and self.shift is None else images.to(_float(dtype)).div_(255.0)
            if self.shift is not None:
                x = self.shift(x, labels, indices)
            if self.train:
                x = augment(x, indices, self.config, self.seed, epoch, flipped=flip_first)
            if self.config.channels_last:  # shifts and augmentations may have changed the layout
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, labels, indices


def split_loader(spec: ExperimentSpec, split: str, cache_dir: str | Path, config: LoaderConfig, train: bool,
                 indices: np.ndarray | None = None, seed: int = 0, pool: LoaderPool | None = None) -> SplitLoader:
    """Batches ``(images float [0,1] NCHW, labels int64, indices int64)`` of an experiment split.

    Training: random order (seeded by ``seed`` and the epoch), augmentations, last partial batch dropped.
    Evaluation: sequential order, no augmentation, every example once.  ``pool``: where the compiled FFCV loader
    comes from and goes back to (None: built afresh).
    """
    return SplitLoader(spec, split, cache_dir, config, train, indices=indices, seed=seed, pool=pool)


__all__ = ["LoaderPool", "PoolStats", "LoaderConfig", "SplitInfo", "SplitLoader", "augment", "kept_examples", "split_beton", "split_info", "split_loader", "stored_shape"]
