"""Photo-like ImageFolder trees for tests and benchmarks: textured backgrounds, one class shape each, mixed sizes.

Every image is a function of (seed, split, class, index) only, so a tree is the same whether it is written
by one process or many, and whatever else was generated before.  Class ``k`` is a shape (circle, square,
triangle, ...) in a class hue, at a random position, scale and rotation: a small CNN learns the classes
from a few dozen images.  Importable as ``tests.photo_fixtures`` from the repository root (benchmarks) and
as ``photo_fixtures`` inside the tests.
"""
from __future__ import annotations

import colorsys
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon")
SIDES = (150, 500)
# PIL format name and file suffix per ``fmt``
FORMATS = {"jpeg": ("JPEG", ".jpg"), "jpg": ("JPEG", ".jpg"), "png": ("PNG", ".png")}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def class_names(num_classes: int) -> list[str]:
    """``circle, square, ...``; past the eighth class the shapes repeat in another hue (``circle_2``)."""
    return [SHAPES[k % len(SHAPES)] + (f"_{k // len(SHAPES) + 1}" if k >= len(SHAPES) else "")
            for k in range(num_classes)]


def _colour(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), np.float32)


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A smooth colour field with soft blobs and faint stripes.

    Drawn at a quarter of the size and upsampled: the content is smooth anyway, and this keeps a
    500 px image at a few milliseconds.
    """
    sw, sh = max(4, w // 4), max(4, h // 4)
    grid = rng.uniform(0.15, 0.85, (3, 3, 3)).astype(np.float32)
    field = Image.fromarray((grid * 255).astype(np.uint8)).resize((sw, sh), Image.BICUBIC)
    canvas = np.asarray(field, np.float32) / 255
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    for _ in range(rng.integers(2, 5)):  # soft blobs: Gaussian bumps of a random colour
        cx, cy = rng.uniform(0, sw), rng.uniform(0, sh)
        radius = rng.uniform(0.08, 0.3) * max(sw, sh)
        weight = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))[..., None]
        canvas = canvas * (1 - 0.6 * weight) + 0.6 * weight * rng.uniform(0, 1, 3).astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(3, 12)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period))
    canvas = canvas + rng.uniform(0.02, 0.08) * stripes[..., None]
    small = Image.fromarray((np.clip(canvas, 0, 1) * 255).astype(np.uint8))
    return small.resize((w, h), Image.BILINEAR)


_NOISE_TILE = 512
_noise: np.ndarray | None = None


def _sensor_noise(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Per-pixel noise (int16 levels, HWC): a random window of one fixed Gaussian tile, times 1-4.

    Drawing fresh Gaussian noise for every pixel was half of the time per image; a window at a random
    offset of a fixed tile looks the same to a CNN and keeps each image a function of its seed.
    """
    global _noise
    if _noise is None:
        _noise = np.random.default_rng(0x9015E).normal(0, 2.5, (_NOISE_TILE, _NOISE_TILE, 3)).round().astype(np.int16)
    tile = _noise
    if h > _NOISE_TILE or w > _NOISE_TILE:
        tile = np.tile(tile, (-(-h // _NOISE_TILE), -(-w // _NOISE_TILE), 1))
    y, x = (int(rng.integers(0, tile.shape[i] - n + 1)) for i, n in ((0, h), (1, w)))
    return tile[y:y + h, x:x + w] * np.int16(rng.integers(1, 5))


def _star(points: int, inner: float) -> np.ndarray:
    angles = np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.sin(angles), -radii * np.cos(angles)], 1)


def _regular(sides: int) -> np.ndarray:
    angles = np.arange(sides) * 2 * np.pi / sides
    return np.stack([np.sin(angles), -np.cos(angles)], 1)


_CROSS = np.array([(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1),
                   (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)], np.float64)
# Outlines in unit coordinates (radius 1); circle and ring are drawn as ellipses.
_POLYGONS = {
    "square": _regular(4),  # drawn at a random rotation, so which corner points up does not matter
    "triangle": _regular(3),
    "star": _star(5, 0.45),
    "cross": _CROSS,
    "diamond": _regular(4) * np.array([0.6, 1.0]),
    "hexagon": _regular(6),
}


def _shape_mask(shape: str, w: int, h: int, cx: float, cy: float, radius: float, angle: float) -> Image.Image:
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "ring":
        draw.ellipse(box, fill=255)
        r = 0.55 * radius
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=0)
    else:
        c, s = np.cos(angle), np.sin(angle)
        points = _POLYGONS[shape] @ np.array([[c, s], [-s, c]]) * radius + (cx, cy)
        draw.polygon([tuple(p) for p in points], fill=255)
    return mask


def photo_image(rng: np.random.Generator, label: int, num_classes: int,
                size: tuple[int, int] | None = None, sides: tuple[int, int] = SIDES) -> Image.Image:
    """An RGB photo-like image of class ``label``: its shape and hue on a textured background.

    ``size`` is ``(width, height)``; None draws each side uniformly from ``sides`` (independently, so
    aspect ratios are mixed).
    """
    if not 0 <= label < num_classes:
        raise ValueError(f"label {label} outside [0, {num_classes})")
    if size is None:
        w, h = (int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
    else:
        w, h = size
    background = _background(rng, w, h)
    shape = SHAPES[label % len(SHAPES)]
    # Hues spread over the circle; jitter keeps colour alone from being a perfect cue.
    hue = label / max(num_classes, 1) + rng.uniform(-0.04, 0.04)
    colour = _colour(hue, rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0))
    radius = rng.uniform(0.18, 0.4) * min(w, h)
    cx, cy = rng.uniform(radius, w - radius), rng.uniform(radius, h - radius)
    mask = _shape_mask(shape, w, h, cx, cy, radius, rng.uniform(0, 2 * np.pi))
    # A vertical light gradient across the object so it is shaded, not a flat stencil.
    shade = 0.85 + 0.3 * np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    column = (np.clip(colour * shade, 0, 1) * 255 + 0.5).astype(np.uint8)
    foreground = Image.fromarray(column).resize((w, h), Image.NEAREST)
    pixels = np.asarray(Image.composite(foreground, background, mask), np.int16) + _sensor_noise(rng, w, h)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _suffix(fmt: str) -> tuple[str, str]:
    try:
        return FORMATS[fmt.lower()]
    except KeyError:
        raise ValueError(f"unknown image format {fmt!r}; choose one of: {', '.join(FORMATS)}") from None


def save_image(image: Image.Image, path: Path, fmt: str, quality: int = 90) -> Path:
    """Save as ``fmt`` under ``path`` with that format's suffix; PNG is lossless whatever ``quality`` says."""
    pil_format, suffix = _suffix(fmt)
    path = Path(path).with_suffix(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    if pil_format == "JPEG":
        image.save(path, pil_format, quality=quality)
    else:
        image.save(path, pil_format, compress_level=1)  # fastest lossless level: fixtures are written often
    return path


def _image_rng(seed: int, split: str, label: int, index: int) -> np.random.Generator:
    # Split names enter as their bytes so "train"/"val" streams never collide.
    return np.random.default_rng([seed, *split.encode(), 1_000_003, label, index])


def _write_one(job: tuple) -> None:
    root, split, label, index, num_classes, seed, fmt, transform, sides, quality, names = job
    image = photo_image(_image_rng(seed, split, label, index), label, num_classes, sides=sides)
    if transform is not None:
        image = transform(image)
    save_image(image, Path(root) / split / names[label] / f"{index:05d}", fmt, quality)


def make_imagefolder(root: str | os.PathLike, classes: int = 3, per_class: int | Sequence[int] = (8, 4),
                     seed: int = 0, fmt: str = "jpeg", splits: Sequence[str] = ("train", "val"),
                     transform: Callable[[Image.Image], Image.Image] | None = None,
                     sizes: tuple[int, int] = SIDES, quality: int = 90, workers: int = 1) -> Path:
    """Write ``ROOT/<split>/<class>/<i>.jpg`` (``.png`` for ``fmt="png"``) and return ROOT.

    ``per_class`` is the number of images per class, one count per split (or one for all).
    ``transform`` (PIL -> PIL, e.g. colour inversion) runs before saving.  ``workers`` > 1 writes with
    that many processes (same files: each image depends only on seed, split, class and index);
    the transform must then be picklable.
    """
    _suffix(fmt)
    counts = [int(per_class)] * len(splits) if np.isscalar(per_class) else [int(n) for n in per_class]
    if len(counts) != len(splits):
        raise ValueError(f"per_class has {len(counts)} counts for {len(splits)} splits {tuple(splits)}")
    root, names = Path(root), class_names(classes)
    jobs = [(str(root), split, label, i, classes, seed, fmt, transform, tuple(sizes), quality, names)
            for split, n in zip(splits, counts) for label in range(classes) for i in range(n)]
    for split in splits:
        for name in names:
            (root / split / name).mkdir(parents=True, exist_ok=True)
    if workers > 1 and len(jobs) > 1:
        import multiprocessing

        # fork: the children need no re-import, and the parent holds nothing that fork would break
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            pool.map(_write_one, jobs, chunksize=max(1, len(jobs) // (workers * 8)))
    else:
        for job in jobs:
            _write_one(job)
    return root


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _mirror_tree(src: Path, dst: Path) -> None:
    # Empty class folders are part of the layout under test, so they are copied too.
    dst.mkdir(parents=True, exist_ok=True)
    for folder in src.rglob("*"):
        if folder.is_dir():
            (dst / folder.relative_to(src)).mkdir(parents=True, exist_ok=True)


def _map_folder(src: Path, dst: Path, fmt_of: Callable[[Path], str], pixels: Callable[[np.ndarray], np.ndarray],
                quality: int) -> Path:
    src, dst = Path(src), Path(dst)
    _mirror_tree(src, dst)
    for path in image_files(src):
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"))
        save_image(Image.fromarray(pixels(array)), dst / path.relative_to(src), fmt_of(path), quality)
    return dst


def _format_of(path: Path) -> str:
    return "png" if path.suffix.lower() == ".png" else "jpeg"


def convert_folder(src: str | os.PathLike, dst: str | os.PathLike, fmt: str = "png", quality: int = 90) -> Path:
    """The same tree with every image decoded and re-saved as ``fmt``: for ``png`` the very pixels a
    decoder reads from ``src`` (JPEG artefacts included), for ``jpeg`` a lossy re-encoding."""
    _suffix(fmt)
    return _map_folder(Path(src), Path(dst), lambda _: fmt, lambda a: a, quality)


def invert_folder(src: str | os.PathLike, dst: str | os.PathLike, quality: int = 95) -> Path:
    """Colour-inverted copies (255 - pixels), same tree and same format per file.

    PNG copies are exact inverses; JPEG copies are re-encoded, so they match 255 - pixels only up to
    JPEG's rounding (a few levels).
    """
    return _map_folder(Path(src), Path(dst), _format_of, lambda a: 255 - a, quality)


def add_corrupt_jpeg(folder: str | os.PathLike, seed: int = 0) -> list[Path]:
    """Add ``truncated.jpg`` (a valid JPEG cut to 40% of its bytes) and ``garbage.jpg`` (random bytes)
    to ``folder``; both fail ``Image.open(path).load()``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 404])
    whole = save_image(photo_image(rng, 0, 1, size=(200, 160)), folder / "whole", "jpeg")
    data = whole.read_bytes()
    whole.unlink()
    truncated, garbage = folder / "truncated.jpg", folder / "garbage.jpg"
    truncated.write_bytes(data[: int(len(data) * 0.4)])
    garbage.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return [truncated, garbage]


def add_empty_class(root: str | os.PathLike, split: str = "train", name: str = "empty") -> Path:
    """An empty class folder ``ROOT/<split>/<name>`` (a class with no images)."""
    folder = Path(root) / split / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def make_flat_folder(dst: str | os.PathLike, n: int = 10, seed: int = 0, classes: int = 3, fmt: str = "jpeg",
                     sizes: tuple[int, int] = SIDES, quality: int = 90) -> Path:
    """``n`` photos directly in ``dst`` (no class subfolders): what a user passes by mistake for an ImageFolder."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label = i % classes
        image = photo_image(_image_rng(seed, "flat", label, i), label, classes, sides=sizes)
        save_image(image, dst / f"{i:05d}", fmt, quality)
    return dst


__all__ = ["SHAPES", "add_corrupt_jpeg", "add_empty_class", "class_names", "convert_folder", "image_files",
           "invert_folder", "make_flat_folder", "make_imagefolder", "photo_image", "save_image"]
