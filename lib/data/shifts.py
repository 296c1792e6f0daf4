"""Shift transforms (a registry): tint, vflip, brightness, blur, noise, frame, applied to whole batches.

A shift is called as ``shift(images, labels, indices) -> images`` on float images in [0, 1], NCHW,
on whatever device and dtype the batch has.  Its randomness is a function of ``(seed, shift
parameters, example index)`` only, so an example is shifted the same way whatever batch it lands in,
in whatever order, in every epoch: the shift is part of the data distribution, not an augmentation.
Class-proportion shifts (``label_p``) change sampling rates instead and live in the loader.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import numpy as np
import torch

from askshift.lib.registry import Registry
from askshift.lib.store import content_hash

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A counter-based 64-bit mixer (SplitMix64 finaliser): stateless, so order never matters."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return x ^ (x >> np.uint64(31))


def example_hash(seed: int, salt: int, indices: Any, stream: int = 0) -> np.ndarray:
    """A uint64 per example index, fixed by (seed, salt, stream, index)."""
    idx = torch.as_tensor(indices).detach().cpu().numpy().astype(np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        key = _splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ _splitmix64(np.uint64(salt & 0xFFFFFFFFFFFFFFFF) + np.uint64(stream)))
        return _splitmix64(idx ^ key)


def example_uniform(seed: int, salt: int, indices: Any, stream: int = 0) -> np.ndarray:
    """A float64 in [0, 1) per example index (53 random bits of ``example_hash``)."""
    return (example_hash(seed, salt, indices, stream) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class Shift:
    """Base class: ``name`` and ``params`` identify the shift; ``salt`` separates random streams of different shifts."""

    name = "shift"

    def __init__(self, num_classes: int, seed: int = 0, **params: Any):
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        self.params = {"seed": self.seed, **params}
        self.salt = int(content_hash({"shift": self.name, **self.params}, length=15), 16)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


SHIFTS: Registry[type[Shift]] = Registry("shift")


def class_colours(num_classes: int, seed: int = 0) -> np.ndarray:
    """One RGB colour in [0, 1]^3 per class, drawn once with a fixed seed."""
    return np.random.default_rng(seed).uniform(0.0, 1.0, size=(num_classes, 3))


@SHIFTS.register("tint", "x <- (1-alpha) x + alpha c; c = class colour with prob spurious_p, else a random class's colour")
class Tint(Shift):
    """Colour tint.  ``spurious_p=0`` gives random colours (unseen tint); ``spurious_p=0.9`` a colour shortcut."""

    name = "tint"

    def __init__(self, num_classes: int, alpha: float = 0.25, spurious_p: float = 0.0, seed: int = 0, palette_seed: int = 0):
        if not 0.0 <= alpha <= 1.0 or not 0.0 <= spurious_p <= 1.0:
            raise ValueError(f"tint needs 0 <= alpha <= 1 and 0 <= spurious_p <= 1, got alpha={alpha}, spurious_p={spurious_p}")
        super().__init__(num_classes, seed, alpha=float(alpha), spurious_p=float(spurious_p), palette_seed=int(palette_seed))
        self.alpha = float(alpha)
        self.spurious_p = float(spurious_p)
        # The palette depends on palette_seed only, so reference and shifted data share class colours.
        self.colours = class_colours(self.num_classes, palette_seed)

    def colour_classes(self, labels: torch.Tensor, indices: torch.Tensor) -> np.ndarray:
        """Which class's colour each example gets."""
        use_own = example_uniform(self.seed, self.salt, indices, 0) < self.spurious_p
        other = np.minimum((example_uniform(self.seed, self.salt, indices, 1) * self.num_classes).astype(np.int64), self.num_classes - 1)
        return np.where(use_own, labels.detach().cpu().numpy().astype(np.int64), other)

    def __call__(self, images, labels, indices):
        colours = torch.as_tensor(self.colours[self.colour_classes(labels, indices)], dtype=images.dtype, device=images.device)
        return images * (1 - self.alpha) + colours[:, :, None, None] * self.alpha


@SHIFTS.register("vflip", "vertical flip of every image (out-of-support)")
class VFlip(Shift):
    """Upside-down images."""

    name = "vflip"

    def __init__(self, num_classes: int, seed: int = 0):
        super().__init__(num_classes, seed)

    def __call__(self, images, labels, indices):
        return images.flip(-2)


@SHIFTS.register("brightness", "x <- clip(factor * x + offset) (darker for factor < 1)")
class Brightness(Shift):
    """Global brightness change."""

    name = "brightness"

    def __init__(self, num_classes: int, factor: float = 1.5, offset: float = 0.0, seed: int = 0):
        if factor < 0:
            raise ValueError(f"brightness factor must be >= 0, got {factor}")
        super().__init__(num_classes, seed, factor=float(factor), offset=float(offset))
        self.factor, self.offset = float(factor), float(offset)

    def __call__(self, images, labels, indices):
        return (images * self.factor + self.offset).clamp(0, 1)


@SHIFTS.register("grayscale", "colour removed: x <- (1 - amount) x + amount luma(x) (ITU-R BT.601 weights)")
class Grayscale(Shift):
    """Black-and-white photos: each pixel's colour mixed towards its luma (``amount`` 1 = fully grey)."""

    name = "grayscale"
    WEIGHTS = (0.299, 0.587, 0.114)

    def __init__(self, num_classes: int, amount: float = 1.0, seed: int = 0):
        if not 0.0 <= amount <= 1.0:
            raise ValueError(f"grayscale amount must lie in [0, 1], got {amount}")
        super().__init__(num_classes, seed, amount=float(amount))
        self.amount = float(amount)

    def __call__(self, images, labels, indices):
        weights = torch.tensor(self.WEIGHTS, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        luma = (images * weights).sum(dim=1, keepdim=True)
        return images * (1 - self.amount) + luma * self.amount


@SHIFTS.register("blur", "gaussian blur with standard deviation sigma (pixels)")
class Blur(Shift):
    """Gaussian blur, separable, reflect-padded."""

    name = "blur"

    def __init__(self, num_classes: int, sigma: float = 1.0, seed: int = 0):
        if sigma <= 0:
            raise ValueError(f"blur sigma must be > 0, got {sigma}")
        super().__init__(num_classes, seed, sigma=float(sigma))
        radius = max(1, int(math.ceil(3 * sigma)))
        x = np.arange(-radius, radius + 1, dtype=np.float64)
        kernel = np.exp(-0.5 * (x / sigma) ** 2)
        self.kernel = kernel / kernel.sum()
        self.radius = radius

    def __call__(self, images, labels, indices):
        n, c, h, w = images.shape
        k = torch.as_tensor(self.kernel, dtype=images.dtype, device=images.device)
        r = min(self.radius, h - 1, w - 1)  # reflect padding needs pad < size
        if r < self.radius:
            k = k[self.radius - r: self.radius + r + 1]
            k = k / k.sum()
        x = images.reshape(n * c, 1, h, w)
        x = torch.nn.functional.pad(x, (r, r, r, r), mode="reflect")
        x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1))
        x = torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1))
        return x.reshape(n, c, h, w).contiguous(memory_format=_memory_format(images))


@SHIFTS.register("noise", "additive gaussian noise with standard deviation std, fixed per example, clipped to [0, 1]")
class Noise(Shift):
    """Additive gaussian noise; each example's noise comes from a generator seeded by its index."""

    name = "noise"

    def __init__(self, num_classes: int, std: float = 0.1, seed: int = 0):
        if std < 0:
            raise ValueError(f"noise std must be >= 0, got {std}")
        super().__init__(num_classes, seed, std=float(std))
        self.std = float(std)

    def __call__(self, images, labels, indices):
        seeds = example_hash(self.seed, self.salt, indices) >> np.uint64(1)  # torch seeds are < 2**63
        noise = torch.empty(images.shape, dtype=torch.float32, device=images.device)
        generator = torch.Generator(device=images.device)
        for row, s in enumerate(seeds.tolist()):
            generator.manual_seed(int(s))
            noise[row] = torch.randn(images.shape[1:], generator=generator, device=images.device)
        return (images + (noise * self.std).to(images.dtype)).clamp(0, 1)


@SHIFTS.register("frame", "a solid border of `width` pixels in colour `value` (grey level or RGB)")
class Frame(Shift):
    """A picture frame around every image."""

    name = "frame"

    def __init__(self, num_classes: int, width: int = 3, value: float | tuple[float, float, float] = 0.0, seed: int = 0):
        if width < 1:
            raise ValueError(f"frame width must be >= 1, got {width}")
        value = tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else float(value)
        super().__init__(num_classes, seed, width=int(width), value=value)
        self.width, self.value = int(width), value

    def __call__(self, images, labels, indices):
        colour = torch.as_tensor(self.value, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
        h, w = images.shape[-2:]
        rows = torch.arange(h, device=images.device)
        cols = torch.arange(w, device=images.device)
        inside = ((rows >= self.width) & (rows < h - self.width))[:, None] & ((cols >= self.width) & (cols < w - self.width))[None, :]
        return torch.where(inside, images, colour)


def _memory_format(images: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous() else torch.contiguous_format


def check_shift_params(name: str, params: dict[str, Any]) -> None:
    """Raise a clear ValueError when ``params`` do not fit shift ``name`` (used to validate specs early)."""
    cls = SHIFTS.get(name)
    try:
        inspect.signature(cls).bind(num_classes=2, **params)
    except TypeError as exc:
        allowed = [p for p in inspect.signature(cls).parameters if p != "num_classes"]
        raise ValueError(f"shift {name!r}: {exc}; its parameters are: {', '.join(allowed)}") from None


def make_shift(name: str, num_classes: int, params: dict[str, Any] | None = None) -> Shift:
    """Build a registered shift for a dataset with ``num_classes`` classes."""
    params = dict(params or {})
    check_shift_params(name, params)
    return SHIFTS.get(name)(num_classes=num_classes, **params)


ShiftFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["SHIFTS", "Shift", "ShiftFn", "check_shift_params", "class_colours", "example_hash", "example_uniform", "make_shift"]
