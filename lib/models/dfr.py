"""DFR (deep feature reweighting): a registered model's last layer refitted on group-balanced held-out features.

Kirichenko et al.: logistic regression on the frozen backbone's standardised features, every group given the same
weight, ``C`` chosen by held-out worst-group accuracy; the result is written into the model's head and registered as
a new model.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from askshift.lib.data.loaders import LoaderPool, split_info, split_loader
from askshift.lib.models.device import resolve_device
from askshift.lib.models.evaluation import eval_config, load_registered_model, model_record
from askshift.lib.models.training import place_images, place_model
from askshift.lib.store import ExperimentStore, atomic_save_torch, content_hash


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
    pool: LoaderPool | None = None,
) -> str:
    """DFR on a registered model: features of ``split`` (which must carry group labels), a refitted head,
    saved and registered as ``<model_id>+dfr`` in group ``<group>+dfr``.  Skipped when it exists."""
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
    with split_loader(spec, split, cache_dir, config, train=False, pool=pool) as loader:
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


__all__ = ["DFRResult", "apply_dfr", "dfr_registered_model", "extract_features", "fit_dfr", "group_balanced_weights"]
