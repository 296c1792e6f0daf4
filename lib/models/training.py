"""One training loop for every model family: TrainConfig, LR schedules, epoch checkpoints and exact resume."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from askshift.lib.data.loaders import LoaderPool, split_info
from askshift.lib.data.specs import get_spec
from askshift.lib.models.device import resolve_device
from askshift.lib.models.families import build_model
from askshift.lib.models.inputs import loader_config
from askshift.lib.store import ExperimentStore, atomic_save_torch, atomic_write_json, content_hash, load_torch

CHECKPOINT_FORMAT = 1
_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pt$")


class TrainConfig(BaseModel):
    """Everything that decides what a training run computes (its content hash names the run)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(10, ge=1, description="passes over the training data")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (AdamW ignores it)")
    schedule: Literal["cosine", "triangle", "constant", "step"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up length in epochs; fractions allowed")
    step_epochs: float = Field(30.0, gt=0, description="'step' schedule: multiply the lr by step_gamma every this many epochs")
    step_gamma: float = Field(0.1, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0, description="max global gradient norm; None = no clipping")
    batch_size: int = Field(128, ge=1)
    amp: Literal["none", "bf16", "fp16"] = Field("none", description="mixed precision, used on CUDA only")
    freeze_backbone: bool = Field(False, description="linear probe: only the head trains, the backbone stays in eval mode")
    seed: int = 0
    keep_epochs: tuple[int, ...] = Field((), description="epochs (1-based) kept as separate model checkpoints; empty = the last")

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.warmup_epochs >= self.epochs and self.schedule != "constant":
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be shorter than epochs ({self.epochs})")
        bad = [e for e in self.keep_epochs if not 1 <= e <= self.epochs]
        if bad:
            raise ValueError(f"keep_epochs {bad} lie outside 1..{self.epochs}")
        return self

    def kept_epochs(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.keep_epochs))) if self.keep_epochs else (self.epochs,)


# --- learning-rate schedules --------------------------------------------------------------


def lr_factor(config: TrainConfig, t: float) -> float:
    """Multiplier of ``config.lr`` at ``t`` epochs into training (fractional: a step's midpoint).

    Warm-up rises linearly from 0 to 1 over ``warmup_epochs``; afterwards cosine and triangle decay to 0
    at ``epochs``, step multiplies by ``step_gamma`` every ``step_epochs``, constant stays at 1.
    """
    w, total = config.warmup_epochs, float(config.epochs)
    if w > 0 and t < w:
        return max(t, 0.0) / w
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "step":
        return config.step_gamma ** math.floor(t / config.step_epochs)
    progress = min(max((t - w) / (total - w), 0.0), 1.0)
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress  # triangle: linear rise (warm-up) to the peak, linear fall to zero


def epoch_seed(seed: int, epoch: int) -> int:
    """The data-order seed of ``epoch`` (0-based): a pure function of (seed, epoch), so resume is exact."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (call before building the model so initial weights follow the seed)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# Tasks may run as threads of one process, sharing the global RNGs: whoever seeds them and builds from them (initial
# weights, new heads) holds this one lock meanwhile, so a model's initial weights follow its own seed only.
SEED_LOCK = threading.Lock()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """``seed_everything(seed)`` and the block after it (building a model) under ``SEED_LOCK``."""
    with SEED_LOCK:
        seed_everything(seed)
        yield


# --- RNG state as plain tensors (checkpoints load with weights_only=True) -------------------


def rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- checkpoints -----------------------------------------------------------------------------


def checkpoint_path(checkpoint_dir: str | Path, epoch: int) -> Path:
    return Path(checkpoint_dir) / f"epoch_{epoch}.pt"


def kept_checkpoint_path(checkpoint_dir: str | Path, epoch: int) -> Path:
    """Model-only checkpoint of a kept epoch (a baseline model); never pruned."""
    return Path(checkpoint_dir) / "kept" / f"epoch_{epoch}.pt"


def training_checkpoints(checkpoint_dir: str | Path) -> list[tuple[int, Path]]:
    """(epoch, path) of the full training checkpoints in ``checkpoint_dir``, oldest first."""
    directory = Path(checkpoint_dir)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _EPOCH_FILE.match(p.name))]
    return sorted(found)


def load_latest_checkpoint(checkpoint_dir: str | Path, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """The newest checkpoint that loads; unreadable ones (e.g. a disk that filled up) are skipped with a note."""
    for epoch, path in reversed(training_checkpoints(checkpoint_dir)):
        try:
            state = load_torch(path)
        except Exception as exc:  # noqa: BLE001 -- any unreadable file means "try the previous epoch"
            log(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); trying an older one")
            continue
        if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT and state.get("epoch") == epoch:
            return state
        log(f"checkpoint {path} is not an askshift training checkpoint; ignoring it")
    return None


def load_model_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a kept (model-only) or full training checkpoint into ``model``."""
    state = load_torch(path)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    model.load_state_dict(state)
    return model


# --- the loop --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EpochStats:
    epoch: int  # 1-based: the number of epochs completed
    loss: float
    accuracy: float
    lr: float
    seconds: float
    examples: int
    extra: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    history: list[EpochStats]
    kept: dict[int, Path]  # epoch -> model-only checkpoint
    final_checkpoint: Path
    resumed_from: int  # epochs already done when this call started (0 = fresh)
    seconds: float  # time spent in this call


# Convolutions run faster on channels-last tensors, on CPU (oneDNN) as on CUDA: a training step of cnn:small on
# 64 images takes 31 ms of CPU instead of 50 ms here.  Models and 4-D image batches use that layout throughout.
def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device`` with its 4-D weights in channels-last layout."""
    return model.to(device=device, memory_format=torch.channels_last)


def place_images(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """An image batch on ``device``, channels-last when it is 4-D (N, C, H, W); uint8 batches (the stored bytes,
    ``LoaderConfig(dtype="uint8")``) become float [0, 1] there, on the device."""
    images = images.to(device, non_blocking=True)
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    return images.contiguous(memory_format=torch.channels_last) if images.dim() == 4 else images


def _trainable_parameters(model: nn.Module, config: TrainConfig) -> list[nn.Parameter]:
    if config.freeze_backbone:
        if not (hasattr(model, "backbone") and hasattr(model, "head")):
            raise TypeError("freeze_backbone needs a model with .backbone and .head (askshift.lib.models.families.Classifier)")
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        return list(model.head.parameters())
    return [p for p in model.parameters() if p.requires_grad]


def _make_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _set_train_mode(model: nn.Module, config: TrainConfig) -> None:
    model.train()
    if config.freeze_backbone:
        model.backbone.eval()  # frozen features: BatchNorm statistics and dropout stay as they were


def _format_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def train_model(
    model: nn.Module,
    make_loader: Callable[[int], Iterable],
    config: TrainConfig,
    checkpoint_dir: str | Path,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = print,
    evaluate: Callable[[nn.Module, int], dict[str, float]] | None = None,
    prune: bool = True,
) -> TrainResult:
    """Train ``model`` for ``config.epochs`` epochs, checkpointing after each; resume from the newest checkpoint.

    ``make_loader(epoch)`` (0-based epoch) returns an iterable of ``(images, labels[, indices])`` batches whose
    order must depend only on ``(config.seed, epoch)`` -- use ``epoch_seed`` -- so that a restarted run reaches
    the same weights as an uninterrupted one.  ``evaluate(model, epoch)`` may add metrics (e.g. validation
    accuracy) to each epoch's record.  With ``prune`` only the two newest full checkpoints are kept; the
    ``keep_epochs`` are saved as model-only checkpoints under ``checkpoint_dir/kept/``.
    """
    started = time.perf_counter()
    device = resolve_device(device)
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    place_model(model, device)
    params = _trainable_parameters(model, config)
    optimizer = _make_optimizer(params, config)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp) if device.type == "cuda" else None
    if config.amp != "none" and amp_dtype is None:
        log(f"amp={config.amp} is used on CUDA only; training in float32 on {device}")
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    kept_epochs = set(config.kept_epochs())

    history: list[EpochStats] = []
    step = 0
    start_epoch = 0
    state = load_latest_checkpoint(checkpoint_dir, log)
    if state is not None and state.get("config") != config.model_dump(mode="json"):
        raise ValueError(
            f"{checkpoint_dir} holds checkpoints of a different training config; "
            "use a fresh checkpoint directory (runs are named by a hash of their config)"
        )
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        step, start_epoch = int(state["step"]), int(state["epoch"])
        history = [EpochStats(**h) for h in state["history"]]
        log(f"resuming from epoch {start_epoch}/{config.epochs} ({checkpoint_path(checkpoint_dir, start_epoch)})")
    else:
        # Reproducible from the seed, whatever ran in this process before.
        seed_everything(config.seed)

    for epoch in range(start_epoch, config.epochs):
        epoch_start = time.perf_counter()
        _set_train_mode(model, config)
        loader = make_loader(epoch)
        n_batches = len(loader)  # type: ignore[arg-type]
        if n_batches == 0:
            raise ValueError(f"the training loader of epoch {epoch} yields no batches; use a smaller batch size")
        total_loss = torch.zeros((), dtype=torch.float64, device=device)
        total_correct = torch.zeros((), dtype=torch.int64, device=device)
        examples = 0
        lr = config.lr
        for i, batch in enumerate(loader):
            images, labels = place_images(batch[0], device), batch[1].to(device, non_blocking=True)
            lr = config.lr * lr_factor(config, epoch + (i + 0.5) / n_batches)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                if config.freeze_backbone:
                    with torch.no_grad():
                        features = model.features(images)
                    logits = model.head(features)
                else:
                    logits = model(images)
                loss = loss_fn(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(params, config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            total_loss += loss.detach().double() * len(labels)
            total_correct += (logits.detach().argmax(1) == labels).sum()
            examples += len(labels)

        done = epoch + 1
        if not torch.isfinite(total_loss):  # checked once per epoch: a per-step check would sync the GPU
            raise FloatingPointError(
                f"training loss became {float(total_loss)} in epoch {done}; "
                f"lower the learning rate (lr={config.lr}) or set grad_clip"
            )
        extra = {k: float(v) for k, v in (evaluate(model, done) if evaluate else {}).items()}
        seconds = time.perf_counter() - epoch_start
        stats = EpochStats(done, float(total_loss) / examples, float(total_correct) / examples, lr, seconds, examples, extra)
        history.append(stats)
        _save_epoch(model, optimizer, scaler, config, checkpoint_dir, done, step, history)
        if done in kept_epochs:
            atomic_save_torch(kept_checkpoint_path(checkpoint_dir, done), model.state_dict())
        if prune:
            for old_epoch, path in training_checkpoints(checkpoint_dir)[:-2]:
                path.unlink(missing_ok=True)
        eta = (config.epochs - done) * sum(h.seconds for h in history[-3:]) / len(history[-3:])
        extras = "".join(f"  {k} {v:.4f}" for k, v in extra.items())
        log(f"epoch {done}/{config.epochs}  loss {stats.loss:.4f}  acc {stats.accuracy:.4f}{extras}  "
            f"lr {lr:.2e}  {seconds:.1f}s  ETA {_format_seconds(eta)}")

    if start_epoch >= config.epochs:
        log(f"already trained for {config.epochs} epochs ({checkpoint_dir})")
    kept = {e: kept_checkpoint_path(checkpoint_dir, e) for e in sorted(kept_epochs)}
    missing = [e for e, p in kept.items() if not p.exists()]
    if missing:  # e.g. keep_epochs changed after the run finished: the run's hash would differ, so this is a bug
        raise RuntimeError(f"kept checkpoints for epochs {missing} are missing in {checkpoint_dir}")
    return TrainResult(history, kept, checkpoint_path(checkpoint_dir, config.epochs), start_epoch,
                       time.perf_counter() - started)


def _save_epoch(model, optimizer, scaler, config, checkpoint_dir, epoch, step, history) -> Path:
    state = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "history": [dataclasses.asdict(h) for h in history],
        "rng": rng_state(),
        # The next epoch's data order is epoch_seed(seed, epoch); recorded for people reading the file.
        "next_loader_seed": epoch_seed(config.seed, epoch) if epoch < config.epochs else None,
        "config": config.model_dump(mode="json"),
    }
    return atomic_save_torch(checkpoint_path(checkpoint_dir, epoch), state)



# --- one training run on an experiment spec (what the "train one model" task does) -------------


class RunConfig(BaseModel):
    """One model to train on a spec's reference data; its content hash names the run folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str = "digits"
    shift: str = Field(..., description="experiment preset (askshift.lib.data.specs), e.g. 'tint_p=0.5'")
    root: str | None = None
    architecture: str = Field("cnn:small", description="askshift.lib.models.families name, e.g. 'cnn:small'")
    model_options: dict[str, float | int | str | bool] = Field(default_factory=dict, description="e.g. {'width': 0.5}")
    pretrained: str | None = None
    train_fraction: float = Field(1.0, gt=0, le=1, description="random subset of source_train (seeded by train.seed)")
    train: TrainConfig = TrainConfig()
    flip: bool = Field(False, description="random horizontal flips of same-size arrays (photos are always flipped)")
    translate: int = Field(0, ge=0, description="random translation in pixels (training only)")
    resolution: int | None = Field(None, ge=8, description="image side the model reads; None = the model's own "
                                   "(photos) or as stored (same-size arrays)")
    group: str = Field("baseline", description="model group the kept checkpoints are registered under")
    label: str | None = Field(None, description="readable prefix of the model ids; derived when None")

    def run_id(self) -> str:
        return content_hash(self)

    def model_label(self) -> str:
        if self.label:
            return self.label
        parts = [self.architecture]
        parts += [f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in sorted(self.model_options.items())]
        if self.train_fraction < 1:
            parts.append(f"frac{self.train_fraction:g}")
        parts.append(f"seed{self.train.seed}")
        return "-".join(parts)

    def model_id(self, epoch: int) -> str:
        # The run hash keeps ids unique when the same label is trained again with other settings.
        return f"{self.model_label()}-ep{epoch}-{self.run_id()[:6]}"


def subset_indices(candidates: np.ndarray | int, fraction: float, seed: int) -> np.ndarray | None:
    """A seeded random ``fraction`` of ``candidates`` (example indices, or a count meaning ``arange(count)``),
    sorted; None when the fraction is 1 (every example)."""
    if fraction >= 1:
        return None
    candidates = np.arange(candidates) if np.isscalar(candidates) else np.asarray(candidates, dtype=np.int64)
    k = max(1, int(round(fraction * len(candidates))))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7919]))  # independent of the data-order seeds
    return np.sort(candidates[rng.permutation(len(candidates))[:k]]).astype(np.int64)


def epoch_loader_factory(spec: Any, split: str, cache_dir: str | Path, loader_config: Any, seed: int,
                         indices: np.ndarray | None = None, pool: LoaderPool | None = None) -> Callable[[int], Iterable]:
    """``make_loader(epoch)`` for :func:`train_model` that builds one training loader lazily and re-seeds it per epoch.

    One FFCV Loader per run (building one compiles its pipeline: seconds; with a ``pool``, one compiled by an earlier
    run is reused); each epoch's order is FFCV's permutation for (base seed + epoch), so a resumed run sees the same
    batches.
    """
    from askshift.lib.data.loaders import split_loader

    loader = None

    def make_loader(epoch: int) -> Iterable:
        nonlocal loader
        if loader is None:
            loader = split_loader(spec, split, cache_dir, loader_config, train=True, indices=indices,
                                  seed=epoch_seed(seed, 0), pool=pool)
        loader.set_epoch(epoch)
        return loader

    return make_loader


def train_run(
    exp: ExperimentStore,
    run: RunConfig,
    cache_dir: str | Path,
    device: str | torch.device = "auto",
    num_workers: int = 1,
    log: Callable[[str], None] = print,
    pool: LoaderPool | None = None,
) -> list[str]:
    """Train ``run`` into ``exp`` (resuming if it was interrupted) and register its kept checkpoints.

    Returns the model ids.  A run already marked done is not trained again; an identical run training at the same
    time (another task, process or node on this store) is waited for and then reused.  ``pool``: compiled loaders
    to reuse (None: built afresh).
    """
    with exp.run_lock(run.run_id()):
        return _train_run_locked(exp, run, cache_dir, device, num_workers, log, pool)


def _train_run_locked(exp: ExperimentStore, run: RunConfig, cache_dir: str | Path, device: str | torch.device,
                      num_workers: int, log: Callable[[str], None], pool: LoaderPool | None) -> list[str]:
    run_id = run.run_id()
    if exp.is_done(run_id):
        return [run.model_id(e) for e in run.train.kept_epochs()]
    device = resolve_device(device)
    spec = get_spec(run.shift, dataset=run.dataset, root=run.root)
    info = split_info(spec, "source_train", cache_dir)
    # Fractions are drawn from the examples the reference distribution keeps (after label_p class rates).
    kept = info.indices if info.indices is not None else info.num_examples
    indices = subset_indices(kept, run.train_fraction, run.train.seed)
    run_dir = exp.run_dir(run_id)
    atomic_write_json(run_dir / "config.json", run)
    config = loader_config(spec.reference.dataset, run.architecture, train=True, resolution=run.resolution,
                           flip=run.flip, batch_size=run.train.batch_size, num_workers=num_workers,
                           translate=run.translate, device=device)
    make_loader = epoch_loader_factory(spec, "source_train", cache_dir, config, run.train.seed, indices, pool=pool)

    with seeded(run.train.seed):  # initial weights follow this run's seed only
        model = build_model(run.architecture, info.num_classes, pretrained=run.pretrained, **run.model_options)
    log(f"training {run.model_label()} (run {run_id}) on {device}: "
        f"{len(indices) if indices is not None else info.num_examples} examples, {run.train.epochs} epochs")
    result = train_model(model, make_loader, run.train, exp.checkpoint_dir(run_id), device=device, log=log)
    history = {h.epoch: h for h in result.history}
    model_ids = []
    for epoch, path in result.kept.items():
        model_id = run.model_id(epoch)
        exp.register_model(
            model_id, run.group, run=run_id, epoch=epoch, architecture=run.architecture,
            num_classes=info.num_classes, model_options=dict(run.model_options), resolution=run.resolution,
            checkpoint=str(path.relative_to(exp.root)), train_fraction=run.train_fraction,
            seed=run.train.seed, train_loss=history[epoch].loss, train_accuracy=history[epoch].accuracy,
        )
        model_ids.append(model_id)
    exp.mark_done(run_id, {"models": model_ids, "seconds": sum(h.seconds for h in result.history)})
    return model_ids


__all__ = [
    "TrainConfig", "TrainResult", "EpochStats", "train_model", "lr_factor", "epoch_seed", "seed_everything", "seeded", "SEED_LOCK",
    "load_model_weights", "load_latest_checkpoint", "checkpoint_path", "kept_checkpoint_path",
    "training_checkpoints", "RunConfig", "train_run", "subset_indices",
]
