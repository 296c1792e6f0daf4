"""Fine-tuning vocabulary: the strategies (FT, LP, LP-FT, ZS-FT, scratch control), the recipe and the paper presets.

A strategy says which weights start a model, which head it gets and which stages train; ``FinetuneHparams`` is the
recipe those stages train with (the paper's, or the miniature's for CPU-sized models); a preset is a paper
configuration (a model, its strategies, its recipe).  Planning and training runs: ``askshift.lib.models.finetune``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from askshift.lib.models.families import model_family
from askshift.lib.models.training import TrainConfig
from askshift.lib.registry import Registry

PAPER_LR_GRID: tuple[float, ...] = (3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)


@dataclasses.dataclass(frozen=True)
class Strategy:
    """How a pre-trained model is adapted: which weights start it, which head, which stages train."""

    name: str
    group: str  # model group in the store (what the ER report shows)
    description: str
    pretrained: bool = True  # False: the same architecture from random init (the control)
    head: Literal["new", "zero_shot"] = "new"
    probe_first: bool = False  # an LP stage, then FT from it (LP-FT)
    probe_only: bool = False  # the LP stage alone (LP)
    needs_clip: bool = False


STRATEGIES: Registry[Strategy] = Registry("fine-tuning strategy")
for _s in (
    Strategy("ft", "ft", "FT: new linear head, the whole network trains"),
    Strategy("lp", "lp", "LP: frozen pre-trained features, only a new linear head trains (the LP stage's settings)", probe_only=True),
    Strategy("lp-ft", "lp-ft", "LP-FT: a linear-probe stage, then the whole network trains from it", probe_first=True),
    Strategy("zs-ft", "zs-ft", "ZS-FT: CLIP head initialised zero-shot from class names, then the whole network trains",
             head="zero_shot", needs_clip=True),
    Strategy("scratch", "scratch-same-arch", "control: the pre-trained model's architecture trained from scratch (FT settings)",
             pretrained=False),
):
    STRATEGIES.add(_s.name, _s, _s.description)


class FinetuneHparams(BaseModel):
    """The fine-tuning recipe (defaults: the paper's, METHOD.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(8, ge=1, description="fine-tuning epochs")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up, in epochs")
    batch_size: int = Field(512, ge=1, description="training batch size")
    weight_decay: float = Field(0.1, ge=0, description="weight decay")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="optimiser")
    schedule: Literal["cosine", "triangle", "constant", "step"] = Field("cosine", description="learning-rate schedule")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing, 0 or more and less than 1")
    grad_clip: float | None = Field(1.0, gt=0, description="max global gradient norm (the paper clips at 1); None = off")
    amp: Literal["none", "bf16", "fp16"] = Field("none", description="mixed precision on CUDA: none, bf16 or fp16")
    lr_grid: tuple[float, ...] = Field(PAPER_LR_GRID, min_length=1,
                                       json_schema_extra={"items": {"type": "number", "exclusiveMinimum": 0}},
                                       description="learning rates swept; best by reference-validation accuracy")
    # Limits in the schema (the form refuses them on Submit); the validators word the CLI's errors.
    copies: int = Field(4, json_schema_extra={"minimum": 1}, description="seeds trained at the selected learning rate")
    lp_epochs: int = Field(4, ge=1, description="linear-probe stage (LP, and LP-FT's first stage)")
    lp_lr: float = Field(1e-3, gt=0, description="learning rate of the linear-probe stage")
    lp_weight_decay: float = Field(0.0, ge=0, description="weight decay of the linear-probe stage")
    scratch_epochs: int | None = Field(None, ge=1, description="epochs of the same-architecture control; default: epochs")

    @field_validator("lr_grid")
    @classmethod
    def _positive_lrs(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        bad = [v for v in value if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0)]
        if bad:
            raise ValueError(f"learning rates must be positive, got {', '.join(str(b) for b in bad)} in the LR grid")
        return tuple(float(v) for v in value)

    @field_validator("copies")
    @classmethod
    def _copies_at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"copies must be at least 1, got {value}")
        return value

    def probe_config(self, seed: int) -> TrainConfig:
        return TrainConfig(epochs=self.lp_epochs, lr=self.lp_lr, optimizer=self.optimizer, schedule=self.schedule,
                           warmup_epochs=0.0, weight_decay=self.lp_weight_decay, label_smoothing=self.label_smoothing,
                           grad_clip=self.grad_clip, batch_size=self.batch_size, amp=self.amp,
                           freeze_backbone=True, seed=seed)

    def finetune_config(self, lr: float, seed: int, epochs: int | None = None) -> TrainConfig:
        epochs = epochs or self.epochs
        return TrainConfig(epochs=epochs, lr=lr, optimizer=self.optimizer, schedule=self.schedule,
                           warmup_epochs=min(self.warmup_epochs, epochs - 0.5) if self.warmup_epochs else 0.0,
                           weight_decay=self.weight_decay, label_smoothing=self.label_smoothing,
                           grad_clip=self.grad_clip, batch_size=self.batch_size, amp=self.amp, seed=seed)


# The paper's recipe (8 epochs, batch 512, lr 3e-4..1e-6) barely moves a small CNN on 1.4k digits in 24
# steps; this is the miniature's: the same shape (AdamW, cosine, warm-up, LP stage, copies), CPU-sized.
# Its numbers (the demo's) were measured without gradient clipping, so it keeps none.
MINIATURE = FinetuneHparams(epochs=8, warmup_epochs=1.0, batch_size=64, weight_decay=0.05,
                            lr_grid=(3e-3, 1e-3, 3e-4), copies=3, lp_epochs=4, lp_lr=1e-2, grad_clip=None)
RECIPES: dict[str, FinetuneHparams] = {"paper": FinetuneHparams(), "miniature": MINIATURE}


def default_recipe(models: Sequence[str]) -> FinetuneHparams:
    """The models' families' recipe: the miniature when every family asks for it (cnn:), else the paper's."""
    names = {model_family(m).recipe for m in models}
    return RECIPES["miniature"] if names == {"miniature"} else RECIPES["paper"]


def default_strategy(model: str) -> str:
    """The strategy a one-strategy study (the ablation) takes: ZS-FT where the family has a text tower, else FT."""
    return "zs-ft" if model_family(model).text_tower else "ft"


@dataclasses.dataclass(frozen=True)
class Preset:
    """A paper configuration: a model, the strategies run on it and the recipe."""

    name: str
    model: str
    strategies: tuple[str, ...]
    hparams: FinetuneHparams
    description: str

    @property
    def family(self) -> str:
        return self.model.partition(":")[0]


PRESETS: Registry[Preset] = Registry("fine-tuning preset")
for _p in (
    Preset("openai_clip", "clip:ViT-B-32:openai", ("ft", "lp-ft", "zs-ft"), FinetuneHparams(),
           "CLIP ViT-B/32 (OpenAI) with FT, LP-FT, ZS-FT; AdamW 8 epochs, 1 warm-up, batch 512, wd 0.1, "
           "lr from {3e-4..1e-6} by reference val accuracy, 4 copies; LP stage 4 epochs lr 1e-3 no wd"),
    Preset("augreg_in21k", "timm:vit_base_patch32_224.augreg_in21k", ("ft", "lp-ft"), FinetuneHparams(),
           "ViT-B/32 AugReg (ImageNet-21k) with FT, LP-FT; the same recipe as openai_clip"),
):
    PRESETS.add(_p.name, _p, _p.description)


__all__ = [
    "MINIATURE", "PAPER_LR_GRID", "PRESETS", "RECIPES", "STRATEGIES", "FinetuneHparams", "Preset", "Strategy",
    "default_recipe", "default_strategy",
]
