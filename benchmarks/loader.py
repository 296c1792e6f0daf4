"""Images per second of askshift's FFCV loader vs a torchvision DataLoader over the same JPEG images.

Both sides decode JPEGs, take a random resized crop and a random horizontal flip, use the same number
of workers and batch size, and apply the same shift transform to each batch; the first (warm-up)
epoch is excluded (FFCV compiles its pipeline then).  The last line is ``ratio: X.XX`` (FFCV over
DataLoader).  Usage::

    python benchmarks/loader.py [--num-images 20000] [--epochs 2] [--workers N] [--shift tint] [--device cpu]

With ``--photos`` it measures the case FFCV is built for instead: an ImageFolder of photo-like JPEGs of
mixed sizes (150-500 px a side, ``tests/photo_fixtures.py``), written once to a .beton by askshift
(``ensure_beton``: JPEG, longest side capped at 256), then one pass of ImageNet-style training
augmentation -- random resized crop (scale 0.08-1) to 224 px and a horizontal flip -- through
``askshift.lib.data.loaders.split_loader``, against torchvision's ``ImageFolder`` + ``RandomResizedCrop(224)``,
``RandomHorizontalFlip()``, ``ToTensor()`` in a ``DataLoader`` with the same batch size and workers.
FFCV's first pass compiles its pipeline and is reported but not timed.  Fairness: torchvision decodes
the original JPEGs (up to 500 px a side) while FFCV decodes its .beton (re-encoded JPEGs, longest side
256); reading a smaller, pre-resized copy is FFCV's designed use, so the ratio includes that choice.
Usage::

    python benchmarks/loader.py --photos [--images 2000] [--root DIR] [--workers N] [--batch-size 256]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing (lib, tests)

from askshift.lib.data.datasets import load_dataset  # noqa: E402
from askshift.lib.data.loaders import LoaderConfig, split_loader  # noqa: E402
from askshift.lib.data.shifts import make_shift  # noqa: E402
from askshift.lib.data.specs import DistributionSpec, ExperimentSpec  # noqa: E402

SHIFT_PARAMS = {"tint": {"alpha": 0.25, "spurious_p": 0.9}, "noise": {"std": 0.05}, "blur": {"sigma": 1.0}}


def make_jpeg_folder(root: Path, num_images: int, size: int, quality: int) -> None:
    """An ImageFolder tree of ``num_images`` JPEGs: digits with random colours and offsets (natural-ish content)."""
    from PIL import Image

    base = load_dataset("digits", "train", size=size)
    rng = np.random.default_rng(0)
    for i in range(num_images):
        j = i % len(base)
        image = base.image_array(j).astype(np.float32) / 255
        colour = rng.uniform(0.2, 1.0, 3)
        background = rng.uniform(0.0, 0.3, 3)
        image = image * colour + (1 - image) * background
        image = np.roll(image, tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
        folder = root / "train" / str(base.labels[j])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"{i:06d}.jpg", quality=quality)


def run_epoch(batches, transform=None) -> tuple[float, int]:
    """Seconds and images of one pass over ``batches()`` (``transform`` applied to each batch)."""
    start, seen = time.perf_counter(), 0
    for images, labels, indices in batches():
        if transform is not None:
            images = transform(images, labels, indices)
        seen += len(images)
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, seen


class _Indexed(torch.utils.data.Dataset):
    """ImageFolder that also returns the example index (the shift transform is keyed by it)."""

    def __init__(self, folder):
        self.folder = folder

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, i):
        image, label = self.folder[i]
        return image, label, i


# --- --photos: mixed-size photo-like JPEGs, ImageNet-style augmentation at 224 px ---------------------------------

PHOTO_CLASSES = 10
PHOTO_RESOLUTION = 224
FAIRNESS_NOTE = ("note: torchvision decodes the original JPEGs (150-500 px a side); FFCV reads its .beton "
                 "(longest side 256: JPEG re-encoded, or raw pixels, 7x the disk) -- reading a pre-resized copy is "
                 "FFCV's designed use")


def photo_tree(root: Path, images: int, workers: int) -> Path:
    """``ROOT/train/<shape>/*.jpg``: ``images`` photos in PHOTO_CLASSES classes, generated unless ROOT/train exists."""
    from tests.photo_fixtures import make_imagefolder

    if (root / "train").is_dir():
        print(f"using the photos in {root / 'train'}")
        return root
    per_class = max(1, images // PHOTO_CLASSES)
    start = time.perf_counter()
    make_imagefolder(root, classes=PHOTO_CLASSES, per_class=per_class, splits=("train",), workers=workers)
    print(f"generated {per_class * PHOTO_CLASSES} photos (JPEG q90, 150-500 px a side) in "
          f"{time.perf_counter() - start:.1f}s (not part of the measurement)")
    return root


def torchvision_photo_batches(root: Path, batch_size: int, workers: int, as_float: bool):
    """``batches()`` for run_epoch: torchvision ImageFolder, RandomResizedCrop(224) + flip, in a DataLoader
    (``PILToTensor``: uint8; ``as_float``: ``ToTensor``, float [0, 1])."""
    import torchvision
    from torchvision import transforms as T

    to_tensor = T.ToTensor() if as_float else T.PILToTensor()
    pipeline = T.Compose([T.RandomResizedCrop(PHOTO_RESOLUTION), T.RandomHorizontalFlip(), to_tensor])
    dataset = torchvision.datasets.ImageFolder(str(root / "train"), transform=pipeline)
    # The same rule as split_loader: drop the last partial batch unless that would leave none.
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                         drop_last=len(dataset) >= batch_size, num_workers=workers,
                                         persistent_workers=workers > 0)
    return lambda: ((images, labels, None) for images, labels in loader)


def photos_main(args: argparse.Namespace) -> int:
    """The --photos comparison: images/s of FFCV (per .beton storage) and torchvision, for float32 and uint8
    batches; ends with ``ratio: X.XX`` (uint8 batches, raw storage: FFCV's fastest documented setting)."""
    from askshift.lib.data.beton import BetonOptions, ensure_beton
    from askshift.lib.data.specs import get_spec

    epochs = args.epochs or 2
    storages = (args.write_mode,) if args.write_mode else ("jpg", "raw")
    what = f"{args.workers} workers, batch {args.batch_size}, random resized crop {PHOTO_RESOLUTION} + flip"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        root = photo_tree(Path(args.root) if args.root else work / "photos", args.images, args.workers)
        cache = work / "cache"
        specs = {}
        for storage in storages:
            start = time.perf_counter()
            beton = ensure_beton("imagefolder", "train", cache, root, BetonOptions(write_mode=storage))
            print(f"FFCV .beton ({storage}): {beton.num_records} images written in {time.perf_counter() - start:.1f}s "
                  f"({beton.path.stat().st_size / 2**20:.1f} MiB, longest side {beton.manifest['max_resolution']})")
            spec = get_spec("out_of_support", dataset="imagefolder", root=str(root))
            specs[storage] = spec.model_copy(update={"reference": spec.reference.model_copy(update={"write_mode": storage})})
        ratios = {}
        for dtype in ("float32", "uint8"):
            loaders = {}
            for storage, spec in specs.items():
                config = LoaderConfig(batch_size=args.batch_size, num_workers=args.workers,
                                      decoder="imagenet_random_crop", resolution=PHOTO_RESOLUTION, flip=True, dtype=dtype)
                loaders[storage] = split_loader(spec, "source_train", cache, config, train=True)
                run_epoch(lambda: loaders[storage])  # compiles the pipeline: not timed
            torch_batches = torchvision_photo_batches(root, args.batch_size, args.workers, as_float=dtype == "float32")
            run_epoch(torch_batches)  # starts the worker processes: not timed
            # Passes alternate between the loaders so that load from other processes slows all alike.
            totals = {name: [0.0, 0] for name in [*loaders, "torchvision"]}
            for _ in range(epochs):
                for name in totals:
                    secs, seen = run_epoch((lambda n=name: loaders[n]) if name in loaders else torch_batches)
                    totals[name][0] += secs
                    totals[name][1] += seen
            for loader in loaders.values():
                loader.close()
            rates = {name: seen / secs for name, (secs, seen) in totals.items()}
            to_tensor = "ToTensor" if dtype == "float32" else "PILToTensor"
            print(f"{dtype} batches ({what}):")
            for storage in loaders:
                print(f"  ffcv, {storage} .beton: {rates[storage]:8.0f} images/s  ({totals[storage][1]} images)")
            print(f"  torchvision:      {rates['torchvision']:8.0f} images/s  ({totals['torchvision'][1]} images, "
                  f"PIL decode of the JPEGs, {to_tensor})")
            for storage in loaders:
                ratios[dtype, storage] = rates[storage] / rates["torchvision"]
                print(f"  ratio {dtype} {storage}: {ratios[dtype, storage]:.2f}")
        print(FAIRNESS_NOTE)
        best = "raw" if "raw" in storages else storages[0]
        print(f"ratio: uint8 batches from a {best} .beton (the accelerator converts them to float; "
              f"storage: --write-mode {best})")
        print(f"ratio: {ratios['uint8', best]:.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=20000)
    parser.add_argument("--size", type=int, default=32, help="stored image side")
    parser.add_argument("--epochs", type=int, default=None, help="timed epochs after the warm-up epoch (default 2)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--shift", default="tint", choices=sorted(SHIFT_PARAMS), help="shift applied to every batch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--workdir", default=None, help="keep the JPEGs and .beton here (default: a temp folder)")
    parser.add_argument("--photos", action="store_true", help="mixed-size photo-like JPEGs, random resized crop at 224 px")
    parser.add_argument("--images", type=int, default=2000, help="--photos: how many photos to generate")
    parser.add_argument("--write-mode", default=None, choices=("jpg", "raw", "smart"),
                        help="--photos: how the .beton stores the photos (default: the dataset's own)")
    parser.add_argument("--root", default=None, help="--photos: an ImageFolder (ROOT/train/<class>/*.jpg) to use or generate into")
    args = parser.parse_args(argv)
    if args.photos:
        return photos_main(args)
    args.epochs = 2 if args.epochs is None else args.epochs

    import torchvision
    from torchvision import transforms as T

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        folder = work / "jpegs"
        if not (folder / "train").is_dir():
            t = time.perf_counter()
            make_jpeg_folder(folder, args.num_images, args.size, args.quality)
            print(f"wrote {args.num_images} JPEGs ({args.size}px) in {time.perf_counter() - t:.1f}s")

        dist = DistributionSpec(dataset="imagefolder", root=str(folder), split="train", write_mode="jpg",
                                jpeg_quality=args.quality, max_resolution=args.size,
                                shift=args.shift, shift_params=SHIFT_PARAMS[args.shift])
        spec = ExperimentSpec(name="bench", reference=dist, targets={"same": dist})
        config = LoaderConfig(batch_size=args.batch_size, num_workers=args.workers, decoder="random_crop",
                              resolution=args.size, flip=True, device=str(device))
        t = time.perf_counter()
        ffcv_loader = split_loader(spec, "source_train", work / "cache", config, train=True)
        print(f"FFCV .beton ready and loader built in {time.perf_counter() - t:.1f}s")
        shift = make_shift(args.shift, ffcv_loader.num_classes, SHIFT_PARAMS[args.shift])
        pipeline = T.Compose([T.RandomResizedCrop(args.size, scale=(0.35, 1.0)), T.RandomHorizontalFlip(), T.ToTensor()])
        dataset = _Indexed(torchvision.datasets.ImageFolder(str(folder / "train"), transform=pipeline))
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                             num_workers=args.workers, persistent_workers=args.workers > 0,
                                             pin_memory=device.type == "cuda")

        def torch_batches():
            for images, labels, indices in loader:
                yield images.to(device, non_blocking=True), labels.to(device), indices

        # Epochs alternate between the two loaders so that load from other processes on a shared
        # machine slows both alike; epoch 0 of each is the warm-up (FFCV compiles its pipeline).
        totals = {"ffcv": [0.0, 0], "dataloader": [0.0, 0]}
        for epoch in range(args.epochs + 1):
            # the shift runs inside split_loader on the FFCV side, on each batch here on the other
            for name, secs_seen in (("ffcv", run_epoch(lambda: ffcv_loader)), ("dataloader", run_epoch(torch_batches, shift))):
                if epoch > 0:
                    totals[name][0] += secs_seen[0]
                    totals[name][1] += secs_seen[1]
        (ffcv_secs, ffcv_seen), (torch_secs, torch_seen) = totals["ffcv"], totals["dataloader"]
        ffcv_rate, torch_rate = ffcv_seen / ffcv_secs, torch_seen / torch_secs
        print(f"ffcv:       {ffcv_rate:10.0f} images/s  ({ffcv_seen} images, {ffcv_secs:.2f}s, {args.workers} workers, "
              f"random crop + flip + shift {args.shift})")
        print(f"dataloader: {torch_rate:10.0f} images/s  ({torch_seen} images, {torch_secs:.2f}s, {args.workers} workers, "
              f"PIL decode, random crop + flip + shift {args.shift})")
        print(f"ratio: {ffcv_rate / torch_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
