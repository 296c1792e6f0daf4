"""Fine-tuning pre-trained models: strategies (FT, LP, LP-FT, ZS-FT, scratch control), paper presets, LR selection, DFR.

A fine-tuning run is a ``FinetuneRun`` (frozen pydantic, content-hashed like ``askshift.lib.models.training.RunConfig``):
one model, one strategy stage, one learning rate, one seed.  LP-FT is an FT run whose ``init`` is the
LP run it starts from (weights *and* head), so the LP stage is trained once per (model, seed) and shared
by every learning rate of the sweep.  ZS-FT builds the head from CLIP's text tower before FT.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from askshift.lib.data.loaders import split_info
from askshift.lib.data.specs import get_spec
from askshift.lib.models.device import resolve_device
from askshift.lib.models.evaluation import eval_config, eval_loader, load_registered_model, model_record, predict
from askshift.lib.models.families import (
    HUB,
    ModelName,
    PretrainedUnavailable,
    build_model,
    clip_templates,
    hub_offline,
    model_family,
)
from askshift.lib.models.inputs import loader_config
from askshift.lib.models.training import (
    TrainConfig,
    epoch_loader_factory,
    kept_checkpoint_path,
    load_model_weights,
    place_images,
    place_model,
    seeded,
    train_model,
)
from askshift.lib.registry import Registry
from askshift.lib.store import ExperimentStore, atomic_save_torch, atomic_write_json, content_hash, read_json

PAPER_LR_GRID: tuple[float, ...] = (3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)


# --- strategies -------------------------------------------------------------------------------------
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


class FinetuneInputError(ValueError):
    """Bad fine-tuning input, found before any training (one line)."""


def split_clip_name(model: str) -> tuple[str, str | None]:
    """``clip:ViT-B-32:openai`` -> ("clip:ViT-B-32", "openai"): the architecture and its weight source.

    The architecture alone is what prediction rebuilds (then loads the fine-tuned checkpoint), so it
    never reaches for the hub again.
    """
    family, _, spec = model.partition(":")
    if family != "clip":
        return model, None
    arch, _, source = spec.partition(":")
    return f"clip:{arch}", (source or None)


def validate_finetune(
    models: Sequence[str],
    strategies: Sequence[str],
    hparams: FinetuneHparams | None = None,
    preset: str | None = None,
    class_names: Sequence[str] | None = None,
    class_names_needed: bool = True,
) -> None:
    """Raise ``FinetuneInputError`` (one line) for inputs that cannot work, before anything trains."""
    if not models:
        raise FinetuneInputError("no models given; pass --models, e.g. --models cnn:small")
    if not strategies:
        raise FinetuneInputError(f"no strategies given; choose from {', '.join(STRATEGIES.names())}")
    for name in strategies:
        STRATEGIES.get(name)  # UnknownNameError lists close matches
    for model in models:
        ModelName.parse(model)
    if preset is not None:
        p = PRESETS.get(preset)
        wrong = [m for m in models if m.partition(":")[0] != p.family]
        if wrong:
            raise FinetuneInputError(
                f"preset {preset!r} is for {p.family}: models ({p.model}); {', '.join(wrong)} is not a {p.family}: model"
            )
    for name in strategies:
        s = STRATEGIES.get(name)
        if s.needs_clip:
            wrong = [m for m in models if not model_family(m).text_tower]
            if wrong:
                raise FinetuneInputError(f"strategy {name!r} needs a CLIP model (clip:...) for its zero-shot head; "
                                         f"{', '.join(wrong)} has no text tower")
        if s.head == "zero_shot" and class_names_needed and not class_names:
            raise FinetuneInputError(f"strategy {name!r} needs class names for its zero-shot head; this dataset has none "
                                     "(give class names, or use ft / lp-ft)")
    if hparams is not None:
        FinetuneHparams.model_validate(hparams.model_dump())  # re-check a possibly constructed-unvalidated object


def check_weights(model: str, pretrained: str | None) -> None:
    """Fail before training when ``model``'s weights need the hub and the hub is off (HF_HUB_OFFLINE=1),
    or name a file that does not exist."""
    _, tag = split_clip_name(model)
    source = pretrained or tag
    if source and source != HUB and Path(source).exists():
        return
    if source and source != HUB and ("/" in source or source.endswith((".pt", ".pth", ".bin", ".safetensors"))):
        raise FileNotFoundError(f"pre-trained weights {source!r} for {model} do not exist")

    # A clip: tag (``clip:ViT-B-32:openai``) names hub weights too.
    needs_hub = source == HUB or (model_family(model).text_tower and source is not None)
    if needs_hub and hub_offline():
        raise PretrainedUnavailable(f"{model} needs the model hub for its pre-trained weights, but HF_HUB_OFFLINE=1: "
                                    f"pass a local weights file: --pretrained PATH (or --pretrained {model}=PATH)")


# --- one fine-tuning run ----------------------------------------------------------------------------
class FinetuneRun(BaseModel):
    """One stage of one strategy for one (model, lr, seed); the content hash names its run folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str = "digits"
    shift: str
    root: str | None = None
    model: str = Field(..., description="architecture (askshift.lib.models.families name without a clip weight tag)")
    model_options: dict[str, float | int | str | bool] = Field(default_factory=dict)
    pretrained: str | None = Field(None, description="weights: file path, 'hub', a clip tag; None = random init")
    strategy: str = "ft"
    stage: Literal["probe", "finetune"] = "finetune"
    head: Literal["new", "zero_shot"] = "new"
    class_names: tuple[str, ...] | None = None
    templates: Literal["simple", "imagenet"] = "simple"
    init: "FinetuneRun | None" = Field(None, description="run whose final weights (backbone and head) start this one")
    resolution: int | None = Field(None, ge=8, description="image side the model reads; None = the model's own (photos) "
                                   "or as stored (same-size arrays)")
    train: TrainConfig
    group: str = "ft"

    def run_id(self) -> str:
        return content_hash(self)

    def model_id(self) -> str:
        name = self.model.replace(":", "-")
        return f"{self.strategy}-{name}-lr{self.train.lr:g}-seed{self.train.seed}-{self.run_id()[:6]}"


def plan_run(
    strategy: str,
    model: str,
    hparams: FinetuneHparams,
    lr: float,
    seed: int,
    *,
    dataset: str,
    shift: str,
    root: str | None = None,
    pretrained: str | None = None,
    class_names: Sequence[str] | None = None,
    model_options: dict | None = None,
    train_overrides: dict | None = None,
    resolution: int | None = None,
) -> FinetuneRun:
    """The run that trains ``strategy`` on ``model`` at ``lr`` and ``seed`` (its ``init`` chain included)."""
    s = STRATEGIES.get(strategy)
    arch, tag = split_clip_name(model)
    weights = pretrained or tag
    if s.pretrained and not weights:
        raise FinetuneInputError(f"strategy {strategy!r} needs pre-trained weights for {model}; pass --pretrained PATH "
                                 "(or 'hub' where a hub is reachable)")
    options = dict(model_options or {})
    if s.head == "zero_shot":
        options["embedding"] = "projected"  # the zero-shot head lives in CLIP's projected space (ZS-FT keeps it)
    common = dict(dataset=dataset, shift=shift, root=root, model=arch, model_options=options, resolution=resolution)
    imagenet = dataset.lower().startswith("imagenet")
    if s.probe_only or s.probe_first:
        probe_train = hparams.probe_config(seed)
        if s.probe_only:
            probe_train = probe_train.model_copy(update={"lr": lr, **(train_overrides or {})})
            probe_train = TrainConfig.model_validate(probe_train.model_dump())
        probe = FinetuneRun(**common, pretrained=weights, strategy="lp", stage="probe", train=probe_train, group="lp")
        if s.probe_only:
            return probe.model_copy(update={"strategy": strategy, "group": s.group})
        train = _finetune_train(hparams, lr, seed, None, train_overrides)
        return FinetuneRun(**common, pretrained=None, strategy=strategy, init=probe, train=train, group=s.group)
    epochs = (hparams.scratch_epochs or hparams.epochs) if not s.pretrained else hparams.epochs
    train = _finetune_train(hparams, lr, seed, epochs, train_overrides)
    return FinetuneRun(
        **common,
        pretrained=weights if s.pretrained else None,
        strategy=strategy,
        head=s.head,
        class_names=tuple(class_names) if s.head == "zero_shot" and class_names else None,
        templates="imagenet" if imagenet else "simple",
        train=train,
        group=s.group,
    )


def _finetune_train(hparams: FinetuneHparams, lr: float, seed: int, epochs: int | None, overrides: dict | None) -> TrainConfig:
    overrides = dict(overrides or {})
    # The warm-up is fitted to the (possibly overridden) number of epochs, so an ablation to 1 epoch stays valid.
    base = hparams.finetune_config(lr, seed, epochs=overrides.pop("epochs", None) or epochs)
    return TrainConfig.model_validate({**base.model_dump(), **overrides})


def build_initial_model(run: FinetuneRun, num_classes: int, exp: ExperimentStore | None = None):
    """The model a run starts from: pre-trained (or random) weights, new or zero-shot head, or its ``init`` run."""
    if run.init is not None:
        model = build_model(run.init.model, num_classes, **_arch_options(run.init))
        if exp is None:
            raise ValueError("a run with an init run needs the experiment store to find that run")

        load_model_weights(model, final_checkpoint(exp, run.init))
        return model
    options: dict[str, Any] = dict(run.model_options)
    if run.head == "zero_shot":
        if not run.class_names:
            raise FinetuneInputError(f"{run.strategy} needs class names for its zero-shot head")
        options["class_names"] = list(run.class_names)
        options["templates"] = clip_templates("imagenet" if run.templates == "imagenet" else None)
    return build_model(run.model, num_classes, pretrained=run.pretrained, **options)


def _arch_options(run: FinetuneRun) -> dict[str, Any]:
    """Options that rebuild the architecture only (no weights are fetched: a checkpoint is loaded next)."""
    return dict(run.model_options)


def final_checkpoint(exp: ExperimentStore, run: FinetuneRun) -> Path:
    return kept_checkpoint_path(exp.checkpoint_dir(run.run_id()), run.train.epochs)


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    run_id: str
    model_id: str
    checkpoint: Path
    val_accuracy: float
    num_classes: int


def finetune_run(
    exp: ExperimentStore,
    run: FinetuneRun,
    cache_dir: str | Path,
    device: str | torch.device = "auto",
    num_workers: int = 1,
    log: Callable[[str], None] = print,
    eval_batch_size: int = 512,
) -> RunOutcome:
    """Train ``run`` (its ``init`` run first if that is not done), resumable; returns its reference-val accuracy.

    Finished runs (a ``done`` marker) are not trained again; their stored outcome is returned. An identical run
    training at the same time on this store is waited for and then reused (a file lock in its run folder).
    """
    with exp.run_lock(run.run_id()):
        return _finetune_run_locked(exp, run, cache_dir, device, num_workers, log, eval_batch_size)


def _finetune_run_locked(exp: ExperimentStore, run: FinetuneRun, cache_dir: str | Path, device: str | torch.device,
                         num_workers: int, log: Callable[[str], None], eval_batch_size: int) -> RunOutcome:
    run_id = run.run_id()
    if exp.is_done(run_id):
        info = _read_done(exp, run_id)
        return RunOutcome(run_id, run.model_id(), final_checkpoint(exp, run), float(info["val_accuracy"]), int(info["num_classes"]))
    if run.init is not None and not exp.is_done(run.init.run_id()):
        log(f"{run.strategy}: training the {run.init.strategy} stage it starts from first")
        finetune_run(exp, run.init, cache_dir, device, num_workers, log, eval_batch_size)
    device = resolve_device(device)
    spec = get_spec(run.shift, dataset=run.dataset, root=run.root)
    info = split_info(spec, "source_train", cache_dir)
    atomic_write_json(exp.run_dir(run_id) / "config.json", run)
    config = loader_config(spec.reference.dataset, run.model, train=True, resolution=run.resolution,
                           batch_size=run.train.batch_size, num_workers=num_workers, device=device)
    make_loader = epoch_loader_factory(spec, "source_train", cache_dir, config, run.train.seed)

    with seeded(run.train.seed):  # a new head (and a scratch model) follows the seed
        model = build_initial_model(run, info.num_classes, exp)
    log(f"{run.strategy} ({run.stage}) {run.model} lr={run.train.lr:g} seed={run.train.seed} on {device}: "
        f"{run.train.epochs} epochs (run {run_id})")
    result = train_model(model, make_loader, run.train, exp.checkpoint_dir(run_id), device=device, log=log)
    model.freeze_backbone(False)
    accuracy = reference_accuracy(model, spec, cache_dir, device, eval_batch_size, num_workers,
                                  architecture=run.model, resolution=run.resolution)
    exp.mark_done(run_id, {"val_accuracy": accuracy, "num_classes": info.num_classes, "model": run.model_id(),
                           "seconds": sum(h.seconds for h in result.history)})
    log(f"{run.strategy} {run.model} lr={run.train.lr:g} seed={run.train.seed}: source_val accuracy {accuracy:.4f}")
    return RunOutcome(run_id, run.model_id(), final_checkpoint(exp, run), accuracy, info.num_classes)


def _read_done(exp: ExperimentStore, run_id: str) -> dict:
    return read_json(exp.run_dir(run_id) / "done")


def reference_accuracy(model, spec, cache_dir, device, batch_size: int = 512, num_workers: int = 1,
                       architecture: str | None = None, resolution: int | None = None) -> float:
    """Accuracy on ``source_val`` (what the learning rate is selected by), read as ``architecture`` reads images."""
    config = loader_config(spec.reference.dataset, architecture, train=False, resolution=resolution,
                           batch_size=batch_size, num_workers=num_workers, device=str(device))
    # Every run of a sweep reads the same split: the pooled loader compiles once.
    with eval_loader(spec, "source_val", cache_dir, config) as loader:
        logits, labels, _ = predict(model, loader, device)
    return float((logits.argmax(1) == labels).mean())


def register_run(exp: ExperimentStore, run: FinetuneRun, outcome: RunOutcome, group: str | None = None, **extra: Any) -> str:
    """Register a finished run as a model of ``group`` (default: its strategy's group) so prediction can rebuild it."""
    exp.register_model(
        outcome.model_id, group or run.group, run=outcome.run_id, architecture=run.model,
        num_classes=outcome.num_classes, model_options=dict(run.model_options), resolution=run.resolution,
        checkpoint=str(outcome.checkpoint.relative_to(exp.root)), strategy=run.strategy, lr=run.train.lr,
        seed=run.train.seed, epochs=run.train.epochs, pretrained=run.pretrained or (run.init.pretrained if run.init else None),
        val_accuracy=outcome.val_accuracy, **extra,
    )
    return outcome.model_id


# --- learning-rate selection ------------------------------------------------------------------------
def select_best_lr(results: Iterable[tuple[float, float]]) -> float:
    """The learning rate with the highest reference-validation accuracy; ties go to the larger rate.

    Runs that diverged (NaN accuracy) are ignored; if every run diverged this raises.
    """
    valid = [(float(acc), float(lr)) for lr, acc in results if acc is not None and math.isfinite(acc)]
    if not valid:
        raise ValueError("no learning rate of the sweep produced a finite validation accuracy; widen the LR grid")
    return max(valid)[1]


# --- DFR: deep feature reweighting --------------------------------------------------------------------
@torch.no_grad()
def extract_features(model, loader: Iterable, device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backbone features, labels and example indices of every batch ``loader`` yields (eval mode)."""
    device = torch.device(device)
    was_training = model.training
    place_model(model, device).eval()
    feats, labels, indices, seen = [], [], [], 0
    try:
        for batch in loader:
            x = place_images(batch[0], device)
            feats.append(model.features(x).float().cpu())
            labels.append(batch[1].reshape(-1).long().cpu())
            indices.append(batch[2].reshape(-1).long().cpu() if len(batch) > 2 else torch.arange(seen, seen + len(x)))
            seen += len(x)
    finally:
        model.train(was_training)
    return torch.cat(feats).numpy(), torch.cat(labels).numpy(), torch.cat(indices).numpy()


def group_balanced_weights(groups: np.ndarray) -> np.ndarray:
    """Sample weights giving every group the same total weight (mean weight 1); negative group ids get 0."""
    groups = np.asarray(groups)
    weights = np.zeros(len(groups), np.float64)
    valid = groups >= 0
    ids, counts = np.unique(groups[valid], return_counts=True)
    if len(ids) == 0:
        raise ValueError("DFR needs group labels (ids >= 0) on the held-out split; this split has none")
    for g, c in zip(ids, counts):
        weights[groups == g] = valid.sum() / (len(ids) * c)
    return weights


@dataclasses.dataclass(frozen=True)
class DFRResult:
    weight: np.ndarray  # (classes, dim), in the model's un-standardised feature space
    bias: np.ndarray  # (classes,)
    C: float
    worst_group_accuracy: float  # on the held-out half used to choose C (or the fit data if one C)


def _group_accuracies(pred: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[int, float]:
    return {int(g): float((pred[groups == g] == labels[groups == g]).mean()) for g in np.unique(groups[groups >= 0])}


def fit_dfr(
    features: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    num_classes: int,
    C_grid: Sequence[float] = (1.0, 0.3, 0.1, 0.03),
    seed: int = 0,
    max_iter: int = 2000,
) -> DFRResult:
    """Last-layer retraining (Kirichenko et al.): logistic regression on standardised features with
    group-balanced sample weights.  With several ``C`` the held-out data is halved: fit on one half,
    pick the ``C`` with the best worst-group accuracy on the other, then refit on all of it.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    features = np.asarray(features, np.float64)
    labels, groups = np.asarray(labels), np.asarray(groups)
    keep = groups >= 0
    features, labels, groups = features[keep], labels[keep], groups[keep]
    if len(np.unique(labels)) < 2:
        raise ValueError("DFR needs at least two classes in the held-out split")

    def fit(x, y, g, C):
        scaler = StandardScaler().fit(x)
        clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
        clf.fit(scaler.transform(x), y, sample_weight=group_balanced_weights(g))
        return scaler, clf

    def worst(scaler, clf, x, y, g):
        acc = _group_accuracies(clf.predict(scaler.transform(x)), y, g)
        return min(acc.values())

    best_C, best_worst = float(C_grid[0]), float("nan")
    if len(C_grid) > 1:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(labels))
        a, b = order[: len(order) // 2], order[len(order) // 2:]
        scores = []
        for C in C_grid:
            scaler, clf = fit(features[a], labels[a], groups[a], C)
            scores.append((worst(scaler, clf, features[b], labels[b], groups[b]), -C))
        best_worst, neg_C = max(scores)  # ties: the stronger regularisation (smaller C)
        best_C = -neg_C
    scaler, clf = fit(features, labels, groups, best_C)
    if len(C_grid) == 1:
        best_worst = worst(scaler, clf, features, labels, groups)

    # Fold the standardisation into the linear layer: w·(x-m)/s + b = (w/s)·x + (b - w·m/s).
    coef = clf.coef_ / scaler.scale_
    intercept = clf.intercept_ - (clf.coef_ * scaler.mean_ / scaler.scale_).sum(1)
    if len(clf.classes_) == 2 and coef.shape[0] == 1:  # sklearn's binary form: one row for the positive class
        coef = np.vstack([np.zeros_like(coef[0]), coef[0]])
        intercept = np.array([0.0, intercept[0]])
    weight = np.zeros((num_classes, features.shape[1]))
    bias = np.full(num_classes, -1e4)  # classes absent from the held-out data are never predicted
    for row, cls in enumerate(clf.classes_):
        weight[int(cls)], bias[int(cls)] = coef[row], intercept[row]
    return DFRResult(weight, bias, best_C, float(best_worst))


def apply_dfr(model, result: DFRResult):
    """Write a DFR last layer into ``model.head`` (in place); returns the model."""
    with torch.no_grad():
        model.head.weight.copy_(torch.as_tensor(result.weight, dtype=model.head.weight.dtype))
        model.head.bias.copy_(torch.as_tensor(result.bias, dtype=model.head.bias.dtype))
    return model


def dfr_registered_model(
    exp: ExperimentStore,
    model_id: str,
    spec: Any,
    split: str,
    cache_dir: str | Path,
    group_suffix: str = "+dfr",
    device: str | torch.device = "auto",
    num_workers: int = 1,
    C_grid: Sequence[float] = (1.0, 0.3, 0.1, 0.03),
    log: Callable[[str], None] = print,
) -> str:
    """DFR on a registered model: features of ``split`` (which must carry group labels), a refitted head,
    saved and registered as ``<model_id>+dfr`` in group ``<group>+dfr``.  Skipped when it exists."""
    from askshift.lib.data.loaders import split_info, split_loader

    new_id = f"{model_id}{group_suffix}"
    record = model_record(exp, model_id)
    run_dir = exp.run_dir(f"dfr-{content_hash([model_id, split, list(C_grid)])}")
    path = run_dir / "model.pt"
    known = set(exp.models()["model"].to_list())
    if new_id in known and path.exists():
        return new_id
    info = split_info(spec, split, cache_dir)
    if info.groups is None:
        raise ValueError(f"DFR needs group labels on {split!r}; dataset {spec.reference.dataset!r} has none "
                         "(use a dataset with group metadata, e.g. wilds:waterbirds)")
    device = resolve_device(device)
    model = load_registered_model(exp, model_id)
    config = eval_config(record, spec.distribution(split)[0].dataset, batch_size=512, num_workers=num_workers,
                         device=str(device))
    loader = split_loader(spec, split, cache_dir, config, train=False)
    feats, labels, indices = extract_features(model, loader, device)
    result = fit_dfr(feats, labels, np.asarray(info.groups)[indices], int(record["num_classes"]), C_grid=C_grid)
    apply_dfr(model.cpu(), result)
    atomic_save_torch(path, model.state_dict())
    info_extra = {k: v for k, v in record.items() if k not in ("model", "group", "checkpoint")}
    exp.register_model(new_id, f"{record['group']}{group_suffix}", **{**info_extra, "checkpoint": str(path.relative_to(exp.root)),
                       "dfr_split": split, "dfr_C": result.C, "dfr_worst_group_accuracy": result.worst_group_accuracy,
                       "dfr_of": model_id})
    log(f"DFR {model_id} on {split}: C={result.C:g}, held-out worst-group accuracy {result.worst_group_accuracy:.3f}")
    return new_id


FinetuneRun.model_rebuild()

__all__ = [
    "STRATEGIES", "PRESETS", "PAPER_LR_GRID", "MINIATURE", "RECIPES", "default_recipe", "default_strategy", "Strategy", "Preset", "FinetuneHparams", "FinetuneRun", "RunOutcome",
    "FinetuneInputError", "validate_finetune", "check_weights", "plan_run", "build_initial_model", "finetune_run", "register_run",
    "final_checkpoint", "select_best_lr", "split_clip_name", "extract_features", "group_balanced_weights",
    "fit_dfr", "apply_dfr", "DFRResult", "reference_accuracy", "dfr_registered_model",
]
