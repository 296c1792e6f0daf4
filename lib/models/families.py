"""Model families (a registry): every model is a ``Classifier`` = normalisation + backbone + linear head.

Names look like ``family:spec`` -- ``cnn:small``, ``timm:vit_tiny_patch16_224.augreg_in21k``,
``clip:ViT-B-32:openai``.  Images reach a model as float tensors in [0, 1], NCHW; the model
normalises them itself with its own mean/std, so loaders and shifts never need to know which
model will read the batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from askshift.lib.data.transforms import ImageTransform
from askshift.lib.registry import Registry, UnknownNameError, close_matches
from askshift.lib.store import load_torch


class Classifier(nn.Module):
    """Normalise -> backbone (features) -> head.  ``freeze_backbone`` gives a linear probe."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        std: tuple[float, ...] = (0.5, 0.5, 0.5),
        input_size: int | None = 32,
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
        # Models with a fixed input size (ViTs) get it; convolutional networks read any size.
        if self.input_size is not None and (x.shape[-1] != self.input_size or x.shape[-2] != self.input_size):
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
        # A linear probe must see fixed features: BatchNorm running statistics and dropout
        # would otherwise still change the backbone in train mode.
        self.backbone_frozen = frozen
        self.train(self.training)

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if getattr(self, "backbone_frozen", False):
            self.backbone.eval()
        return self


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


@dataclass(frozen=True)
class ModelFamily:
    """A model family and what it knows about its models (a new family is one entry)."""

    name: str
    description: str
    build: FamilyBuilder  # (spec, num_classes, pretrained=None, **options) -> Classifier
    check: Callable[[str], None]  # raises UnknownNameError / ValueError for a spec it cannot build
    transform: Callable[[str], "ImageTransform"]  # spec -> the model's own image transform
    weights: str  # where pre-trained weights come from (askshift models prints it)
    recipe: str  # default fine-tuning recipe: "miniature" (CPU-sized) or "paper"
    strategies: tuple[str, ...]  # default fine-tuning strategies
    images: str = ""  # how its models read photos, in words (askshift models)
    text_tower: bool = False  # zero-shot heads (ZS-FT) need one
    local_pretraining: bool = False  # without --pretrained, the glyph checkpoint (askshift pretrain) stands in


MODEL_FAMILIES: Registry[ModelFamily] = Registry("model family")


def model_family(name: str) -> ModelFamily:
    """The family entry of a model name (``timm:resnet18`` -> the timm entry); unknown families raise."""
    return MODEL_FAMILIES.get(ModelName.parse(name).family)

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


# The small CNN reads photos at this side: CPU-sized (its pooling takes any size; digits stay at their 32 px).
CNN_PHOTO_RESOLUTION = 64


def check_cnn(spec: str) -> None:
    size, _, w = spec.partition("@")
    if size not in CNN_SIZES:
        close = close_matches(size, list(CNN_SIZES))
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"unknown cnn size {size!r}.{hint} Choose one of: {', '.join(CNN_SIZES)}")
    if w:
        try:
            if float(w) <= 0:
                raise ValueError
        except ValueError:
            raise ValueError(f"cnn width {w!r} in {spec!r} must be a positive number, e.g. cnn:small@0.5") from None


def cnn_transform(spec: str) -> "ImageTransform":
    return ImageTransform(resolution=CNN_PHOTO_RESOLUTION, crop_pct=0.875, interpolation="area",
                          source="cnn: CPU-sized default")


def build_cnn(spec: str, num_classes: int, pretrained: str | None = None, width: float = 1.0, **_: object) -> Classifier:
    """cnn:tiny|small|medium[@WIDTH]; any input size (adaptive pooling)."""
    check_cnn(spec)
    size, _, w = spec.partition("@")
    width = float(w) if w else width
    channels = tuple(max(1, int(round(c * width))) for c in CNN_SIZES[size])
    model = Classifier(small_cnn(channels), channels[-1], num_classes, input_size=None)  # type: ignore[arg-type]
    if pretrained == HUB:
        raise PretrainedUnavailable("cnn: models have no hub weights; build a local checkpoint with "
                                    "`askshift pretrain --out PATH` and pass --pretrained PATH")
    if pretrained:
        load_backbone_weights(model, pretrained)
    model.family_info = {"family": "cnn", "arch": spec, "pretrained": pretrained}
    return model


class PretrainedUnavailable(RuntimeError):
    """Pre-trained weights were asked for but no hub is reachable and no local file was given."""


HUB = "hub"  # the ``pretrained`` value that asks for weights from the model hub


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _require_hub(what: str, how_local: str) -> None:
    if hub_offline():
        raise PretrainedUnavailable(
            f"{what} needs the model hub, but HF_HUB_OFFLINE=1 (no hub reachable): {how_local}"
        )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: a bare state dict, or one under 'model' / 'state_dict'."""
    if not Path(path).exists():
        raise FileNotFoundError(f"pre-trained checkpoint {str(path)!r} does not exist (create one with `askshift pretrain --out PATH`)")
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    state = load_torch(path)
    if isinstance(state, dict):
        for key in ("model", "state_dict"):
            if isinstance(state.get(key), dict):
                return state[key]
    return state


def is_classifier_checkpoint(path: str | os.PathLike) -> bool:
    """True for askshift checkpoints (``backbone.*`` keys), as written by ``askshift pretrain`` and training."""
    return any(k.startswith("backbone.") for k in read_state_dict(path))


def load_backbone_weights(model: Classifier, path: str) -> None:
    """Load a pre-trained checkpoint's backbone into ``model`` (the head is task-specific and dropped)."""
    state = read_state_dict(path)
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if not backbone:
        raise ValueError(f"{path} holds no 'backbone.*' weights; is it an askshift checkpoint?")
    missing, unexpected = model.backbone.load_state_dict(backbone, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit this architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")


# --- timm: any timm model, weights from a local file or (when reachable) the hub -----------------
def check_timm(spec: str) -> None:
    import timm

    arch = spec.partition(".")[0]
    if not timm.is_model(arch):
        close = close_matches(arch, timm.list_models())
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(f"unknown timm architecture {arch!r}.{hint} (`timm.list_models()` lists them all)")


def timm_pretrained_cfg(spec: str) -> dict:
    """timm's ``pretrained_cfg`` of ``arch[.tag]`` without building the model (the default tag when none is given)."""
    import timm.models

    cfg = timm.models.get_pretrained_cfg(spec) or timm.models.get_pretrained_cfg(spec.partition(".")[0])
    return cfg.to_dict() if cfg is not None else {}


def timm_transform(spec: str) -> "ImageTransform":
    cfg = timm_pretrained_cfg(spec)
    return ImageTransform(
        resolution=int((cfg.get("input_size") or (3, 224, 224))[-1]),
        crop_pct=float(cfg.get("crop_pct") or 0.875),
        interpolation=str(cfg.get("interpolation") or "bilinear"),
        mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
        source=f"timm pretrained_cfg of {spec}",
    )


def build_timm(
    spec: str,
    num_classes: int,
    pretrained: str | None = None,
    img_size: int | None = None,
    timm_kwargs: dict | None = None,
    **_: object,
) -> Classifier:
    """``img_size`` sets the input size (passed to timm for models that take it, e.g. ViTs);
    ``timm_kwargs`` go to ``timm.create_model`` (e.g. ``depth=1`` for tiny test models)."""
    import timm

    check_timm(spec)
    arch = spec.partition(".")[0]
    kwargs: dict[str, object] = {**(timm_kwargs or {}), "num_classes": 0}
    askshift_file = False
    if pretrained == HUB:
        _require_hub(f"timm:{spec} with pretrained weights",
                     f"pass a local weights file instead (--pretrained PATH: a state dict of {arch}, e.g. pytorch_model.bin / model.safetensors)")
        kwargs["pretrained"] = True
    elif pretrained:
        if not Path(pretrained).exists():
            raise FileNotFoundError(f"pre-trained weights {pretrained!r} for timm:{spec} do not exist")
        askshift_file = is_classifier_checkpoint(pretrained)
        if not askshift_file:  # a timm/hub weight file: timm adapts it (drops the classifier, resizes pos-embeds)
            check_timm_file_fits(spec, str(pretrained), timm_kwargs)
            kwargs["pretrained"] = True
            kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained)}
    try:
        try:
            backbone = timm.create_model(spec, **kwargs, **({"img_size": img_size} if img_size else {}))
        except TypeError as exc:  # convnets take any input size and have no img_size argument
            if not img_size or "img_size" not in str(exc):
                raise
            backbone = timm.create_model(spec, **kwargs)
    except Exception as exc:
        if pretrained == HUB:
            raise PretrainedUnavailable(f"could not fetch pre-trained weights for timm:{spec} ({exc}); pass a local file with --pretrained PATH") from exc
        raise
    cfg = getattr(backbone, "pretrained_cfg", {}) or {}
    # Convolutional networks read any size; models with a fixed input (ViTs) get theirs.
    input_size = img_size or (int((cfg.get("input_size") or (3, 224, 224))[-1]) if cfg.get("fixed_input_size") else None)
    mean = tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225)))
    model = Classifier(backbone, int(backbone.num_features), num_classes, mean=mean, std=std, input_size=input_size)
    if askshift_file:
        load_backbone_weights(model, str(pretrained))
    model.family_info = {"family": "timm", "arch": arch, "pretrained": pretrained}
    return model


def check_timm_file_fits(spec: str, path: str, timm_kwargs: dict | None = None) -> None:
    """timm loads a weight file non-strictly (it only warns), so resnet34 weights would quietly half-fill a resnet18:
    every backbone tensor must come from the file, and the file may hold nothing else but the classifier."""
    import timm

    state = read_state_dict(path)
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation
        backbone = timm.create_model(spec, **{**(timm_kwargs or {}), "num_classes": 0})
    classifier = (getattr(backbone, "pretrained_cfg", {}) or {}).get("classifier") or "fc"
    names = [classifier] if isinstance(classifier, str) else list(classifier)
    own = set(backbone.state_dict())
    unexpected = sorted(k for k in state if k not in own and not any(k.startswith(n + ".") for n in names))
    missing = sorted(k for k in own if k not in state)
    if unexpected or missing:
        raise ValueError(f"{path} does not hold timm:{spec} weights: {len(unexpected)} tensor(s) it has no place for "
                         f"({', '.join(unexpected[:3]) or 'none'}), {len(missing)} it lacks ({', '.join(missing[:3]) or 'none'})")


def check_pretrained_file(model: str, path: str) -> None:
    """Weights named by --pretrained load into ``model``'s architecture: checked before any baseline trains,
    so a garbage or mismatched file fails in one line instead of after the whole baseline."""
    import pickle

    try:
        build_model(model, 2, pretrained=path)
    except (pickle.UnpicklingError, RuntimeError, ValueError, KeyError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, pickle.UnpicklingError):
            reason = "not a PyTorch weights file (or one that needs unsafe unpickling)"
        raise ValueError(f"--pretrained {path}: cannot load it as {model} weights: {reason}") from None


# --- clip: open_clip image encoder + linear head (zero-shot initialisable) ------------------------
# Which image features a CLIP head sits on: "pre_projection" (the image tower's pooled features before its
# projection: what the original trains FT / LP-FT heads on) or "projected" (unit-norm projected embeddings, so a
# zero-shot head -- normalised text embeddings x logit scale -- is an ordinary linear layer: ZS-FT).
CLIP_EMBEDDINGS = ("pre_projection", "projected")


class ClipImageEncoder(nn.Module):
    """The image tower of an open_clip model, returning its pre-projection features or unit-norm embeddings."""

    def __init__(self, visual: nn.Module, embedding: str = "projected"):
        super().__init__()
        if embedding not in CLIP_EMBEDDINGS:
            raise ValueError(f"unknown CLIP embedding {embedding!r}; choose one of: {', '.join(CLIP_EMBEDDINGS)}")
        self.embedding = embedding
        self.feature_dim = int(visual.output_dim)
        if embedding == "pre_projection":
            proj = getattr(visual, "proj", None)
            if not isinstance(proj, nn.Parameter):
                raise ValueError(f"{type(visual).__name__} has no separate projection: use embedding='projected'")
            self.feature_dim = int(proj.shape[0])
            visual.proj = None  # open_clip's towers skip a projection that is None
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.visual(x)
        if isinstance(out, tuple):  # towers configured to also return tokens
            out = out[0]
        return out if self.embedding == "pre_projection" else nn.functional.normalize(out, dim=-1)


def parse_clip_spec(spec: str) -> tuple[str, str | None]:
    """``ViT-B-32:openai`` -> ("ViT-B-32", "openai"); the pretrained part may be a tag or a file path."""
    arch, sep, tag = spec.partition(":")
    return arch, (tag if sep and tag else None)


def clip_templates(dataset: str | None = None) -> tuple:
    """Prompt templates: OpenAI's 80 ImageNet templates for ImageNet-like datasets, simple ones otherwise."""
    if dataset and dataset.lower().startswith("imagenet"):
        from open_clip import OPENAI_IMAGENET_TEMPLATES

        return tuple(OPENAI_IMAGENET_TEMPLATES)
    return SIMPLE_TEMPLATES


SIMPLE_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "an image of a {}.", "a picture of the {}.")


def zero_shot_weights(clip_model: nn.Module, tokenizer, class_names: list[str] | tuple[str, ...], templates) -> torch.Tensor:
    """(classes, dim) zero-shot classifier: mean normalised text embedding per class, renormalised, × logit scale."""
    from open_clip import build_zero_shot_classifier

    device = next(clip_model.parameters()).device
    was_training = clip_model.training
    clip_model.eval()
    weights = build_zero_shot_classifier(clip_model, tokenizer, list(class_names), list(templates), num_classes_per_batch=None, device=device)
    clip_model.train(was_training)
    scale = clip_model.logit_scale.exp().detach() if hasattr(clip_model, "logit_scale") else torch.tensor(1.0)
    return weights.T.contiguous() * scale


def zero_shot_head(model: Classifier, class_names, templates=None) -> Classifier:
    """Set ``model.head`` to the zero-shot classifier (needs the text tower: only right after ``build_model``)."""
    text = getattr(model, "_clip_text", None)
    if text is None:
        raise ValueError("zero-shot heads need a clip: model built with its text tower; "
                         "pass class_names=... to build_model (the text tower is discarded after building)")
    clip_model, tokenizer = text
    if len(class_names) != model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a {model.num_classes}-class head")
    weights = zero_shot_weights(clip_model, tokenizer, class_names, templates or SIMPLE_TEMPLATES)
    with torch.no_grad():
        model.head.weight.copy_(weights.to(model.head.weight))
        model.head.bias.zero_()
    return model


def check_clip(spec: str) -> None:
    import open_clip

    arch, _ = parse_clip_spec(spec)
    if arch not in open_clip.list_models():
        close = close_matches(arch, open_clip.list_models())
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(f"unknown open_clip architecture {arch!r}.{hint} (`open_clip.list_models()` lists them)")


def clip_transform(spec: str) -> "ImageTransform":
    """open_clip's preprocess: resize the shorter side, centre crop (crop_pct 1), its mean/std."""
    import open_clip
    from open_clip.transform import PreprocessCfg

    arch, _ = parse_clip_spec(spec)
    cfg = open_clip.get_model_config(arch) or {}
    pp = {**PreprocessCfg().__dict__, **(cfg.get("preprocess_cfg") or {})}
    size = (cfg.get("vision_cfg") or {}).get("image_size", pp["size"])
    size = int(size[-1] if isinstance(size, (tuple, list)) else size)
    return ImageTransform(resolution=size, crop_pct=1.0, interpolation=str(pp["interpolation"]),
                          mean=tuple(float(v) for v in pp["mean"]), std=tuple(float(v) for v in pp["std"]),
                          source=f"open_clip preprocess of {arch}")


def build_clip(
    spec: str,
    num_classes: int,
    pretrained: str | None = None,
    class_names: list[str] | tuple[str, ...] | None = None,
    templates: list | tuple | None = None,
    load_weights: bool = True,
    embedding: str | None = None,
    **_: object,
) -> Classifier:
    """Image tower + linear head; with ``class_names`` the head is the zero-shot classifier, then the text tower is dropped.

    ``embedding``: "pre_projection" (default; FT / LP-FT heads, as in the original) or "projected" (the default
    when ``class_names`` asks for a zero-shot head, which lives in the projected space).
    Weights: ``pretrained`` (a file path, a tag or ``"hub"``) overrides the tag in the name; a tag means
    the hub, so with HF_HUB_OFFLINE=1 it fails fast asking for a local checkpoint. ``load_weights=False``
    builds the architecture only (to load a fine-tuned checkpoint into it).
    """
    import open_clip

    arch, source = parse_clip_spec(spec)
    if arch not in open_clip.list_models():
        close = close_matches(arch, open_clip.list_models())
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(f"unknown open_clip architecture {arch!r}.{hint} (`open_clip.list_models()` lists them)")
    if pretrained and pretrained != HUB:
        source = pretrained
    source = source if load_weights else None
    if source and not Path(source).exists():
        if "/" in source or source.endswith((".pt", ".pth", ".bin", ".safetensors")):
            raise FileNotFoundError(f"open_clip checkpoint {source!r} for clip:{arch} does not exist")
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if source not in tags:
            close = close_matches(source, tags)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownNameError(f"unknown pretrained tag {source!r} for clip:{arch}.{hint} Tags: {', '.join(tags[:8]) or 'none'}{' ...' if len(tags) > 8 else ''}; or pass a local checkpoint file")
        _require_hub(f"clip:{arch}:{source}",
                     f"pass a local open_clip checkpoint instead (clip:{arch}:/path/to/open_clip_model.bin or --pretrained PATH)")
    try:
        clip_model = open_clip.create_model(arch, pretrained=source or None)
    except RuntimeError as exc:
        if source and not Path(source).exists():
            raise PretrainedUnavailable(f"could not fetch open_clip weights clip:{arch}:{source} ({exc}); pass a local checkpoint file") from exc
        raise
    embedding = embedding or ("projected" if class_names is not None else "pre_projection")
    if class_names is not None and embedding != "projected":
        raise ValueError("a zero-shot head lives in CLIP's projected embedding space: use embedding='projected'")
    transform = clip_transform(spec)
    encoder = ClipImageEncoder(clip_model.visual, embedding)
    model = Classifier(encoder, encoder.feature_dim, num_classes, mean=transform.mean, std=transform.std,
                       input_size=transform.resolution)
    model.family_info = {"family": "clip", "arch": arch, "pretrained": source}
    if class_names is not None:
        # The text tower lives only long enough to build the head (a plain attribute, not a submodule,
        # so it is neither trained nor saved), then it is dropped.
        object.__setattr__(model, "_clip_text", (clip_model, open_clip.get_tokenizer(arch)))
        try:
            zero_shot_head(model, class_names, templates)
        finally:
            object.__delattr__(model, "_clip_text")
    return model


def check_model_name(name: str) -> None:
    """Raise ``UnknownNameError``/``ValueError`` (listing close matches) for a name no family can build,
    without building anything (the CLI checks names before any training)."""
    parsed = ModelName.parse(name)
    MODEL_FAMILIES.get(parsed.family).check(parsed.spec)


for _family in (
    ModelFamily("cnn", "small convolutional networks (cnn:tiny|small|medium[@WIDTH]) that train in seconds on CPU",
                build_cnn, check_cnn, cnn_transform,
                weights="a local checkpoint (--pretrained PATH); without one, the glyph checkpoint of `askshift pretrain`",
                recipe="miniature", strategies=("ft", "lp-ft"), local_pretraining=True,
                images=f"{CNN_PHOTO_RESOLUTION} px for photos, as stored for same-size arrays (any size)"),
    ModelFamily("timm", "any timm model (timm:<arch>[.<tag>]); weights from a local file (--pretrained PATH) or the hub",
                build_timm, check_timm, timm_transform,
                weights="a local timm weight file (--pretrained PATH) or the hub", recipe="paper", strategies=("ft", "lp-ft"),
                images="each model's pretrained_cfg (input size, crop_pct, interpolation, mean/std)"),
    ModelFamily("clip", "open_clip image encoders (clip:<arch>[:<tag>|:<file>]), zero-shot initialisable heads",
                build_clip, check_clip, clip_transform,
                weights="a local open_clip checkpoint (clip:ARCH:FILE or --pretrained PATH) or a tag from the hub",
                recipe="paper", strategies=("ft", "lp-ft", "zs-ft"), text_tower=True,
                images="open_clip's preprocess (input size, centre crop, CLIP mean/std)"),
):
    MODEL_FAMILIES.add(_family.name, _family, _family.description)


def build_model(name: str, num_classes: int, pretrained: str | None = None, **options: object) -> Classifier:
    """Build a classifier from a registered family, e.g. ``build_model("cnn:small", 10)``.

    ``pretrained``: None = random init (from scratch; a ``clip:`` name with a tag still loads that tag),
    a file path = local weights, ``"hub"`` = the model hub (fails fast when HF_HUB_OFFLINE=1).
    """
    parsed = ModelName.parse(name)
    return MODEL_FAMILIES.get(parsed.family).build(parsed.spec, num_classes, pretrained=pretrained, **options)
