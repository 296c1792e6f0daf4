"""Fine-tuning runs: validate the inputs, plan a run per (strategy, model, lr, seed), train it, select the LR.

A fine-tuning run is a ``FinetuneRun`` (frozen pydantic, content-hashed like ``askshift.lib.models.training.RunConfig``):
one model, one strategy stage, one learning rate, one seed.  LP-FT is an FT run whose ``init`` is the
LP run it starts from (weights *and* head), so the LP stage is trained once per (model, seed) and shared
by every learning rate of the sweep.  ZS-FT builds the head from CLIP's text tower before FT.  The strategies and
recipes: ``askshift.lib.models.strategies``.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from askshift.lib.data.loaders import LoaderPool, split_info
from askshift.lib.data.specs import get_spec
from askshift.lib.models.device import resolve_device
from askshift.lib.models.evaluation import eval_loader, predict
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
from askshift.lib.models.strategies import PRESETS, STRATEGIES, FinetuneHparams
from askshift.lib.models.training import (
    TrainConfig,
    epoch_loader_factory,
    kept_checkpoint_path,
    load_model_weights,
    seeded,
    train_model,
)
from askshift.lib.store import ExperimentStore, atomic_write_json, content_hash, read_json


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
    pool: LoaderPool | None = None,
) -> RunOutcome:
    """Train ``run`` (its ``init`` run first if that is not done), resumable; returns its reference-val accuracy.

    Finished runs (a ``done`` marker) are not trained again; their stored outcome is returned. An identical run
    training at the same time on this store is waited for and then reused (a file lock in its run folder).
    ``pool``: compiled loaders to reuse across the runs of a sweep (None: built afresh).
    """
    with exp.run_lock(run.run_id()):
        return _finetune_run_locked(exp, run, cache_dir, device, num_workers, log, eval_batch_size, pool)


def _finetune_run_locked(exp: ExperimentStore, run: FinetuneRun, cache_dir: str | Path, device: str | torch.device,
                         num_workers: int, log: Callable[[str], None], eval_batch_size: int,
                         pool: LoaderPool | None) -> RunOutcome:
    run_id = run.run_id()
    if exp.is_done(run_id):
        info = _read_done(exp, run_id)
        return RunOutcome(run_id, run.model_id(), final_checkpoint(exp, run), float(info["val_accuracy"]), int(info["num_classes"]))
    if run.init is not None and not exp.is_done(run.init.run_id()):
        log(f"{run.strategy}: training the {run.init.strategy} stage it starts from first")
        finetune_run(exp, run.init, cache_dir, device, num_workers, log, eval_batch_size, pool)
    device = resolve_device(device)
    spec = get_spec(run.shift, dataset=run.dataset, root=run.root)
    info = split_info(spec, "source_train", cache_dir)
    atomic_write_json(exp.run_dir(run_id) / "config.json", run)
    config = loader_config(spec.reference.dataset, run.model, train=True, resolution=run.resolution,
                           batch_size=run.train.batch_size, num_workers=num_workers, device=device)
    make_loader = epoch_loader_factory(spec, "source_train", cache_dir, config, run.train.seed, pool=pool)

    with seeded(run.train.seed):  # a new head (and a scratch model) follows the seed
        model = build_initial_model(run, info.num_classes, exp)
    log(f"{run.strategy} ({run.stage}) {run.model} lr={run.train.lr:g} seed={run.train.seed} on {device}: "
        f"{run.train.epochs} epochs (run {run_id})")
    result = train_model(model, make_loader, run.train, exp.checkpoint_dir(run_id), device=device, log=log)
    model.freeze_backbone(False)
    accuracy = reference_accuracy(model, spec, cache_dir, device, eval_batch_size, num_workers,
                                  architecture=run.model, resolution=run.resolution, pool=pool)
    exp.mark_done(run_id, {"val_accuracy": accuracy, "num_classes": info.num_classes, "model": run.model_id(),
                           "seconds": sum(h.seconds for h in result.history)})
    log(f"{run.strategy} {run.model} lr={run.train.lr:g} seed={run.train.seed}: source_val accuracy {accuracy:.4f}")
    return RunOutcome(run_id, run.model_id(), final_checkpoint(exp, run), accuracy, info.num_classes)


def _read_done(exp: ExperimentStore, run_id: str) -> dict:
    return read_json(exp.run_dir(run_id) / "done")


def reference_accuracy(model, spec, cache_dir, device, batch_size: int = 512, num_workers: int = 1,
                       architecture: str | None = None, resolution: int | None = None,
                       pool: LoaderPool | None = None) -> float:
    """Accuracy on ``source_val`` (what the learning rate is selected by), read as ``architecture`` reads images."""
    config = loader_config(spec.reference.dataset, architecture, train=False, resolution=resolution,
                           batch_size=batch_size, num_workers=num_workers, device=str(device))
    # Every run of a sweep reads the same split: with a pool, its loader compiles once.
    with eval_loader(spec, "source_val", cache_dir, config, pool=pool) as loader:
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


def select_best_lr(results: Iterable[tuple[float, float]]) -> float:
    """The learning rate with the highest reference-validation accuracy; ties go to the larger rate.

    Runs that diverged (NaN accuracy) are ignored; if every run diverged this raises.
    """
    valid = [(float(acc), float(lr)) for lr, acc in results if acc is not None and math.isfinite(acc)]
    if not valid:
        raise ValueError("no learning rate of the sweep produced a finite validation accuracy; widen the LR grid")
    return max(valid)[1]


FinetuneRun.model_rebuild()

__all__ = [
    "FinetuneInputError", "FinetuneRun", "RunOutcome", "build_initial_model", "check_weights", "final_checkpoint",
    "finetune_run", "plan_run", "reference_accuracy", "register_run", "select_best_lr", "split_clip_name",
    "validate_finetune",
]
