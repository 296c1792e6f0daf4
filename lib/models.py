"""Model families (a registry): every model is a ``Classifier`` = normalisation + backbone + linear head.

Names look like ``family:spec`` -- ``cnn:small``, ``timm:vit_tiny_patch16_224.augreg_in21k``,
``clip:ViT-B-32:openai``.  Images reach a model as float tensors in [0, 1], NCHW; the model
normalises them itself with its own mean/std, so loaders and shifts never need to know which
model will read the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from lib.registry import Registry


class Classifier(nn.Module):
    """Normalise -> backbone (features) -> head.  ``freeze_backbone`` gives a linear probe."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        std: tuple[float, ...] = (0.5, 0.5, 0.5),
        input_size: int = 32,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = nn.functional.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.backbone((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def reset_head(self, num_classes: int | None = None) -> None:
        n = num_classes or self.num_classes
        self.head = nn.Linear(self.feature_dim, n).to(next(self.head.parameters()).device)
        self.num_classes = n

    def freeze_backbone(self, frozen: bool = True) -> None:
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)


@dataclass(frozen=True)
class ModelName:
    """A parsed model name: ``family:spec``."""

    family: str
    spec: str

    @classmethod
    def parse(cls, name: str) -> "ModelName":
        family, sep, spec = name.partition(":")
        if not sep:
            raise ValueError(f"model name {name!r} needs a family prefix, e.g. 'cnn:small' (families: {', '.join(MODEL_FAMILIES.names())})")
        MODEL_FAMILIES.get(family)  # raises a clear error for an unknown family
        return cls(family, spec)


# A family builder takes (spec, num_classes, pretrained path or tag or None, **options) -> Classifier.
FamilyBuilder = Callable[..., Classifier]
MODEL_FAMILIES: Registry[FamilyBuilder] = Registry("model family")

# Widths of the small CNN; "width" multiplies channels so baselines can vary capacity.
CNN_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (8, 16, 32),
    "small": (16, 32, 64),
    "medium": (32, 64, 128),
}


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def small_cnn(channels: tuple[int, int, int]) -> nn.Sequential:
    c1, c2, c3 = channels
    return nn.Sequential(
        _conv_block(3, c1),
        nn.MaxPool2d(2),
        _conv_block(c1, c2),
        nn.MaxPool2d(2),
        _conv_block(c2, c3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


@MODEL_FAMILIES.register("cnn", "small convolutional networks (cnn:tiny|small|medium[@WIDTH]) that train in seconds on CPU")
def build_cnn(spec: str, num_classes: int, pretrained: str | None = None, width: float = 1.0, **_: object) -> Classifier:
    size, _, w = spec.partition("@")
    if size not in CNN_SIZES:
        from lib.registry import close_matches

        close = close_matches(size, list(CNN_SIZES))
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown cnn size {size!r}.{hint} Choose one of: {', '.join(CNN_SIZES)}")
    width = float(w) if w else width
    channels = tuple(max(1, int(round(c * width))) for c in CNN_SIZES[size])
    model = Classifier(small_cnn(channels), channels[-1], num_classes, input_size=32)  # type: ignore[arg-type]
    if pretrained:
        load_backbone_weights(model, pretrained)
    return model


def load_backbone_weights(model: Classifier, path: str) -> None:
    """Load a pre-trained checkpoint's backbone into ``model`` (the head is task-specific and dropped)."""
    from pathlib import Path

    from lib.store import load_torch

    if not Path(path).exists():
        raise FileNotFoundError(f"pre-trained checkpoint {path!r} does not exist (create one with `askshift pretrain --out PATH`)")
    state = load_torch(path)
    state = state.get("model", state) if isinstance(state, dict) else state
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if not backbone:
        raise ValueError(f"{path} holds no 'backbone.*' weights; is it an askshift checkpoint?")
    missing, unexpected = model.backbone.load_state_dict(backbone, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit this architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")


def build_model(name: str, num_classes: int, pretrained: str | None = None, **options: object) -> Classifier:
    """Build a classifier from a registered family, e.g. ``build_model("cnn:small", 10)``."""
    parsed = ModelName.parse(name)
    return MODEL_FAMILIES.get(parsed.family)(parsed.spec, num_classes, pretrained=pretrained, **options)
