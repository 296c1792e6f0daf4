"""What a model sees: its family's image transform, and the decoding and loader config every training, prediction
and domain-classifier loader is built from (so a model reads the same pixels wherever it runs)."""
from __future__ import annotations

from askshift.lib.data.loaders import LoaderConfig
from askshift.lib.data.transforms import Decoding, ImageTransform, decoding
from askshift.lib.models.families import model_family


def model_transform(model: str, resolution: int | None = None) -> ImageTransform:
    """The transform of a model name (``timm:resnet18``, ``clip:ViT-B-32``, ``cnn:small``), at ``resolution`` if given."""
    return model_family(model).transform(model.partition(":")[2]).at(resolution)


def model_decoding(model: str, dataset: str, train: bool, resolution: int | None = None, flip: bool = False) -> Decoding:
    """``decoding`` for a model name: what every training, prediction and domain-classifier loader uses."""
    return decoding(dataset, model_transform(model, resolution), train, resolution, flip)


def loader_config(dataset: str, model: str | None, train: bool, resolution: int | None = None, flip: bool = False,
                  **fields):
    """The ``LoaderConfig`` of one pass of ``dataset`` read by ``model`` (None: as stored); ``fields`` set the rest
    (batch_size, num_workers, device, translate, ...).  Every training, prediction and domain-classifier loader is
    built here, so a model reads the same pixels wherever it runs."""
    transform = model_transform(model, resolution) if model else None
    return LoaderConfig(**fields, **decoding(dataset, transform, train, resolution, flip).loader_fields())


__all__ = ["loader_config", "model_decoding", "model_transform"]
