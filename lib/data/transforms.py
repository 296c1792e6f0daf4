"""Image transforms per model and the FFCV decoding they turn into: one place for "what a model sees".

A model family says how its models want images (``ImageTransform``: resolution, eval crop ratio,
interpolation, mean/std -- timm from ``pretrained_cfg``, open_clip from its preprocess config, the small
CNN a CPU-sized default).  ``decoding(...)`` turns a transform into the loader settings of one pass:

- photos (datasets whose images differ in size: ImageFolder, ImageNet, WILDS): training takes FFCV's
  random-resized crop (scale 0.08-1, as timm, open_clip's fine-tuning and ffcv-imagenet do) plus a
  horizontal flip; evaluation takes FFCV's centre crop with the model's crop ratio, at the model's
  resolution (or ``--resolution``);
- small same-size arrays (digits, CIFAR, npz): decoded as stored (resized only when a resolution is
  asked for), augmented as the run says -- the recipes measured on them stay as they were.

Normalisation (mean/std) happens inside the model (``askshift.lib.models.families.Classifier``), never in the loader.
FFCV's decoders resize with OpenCV's area interpolation; ``interpolation`` records what the model was
published with.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from askshift.lib.data.datasets import dataset_info

# Random-resized-crop scale range of training on photos (timm's and torchvision's default).
TRAIN_CROP_SCALE = (0.08, 1.0)


class ImageTransform(BaseModel):
    """How a model wants its images: square side, eval crop ratio, interpolation, normalisation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    resolution: int = Field(ge=8, description="side of the square image the model reads")
    crop_pct: float = Field(0.875, gt=0, le=1, description="evaluation: centre crop of this share of the shorter side")
    interpolation: str = Field("bilinear", description="interpolation the model was published with")
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    source: str = Field("", description="where these values come from (timm pretrained_cfg, open_clip preprocess, ...)")

    def at(self, resolution: int | None) -> "ImageTransform":
        """The same transform at another resolution (``--resolution``); None keeps the model's."""
        if resolution is None or resolution == self.resolution:
            return self
        return self.model_copy(update={"resolution": int(resolution), "source": f"{self.source}, resolution {resolution}"})


class Decoding(BaseModel):
    """The decoding settings of one loader pass (the fields of ``askshift.lib.data.loaders.LoaderConfig`` they set)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    decoder: Literal["simple", "center_crop", "random_crop", "imagenet_random_crop"] = "simple"
    resolution: int | None = None
    center_crop_ratio: float = 224 / 256
    flip: bool = False

    def loader_fields(self) -> dict:
        return self.model_dump()


def is_photo_dataset(dataset: str) -> bool:
    """True for datasets of photos of mixed sizes (the registry entry says so)."""
    return dataset_info(dataset).photos


def decoding(dataset: str, transform: ImageTransform | None, train: bool, resolution: int | None = None,
             flip: bool = False) -> Decoding:
    """Loader settings for ``dataset`` read by a model with ``transform`` (None: the images as stored).

    ``resolution`` overrides the transform's; ``flip`` is the run's own flip setting for same-size
    arrays (photos are always flipped in training).
    """
    if is_photo_dataset(dataset):
        if transform is None and resolution is None:
            raise ValueError(f"dataset {dataset!r} holds photos of mixed sizes: choose a resolution (--resolution N)")
        side = int(resolution or transform.resolution)  # type: ignore[union-attr]
        ratio = transform.crop_pct if transform is not None else 1.0
        if train:
            return Decoding(decoder="imagenet_random_crop", resolution=side, center_crop_ratio=ratio, flip=True)
        return Decoding(decoder="center_crop", resolution=side, center_crop_ratio=ratio, flip=False)
    return Decoding(decoder="simple", resolution=resolution, flip=bool(flip and train))


__all__ = ["TRAIN_CROP_SCALE", "Decoding", "ImageTransform", "decoding", "is_photo_dataset"]
