"""A shift with a known answer: digits whose shifted set mixes in-support and out-of-support examples.

Reference: the digits training split with a spurious class tint (each image gets its class's
colour with probability ``spurious_p``, another palette colour otherwise), so every palette colour
occurs with every digit.  Shifted: the digits validation split, each image in ``copies`` tinted
copies; a seeded ``out_fraction`` of them are *out-of-support* -- tinted with a colour from a hue
range the palette never uses, or vertically flipped (digits that look the same upside down are
not flipped: a flipped 0, 1 or 8 still occurs in the reference data) -- and the rest are
*in-support*: palette colours, only their pairing with the class changed.  The mixture is
written as an ``npz`` data set (keys ``train_*`` and ``shifted_*``) so the split flow reads it
through the same FFCV path as any user data, and the true membership is kept beside it.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from askshift.lib.data.datasets import load_dataset
from askshift.lib.data.specs import DistributionSpec, ExperimentSpec
from askshift.lib.store import write_with
from askshift.lib.support.ratios import DomainClassifierConfig, auroc, out_of_support

TINT_WEIGHT = 0.25  # x <- (1 - w) x + w c, the paper's tint
REFERENCE_SPLIT = "train"
SHIFTED_SPLIT = "shifted"
# Hue ranges (HSV, s = v = 1): the palette never reaches the unseen range, so an unseen tint is
# an input the reference distribution cannot produce.
PALETTE_HUES = (0.0, 0.45)
UNSEEN_HUES = (0.6, 0.9)
# Digits that a vertical flip leaves (nearly) unchanged; flipping them would not leave the support.
FLIP_SYMMETRIC_DIGITS = (0, 1, 3, 8)


class MixtureConfig(BaseModel):
    """How the known-answer mixture is built (all randomness follows ``seed``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    spurious_p: float = Field(0.5, ge=0, le=1, description="reference: P(tint = own class colour)")
    out_fraction: float = Field(0.5, gt=0, lt=1, description="share of shifted examples that are out-of-support")
    flip_fraction: float = Field(0.0, ge=0, le=1, description="share of out-of-support examples that are flipped "
                                                              "(the rest get an unseen colour)")
    copies: int = Field(2, ge=1, description="tinted copies of each shifted (validation) image")
    image_size: int = Field(16, ge=8, description="digits are upsampled from 8x8 to this size")


@dataclass(frozen=True)
class Mixture:
    reference_images: np.ndarray  # uint8 NHWC
    reference_labels: np.ndarray
    shifted_images: np.ndarray
    shifted_labels: np.ndarray
    out_of_support: np.ndarray  # bool, the true membership of each shifted example
    kind: np.ndarray  # "palette", "unseen_tint", "vflip"


def hsv_colours(hues: np.ndarray) -> np.ndarray:
    return np.array([colorsys.hsv_to_rgb(float(h), 1.0, 1.0) for h in hues], dtype=np.float32)


def palette(num_classes: int, seed: int) -> np.ndarray:
    """One colour per class, hues spread over PALETTE_HUES in a seeded order."""
    lo, hi = PALETTE_HUES
    hues = np.linspace(lo, hi, num_classes)
    return hsv_colours(np.random.default_rng([seed, 1]).permutation(hues))


def tint(images: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """uint8 NHWC images tinted per example with RGB colours in [0, 1]."""
    x = images.astype(np.float32) / 255.0
    out = (1 - TINT_WEIGHT) * x + TINT_WEIGHT * colours[:, None, None, :]
    return np.round(out * 255).clip(0, 255).astype(np.uint8)


def _digits(split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    ds = load_dataset("digits", split, size=size)
    images = np.stack([ds.image_array(i) for i in range(len(ds))])
    return images, ds.labels


def build_mixture(config: MixtureConfig = MixtureConfig()) -> Mixture:
    rng = np.random.default_rng([config.seed, 2])
    num_classes = 10
    colours = palette(num_classes, config.seed)

    ref_x, ref_y = _digits("train", config.image_size)
    own = rng.random(ref_y.size) < config.spurious_p
    ref_colour = np.where(own, ref_y, rng.integers(0, num_classes, ref_y.size))
    reference_images = tint(ref_x, colours[ref_colour])

    val_x, val_y = _digits("val", config.image_size)
    shift_x = np.concatenate([val_x] * config.copies)
    shift_y = np.concatenate([val_y] * config.copies)
    n = shift_y.size
    out = rng.random(n) < config.out_fraction
    flippable = ~np.isin(shift_y, FLIP_SYMMETRIC_DIGITS)
    flip = out & flippable & (rng.random(n) < config.flip_fraction)
    unseen = out & ~flip
    colour = colours[rng.integers(0, num_classes, n)]
    colour[unseen] = hsv_colours(rng.uniform(*UNSEEN_HUES, size=int(unseen.sum())))
    shift_x = shift_x.copy()
    shift_x[flip] = shift_x[flip][:, ::-1]
    shifted_images = tint(shift_x, colour)
    kind = np.where(flip, "vflip", np.where(unseen, "unseen_tint", "palette"))
    return Mixture(reference_images, ref_y, shifted_images, shift_y, out, kind)


def write_mixture(mixture: Mixture, path: str | Path) -> Path:
    """The mixture as an ``npz`` data set: splits ``train`` (reference) and ``shifted``, plus the truth."""
    path = Path(path)
    arrays = {
        f"{REFERENCE_SPLIT}_images": mixture.reference_images,
        f"{REFERENCE_SPLIT}_labels": mixture.reference_labels,
        f"{SHIFTED_SPLIT}_images": mixture.shifted_images,
        f"{SHIFTED_SPLIT}_labels": mixture.shifted_labels,
        "class_names": np.array([str(i) for i in range(10)]),
        "shifted_out_of_support": mixture.out_of_support,
        "shifted_kind": mixture.kind.astype(str),
    }

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file handle keeps numpy from appending ".npz" to the temporary name
            np.savez(fh, **arrays)

    return write_with(path, writer)


def read_truth(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return data["shifted_out_of_support"].astype(bool), data["shifted_kind"].astype(str)


@dataclass(frozen=True)
class Recovery:
    """How well the split recovered the true membership."""

    auroc: float
    table: object  # polars DataFrame: epsilon, in/out sizes, precision, recall of out-of-support


def membership_recovery(index: np.ndarray, ratios: np.ndarray, truth: np.ndarray,
                        epsilons: tuple[float, ...]) -> Recovery:
    """AUROC of the density ratio against the true out-of-support membership, and per-ε precision/recall."""
    import polars as pl

    true_out = truth[np.asarray(index, np.int64)]
    ratios = np.asarray(ratios, np.float64)
    # AUROC is rank-based; infinite ratios (a very sure classifier) stay the largest.
    rows = []
    for eps in epsilons:
        pred = out_of_support(ratios, eps)
        tp = int((pred & true_out).sum())
        rows.append({
            "epsilon": eps, "in_support": int((~pred).sum()), "out_of_support": int(pred.sum()),
            "precision_out": tp / pred.sum() if pred.sum() else None,
            "recall_out": tp / true_out.sum() if true_out.sum() else None,
            "accuracy": float((pred == true_out).mean()),
        })
    return Recovery(auroc(true_out.astype(int), np.nan_to_num(ratios, posinf=np.finfo(float).max)),
                    pl.DataFrame(rows))


# --- the check as the CLI runs it -----------------------------------------------------------------

# A tiny CNN and few epochs: colour is easy to see, and the whole check must fit in a few CPU minutes.
CHECK_FOLDS = 4
CHECK_EPSILON = 0.2


def check_classifier(seed: int = 0):
    return DomainClassifierConfig(model="cnn:tiny", lrs=(3e-3, 1e-3), epochs=2, batch_size=64, weight_decay=5e-4,
                                  reference_size=None, in_memory=True, seed=seed)


def mixture_spec(npz_path: str | Path, name: str):
    """An ExperimentSpec over the mixture file: reference = split ``train``, target ``shifted`` (split ``shifted_val``)."""
    root = str(Path(npz_path).resolve())
    return ExperimentSpec(
        name=name,
        description="split-check: digits with a spurious palette tint vs a mixture of palette-tinted "
                    "(in-support) and unseen-colour (out-of-support) digits",
        reference=DistributionSpec(dataset="npz", root=root, train_split=REFERENCE_SPLIT, split=REFERENCE_SPLIT),
        targets={"shifted": DistributionSpec(dataset="npz", root=root, split=SHIFTED_SPLIT)},
    )
