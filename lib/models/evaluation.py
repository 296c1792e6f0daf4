"""Prediction: logits of a model on a split, written to the store per (model, split); registered-model loading."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from askshift.lib.data.loaders import LoaderPool
from askshift.lib.models.device import resolve_device
from askshift.lib.models.families import build_model
from askshift.lib.models.inputs import loader_config
from askshift.lib.models.training import load_model_weights, place_images, place_model
from askshift.lib.store import ExperimentStore


@torch.no_grad()
def predict(
    model: nn.Module, loader: Iterable, device: str | torch.device = "cpu", amp: str = "none"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits (float32, n x classes), labels and example indices of every batch ``loader`` yields.

    Batches are ``(images, labels[, indices])``; without indices, examples are numbered in loader order.
    ``amp`` ("bf16"/"fp16") is used on CUDA only; logits are always returned as float32.
    """
    device = resolve_device(device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp) if device.type == "cuda" else None
    was_training = model.training
    place_model(model, device).eval()
    logits, labels, indices = [], [], []
    seen = 0
    try:
        for batch in loader:
            images = place_images(batch[0], device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = model(images)
            logits.append(out.float().cpu())
            labels.append(batch[1].reshape(-1).long().cpu())
            index = batch[2].reshape(-1).long().cpu() if len(batch) > 2 else torch.arange(seen, seen + len(images))
            indices.append(index)
            seen += len(images)
    finally:
        model.train(was_training)
    if not logits:
        raise ValueError("the loader yielded no batches: nothing to predict")
    return torch.cat(logits).numpy(), torch.cat(labels).numpy(), torch.cat(indices).numpy()


# --- registered models -------------------------------------------------------------------------
# A model registered with ``exp.register_model(model_id, group, architecture=..., num_classes=...,
# model_options={...}, checkpoint=<path relative to the experiment folder>)`` can be rebuilt by any task.


def model_record(exp: ExperimentStore, model_id: str) -> dict[str, Any]:
    """The info a model was registered with (architecture, num_classes, checkpoint, ...), plus model/group."""
    table = exp.models()
    rows = table.filter(table["model"] == model_id)
    if rows.height == 0:
        raise KeyError(f"model {model_id!r} is not registered in {exp.root}; train it first")
    row = rows.row(0, named=True)
    return {"model": row["model"], "group": row["group"], **json.loads(row["info"])}


def checkpoint_of(exp: ExperimentStore, record: dict[str, Any]) -> Path:
    path = Path(record["checkpoint"])
    return path if path.is_absolute() else exp.root / path


def load_registered_model(exp: ExperimentStore, model_id: str) -> nn.Module:
    """Build the registered architecture and load its checkpoint (weights_only) on CPU."""
    record = model_record(exp, model_id)
    missing = [k for k in ("architecture", "num_classes", "checkpoint") if k not in record]
    if missing:
        raise KeyError(f"model {model_id!r} was registered without {missing}; cannot rebuild it for prediction")
    model = build_model(record["architecture"], int(record["num_classes"]), **record.get("model_options", {}))
    return load_model_weights(model, checkpoint_of(exp, record))


def eval_loader(spec: Any, split: str, cache_dir: str | Path, config: Any, pool: LoaderPool | None = None):
    """A sequential loader of ``split`` (a context manager: with a ``pool``, its compiled FFCV loader goes back to it
    on exit, so the next prediction on this file does not compile again)."""
    from askshift.lib.data.loaders import split_loader

    return split_loader(spec, split, cache_dir, config, train=False, pool=pool)


def predict_to_store(
    exp: ExperimentStore,
    model_ids: str | Sequence[str],
    split: str,
    spec: Any,
    cache_dir: str | Path,
    model: nn.Module | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 512,
    num_workers: int = 1,
    amp: str = "none",
    overwrite: bool = False,
    pool: LoaderPool | None = None,
) -> list[Path]:
    """Predict each of ``model_ids`` (registered models, or ``model`` for a single id) on ``split`` of ``spec``
    and store the logits per (model, split).

    One loader serves every model (its compiled pipeline comes from and goes back to ``pool``, see ``eval_loader``).
    Models whose predictions exist are skipped unless ``overwrite``.  Example groups (WILDS domains, ...) come from the split's metadata when it has them.
    """
    model_ids = [model_ids] if isinstance(model_ids, str) else list(model_ids)
    if model is not None and len(model_ids) != 1:
        raise ValueError("pass a model object together with exactly one model id")
    todo = [m for m in model_ids if overwrite or not exp.has_predictions(m, split)]
    if todo:
        device = resolve_device(device)
        dataset = spec.distribution(split)[0].dataset
        records = {row["model"]: json.loads(row["info"]) for row in exp.models().iter_rows(named=True)}  # read once
        by_config: dict[Any, list[str]] = {}
        for model_id in todo:  # models that read the split the same way share one loader
            config = eval_config(records.get(model_id, {}), dataset, batch_size=batch_size, num_workers=num_workers,
                                 device=str(device))
            by_config.setdefault(config, []).append(model_id)
        for config, ids in by_config.items():
            with eval_loader(spec, split, cache_dir, config, pool=pool) as loader:
                groups = loader.beton.groups()  # the loader has the split's file open: no second lookup
                for model_id in ids:
                    net = model if model is not None else load_registered_model(exp, model_id)
                    logits, labels, indices = predict(net, loader, device, amp=amp)
                    exp.write_predictions(model_id, split, logits, labels, indices,
                                          np.asarray(groups)[indices] if groups is not None else None)
    return [exp.predictions_path(m, split) for m in model_ids]


def eval_config(record: dict[str, Any], dataset: str, **fields: Any):
    """The evaluation LoaderConfig of a registered model (its ``model_record``) on ``dataset``: its family's
    transform at its resolution (an unregistered model, ``{}``: the images as stored)."""
    return loader_config(dataset, record.get("architecture"), train=False, resolution=record.get("resolution"), **fields)


__all__ = ["predict", "predict_to_store", "eval_loader", "model_record", "load_registered_model", "checkpoint_of"]
