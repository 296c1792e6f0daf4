"""The domain classifier (reference = 0, shifted = 1): its images, training on some positions, scoring others.

Positions are rows of a ``askshift.lib.support.ratios.DomainData`` (reference examples first, then shifted ones).
Images reach the classifier as float [0, 1] NCHW batches, like every other model here.  Two image
sources: ``InMemoryImages`` (read once through the FFCV loaders, then batched from memory: small
sets, where building a new FFCV loader per fold would cost more than the training) and
``StreamingImages`` (two FFCV loaders per pass, mixed batch by batch: sets that do not fit in memory).
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from askshift.lib.data.datasets import dataset_info
from askshift.lib.data.loaders import LoaderPool, split_beton, split_info, stored_shape
from askshift.lib.data.shifts import example_uniform
from askshift.lib.data.specs import ExperimentSpec
from askshift.lib.data.transforms import Decoding, is_photo_dataset
from askshift.lib.models.evaluation import predict
from askshift.lib.models.families import build_model
from askshift.lib.models.inputs import model_transform
from askshift.lib.models.training import (
    SEED_LOCK,
    TrainConfig,
    epoch_seed,
    seed_everything,
    train_model,
)
from askshift.lib.store import content_hash
from askshift.lib.support.ratios import (
    DEFAULT_FOLDS,
    DomainClassifierConfig,
    DomainData,
    build_domain_data,
    check_folds,
    sample_reference,
)

# Up to this many examples a domain data set is held in memory (read once through FFCV, then shared by
# every fold): cheaper than building FFCV loaders per fold.  Bigger sets (ImageNet) stream.
IN_MEMORY_MAX_EXAMPLES = 20_000


class DomainImages(Protocol):
    """Batches of (images, domain labels, positions) for given positions of a DomainData."""

    def train_batches(self, positions: np.ndarray, batch_size: int, seed: int) -> "Batches": ...

    def eval_batches(self, positions: np.ndarray, batch_size: int) -> "Batches": ...


@dataclass
class Batches:
    """An iterable with a length (what ``askshift.lib.models.training.train_model`` expects from a loader)."""

    make: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]
    length: int

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return self.make()

    def __len__(self) -> int:
        return self.length


@dataclass
class InMemoryImages:
    """All positions' images as one uint8 NCHW tensor, batched without a loader (training batches flipped
    at random when ``flip``, keyed by the seed and the position, like the FFCV loaders' flips)."""

    images: torch.Tensor  # uint8, (positions, C, H, W)
    domain: np.ndarray
    flip: bool = False

    def _batch(self, chosen: np.ndarray, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = torch.from_numpy(chosen)
        images = self.images[index].float().div_(255.0)
        if self.flip and seed is not None:
            flipped = torch.as_tensor(example_uniform(seed, 0xF11B, chosen) < 0.5).view(-1, 1, 1, 1)
            images = torch.where(flipped, images.flip(-1), images)
        return (images, torch.from_numpy(self.domain[chosen]).long(), index)

    def train_batches(self, positions: np.ndarray, batch_size: int, seed: int) -> Batches:
        positions = np.asarray(positions, np.int64)
        # Drop the last, partial batch when there is more than one: a tiny batch makes BatchNorm noisy.
        n_batches = max(1, positions.size // batch_size)

        def make():
            order = np.random.default_rng(seed).permutation(positions)
            for b in range(n_batches):
                chosen = order[b * batch_size:(b + 1) * batch_size] if n_batches > 1 else order
                yield self._batch(chosen, seed)

        return Batches(make, n_batches)

    def eval_batches(self, positions: np.ndarray, batch_size: int) -> Batches:
        positions = np.asarray(positions, np.int64)
        n_batches = math.ceil(positions.size / batch_size)

        def make():
            for b in range(n_batches):
                yield self._batch(positions[b * batch_size:(b + 1) * batch_size])

        return Batches(make, n_batches)



class _OnceLock:
    """Holds ``lock`` from creation until the first ``release()``; later calls do nothing."""

    def __init__(self, lock: threading.Lock):
        self._lock = lock
        self._held = lock.acquire()

    def release(self) -> None:
        if self._held:
            self._held = False
            self._lock.release()

# A split reader: (split indices, train?, seed, batch size) -> iterable of (images, labels, indices) from FFCV.
SplitReader = Callable[[np.ndarray, bool, int, int], Iterable]


@dataclass
class StreamingImages:
    """Reads the reference and shifted examples through two FFCV loaders on every pass.

    Training batches mix both sets in proportion (each step takes ~b·n_ref/n reference and
    ~b·n_shift/n shifted examples), so every batch looks like the union, as a shuffled loader over
    one combined data set would give.
    """

    data: DomainData
    read_reference: SplitReader
    read_shifted: SplitReader

    def _side(self, positions: np.ndarray, domain: int) -> tuple[np.ndarray, dict[int, int]]:
        mine = positions[self.data.domain[positions] == domain]
        split_index = self.data.index[mine]
        return split_index, dict(zip(split_index.tolist(), mine.tolist()))

    def train_batches(self, positions: np.ndarray, batch_size: int, seed: int) -> Batches:
        positions = np.asarray(positions, np.int64)
        ref_idx, ref_map = self._side(positions, 0)
        shift_idx, shift_map = self._side(positions, 1)
        n = ref_idx.size + shift_idx.size
        n_batches = max(1, n // batch_size)
        b_ref = max(1, ref_idx.size // n_batches)
        b_shift = max(1, shift_idx.size // n_batches)

        def make():
            ref = iter(self.read_reference(ref_idx, True, seed, b_ref))
            shift = iter(self.read_shifted(shift_idx, True, seed + 1, b_shift))
            for _ in range(n_batches):
                try:
                    x0, _, i0 = next(ref)
                    x1, _, i1 = next(shift)
                except StopIteration:
                    return
                pos = torch.tensor([ref_map[int(i)] for i in i0] + [shift_map[int(i)] for i in i1])
                labels = torch.cat([torch.zeros(len(x0), dtype=torch.long), torch.ones(len(x1), dtype=torch.long)])
                yield torch.cat([x0.float(), x1.float()]), labels, pos

        return Batches(make, n_batches)

    def eval_batches(self, positions: np.ndarray, batch_size: int) -> Batches:
        positions = np.asarray(positions, np.int64)
        sides = [(self._side(positions, d), reader, d) for d, reader in ((0, self.read_reference), (1, self.read_shifted))]
        n_batches = sum(math.ceil(idx.size / batch_size) for (idx, _), _, _ in sides)

        def make():
            for (idx, mapping), reader, d in sides:
                if idx.size == 0:
                    continue
                for x, _, i in reader(idx, False, 0, batch_size):
                    pos = torch.tensor([mapping[int(k)] for k in i])
                    yield x.float(), torch.full((len(x),), d, dtype=torch.long), pos

        return Batches(make, n_batches)


def collect_images(batches: Iterable, n: int) -> tuple[torch.Tensor, np.ndarray]:
    """Read (images, labels, indices) batches into a uint8 NCHW tensor ordered by index position."""
    chunks, order = [], []
    for images, _, indices in batches:
        chunks.append((images.float().clamp(0, 1) * 255).round().to(torch.uint8))
        order.append(np.asarray(indices, np.int64))
    images = torch.cat(chunks)
    got = np.concatenate(order)
    if images.shape[0] != n:
        raise ValueError(f"the loader yielded {images.shape[0]} images for {n} requested examples")
    return images, got


def in_memory_images(data: DomainData, read_reference: SplitReader, read_shifted: SplitReader,
                     batch_size: int = 512, flip: bool = False) -> InMemoryImages:
    """Read every position's image once (through the FFCV loaders, both sides decoded alike) and keep them as uint8."""
    parts = []
    for domain, reader in ((0, read_reference), (1, read_shifted)):
        positions = np.flatnonzero(data.domain == domain)
        split_index = data.index[positions]
        images, got = collect_images(reader(split_index, False, 0, batch_size), positions.size)
        where = {int(k): j for j, k in enumerate(got.tolist())}
        parts.append(images[torch.tensor([where[int(k)] for k in split_index])])
    if parts[0].shape[1:] != parts[1].shape[1:]:
        raise ValueError(f"the two sides decode to different image shapes ({tuple(parts[0].shape[1:])} vs "
                         f"{tuple(parts[1].shape[1:])}): set the domain classifier's resolution (--resolution N)")
    return InMemoryImages(torch.cat(parts), data.domain, flip)


# --- fitting and scoring ----------------------------------------------------------------------------

def train_configs(config: DomainClassifierConfig, lr: float, n_train: int | None = None) -> list[tuple[str, Any]]:
    """The stages of one domain-classifier fit: an optional linear probe, then full fine-tuning.

    With ``n_train`` (examples trained on), each stage runs at least ``config.min_steps`` steps.
    """
    def epochs(wanted: int) -> int:
        if not n_train or not config.min_steps:
            return wanted
        steps = max(1, n_train // config.batch_size)
        return max(wanted, math.ceil(config.min_steps / steps))

    stages = []
    if config.linear_probe_epochs:
        stages.append(("lp", TrainConfig(epochs=epochs(config.linear_probe_epochs), lr=config.linear_probe_lr,
                                         optimizer="adamw", warmup_epochs=config.linear_probe_warmup_epochs,
                                         weight_decay=0.0, freeze_backbone=True,
                                         batch_size=config.batch_size, seed=config.seed)))
    stages.append(("ft", TrainConfig(epochs=epochs(config.epochs), lr=lr, optimizer=config.optimizer,
                                     warmup_epochs=config.warmup_epochs, weight_decay=config.weight_decay,
                                     grad_clip=1.0, batch_size=config.batch_size, seed=config.seed)))
    return stages


def fit_domain_classifier(images: DomainImages, train_positions: np.ndarray, config: DomainClassifierConfig,
                          lr: float, checkpoint_dir: str | Path, device: str | torch.device = "cpu",
                          log: Callable[[str], None] = print) -> nn.Module:
    """Train a fresh two-class model (``config.model`` via askshift.lib.models.families) on ``train_positions`` only."""
    # Tasks may run as threads of one process, sharing torch's global RNG: seeding + building, and
    # train_model's own seeding at its start, happen under one lock, released when the first batch is asked for.
    with SEED_LOCK:
        seed_everything(config.seed)  # initial weights follow the seed
        model = build_model(config.model, 2, pretrained=config.pretrained)
    for name, train_config in train_configs(config, lr, len(train_positions)):
        if hasattr(model, "freeze_backbone"):
            model.freeze_backbone(train_config.freeze_backbone)
        gate = _OnceLock(SEED_LOCK)

        def make_loader(epoch: int, _c=train_config, _gate=gate):
            _gate.release()
            return images.train_batches(train_positions, _c.batch_size, epoch_seed(_c.seed, epoch))

        try:
            train_model(model, make_loader, train_config, Path(checkpoint_dir) / name, device=device, log=log)
        finally:
            gate.release()
    if hasattr(model, "freeze_backbone"):
        model.freeze_backbone(False)
    return model


@torch.no_grad()
def score_positions(model: nn.Module, images: DomainImages, positions: np.ndarray, batch_size: int = 512,
                    device: str | torch.device = "cpu") -> np.ndarray:
    """The domain logit (logit of "shifted" minus logit of "reference") of each position, in the given order."""
    positions = np.asarray(positions, np.int64)
    logits, _, got = predict(model, images.eval_batches(positions, batch_size), device)
    return _in_order(logits[:, 1].astype(np.float64) - logits[:, 0].astype(np.float64), got, positions)


def _in_order(values: np.ndarray, got: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Rows of ``values`` (in the order ``got`` the batches yielded them) rearranged into the order of ``positions``."""
    where = {int(p): j for j, p in enumerate(np.asarray(got).tolist())}
    return values[[where[int(p)] for p in positions]]


# --- a domain-classifier job on experiment splits (what the split flow's tasks share) -----------------

class DomainSetup(BaseModel):
    """Which two experiment splits a domain classifier separates, and how (the content of every fold's hash)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spec: ExperimentSpec
    reference_split: str = "source_train"
    shifted_split: str
    cache_dir: str
    classifier: DomainClassifierConfig = Field(default_factory=DomainClassifierConfig)
    folds: int = Field(DEFAULT_FOLDS, ge=2)
    seed: int = 0

    def run_id(self, kind: str, **extra: Any) -> str:
        return f"support-{kind}-" + content_hash({"setup": self, "kind": kind, **extra})


class DomainImageCache:
    """In-memory domain-classifier images by content key, the ``max_entries`` most recently used kept: the folds
    and learning-rate points of one split read their images once.  Owned by the split flow's tasks
    (``askshift.tasks.support.DOMAIN_IMAGES``); without one, every call reads afresh."""

    def __init__(self, max_entries: int = 2):
        self.max_entries = max_entries
        self._entries: OrderedDict[str, InMemoryImages] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_read(self, key: str, read: Callable[[], InMemoryImages]) -> InMemoryImages:
        with self._lock:  # one reader per key: the folds of a split run as threads of one process
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            images = read()
            self._entries[key] = images
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return images

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def shifted_is_labelled(setup: DomainSetup) -> bool:
    """False when the shifted side is a folder of images without labels (dataset ``images``)."""
    return dataset_info(setup.spec.distribution(setup.shifted_split)[0].dataset).labelled


def load_domain_data(setup: DomainSetup) -> DomainData:
    """The reference sample plus the shifted set, as DomainData (checks classes and fold counts first)."""
    ref = split_info(setup.spec, setup.reference_split, setup.cache_dir)
    shifted = split_info(setup.spec, setup.shifted_split, setup.cache_dir)
    ref_idx = np.asarray(ref.indices, np.int64)
    shift_idx = np.asarray(shifted.indices, np.int64)
    ref_labels = np.asarray(ref.labels)[ref_idx]
    shift_labels = np.asarray(shifted.labels)[shift_idx]
    chosen = sample_reference(ref_labels, shift_labels if shifted_is_labelled(setup) else None,
                              setup.classifier.reference_size, setup.seed)
    groups = None
    if shifted.groups is not None:
        g = np.asarray(shifted.groups)[shift_idx]
        if (g >= 0).any():
            groups = g
    data = build_domain_data(ref_idx[chosen], shift_idx, groups)
    n_groups = int(np.unique(data.group[data.domain == 1]).size) if data.grouped else None
    check_folds(data.n_reference, data.n_shifted, setup.folds, n_groups)
    return data


def parity_spec(spec: ExperimentSpec, reference_split: str, shifted_split: str) -> ExperimentSpec:
    """``spec`` with both sides of a domain classifier stored alike (format, longest side, JPEG quality).

    A classifier told "raw digits" from "JPEG photos", or full-size from downsized images, would separate
    the sets by storage alone; written alike, it can only see image content (the original sends both
    sides through one pipeline).  Photos on either side make both JPEG at the smaller longest side.
    """
    ref, _ = spec.distribution(reference_split)
    shifted, _ = spec.distribution(shifted_split)

    def storage(d) -> tuple[str, int | None, int]:
        photos = is_photo_dataset(d.dataset)  # the datasets' defaults: JPEG at 256 px for photos, raw arrays
        return (d.write_mode or ("jpg" if photos else "raw"), d.max_resolution or (256 if photos else None), d.jpeg_quality)

    a, b = storage(ref), storage(shifted)
    if a == b:
        return spec
    mode = "jpg" if "jpg" in (a[0], b[0]) else ("smart" if "smart" in (a[0], b[0]) else "raw")
    sides = [r for r in (a[1], b[1]) if r is not None]
    common = {"write_mode": mode, "max_resolution": min(sides) if sides else None, "jpeg_quality": min(a[2], b[2])}
    reference = ref.model_copy(update=common)
    targets = {name: (t.model_copy(update=common) if f"{name}_val" == shifted_split else t)
               for name, t in spec.targets.items()}
    return spec.model_copy(update={"reference": reference, "targets": targets})


def domain_decoding(setup: DomainSetup):
    """One decoding for both sides: photos on either side -> the classifier's centre crop at its resolution;
    same-size arrays -> as stored, both at the reference's side when the shifted images differ."""
    datasets = [setup.spec.distribution(s)[0].dataset for s in (setup.reference_split, setup.shifted_split)]
    resolution = setup.classifier.resolution
    if any(is_photo_dataset(d) for d in datasets):
        transform = model_transform(setup.classifier.model, resolution)
        return Decoding(decoder="center_crop", resolution=transform.resolution, center_crop_ratio=transform.crop_pct)
    if resolution is None:
        shapes = [stored_shape(split_beton(setup.spec, s, setup.cache_dir)[1])
                  for s in (setup.reference_split, setup.shifted_split)]
        if None in shapes:
            raise ValueError("images of one side differ in size: set the domain classifier's resolution (--resolution N)")
        if shapes[0] != shapes[1]:
            resolution = max(shapes[0])
    return Decoding(decoder="simple", resolution=resolution)


def split_reader(setup: DomainSetup, split: str, num_workers: int = 1, pool: LoaderPool | None = None) -> SplitReader:
    """Batches of one side, decoded as ``domain_decoding`` says (training passes add the classifier's flips); the
    compiled loaders come from ``pool`` (None: built afresh)."""
    from askshift.lib.data.loaders import LoaderConfig, split_loader

    decoding = domain_decoding(setup).loader_fields()

    def read(indices: np.ndarray, train: bool, seed: int, batch_size: int):
        fields = {**decoding, "flip": bool(train and setup.classifier.flip)}
        config = LoaderConfig(batch_size=batch_size, num_workers=num_workers, device="cpu", **fields)
        return split_loader(setup.spec, split, setup.cache_dir, config, train=train, indices=indices, seed=seed,
                            pool=pool)

    return read


def domain_images(setup: DomainSetup, data: DomainData, num_workers: int = 1,
                  cache: DomainImageCache | None = None, pool: LoaderPool | None = None) -> DomainImages:
    """In-memory images for small sets (read once per ``cache``, shared by every fold); streaming otherwise (each
    pass through loaders from ``pool``)."""
    read_ref = split_reader(setup, setup.reference_split, num_workers, pool)
    read_shift = split_reader(setup, setup.shifted_split, num_workers, pool)
    in_memory = setup.classifier.in_memory
    if in_memory is None:
        in_memory = len(data) <= IN_MEMORY_MAX_EXAMPLES
    if not in_memory:
        return StreamingImages(data, read_ref, read_shift)
    key = content_hash({"spec": setup.spec, "ref": setup.reference_split, "shift": setup.shifted_split,
                        "cache": setup.cache_dir, "index": data.index.tolist(), "domain": data.domain.tolist()})

    def read() -> InMemoryImages:
        threads = torch.get_num_threads()
        images = in_memory_images(data, read_ref, read_shift, flip=setup.classifier.flip)
        torch.set_num_threads(threads)  # FFCV loaders change the process-wide thread count
        return images

    return cache.get_or_read(key, read) if cache is not None else read()


def fit_and_score(setup: DomainSetup, data: DomainData, images: DomainImages, train: np.ndarray,
                  heldout: np.ndarray, lr: float, checkpoint_dir: str | Path, device: str | torch.device = "cpu",
                  log: Callable[[str], None] = print, neighbours: bool = False):
    """Train on ``train`` positions, return the domain logits of ``heldout`` positions (never trained on); with
    ``neighbours``, also ``nearest_reference`` of the held-out positions in the same model's feature space:
    ``(logits, distances, nearest positions)``."""
    if np.intersect1d(train, heldout).size:
        raise ValueError("training and held-out positions overlap: the held-out scores would be biased")
    model = fit_domain_classifier(images, train, setup.classifier, lr, checkpoint_dir, device, log)
    batch_size = max(256, setup.classifier.batch_size)
    logits = score_positions(model, images, heldout, batch_size=batch_size, device=device)
    if not neighbours:
        return logits
    pool = train[data.domain[train] == 0]
    distances, nearest = nearest_reference(model, images, pool, heldout, batch_size, device, seed=setup.seed)
    return logits, distances, nearest


# The reference positions a fold's held-out examples are measured against: a seeded sample of its training reference
# positions (enough for a stable 1-NN distance; the full reference would cost a prediction pass per fold).
NEIGHBOUR_POOL_MAX = 5000


class _Features(nn.Module):
    """A classifier's penultimate features as its output, so that ``predict`` runs it like any model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x).flatten(1)


def embed_positions(model: nn.Module, images: DomainImages, positions: np.ndarray, batch_size: int = 512,
                    device: str | torch.device = "cpu") -> np.ndarray:
    """Unit-length penultimate features (``model.features``) of some positions, in the given order."""
    positions = np.asarray(positions, np.int64)
    net = _Features(model) if hasattr(model, "features") else model
    features, _, got = predict(net, images.eval_batches(positions, batch_size), device)
    return _in_order(torch.nn.functional.normalize(torch.from_numpy(features), dim=1).numpy(), got, positions)


def nearest_reference(model: nn.Module, images: DomainImages, pool: np.ndarray, query: np.ndarray,
                      batch_size: int = 512, device: str | torch.device = "cpu", seed: int = 0,
                      pool_max: int = NEIGHBOUR_POOL_MAX) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each ``query`` position to its nearest ``pool`` (reference) position in the model's feature
    space, and that position: the second opinion's raw material (``askshift.lib.support.evidence``)."""
    from sklearn.neighbors import NearestNeighbors

    pool = np.asarray(pool, np.int64)
    if pool.size > pool_max:
        pool = np.sort(np.random.default_rng([seed, 0x4E4E]).choice(pool, size=pool_max, replace=False))
    index = NearestNeighbors(n_neighbors=1).fit(embed_positions(model, images, pool, batch_size, device))
    distances, nearest = index.kneighbors(embed_positions(model, images, query, batch_size, device))
    return distances[:, 0], pool[nearest[:, 0]]


def position_images(setup: DomainSetup, data: DomainData, positions: np.ndarray,
                    cache: DomainImageCache | None = None, pool: LoaderPool | None = None) -> np.ndarray:
    """uint8 NCHW images of some positions (the report's example grid): from memory when ``cache`` holds the
    folds' images (or the set is small), else read through the FFCV loaders."""
    positions = np.ascontiguousarray(positions, np.int64)
    if positions.size == 0:
        return np.zeros((0, 3, 8, 8), np.uint8)
    images = domain_images(setup, data, cache=cache, pool=pool)
    if isinstance(images, InMemoryImages):
        return images.images[torch.from_numpy(positions)].numpy()
    threads = torch.get_num_threads()
    out = []
    for p in positions:  # few images: one small read per side is enough
        split = setup.reference_split if data.domain[p] == 0 else setup.shifted_split
        batch, _ = collect_images(split_reader(setup, split, pool=pool)(data.index[[p]], False, 0, 1), 1)
        out.append(batch)
    torch.set_num_threads(threads)
    return torch.cat(out).numpy()
